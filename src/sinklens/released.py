"""The source's released 781M models (``Realmbird/mhc-781m-*``), for readers with a network.

Their format, read from mhc-interp's ``_loader.py`` and ``head_finder.py``: each hub repository
ships its own ``model.py`` and ``hyper_conn/`` package with ``config.json`` and
``model.safetensors``; :func:`load` imports that ``model.py`` (running the repository's own code,
like ``trust_remote_code``), builds ``GPT(GPTConfig(**config))`` and loads the weights. The forward
is ``net(ids, targets)`` -> ``(logits, loss)`` (``targets = zeros`` makes it return every
position's logits). Attention uses a fused kernel and stores no pattern, so :func:`patterns`
rebuilds it from each block's ``branch_attn[1].c_attn`` output; a head is ablated by zeroing its
slice of the input to ``branch_attn[1].c_proj`` (the source's ``ablate_head``).

:func:`measure` gives a :class:`sinklens.protocol.SourceMeasurement` of one released model, so
chapter 5's protocol section runs on them unchanged. The direct/indirect split is not available
for these models here (their stream mixing has no hooks we could hold fixed): ``direct`` is NaN.
Offline, :func:`load` raises :class:`ReleasedModelsUnavailable` with what to do instead.
"""

from __future__ import annotations

import importlib
import json
import sys
from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sinklens import protocol

REPOS = {"residual": "Realmbird/mhc-781m-residual", "mhc": "Realmbird/mhc-781m-mhc",
         "mhc-lite": "Realmbird/mhc-781m-mhc-lite"}
EOT_ID = 50256  # GPT-2's <|endoftext|>, the source's BOS


class ReleasedModelsUnavailable(RuntimeError):
    """The released models could not be downloaded (no network, or the hub refused)."""


def load(scheme: str, device: str = "cpu"):
    """``(net, cfg)`` of the released model of ``scheme`` (one of :data:`REPOS`), in eval mode."""
    if scheme not in REPOS:
        raise ValueError(f"scheme must be one of {sorted(REPOS)}, got {scheme!r}.")
    repo_id = REPOS[scheme]
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id=repo_id)
    except Exception as e:  # offline: LocalEntryNotFoundError, connection errors, HF_HUB_OFFLINE=1
        raise ReleasedModelsUnavailable(
            f"Could not download {repo_id} from the Hugging Face hub ({type(e).__name__}). The source's "
            "released models need network access and about 3 GB per model; offline, run with "
            "released_models=False (the default): the rest of the chapter runs on the book's own zoo."
        ) from e
    from safetensors.torch import load_file

    for k in list(sys.modules):  # each repository ships its own `model` and `hyper_conn`
        if k in ("model", "hyper_conn") or k.startswith("hyper_conn."):
            del sys.modules[k]
    sys.path.insert(0, local)
    try:
        module = importlib.import_module("model")
    finally:
        sys.path.pop(0)
    with open(f"{local}/config.json") as f:
        cfg = module.GPTConfig(**json.load(f))
    net = module.GPT(cfg)
    net.load_state_dict(load_file(f"{local}/model.safetensors"))
    return net.eval().to(device), cfg


def _attention(block):
    return block.branch_attn[1]


@contextmanager
def _hooked(net, cfg, captured: dict | None = None, ablate: tuple[int, int] | None = None):
    handles, hs = [], cfg.n_embd // cfg.n_head
    try:
        for li, block in enumerate(net.transformer.h):
            attn = _attention(block)
            if captured is not None:
                def grab(_m, _i, qkv, li=li):
                    captured[li] = qkv.detach()
                handles.append(attn.c_attn.register_forward_hook(grab))
            if ablate is not None and ablate[0] == li:
                def zero(_m, inputs, h=ablate[1]):
                    x = inputs[0].clone()
                    x[..., h * hs : (h + 1) * hs] = 0
                    return (x,)
                handles.append(attn.c_proj.register_forward_pre_hook(zero))
        yield
    finally:
        for h in handles:
            h.remove()


