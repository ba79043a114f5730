"""Every score for every head from one activation cache, vectorised across layers and heads.

The input is one activation cache: a TransformerLens ``ActivationCache`` or a plain ``dict`` from
hook name to tensor. Attention patterns are read from ``blocks.{l}.attn.hook_pattern``
(``[batch, head, q, k]``; a cache made with ``remove_batch_dim=True`` gives ``[head, q, k]`` and is
read as batch 1). Every score is a reduction of ``[..., q, k]`` with any leading dims (diagonals,
column sums), applied to each layer's ``[batch, head, q, k]`` at once and stacked to ``[layer,
batch, head]``: there is no Python loop over heads or sequences, only the loop over the layers'
hooks that collecting them needs. :func:`all_head_scores` does every score in that one pass.
Every function also accepts the stacked ``[layer, batch, head, q, k]`` tensor of
:func:`stack_patterns` in place of the cache. A large cache's layers are reduced one by one, not
stacked first, on purpose: stacking copies every pattern (139 MB for SmolLM2 at batch 8 x 127
tokens), and on a 2-core CPU that copy alone cost more (0.4 s) than all the scores together; a
small one (< ``STACK_MAX_BYTES``) is stacked, since there the per-call overhead of 30 layers
dominates. The two paths give the same numbers (tested).

Shapes. Each head score returns ``[layer, head]``; with ``per_batch=True`` it returns
``[batch, layer, head]``, one value per sequence, for error bars. The ``[layer, head]`` version is
always the mean over the batch of the per-batch version (for the diagonal scores this is also the
mean over all the batch's query positions, since every sequence has the same number of them).

Scores (``A`` is one head's pattern of one sequence, ``A[q, k]`` the attention from query ``q`` to
key ``k``, ``L`` the sequence length):

- :func:`diagonal_score`: the primitive. ``mean_{q in [q_start, q_stop)} A[q, q - offset]``.
- :func:`induction_scores`: on ``prefix`` positions (BOS) + R + R with ``len(R) = N``: the mean,
  over the second repeat only, of the attention to the token *after* the first occurrence of the
  current token, ``key = q - (N - 1)``.
- :func:`duplicate_token_scores`: same queries, ``key = q - N`` (the earlier copy of the token).
- :func:`previous_token_scores`: ``key = q - 1``, over queries ``q >= q_start`` (default 1: every
  position that has a previous token).
- :func:`first_token_scores`: mean attention to position 0 from the queries ``q >= 1`` (query 0
  can only attend to itself, so it is left out).
- :func:`verticality`, :func:`attention_kurtosis`: the shape of the column means, see
  :func:`column_means`.
- :func:`value_norms`, :func:`residual_norms`: L2 norms per position.

Relation to ``transformer_lens.head_detector.detect_head`` (``error_measure="mul"``, no exclusions),
which divides the summed attention on the detection pattern by the summed attention of the whole
pattern (``L``, since rows sum to 1): on BOS + R + R with R of distinct tokens,
``detect_head(induction_head) = induction_scores * N / L``,
``detect_head(duplicate_token_head) = duplicate_token_scores * N / L`` and
``detect_head(previous_token_head) = previous_token_scores * (L - 1) / L``. ``tests/test_scores.py``
checks these, and the ``exclude_bos`` / ``exclude_current_token`` variants, to 1e-6.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Callable, Mapping, Union

import torch
from torch import Tensor

if TYPE_CHECKING:  # type hints only: a plain dict works as well, and importing TL is slow
    from transformer_lens import ActivationCache

Cache = Union["ActivationCache", Mapping[str, Tensor]]
CacheOrPatterns = Union[Cache, Tensor]

PATTERN_HOOK = "blocks.{layer}.attn.hook_pattern"
VALUE_HOOK = "blocks.{layer}.attn.hook_v"
Z_HOOK = "blocks.{layer}.attn.hook_z"
RESIDUAL_HOOKS = ("resid_pre", "resid_mid", "resid_post")
# Below this many bytes of activations the layers are stacked and reduced at once; above it they
# are reduced one layer at a time (see _map_layers).
STACK_MAX_BYTES = 16 * 2**20

__all__ = [
    "ScoreInputError",
    "stack_patterns",
    "diagonal_score",
    "induction_scores",
    "duplicate_token_scores",
    "previous_token_scores",
    "first_token_scores",
    "head_output_norms",
    "column_means",
    "verticality",
    "attention_kurtosis",
    "value_norms",
    "residual_norms",
    "all_head_scores",
]


class ScoreInputError(ValueError):
    """The cache or arguments cannot give the requested score (missing hook, bad shape, bad N)."""


# --- reading the cache --------------------------------------------------------------------------


def _keys(cache: Cache) -> list[str]:
    try:
        return list(cache.keys())
    except AttributeError as e:
        raise ScoreInputError(
            f"Expected an ActivationCache, a dict of hook name -> tensor, or a stacked "
            f"[layer, batch, head, q, k] tensor; got {type(cache).__name__}."
        ) from e


def _n_layers(cache: Cache, template: str) -> int:
    """Number of layers with hook ``template``; they must be exactly 0..n-1."""
    pattern = re.compile("^" + re.escape(template).replace(re.escape("{layer}"), r"(\d+)") + "$")
    suffix = template.rsplit("}", 1)[-1]  # cheap filter first: caches hold ~1000 hooks
    layers = sorted(int(m.group(1)) for k in _keys(cache) if k.endswith(suffix) and (m := pattern.match(k)))
    if not layers:
        raise ScoreInputError(
            f"The cache has no {template.format(layer='<l>')} hooks. Run the model with "
            "run_with_cache (no names_filter, or one that keeps these hooks)."
        )
    missing = sorted(set(range(layers[-1] + 1)) - set(layers))
    if missing:
        raise ScoreInputError(
            f"The cache lacks {template.format(layer=missing[0])} (layers {missing} missing of "
            f"0..{layers[-1]}): every layer is needed to stack [layer, ...] scores."
        )
    return len(layers)


def _get(cache: Cache, name: str) -> Tensor:
    try:
        t = cache[name]
    except KeyError as e:
        raise ScoreInputError(f"The cache has no hook {name!r}.") from e
    if not isinstance(t, Tensor):
        raise ScoreInputError(f"Cache entry {name!r} is a {type(t).__name__}, not a tensor.")
    return t


def _float(t: Tensor) -> Tensor:
    """Half precision is upcast to float32 so the means are accurate; float32/64 pass as they are."""
    if not t.is_floating_point():
        raise ScoreInputError(f"Expected a floating-point tensor, got dtype {t.dtype}.")
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _check_patterns(patterns: Tensor) -> Tensor:
    if not isinstance(patterns, Tensor):
        raise ScoreInputError(f"Expected a tensor of patterns, got {type(patterns).__name__}.")
    if patterns.dim() != 5:
        raise ScoreInputError(
            f"Stacked patterns must be [layer, batch, head, q, k] (5 dims); got shape "
            f"{tuple(patterns.shape)}. Use stack_patterns(cache) to build them."
        )
    if patterns.shape[-1] != patterns.shape[-2]:
        raise ScoreInputError(
            f"Attention patterns must be square over [q, k]; got {tuple(patterns.shape[-2:])}."
        )
    if patterns.shape[-1] < 1 or 0 in patterns.shape:
        raise ScoreInputError(f"Empty patterns, shape {tuple(patterns.shape)}.")
    return _float(patterns)


def stack_patterns(cache: CacheOrPatterns) -> Tensor:
    """All layers' attention patterns as one ``[layer, batch, head, q, k]`` tensor.

    ``cache`` is an ``ActivationCache`` or a dict with ``blocks.{l}.attn.hook_pattern`` for every
    layer ``l = 0..n_layers-1`` (``[batch, head, q, k]``, or ``[head, q, k]`` read as batch 1). A
    tensor already stacked is checked and returned as it is. The result is a new tensor (the
    cache is never written to); half precision is upcast to float32.
    """
    if isinstance(cache, Tensor):
        return _check_patterns(cache)
    return torch.stack(_layer_patterns(cache))


def _layer_tensors(cache: Cache, template: str, ndim: int, shape_doc: str) -> list[Tensor]:
    """Hook ``template`` of every layer, each ``ndim`` dims (one less: batch 1 added), same shape."""
    out: list[Tensor] = []
    for layer in range(_n_layers(cache, template)):
        name = template.format(layer=layer)
        t = _get(cache, name)
        if t.dim() == ndim - 1:
            t = t.unsqueeze(0)
        if t.dim() != ndim:
            raise ScoreInputError(f"{name} has shape {tuple(t.shape)}; expected {shape_doc}.")
        if out and t.shape != out[0].shape:
            raise ScoreInputError(f"{name} has shape {tuple(t.shape)} but layer 0 has {tuple(out[0].shape)}.")
        out.append(_float(t))
    return out


def _layer_patterns(cache: Cache) -> list[Tensor]:
    """Each layer's pattern ``[batch, head, q, k]`` (views, not copies; half upcast), checked."""
    pats = _layer_tensors(cache, PATTERN_HOOK, 4, "[batch, head, q, k] or [head, q, k]")
    _check_patterns(pats[0].unsqueeze(0))
    return pats


