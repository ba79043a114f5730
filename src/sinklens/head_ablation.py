"""Which heads carry load, and where heads of a type sit in depth.

- :func:`head_ablation_effects`: for every head, the increase in next-token loss when that head's
  output ``hook_z[:, :, h]`` is zeroed (or replaced by its mean), ``[layer, head]``. Batched: one
  forward pass per layer (and per chunk of sequences) ablates every head of that layer at once,
  each in its own copy of the batch, so a model with ``L`` layers costs ``L`` passes of
  ``n_heads x batch`` sequences instead of ``L * n_heads`` passes.
- :func:`patterns_with_heads_ablated`, :func:`matched_random_head_sets`: a composition test's
  ablation (several heads zeroed together, the later layers' patterns read) and its control sets.
- :func:`per_sequence_loss`: mean next-token cross-entropy of each sequence, ``[batch]``.
- :func:`top_k_heads`, :func:`median_layer_of_top_k`, :func:`normalised_depth`: the layer
  distribution of the ``k`` highest-scoring heads of a type, normalised by depth as
  ``(layer + 0.5) / n_layers`` so models of different depth compare (a 36-layer model's L15 is
  0.43; a 4-layer model's layer 1 is 0.375).
- :func:`spearman`, :func:`top_k_overlap`: does a head's pattern score agree with its ablation
  effect?
- :data:`MHC_INTERP_MEDIAN_LAYERS`: the numbers of the "MHC Interp #1" write-up
  (github.com/Realmbird/mhc-interp, 36-layer GPT-2-Large-shaped models), for comparison.

Works with any hooked model whose forward returns logits and whose attention exposes
``blocks.{l}.attn.hook_z`` as ``[batch, pos, head, d_head]`` (our :class:`sinklens.model.GPT`,
TransformerLens models). The hooks are removed on exit: the model is left unchanged.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

Z_HOOK = "blocks.{layer}.attn.hook_z"

# "MHC Interp #1" (Realmbird/mhc-interp README; top-20 of 720 heads, 36 layers). Median layer of
# the top-20 heads per detector, from two of its ranking rules (sinklens.protocol.SOURCE_MEDIAN_LAYERS
# has both in full): previous-token and induction are the README's table, which matches its
# pattern-only ranking; the duplicate-token medians are not in the README, they are the medians of
# the layers in its results/analysis/layer_distribution_top20.csv (commit 2a8e755), which match its
# mixed ranking (residual by pattern, mHC models by min percentile). That CSV gives mHC's
# previous-token median as 7, the README says 6.
MHC_INTERP_N_LAYERS = 36
MHC_INTERP_TOP_K = 20
MHC_INTERP_MEDIAN_LAYERS = {
    "previous_token": {"residual": 15, "mhc": 6, "mhc-lite": 7},
    "induction": {"residual": 21, "mhc": 9, "mhc-lite": 9},
    "duplicate_token": {"residual": 3.5, "mhc": 8.5, "mhc-lite": 8},
}
# Verticality (max / mean of the column means of the head-averaged pattern, mhc-interp's
# verticality_figure.py) of the top-5 previous-token heads under mHC: load-bearing ones
# (by indirect ablation effect) vs pattern-top ones.
MHC_INTERP_VERTICALITY = {"load_bearing": 4.19, "pattern_top": 2.07}
# The same for mHC-lite (its README: 3.95, "one outlier: L7h14 is a textbook PT-stripe head"; 1.97).
MHC_INTERP_VERTICALITY_LITE = {"load_bearing": 3.95, "pattern_top": 1.97}


# --- losses and ablation -------------------------------------------------------------------------


def per_sequence_loss(logits: Tensor, tokens: Tensor, positions: Sequence[int] | None = None) -> Tensor:
    """Mean next-token cross-entropy of each sequence: ``[b, p, vocab]``, ``[b, p]`` -> ``[b]``.

    ``positions``: the query positions ``i`` whose prediction of ``tokens[:, i + 1]`` counts
    (default: all, ``0 .. p - 2``).
    """
    if logits.shape[:2] != tokens.shape or tokens.shape[1] < 2:
        raise ValueError(f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} do not match "
                         "(need [batch, pos, vocab] and [batch, pos] with pos >= 2).")
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none")
    ce = ce.view(tokens.shape[0], -1)  # [b, p - 1]
    if positions is None:
        return ce.mean(-1)
    positions = [int(i) for i in positions]
    if not positions or any(not 0 <= i < ce.shape[1] for i in positions):
        raise ValueError(f"positions must be a non-empty list of query positions in [0, {ce.shape[1]}), got {positions}.")
    return ce[:, positions].mean(-1)


def _n_layers_heads(model) -> tuple[int, int]:
    return int(model.cfg.n_layers), int(model.cfg.n_heads)


@torch.no_grad()
def mean_head_outputs(model, tokens: Tensor) -> Tensor:
    """Each head's ``hook_z`` averaged over batch and positions: ``[layer, head, d_head]``."""
    n_layers, _ = _n_layers_heads(model)
    names = {Z_HOOK.format(layer=l) for l in range(n_layers)}
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return torch.stack([cache[Z_HOOK.format(layer=l)].float().mean((0, 1)) for l in range(n_layers)])


