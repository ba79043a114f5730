"""The position-0 sink circuit: where the sink is, what builds it, and causal tests.

All functions take a model with TransformerLens hook names (a ``TransformerBridge`` in
compatibility mode, or this package's own ``sinklens.model.GPT``) and token batches
``[batch, pos]``. Interventions use ``model.hooks(...)``, so the model is left unchanged
afterwards (``tests/test_circuits.py`` checks it).
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor

from sinklens.selectivity import first_index_at_least

SINK_EPSILON = 0.3  # Gu et al. (arXiv 2410.10781): a head is a sink head when its mean attention to token 0 > 0.3
SINK_LAYER_SHARE = 0.5  # a layer has a sink when at least half its heads are sink heads (sink metric >= 0.5)


def attention_to_position(cache, position: int = 0, *, n_layers: int | None = None) -> Tensor:
    """Mean attention each head pays to key ``position`` from the later queries: ``[layer, head]``.

    Queries ``q > position`` only (a query at ``position`` has no choice but to attend to itself
    when ``position`` is 0).
    """
    n_layers = n_layers if n_layers is not None else _count_layers(cache)
    pats = [cache[f"blocks.{l}.attn.hook_pattern"] for l in range(n_layers)]  # [batch, head, q, k]
    n_pos = pats[0].shape[-1]
    if not 0 <= position < n_pos - 1:
        raise IndexError(f"position {position} must be in [0, {n_pos - 1}) for sequences of {n_pos} tokens.")
    return torch.stack([p[:, :, position + 1 :, position].float().mean((0, 2)) for p in pats])


def sink_metric(attention_to_first: Tensor, epsilon: float = SINK_EPSILON) -> Tensor:
    """Gu et al.'s sink metric per layer: the share of heads whose attention to token 0 exceeds ``epsilon``.

    ``attention_to_first [layer, head]`` → ``[layer]`` in [0, 1].
    """
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}.")
    return (attention_to_first > epsilon).float().mean(-1)


def first_sink_layer(sink_metric_per_layer: Tensor | Sequence[float], share: float = SINK_LAYER_SHARE) -> int | None:
    """The first layer whose sink metric is at least ``share`` (at least that share of its heads are
    sink heads), or ``None`` when no layer's is."""
    return first_index_at_least(sink_metric_per_layer, share)


def sink_onset(tokens_seen: Sequence[int], best_sink_metric: Sequence[float],
               share: float = SINK_LAYER_SHARE) -> dict[str, int | None]:
    """When a sink first shows along training: ``{"tokens": t, "before": t_prev}``, the first
    checkpoint (tokens seen, ascending) at which the best layer's sink metric reaches ``share`` and
    the checkpoint before it (the onset lies between the two); both ``None`` when it never does."""
    if len(tokens_seen) != len(best_sink_metric):
        raise ValueError(f"Need one sink metric per checkpoint, got {len(best_sink_metric)} for {len(tokens_seen)}.")
    if list(tokens_seen) != sorted(tokens_seen):
        raise ValueError("tokens_seen must be ascending (checkpoints in training order).")
    i = first_index_at_least(best_sink_metric, share)
    if i is None:
        return {"tokens": None, "before": None}
    return {"tokens": int(tokens_seen[i]), "before": int(tokens_seen[i - 1]) if i else None}


def _count_layers(cache) -> int:
    n = 0
    while f"blocks.{n}.attn.hook_pattern" in cache:
        n += 1
    if n == 0:
        raise KeyError("The cache has no blocks.{l}.attn.hook_pattern entries.")
    return n


def residual_components(cache, position: int, n_layers: int) -> dict[str, Tensor]:
    """What each component wrote into the residual stream at ``position``: name → ``[batch, d_model]``.

    Names: ``"embed"`` (token embedding, plus ``hook_pos_embed`` when the model has learned
    positions), then ``"L{l} attn"`` and ``"L{l} mlp"`` for ``l < n_layers``. Their running sum is
    the residual stream (``blocks.{l}.hook_resid_post``), which the tests check.
    """
    parts = {"embed": cache["hook_embed"][:, position].clone()}
    if "hook_pos_embed" in cache:
        parts["embed"] = parts["embed"] + cache["hook_pos_embed"][:, position]
    for l in range(n_layers):
        parts[f"L{l} attn"] = cache[f"blocks.{l}.hook_attn_out"][:, position]
        parts[f"L{l} mlp"] = cache[f"blocks.{l}.hook_mlp_out"][:, position]
    return parts


def _position_hook(position: int | Sequence[int], mode: str, means: dict[str, Tensor] | None) -> Callable:
    def hook(act: Tensor, hook) -> Tensor:
        act = act.clone()
        if mode == "zero":
            act[:, position] = 0.0
        else:
            act[:, position] = means[hook.name].to(act.dtype)
        return act

    return hook