def _patterns_of(cache: CacheOrPatterns) -> Tensor | list[Tensor]:
    """The stacked tensor (checked) or the list of per-layer views; ``[0]`` is layer 0 either way."""
    return _check_patterns(cache) if isinstance(cache, Tensor) else _layer_patterns(cache)


def _map_layers(pats: Tensor | list[Tensor], fn: Callable[[Tensor], Tensor], stack: bool = True) -> Tensor:
    """``fn`` (a reduction over the last dims, any leading dims) on every layer: ``[layer, ...]``.

    Small inputs are stacked and reduced in one call (per-call overhead dominates there); large ones
    are reduced layer by layer, so no copy of all the layers is ever made (memory bandwidth
    dominates there). Both give the same numbers.
    """
    if isinstance(pats, Tensor):
        return fn(pats)
    if stack and sum(p.numel() * p.element_size() for p in pats) <= STACK_MAX_BYTES:
        return fn(torch.stack(pats))
    return torch.stack([fn(p) for p in pats])


def _per_batch_bl(scores: Tensor, per_batch: bool) -> Tensor:
    """``[batch, layer, head, ...]`` as it is (a fresh tensor) or its batch mean."""
    return scores.clone() if per_batch else scores.mean(0)


def _per_batch(scores: Tensor, per_batch: bool) -> Tensor:
    """``[layer, batch, head, ...]`` -> ``[batch, layer, head, ...]`` or its batch mean."""
    scores = scores.movedim(1, 0)
    return scores if per_batch else scores.mean(0)


