"""A head's direct and indirect effect on the loss: path patching by freezing what comes after it.

Ablating a head (zeroing its ``hook_z``) changes the loss in two ways: **directly**, because its
write to the residual stream reaches the unembedding, and **indirectly**, because later heads and
MLPs read that write and change their own. :func:`head_direct_effects` separates them by ablating
the head while every *later sub-layer output* (``blocks.{j}.hook_attn_out`` for ``j > l``,
``blocks.{j}.hook_mlp_out`` for ``j >= l``) is held at its clean value, and, in the multi-stream
schemes, every later connection's mixing weights (``hc_attn``/``hc_mlp`` ``hook_h_pre``,
``hook_h_res``, ``hook_h_post``) as well, so that the change reaches the logits only by the
residual stream itself (through the streams' fixed mixing and the final layer norm). Then
``indirect = total - direct``, with ``total`` from :func:`sinklens.head_ablation.head_ablation_effects`.

``freeze="block_outputs"`` is the split of mhc-interp's ``path_patch_pt.py``: it holds every later
*block's output* at its clean value. A block's output is the whole residual state, so for a head
below the last layer the logits are the clean logits and the "direct effect" is exactly 0 by
construction (its saved ``path_patch.csv`` has 0.0 for every head of layers 0-34 of 36): its
"indirect effect" is the total effect. It is kept here to show that, not to be used.

Both return ``[layer, head]`` (increase of the mean next-token loss; positive = the head helps).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sinklens.head_ablation import Z_HOOK, _ablate_each_head_hook, mean_head_outputs, per_sequence_loss

FREEZES = ("sublayer_outputs", "block_outputs")
_COEFFICIENTS = ("hook_h_pre", "hook_h_res", "hook_h_post")


def frozen_hook_names(model, layer: int, freeze: str = "sublayer_outputs") -> list[str]:
    """The hook names :func:`head_direct_effects` holds at their clean values for a head of ``layer``."""
    if freeze not in FREEZES:
        raise ValueError(f"freeze must be one of {FREEZES}, got {freeze!r}.")
    n_layers = int(model.cfg.n_layers)
    multi = getattr(model.cfg, "residual", "residual") != "residual"
    if freeze == "block_outputs":
        out = "hook_streams_post" if multi else "hook_resid_post"
        return [f"blocks.{j}.{out}" for j in range(layer + 1, n_layers)]
    names = [f"blocks.{layer}.hook_mlp_out"]
    if multi:
        names += [f"blocks.{layer}.hc_mlp.{c}" for c in _COEFFICIENTS]
    for j in range(layer + 1, n_layers):
        names += [f"blocks.{j}.hook_attn_out", f"blocks.{j}.hook_mlp_out"]
        if multi:
            names += [f"blocks.{j}.{part}.{c}" for part in ("hc_attn", "hc_mlp") for c in _COEFFICIENTS]
    return names


def _replace_with(clean: Tensor, copies: int):
    repeated = clean.repeat(copies, *([1] * (clean.dim() - 1)))

    def hook(act: Tensor, hook=None) -> Tensor:
        return repeated.to(act.dtype)

    return hook


@torch.no_grad()
def head_direct_effects(
    model,
    tokens: Tensor,
    *,
    positions: Sequence[int] | None = None,
    mode: str = "zero",
    freeze: str = "sublayer_outputs",
    progress: bool = False,
) -> Tensor:
    """Each head's direct effect on the next-token loss, ``[layer, head]`` (see the module docstring).

    ``tokens`` ``[batch, pos]``; ``positions``: the query positions whose loss counts (default all),
    as in :func:`sinklens.head_ablation.head_ablation_effects`, whose ``mode`` this shares.
    """
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}.")
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}.")
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    names = {n for l in range(n_layers) for n in frozen_hook_names(model, l, freeze)}
    missing = names - set(model.hook_dict)
    if missing:
        raise ValueError(f"The model has no hooks {sorted(missing)[:3]}...: not a sinklens.model.GPT?")
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names, return_cache_object=False)
    base = per_sequence_loss(logits, tokens, positions)  # [batch]
    means = mean_head_outputs(model, tokens) if mode == "mean" else None
    out = torch.zeros(n_layers, n_heads)
    for layer in tqdm(range(n_layers), desc="direct effects", disable=not progress, leave=False):
        hooks = [(Z_HOOK.format(layer=layer), _ablate_each_head_hook(n_heads, None if means is None else means[layer]))]
        hooks += [(n, _replace_with(cache[n], n_heads)) for n in frozen_hook_names(model, layer, freeze)]
        repeated = tokens.repeat(n_heads, 1)  # copy h = rows h*b .. (h+1)*b loses head h
        with model.hooks(fwd_hooks=hooks):
            loss = per_sequence_loss(model(repeated), repeated, positions).view(n_heads, -1)  # [head, batch]
        out[layer] = (loss - base[None]).mean(-1).cpu()
    return out