def ablate_at_position(
    model,
    tokens: Tensor,
    hook_names: Iterable[str],
    *,
    position: int = 0,
    mode: str = "zero",
    reference: Tensor | None = None,
    names_filter: Callable[[str], bool] | None = None,
):
    """Run ``tokens`` with the outputs named in ``hook_names`` replaced at ``position`` only.

    ``mode="zero"`` sets them to 0; ``mode="mean"`` to their mean over the positions ``> 0`` of the
    ``reference`` batch (default ``tokens``), i.e. what an ordinary position writes. Returns
    ``(logits, cache)``; the hooks are removed afterwards.
    """
    hook_names = list(hook_names)
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}.")
    means = None
    if mode == "mean":
        ref = tokens if reference is None else reference
        _, ref_cache = model.run_with_cache(ref, names_filter=lambda n: n in hook_names)
        means = {n: ref_cache[n][:, 1:].mean((0, 1)) for n in hook_names}
    hooks = [(n, _position_hook(position, mode, means)) for n in hook_names]
    with model.hooks(fwd_hooks=hooks):
        return model.run_with_cache(tokens, names_filter=names_filter)


def patch_residual(
    model, tokens: Tensor, layer: int, *, source: int = 0, target: int, names_filter=None
):
    """Copy the residual stream at ``source`` into ``target`` at the input of block ``layer``.

    Returns ``(logits, cache)`` of the patched run: if what position 0 carries is enough to make a
    sink, the later layers should now attend to ``target``.
    """
    if not 0 <= layer < model.cfg.n_layers:
        raise IndexError(f"layer {layer} is out of range for a model with {model.cfg.n_layers} layers.")

    def hook(resid: Tensor, hook) -> Tensor:
        resid = resid.clone()
        resid[:, target] = resid[:, source]
        return resid

    with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", hook)]):
        return model.run_with_cache(tokens, names_filter=names_filter)


def attend_only_to_self(
    model, tokens: Tensor, layers: Iterable[int], *, position: int, names_filter=None
):
    """Make ``position`` attend only to itself in ``layers`` (as position 0 must), then run.

    This gives an ordinary position the one thing that is special about position 0 under the
    causal mask. Returns ``(logits, cache)``.
    """

    def hook(pattern: Tensor, hook) -> Tensor:
        pattern = pattern.clone()
        pattern[:, :, position, :] = 0.0
        pattern[:, :, position, position] = 1.0
        return pattern

    with model.hooks(fwd_hooks=[(f"blocks.{l}.attn.hook_pattern", hook) for l in layers]):
        return model.run_with_cache(tokens, names_filter=names_filter)


MASSIVE_RATIO = 10.0  # the book's one definition of a massive residual norm (chapters 3 and 4)


def norm_ratio_to_median(norms: Tensor, position: int = 0) -> Tensor:
    """Mean norm at ``position`` ÷ the median norm of every other position of the batch.

    ``norms [batch, pos]`` -> a scalar, or ``[..., batch, pos]`` -> ``[...]``. The median (not the
    mean) so that one other massive position does not hide the contrast. A ratio of at least
    :data:`MASSIVE_RATIO` is what the book calls a massive norm, in every chapter.
    """
    others = torch.cat([norms[..., :position], norms[..., position + 1 :]], dim=-1)
    return norms[..., position].mean(-1) / others.flatten(-2).median(-1).values


def position_norm_ratio(cache, n_layers: int, position: int = 0) -> Tensor:
    """:func:`norm_ratio_to_median` of the residual stream after each block: ``[layer]``.

    Read from ``blocks.{l}.hook_resid_post``; a massive-activation sink shows as a ratio of at
    least :data:`MASSIVE_RATIO`.
    """
    norms = torch.stack([cache[f"blocks.{l}.hook_resid_post"].float().norm(dim=-1) for l in range(n_layers)])
    return norm_ratio_to_median(norms, position)  # norms: [layer, batch, pos]


def sink_signature(model, tokens: Tensor, epsilon: float = SINK_EPSILON) -> dict[str, Tensor]:
    """Everything that marks a position-0 sink, from one forward pass.

    ``attention_to_first [layer, head]``, ``sink_metric [layer]``, ``norm_ratio [layer]``
    (see :func:`position_norm_ratio`).
    """
    n_layers = model.cfg.n_layers
    wanted = lambda n: n.endswith("hook_pattern") or n.endswith("hook_resid_post")  # noqa: E731
    _, cache = model.run_with_cache(tokens, names_filter=wanted)
    attn = attention_to_position(cache, 0, n_layers=n_layers)
    return {
        "attention_to_first": attn,
        "sink_metric": sink_metric(attn, epsilon),
        "norm_ratio": position_norm_ratio(cache, n_layers),
    }


def first_token_swap(model, tokens: Tensor, replacement_ids: Sequence[int]) -> Tensor:
    """Attention to position 0 when the first token is each of ``replacement_ids``: ``[n, layer, head]``.

    ``tokens [batch, pos]`` start with BOS; BOS is dropped and the first text token is replaced,
    so position 0 holds an ordinary token and no BOS appears anywhere.
    """
    body = tokens[:, 1:]
    out = []
    for r in replacement_ids:
        swapped = body.clone()
        swapped[:, 0] = int(r)
        _, cache = model.run_with_cache(swapped, names_filter=lambda n: n.endswith("hook_pattern"))
        out.append(attention_to_position(cache, 0, n_layers=model.cfg.n_layers))
    return torch.stack(out)