# --- diagonal scores ----------------------------------------------------------------------------


def _int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScoreInputError(f"{name} must be an int, got {value!r}.")
    return value


def diagonal_score(
    patterns: Tensor, offset: int, q_start: int | None = None, q_stop: int | None = None
) -> Tensor:
    """Mean attention ``offset`` positions back: ``mean_{q in [q_start, q_stop)} A[..., q, q - offset]``.

    ``patterns`` is ``[..., q, k]`` with any leading dims (e.g. ``[layer, batch, head]``); the result
    has the leading shape. ``offset >= 0`` (0 is attention to self). The query range defaults to
    every query that has such a key, ``[offset, L)``; it must lie inside it. For example, the
    source blog's ``pattern.diagonal(-N + 1).mean()`` on BOS + R + R is
    ``diagonal_score(p, N - 1)``: queries ``N - 1 .. 2N``, two of them in the first repeat.
    """
    if not isinstance(patterns, Tensor) or patterns.dim() < 2:
        raise ScoreInputError("patterns must be a tensor [..., q, k] with at least 2 dims.")
    length = patterns.shape[-1]
    if patterns.shape[-2] != length:
        raise ScoreInputError(f"patterns must be square over [q, k]; got {tuple(patterns.shape[-2:])}.")
    offset = _int("offset", offset)
    if not 0 <= offset < length:
        raise ScoreInputError(f"offset must be in [0, {length}) for sequence length {length}; got {offset}.")
    q_start = offset if q_start is None else _int("q_start", q_start)
    q_stop = length if q_stop is None else _int("q_stop", q_stop)
    if not offset <= q_start < q_stop <= length:
        raise ScoreInputError(
            f"Query range [{q_start}, {q_stop}) must be non-empty and inside [offset={offset}, "
            f"L={length}) (a query q needs key q - offset >= 0)."
        )
    # diagonal(-offset)[i] = A[i + offset, i]: query q = i + offset.
    diag = torch.diagonal(patterns, offset=-offset, dim1=-2, dim2=-1)
    return _float(diag[..., q_start - offset : q_stop - offset]).mean(-1)