def _ablate_each_head_hook(n_heads: int, replacement: Tensor | None):
    """A hook on a ``[n_heads * b, p, n_heads, d_head]`` z: copy ``h`` of the batch loses head ``h``."""

    def hook(z: Tensor, hook=None) -> Tensor:
        b = z.shape[0] // n_heads
        zz = z.view(n_heads, b, *z.shape[1:])  # [copy, b, p, head, d_head]
        keep = 1.0 - torch.eye(n_heads, dtype=z.dtype, device=z.device)  # [copy, head]
        keep = keep[:, None, None, :, None]
        out = zz * keep
        if replacement is not None:
            out = out + (1.0 - keep) * replacement.to(z.dtype)[None, None, None, :, :]
        return out.view_as(z)

    return hook


@torch.no_grad()
def patterns_with_heads_ablated(model, tokens: Tensor, heads: Sequence[tuple[int, int]]):
    """Run ``tokens [batch, pos]`` with the outputs (``hook_z``) of ``heads`` zeroed together; return
    the cache of every layer's ``hook_pattern``. A head's own pattern is unchanged, but the
    patterns of later layers see a residual stream without those heads: this is how a composition
    test (does an induction head need the previous-token heads below it?) reads the effect."""
    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        by_layer.setdefault(int(l), []).append(int(h))

    def zero_heads(hs: list[int]):
        def hook(z: Tensor, hook=None) -> Tensor:
            z = z.clone()
            z[:, :, hs] = 0.0
            return z
        return hook

    hooks = [(Z_HOOK.format(layer=l), zero_heads(hs)) for l, hs in by_layer.items()]
    with model.hooks(fwd_hooks=hooks):
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    return cache


def matched_random_head_sets(heads: Sequence[tuple[int, int]], n_heads: int, *, exclude: Sequence[tuple[int, int]],
                             n_sets: int, seed: int = 0) -> list[list[tuple[int, int]]]:
    """Control sets for an ablation of ``heads``: ``n_sets`` random sets, each with as many heads in
    every layer as ``heads`` has there, drawn without replacement from that layer's heads that are
    not in ``exclude`` (``heads`` are excluded too). The sets are seeded and depend on ``heads`` as a
    set, not on their order; two draws may give the same set. A composition test compares the
    ablation of ``heads`` with each of these: a random choice of the same size and layers could
    hit heads that matter, where the lowest-scoring heads of a type may be near-silent ones."""
    if n_sets < 1:
        raise ValueError(f"n_sets must be at least 1, got {n_sets}.")
    heads = [(int(l), int(h)) for l, h in heads]
    if len(set(heads)) != len(heads) or any(not 0 <= h < n_heads or l < 0 for l, h in heads):
        raise ValueError(f"The ablated heads must be distinct (layer, head) pairs with 0 <= head < {n_heads}, got {heads}.")
    excluded = {(int(l), int(h)) for l, h in exclude} | set(heads)
    need: dict[int, int] = {}
    for l, _ in sorted(heads):  # layers in order: the sets depend on the heads, not on the order they come in
        need[l] = need.get(l, 0) + 1
    candidates = {l: [h for h in range(n_heads) if (l, h) not in excluded] for l in need}
    for l, k in need.items():
        if len(candidates[l]) < k:
            raise ValueError(f"Layer {l} has {len(candidates[l])} heads outside the excluded ones, "
                             f"fewer than the {k} a matched control needs.")
    rng = np.random.default_rng(seed)
    return [[(l, int(h)) for l, k in need.items() for h in sorted(rng.choice(candidates[l], size=k, replace=False))]
            for _ in range(n_sets)]