def give_position_embedding_of_first(model, tokens: Tensor, target: int, names_filter=None):
    """Learned-absolute-position models only: give ``target`` the position embedding of position 0.

    If the position embedding is what marks position 0, ``target`` should become a second sink.
    Returns ``(logits, cache)``. Raises ``ValueError`` for rotary models (they have no position
    embedding to move).
    """
    if "hook_pos_embed" not in model.hook_dict:
        raise ValueError("This model has no learned position embedding (hook_pos_embed): it is rotary.")

    def hook(pos: Tensor, hook) -> Tensor:
        pos = pos.clone()
        pos[:, target] = pos[:, 0]
        return pos

    with model.hooks(fwd_hooks=[("hook_pos_embed", hook)]):
        return model.run_with_cache(tokens, names_filter=names_filter)


def sublayer_hook(layer: int, kind: str) -> str:
    """``blocks.{layer}.hook_{kind}_out`` for ``kind`` in ``("attn", "mlp")``."""
    if kind not in ("attn", "mlp"):
        raise ValueError(f"kind must be 'attn' or 'mlp', got {kind!r}.")
    return f"blocks.{layer}.hook_{kind}_out"


@torch.no_grad()
def p0_necessity_and_controls(model, tokens: Tensor, *, n_early: int, late: slice) -> dict:
    """Chapter 4's causal tests of "an early component makes position 0 the sink".

    Every sub-layer of blocks ``0 .. n_early - 1`` is zero- and mean-ablated at position 0 alone;
    the one whose zero-ablation lowers the attention to position 0 in the ``late`` layers most is
    the ``responsible`` component. Two controls, which would collapse the sink too if the claim
    were false: the responsible component ablated at **every position but 0** (if the sink needed
    what it writes at the queries), and the **runner-up** component ablated at P0 (if any large
    early write at P0 would do). Returns a dict: ``clean`` (mean late attention to P0), ``scan``
    (component -> {"zero": .., "mean": ..}), ``responsible``, ``responsible_layer``, ``runner_up``,
    ``zero_ablated``, ``mean_ablated``, ``controls`` (name -> late attention), and ``curves``
    (run name -> per-layer attention to P0, ``[layer]``).
    """
    n_layers = int(model.cfg.n_layers)
    if not 1 <= n_early <= n_layers:
        raise ValueError(f"n_early must be in [1, {n_layers}], got {n_early}.")
    keep = lambda n: n.endswith("hook_pattern")  # noqa: E731

    def late_attention(cache) -> tuple[float, Tensor]:
        curve = attention_to_position(cache, 0, n_layers=n_layers).mean(1)  # [layer]
        return float(curve[late].mean()), curve

    _, clean_cache = model.run_with_cache(tokens, names_filter=keep)
    clean, clean_curve = late_attention(clean_cache)
    components = [(l, k) for l in range(n_early) for k in ("attn", "mlp")]
    if len(components) < 2:
        raise ValueError("Need at least two early components (one to test, one as the runner-up control).")
    scan, curves = {}, {"clean": clean_curve}
    for l, k in components:
        name = f"L{l} {k}"
        scan[name] = {}
        for mode in ("zero", "mean"):
            _, c = ablate_at_position(model, tokens, [sublayer_hook(l, k)], position=0, mode=mode, names_filter=keep)
            scan[name][mode], curves[f"{mode} {name} @ P0"] = late_attention(c)
    responsible = min(scan, key=lambda n: scan[n]["zero"])
    runner_up = min((n for n in scan if n != responsible), key=lambda n: scan[n]["zero"])
    r_layer, r_kind = int(responsible.split()[0][1:]), responsible.split()[1]
    all_but_p0 = list(range(1, tokens.shape[1]))
    _, c = ablate_at_position(model, tokens, [sublayer_hook(r_layer, r_kind)], position=all_but_p0, mode="zero", names_filter=keep)
    at_queries, curves[f"zero {responsible} @ all but P0 (control)"] = late_attention(c)
    curves[f"zero {runner_up} @ P0 (control)"] = curves[f"zero {runner_up} @ P0"]
    controls = {f"zero {responsible} @ all but P0 (control)": at_queries,
                f"zero {runner_up} @ P0 (control)": scan[runner_up]["zero"]}
    keep_curves = {"clean", f"zero {responsible} @ P0", f"mean {responsible} @ P0", *controls}
    return dict(clean=clean, scan=scan, responsible=responsible, responsible_layer=r_layer, runner_up=runner_up,
                zero_ablated=scan[responsible]["zero"], mean_ablated=scan[responsible]["mean"], controls=controls,
                curves={k: v for k, v in curves.items() if k in keep_curves})