def _repeat_range(length: int, n_repeat: int, prefix: int) -> tuple[int, int]:
    n_repeat = _int("n_repeat", n_repeat)
    prefix = _int("prefix", prefix)
    if n_repeat < 1 or prefix < 0:
        raise ScoreInputError(f"Need n_repeat >= 1 and prefix >= 0; got n_repeat={n_repeat}, prefix={prefix}.")
    if length != prefix + 2 * n_repeat:
        raise ScoreInputError(
            f"Sequence length {length} is not prefix + 2 * n_repeat = {prefix} + 2 * {n_repeat} = "
            f"{prefix + 2 * n_repeat}: the cache is not BOS + R + R with len(R) = {n_repeat}."
        )
    return prefix + n_repeat, length  # the second repeat


def induction_scores(
    cache: CacheOrPatterns, n_repeat: int, *, prefix: int = 1, per_batch: bool = False
) -> Tensor:
    """Induction score on ``prefix`` (BOS) + R + R, ``len(R) = n_repeat = N``: ``[layer, head]``.

    Mean over the second repeat's queries ``q in [prefix + N, prefix + 2N)`` of ``A[q, q - (N - 1)]``,
    the attention to the token after the first occurrence of the current token. ``per_batch=True``
    gives ``[batch, layer, head]``. Raises :class:`ScoreInputError` unless ``L == prefix + 2N``.
    """
    pats = _patterns_of(cache)
    start, stop = _repeat_range(pats[0].shape[-1], n_repeat, prefix)
    return _per_batch(_map_layers(pats, lambda p: diagonal_score(p, n_repeat - 1, start, stop)), per_batch)


def duplicate_token_scores(
    cache: CacheOrPatterns, n_repeat: int, *, prefix: int = 1, per_batch: bool = False
) -> Tensor:
    """Duplicate-token score on BOS + R + R: mean over the second repeat of ``A[q, q - N]``.

    The same queries as :func:`induction_scores`, one position further back: the earlier copy of
    the current token itself. ``[layer, head]``, or ``[batch, layer, head]`` with ``per_batch``.
    """
    pats = _patterns_of(cache)
    start, stop = _repeat_range(pats[0].shape[-1], n_repeat, prefix)
    return _per_batch(_map_layers(pats, lambda p: diagonal_score(p, n_repeat, start, stop)), per_batch)


def previous_token_scores(
    cache: CacheOrPatterns, *, q_start: int = 1, per_batch: bool = False
) -> Tensor:
    """Previous-token score: mean over queries ``q in [q_start, L)`` of ``A[q, q - 1]``.

    The default ``q_start = 1`` takes every position that has a previous token (on BOS + R + R
    that includes query 1, whose previous token is the BOS). ``[layer, head]``, or
    ``[batch, layer, head]`` with ``per_batch``.
    """
    return _per_batch(_map_layers(_patterns_of(cache), lambda p: diagonal_score(p, 1, q_start)), per_batch)


def first_token_scores(cache: CacheOrPatterns, *, per_batch: bool = False) -> Tensor:
    """Sink score: mean attention to position 0 from the queries ``q >= 1``.

    Query 0 is left out: it can attend only to itself, so it carries no information. ``[layer,
    head]``, or ``[batch, layer, head]`` with ``per_batch``. Needs ``L >= 2``.
    """
    pats = _patterns_of(cache)
    if pats[0].shape[-1] < 2:
        raise ScoreInputError("first_token_scores needs at least 2 positions.")
    return _per_batch(_map_layers(pats, _first_token), per_batch)


def _first_token(p: Tensor) -> Tensor:
    return p[..., 1:, 0].mean(-1)


# --- column statistics: verticality and kurtosis ------------------------------------------------