def _pattern_from_qkv(qkv: Tensor, n_embd: int, n_head: int) -> Tensor:
    """``[b, t, 3 * n_embd]`` -> causal softmax pattern ``[b, head, q, k]`` (fp32)."""
    b, t, _ = qkv.shape
    q, k, _v = qkv.float().split(n_embd, dim=2)
    hs = n_embd // n_head
    q = q.view(b, t, n_head, hs).transpose(1, 2)
    k = k.view(b, t, n_head, hs).transpose(1, 2)
    att = (q @ k.transpose(-2, -1)) / hs**0.5
    att = att.masked_fill(torch.ones(t, t, dtype=torch.bool, device=att.device).triu(1), float("-inf"))
    return F.softmax(att, dim=-1)


@torch.no_grad()
def patterns(net, cfg, ids: Tensor) -> Tensor:
    """Every layer's attention pattern on ``ids [b, t]``: ``[layer, b, head, q, k]`` (CPU, fp32)."""
    captured: dict[int, Tensor] = {}
    with _hooked(net, cfg, captured=captured):
        net(ids, torch.zeros_like(ids))
    return torch.stack([_pattern_from_qkv(captured[l], cfg.n_embd, cfg.n_head).cpu() for l in range(len(captured))])


@torch.no_grad()
def loss(net, cfg, ids: Tensor, ablate: tuple[int, int] | None = None, positions: Sequence[int] | None = None) -> Tensor:
    """Per-sequence next-token loss ``[b]``, optionally with head ``ablate = (layer, head)`` zeroed."""
    from sinklens.head_ablation import per_sequence_loss

    with _hooked(net, cfg, ablate=ablate):
        logits, _ = net(ids, torch.zeros_like(ids))
    return per_sequence_loss(logits.float().cpu(), ids.cpu(), positions)


@torch.no_grad()
def ablation_effects(net, cfg, ids: Tensor, positions: Sequence[int] | None = None) -> np.ndarray:
    """``[layer, head]`` loss increase when each head is zeroed (one pass per head)."""
    base = loss(net, cfg, ids, positions=positions)
    out = np.zeros((cfg.n_layer, cfg.n_head))
    for l in range(cfg.n_layer):
        for h in range(cfg.n_head):
            out[l, h] = float((loss(net, cfg, ids, (l, h), positions) - base).mean())
    return out


def measure(net, cfg, prompts: protocol.SourcePrompts, device: str = "cpu") -> protocol.SourceMeasurement:
    """One released model by the source's protocol (no direct/indirect split: NaN)."""
    sentence, repeat = prompts.sentence.to(device), prompts.repeat.to(device)
    sent_p = patterns(net, cfg, sentence)[:, 0]  # [layer, head, q, k]
    rep_p = patterns(net, cfg, repeat)[:, 0]
    n = prompts.n_repeat
    pattern = {"previous_token": protocol.previous_token_score(sent_p).numpy(),
               "induction": protocol.induction_score(rep_p, n).numpy(),
               "duplicate_token": protocol.duplicate_score(rep_p, n).numpy()}
    copy = ablation_effects(net, cfg, repeat, prompts.second_copy_positions())
    ablation = {"previous_token": ablation_effects(net, cfg, sentence), "induction": copy, "duplicate_token": copy}
    nan = np.full((cfg.n_layer, cfg.n_head), np.nan)
    return protocol.SourceMeasurement(pattern, ablation, nan, nan.copy(), sent_p)


def source_prompts(seed: int = 0) -> protocol.SourcePrompts:
    """The source's own prompts, in GPT-2 ids (exactly its ``head_finder.py`` probes)."""
    from sinklens.data import gpt2_tokenizer

    tok = gpt2_tokenizer()
    return protocol.source_prompts(tok.encode, protocol.SOURCE_D_VOCAB, EOT_ID, seed=seed)