@torch.no_grad()
def head_ablation_effects(
    model,
    tokens: Tensor,
    *,
    mode: str = "zero",
    batch_size: int | None = None,
    per_sequence: bool = False,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    progress: bool = True,
    desc: str = "head ablation",
) -> Tensor:
    """Increase in next-token loss when one head's output is removed: ``[layer, head]``.

    For head ``(l, h)``: ``loss(tokens | z[:, :, h] of layer l ablated) - loss(tokens)``, the
    mean next-token cross-entropy over all positions of ``tokens`` ``[batch, pos]``. ``mode``:
    ``"zero"`` sets that head's ``hook_z`` to 0 (its contribution through ``W_O`` is then only
    the output bias, which all heads share); ``"mean"`` replaces it by its mean over the batch
    and positions (of ``tokens`` itself). Positive = the head helps the model.

    Every head of a layer is ablated in one pass: the batch is repeated ``n_heads`` times and copy
    ``h`` loses head ``h``. ``batch_size`` bounds the number of *original* sequences per pass
    (default: all), so a pass holds ``n_heads * batch_size`` sequences. ``per_sequence=True``
    returns ``[layer, head, batch]`` (one value per sequence, for error bars). ``layers``
    restricts the layers (others are NaN). ``positions``: only the loss of these query positions
    counts (:func:`per_sequence_loss`; mhc-interp scores induction ablations on the second copy).
    """
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}.")
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}.")
    n_layers, n_heads = _n_layers_heads(model)
    layers = list(range(n_layers)) if layers is None else [int(l) for l in layers]
    if any(not 0 <= l < n_layers for l in layers):
        raise ValueError(f"layers must be in [0, {n_layers}), got {layers}.")
    batch = tokens.shape[0]
    batch_size = batch if batch_size is None else max(1, int(batch_size))
    means = mean_head_outputs(model, tokens) if mode == "mean" else None
    base = torch.cat([per_sequence_loss(model(tokens[i : i + batch_size]), tokens[i : i + batch_size], positions)
                      for i in range(0, batch, batch_size)])  # [batch]
    out = torch.full((n_layers, n_heads, batch), float("nan"))
    chunks = [(l, i) for l in layers for i in range(0, batch, batch_size)]
    for layer, i in tqdm(chunks, desc=desc, disable=not progress, leave=False):
        chunk = tokens[i : i + batch_size]
        repeated = chunk.repeat(n_heads, 1)  # [n_heads * b, p]: copy h = rows h*b .. (h+1)*b
        hook = _ablate_each_head_hook(n_heads, None if means is None else means[layer])
        with model.hooks(fwd_hooks=[(Z_HOOK.format(layer=layer), hook)]):
            logits = model(repeated)
        loss = per_sequence_loss(logits, repeated, positions).view(n_heads, -1)  # [head, b]
        out[layer, :, i : i + chunk.shape[0]] = loss.cpu() - base[i : i + chunk.shape[0]].cpu()
    return out if per_sequence else out.mean(-1)


# --- layer distributions --------------------------------------------------------------------------


def normalised_depth(layer, n_layers: int):
    """``(layer + 0.5) / n_layers``: a layer's position in depth, in (0, 1). Works on arrays."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}.")
    return (np.asarray(layer, dtype=float) + 0.5) / n_layers


def top_k_heads(scores: Tensor | np.ndarray, k: int) -> list[tuple[int, int]]:
    """The ``k`` highest-scoring heads of a ``[layer, head]`` map as ``(layer, head)``, best first.

    NaN scores are never picked; ties are broken by (layer, head) order. ``k`` larger than the
    number of finite scores returns them all.
    """
    s = np.asarray(scores.detach().cpu() if isinstance(scores, Tensor) else scores, dtype=float)
    if s.ndim != 2:
        raise ValueError(f"scores must be [layer, head], got shape {s.shape}.")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    flat = s.ravel()
    finite = np.flatnonzero(np.isfinite(flat))
    order = finite[np.argsort(-flat[finite], kind="stable")][:k]
    return [(int(i // s.shape[1]), int(i % s.shape[1])) for i in order]


def median_layer_of_top_k(scores, k: int, *, normalise: bool = True) -> float:
    """Median layer of the top-``k`` heads; normalised by depth (``(layer + 0.5) / n_layers``) by default."""
    layers = [l for l, _ in top_k_heads(scores, k)]
    n_layers = np.asarray(scores.detach().cpu() if isinstance(scores, Tensor) else scores).shape[0]
    med = float(np.median(layers))
    return float(normalised_depth(med, n_layers)) if normalise else med


def layer_shares_of_top_k(scores, k: int) -> np.ndarray:
    """Share of the top-``k`` heads in each layer: ``[layer]``, sums to 1."""
    n_layers = np.asarray(scores.detach().cpu() if isinstance(scores, Tensor) else scores).shape[0]
    counts = np.bincount([l for l, _ in top_k_heads(scores, k)], minlength=n_layers)
    return counts / counts.sum()


# --- agreement between two head scores ------------------------------------------------------------


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties averaged."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation of two equally shaped score maps (NaN pairs dropped).

    NaN when fewer than 3 pairs remain or either side is constant.
    """
    x = np.asarray(a.detach().cpu() if isinstance(a, Tensor) else a, dtype=float).ravel()
    y = np.asarray(b.detach().cpu() if isinstance(b, Tensor) else b, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"score maps differ in size: {x.shape} vs {y.shape}.")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3:
        return math.nan
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def top_k_overlap(a, b, k: int) -> float:
    """Share of the top-``k`` heads by ``a`` that are also in the top-``k`` by ``b``, in [0, 1]."""
    sa, sb = set(top_k_heads(a, k)), set(top_k_heads(b, k))
    return len(sa & sb) / max(1, len(sa))


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"