def column_means(
    patterns: Tensor, *, causal: bool = True, min_queries: int | None = None
) -> Tensor:
    """The mean attention each key position receives: ``[..., q, k] -> [..., K]``.

    ``causal=True`` (default): over the causally valid queries only, and query 0 left out (it must
    attend to itself): ``c[k] = sum_{q >= max(k, 1)} A[q, k] / (L - max(k, 1))``. Only the keys that
    at least ``min_queries`` queries can see are kept (default: half of the ``L - 1`` queries,
    rounded up, i.e. roughly the first half of the keys), so ``K <= L``. Why both: a mean over all
    ``L`` rows counts the causally masked zeros, so early columns win by construction (uniform causal
    attention would read as a sink, verticality ~ ln L); a mean over valid queries alone makes the
    last columns means over one or two queries, so a previous-token head or a self-attending head
    would read as a sink (verticality ~ 7 and ~ 11 at L = 51). With both choices a sink column
    reads high, local heads ~1.5 and uniform causal attention ~1.8 (L = 51).

    ``causal=False``: the plain mean over all ``L`` rows and all keys, ``A.mean(-2)``, exactly as
    mhc-interp computes it (``min_queries`` must then be None).
    """
    if not isinstance(patterns, Tensor) or patterns.dim() < 2 or patterns.shape[-1] != patterns.shape[-2]:
        raise ScoreInputError("patterns must be a tensor [..., q, k], square over [q, k].")
    patterns = _float(patterns)
    window = _ColumnWindow(patterns.shape[-1], causal, min_queries)
    return window.means(window.sums(patterns))


class _ColumnWindow:
    """Which rows and keys :func:`column_means` uses for sequence length ``length``, and its
    divisors; ``sums`` (per layer, the one pass over the patterns) and ``means`` (once) split the
    work so that many layers' sums can be stacked before the division."""

    def __init__(self, length: int, causal: bool, min_queries: int | None):
        self.causal = causal
        if not causal:
            if min_queries is not None:
                raise ScoreInputError("min_queries applies only to causal=True.")
            self.first_row, self.n_keys = 0, length
            self.counts = torch.full((length,), float(length))
            return
        if length < 2:
            raise ScoreInputError("Causal column means need at least 2 positions (query 0 is left out).")
        n_valid = length - torch.arange(length).clamp(min=1)  # valid queries (q >= 1) per key
        if min_queries is None:
            min_queries = math.ceil((length - 1) / 2)
        min_queries = _int("min_queries", min_queries)
        if not 1 <= min_queries <= length - 1:
            raise ScoreInputError(f"min_queries must be in [1, {length - 1}] for L = {length}; got {min_queries}.")
        self.first_row = 1
        self.n_keys = int((n_valid >= min_queries).sum())  # n_valid is non-increasing: keys 0..n_keys-1
        self.counts = n_valid[: self.n_keys].float()

    def sums(self, p: Tensor) -> Tensor:
        # A is causal (zero above the diagonal), so summing rows 1.. sums over the valid queries.
        return p[..., self.first_row :, : self.n_keys].sum(-2)

    def means(self, sums: Tensor) -> Tensor:
        return sums / self.counts.to(device=sums.device, dtype=sums.dtype)


def verticality(
    cache: CacheOrPatterns,
    *,
    causal: bool = True,
    min_queries: int | None = None,
    per_batch: bool = False,
) -> Tensor:
    """Verticality: ``max_k c[k] / mean_k c[k]`` of each head's column means ``c`` (> 2 reads sink-like).

    The mhc-interp definition, with the column means of :func:`column_means` (over causally valid
    queries, query 0 left out, keys seen by at least half the queries; ``causal=False`` gives
    mhc-interp's plain ``A.mean(0)`` exactly). Reference values at ``L = 51``: a pure sink (all
    attention on position 0) gives 27 (= the number ``K`` of keys kept; 51 with ``causal=False``),
    a previous-token or self-attending head 1.5, uniform causal attention 1.8 (4.5 with
    ``causal=False``), an induction head on BOS + R + R (its first-repeat queries on BOS) 11. Per
    sequence; ``[layer, head]`` is the batch mean, ``per_batch=True`` gives ``[batch, layer, head]``.
    """
    c = _layer_column_means(_patterns_of(cache), causal, min_queries)
    return _per_batch(_verticality(c), per_batch)


def _layer_column_means(pats: Tensor | list[Tensor], causal: bool, min_queries: int | None) -> Tensor:
    window = _ColumnWindow(pats[0].shape[-1], causal, min_queries)
    return window.means(_map_layers(pats, window.sums))


def _verticality(c: Tensor) -> Tensor:
    return c.amax(-1) / c.mean(-1)


def _kurtosis(c: Tensor) -> Tensor:
    mu = c.mean(-1, keepdim=True)
    d = c - mu
    m2 = (d**2).mean(-1)
    m4 = (d**4).mean(-1)
    defined = m2 > mu.squeeze(-1) ** 2 * 1e-10  # equal column means up to rounding: undefined
    return torch.where(defined, m4 / m2.clamp_min(torch.finfo(m2.dtype).tiny) ** 2 - 3, torch.nan)


def _batch_nanmean(scores: Tensor, per_batch: bool) -> Tensor:
    scores = scores.movedim(1, 0)
    return scores if per_batch else scores.nanmean(0)


def attention_kurtosis(
    cache: CacheOrPatterns,
    *,
    causal: bool = True,
    min_queries: int | None = None,
    per_batch: bool = False,
) -> Tensor:
    """Excess kurtosis of each head's column means: ``m4 / m2**2 - 3`` over the keys.

    ``c`` are the column means of :func:`column_means` (the same keys as :func:`verticality`);
    ``m2``, ``m4`` their second and fourth central moments over the ``K`` keys (population moments,
    no bias correction). Why this: a sink is one key that receives far more attention than the
    others, i.e. a heavy tail in the distribution of attention received; kurtosis measures exactly
    that, is scale-free (unchanged by any rescaling of ``c``), and unlike verticality (the max only)
    it sees the whole tail, so a head with two or three sink columns still scores high. A single
    spike among ``K`` keys gives ``1 / (p (1 - p)) - 6`` with ``p = 1 / K``, about ``K - 5`` (22 at
    ``L = 51``; so compare heads at the same ``L``); smooth column means give about -1.2 to 1.
    Undefined (NaN) where all column means are equal. Per sequence; ``[layer, head]`` is the batch
    mean (NaN-ignoring), ``per_batch=True`` gives ``[batch, layer, head]``.
    """
    c = _layer_column_means(_patterns_of(cache), causal, min_queries)
    return _batch_nanmean(_kurtosis(c), per_batch)


# --- norms --------------------------------------------------------------------------------------


def _norm(t: Tensor) -> Tensor:
    return torch.linalg.vector_norm(t, dim=-1)


def value_norms(
    cache: Cache, *, n_heads: int | None = None, per_batch: bool = False
) -> Tensor:
    """L2 norm of each value vector: ``[layer, head, pos]`` (batch mean) or ``[batch, layer, head, pos]``.

    Read from ``blocks.{l}.attn.hook_v`` (``[batch, pos, kv_head, d_head]``, or without the batch
    dim). With grouped-query attention (fewer KV heads than query heads, e.g. SmolLM2: 9 query
    heads, 3 KV heads) query head ``h`` reads KV head ``h // (n_heads // n_kv_heads)`` (the
    Hugging Face ``repeat_kv`` order, i.e. ``repeat_interleave``), so its norms are repeated to one
    per query head. ``n_heads`` defaults to the head count of the cache's attention patterns, or
    to the KV head count when there are none.
    """
    if isinstance(cache, Tensor):
        raise ScoreInputError("value_norms needs the cache (hook_v), not stacked patterns.")
    values = _layer_tensors(cache, VALUE_HOOK, 4, "[batch, pos, kv_head, d_head]")
    norms = _map_layers(values, _norm, stack=False)  # [layer, batch, pos, kv_head]
    norms = norms.permute(1, 0, 3, 2)  # [batch, layer, kv_head, pos]
    n_kv = norms.shape[2]
    if n_heads is None:
        pat = PATTERN_HOOK.format(layer=0)
        n_heads = _get(cache, pat).shape[-3] if pat in _keys(cache) else n_kv
    n_heads = _int("n_heads", n_heads)
    if n_heads < n_kv or n_heads % n_kv:
        raise ScoreInputError(f"{n_heads} query heads cannot share {n_kv} KV heads evenly.")
    if n_heads != n_kv:
        norms = norms.repeat_interleave(n_heads // n_kv, dim=2)
    return norms if per_batch else norms.mean(0)


def head_output_norms(cache: Cache, *, per_batch: bool = False) -> Tensor:
    """L2 norm of each head's output ``hook_z`` (the attention-weighted values, before the output
    projection): ``[layer, head, pos]`` (batch mean) or ``[batch, layer, head, pos]``."""
    if isinstance(cache, Tensor):
        raise ScoreInputError("head_output_norms needs the cache (hook_z), not stacked patterns.")
    zs = _layer_tensors(cache, Z_HOOK, 4, "[batch, pos, head, d_head]")
    norms = _map_layers(zs, _norm, stack=False).permute(1, 0, 3, 2)  # [batch, layer, head, pos]
    return norms if per_batch else norms.mean(0)


def residual_norms(
    cache: Cache, *, hook: str = "resid_post", per_batch: bool = False
) -> Tensor:
    """L2 norm of the residual stream per position: ``[layer, pos]`` (batch mean) or ``[batch, layer, pos]``.

    ``hook`` is ``"resid_post"`` (default: the output of block ``l``), ``"resid_pre"`` (its input;
    layer 0 is the embedding) or ``"resid_mid"``, read from ``blocks.{l}.hook_{hook}``.
    """
    if isinstance(cache, Tensor):
        raise ScoreInputError("residual_norms needs the cache, not stacked patterns.")
    if hook not in RESIDUAL_HOOKS:
        raise ScoreInputError(f"hook must be one of {RESIDUAL_HOOKS}; got {hook!r}.")
    resid = _layer_tensors(cache, "blocks.{layer}.hook_" + hook, 3, "[batch, pos, d_model]")
    norms = _map_layers(resid, _norm, stack=False).movedim(0, 1)  # [batch, layer, pos]
    return norms if per_batch else norms.mean(0)


# --- everything at once -------------------------------------------------------------------------


def all_head_scores(
    cache: CacheOrPatterns,
    n_repeat: int | None = None,
    *,
    prefix: int = 1,
    per_batch: bool = False,
    include_norms: bool = False,
) -> dict[str, Tensor]:
    """Every head score from one cache, in one pass over each layer's patterns.

    Keys (each ``[layer, head]``, or ``[batch, layer, head]`` with ``per_batch``):
    ``"previous_token"``, ``"first_token"``, ``"verticality"``, ``"kurtosis"``, and, when
    ``n_repeat`` is given (the cache is ``prefix`` + R + R with ``len(R) = n_repeat``),
    ``"induction"`` and ``"duplicate_token"``. With ``include_norms`` (needs a cache, not stacked
    patterns): ``"value_norm"`` ``[layer, head, pos]`` and ``"residual_norm"`` ``[layer, pos]``
    (with a leading batch dim under ``per_batch``).
    """
    pats = _patterns_of(cache)
    length = pats[0].shape[-1]
    names = []
    if n_repeat is not None:
        start, stop = _repeat_range(length, n_repeat, prefix)
        names += ["induction", "duplicate_token"]
    names += ["previous_token", "first_token"]
    window = _ColumnWindow(length, True, None)

    def one_pass(p: Tensor) -> Tensor:  # [..., q, k] -> [..., n_scores + K]: one read of p
        vals = []
        if n_repeat is not None:
            vals += [diagonal_score(p, n_repeat - 1, start, stop), diagonal_score(p, n_repeat, start, stop)]
        vals += [diagonal_score(p, 1, 1), _first_token(p)]
        return torch.cat([torch.stack(vals, dim=-1), window.sums(p)], dim=-1)

    stacked = _map_layers(pats, one_pass).movedim(1, 0)  # [batch, layer, head, n_scores + K]
    c = window.means(stacked[..., len(names) :])
    out: dict[str, Tensor] = {}
    for i, name in enumerate(names):
        out[name] = _per_batch_bl(stacked[..., i], per_batch)
    out["verticality"] = _per_batch_bl(_verticality(c), per_batch)
    kurt = _kurtosis(c)
    out["kurtosis"] = kurt if per_batch else kurt.nanmean(0)
    if include_norms:
        if isinstance(cache, Tensor):
            raise ScoreInputError("include_norms needs the cache, not stacked patterns.")
        n_heads = stacked.shape[2]
        out["value_norm"] = value_norms(cache, n_heads=n_heads, per_batch=per_batch)
        out["residual_norm"] = residual_norms(cache, per_batch=per_batch)
    return out
