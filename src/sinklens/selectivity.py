"""The attention-class screen of "When Do Attention Circuits Form?" (arXiv 2606.02378), vectorised.

The probe (:func:`probe_batch`) is a batch of synthetic sequences ``[filler] A B [filler] A``: the
query is the *last* position ``q = seq_len - 1``, holding the second ``A``. Each class of head has
one target key for that query:

========== ===================================================== ======================
class      target key                                            meaning
========== ===================================================== ======================
induction  ``b`` = first ``A`` + 1 (the ``B``)                   copy what followed A
previous   ``q - 1``                                             previous-token head
duplicate  ``first_a`` (the first ``A``)                         duplicate-token head
bos        ``0``                                                 first-token / BOS attractor
self       ``q``                                                 attends to itself
local      mean of ``q - 2 ... q - 5``                           local window
========== ===================================================== ======================

(In the paper's notation, with the query at position ``T``: previous = ``T - 1`` and local = the
mean over ``T - 2 ... T - 5``.)

Per head, **selectivity** = mean over sequences of the attention from ``q`` to the target ÷ mean
over sequences of the mean attention from ``q`` to ``n_random`` (default 50) random *baseline*
keys. The baseline keys are drawn per sequence, once per probe (so every checkpoint is screened
against the same keys), among the causally valid keys ``0 <= k <= q`` that are none of the targets
above: ordinary filler positions. A head *takes* its best class when that selectivity is at least
:data:`CLASSIFY_THRESHOLD` (30×), otherwise it is unclassified (label ``-1``); it is a member of the
induction circuit when its induction selectivity is at least :data:`INDUCTION_THRESHOLD` (50×).

Everything is one tensor operation over ``[layer, sequence, head, key]``: there is no loop over
heads or sequences. :func:`query_attention` collects that tensor from any model with TransformerLens
hook names (``blocks.{l}.attn.hook_pattern``; our :class:`sinklens.model.GPT` or a
``TransformerBridge`` in compatibility mode), keeping only the query row, in chunks.

Probe layout. The paper used 2000 sequences of 256 tokens, token ids from a fixed range, seed
42. Our models have a much shorter context and a smaller vocabulary (the zoo's configs in
:mod:`sinklens.zoo`), so the chapter scales the probe to the model's context and vocabulary (and
says so). Position 0
holds ``bos_id`` when given (our models always see BOS there in training); ``A`` and ``B`` are two
distinct ids from ``vocab_range`` and the filler is drawn from the same range without ``A`` or
``B``, so the only earlier ``A`` is the first one. The first ``A`` is placed uniformly in
``[1, q - 7]``, so ``B`` never falls in the previous/local window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

CLASSES = ("induction", "previous", "duplicate", "bos", "self", "local")
CLASSIFY_THRESHOLD = 30.0
INDUCTION_THRESHOLD = 50.0
N_RANDOM = 50
LOCAL_OFFSETS = (2, 3, 4, 5)  # local = mean attention to q-2 ... q-5
N_SPECIAL = 9  # 0, first A, B, q-5..q-1, q
UNCLASSIFIED = -1


@dataclass(frozen=True)
class Probe:
    """A probe batch: tokens and, per sequence, the positions the screen needs."""

    tokens: Tensor  # [n_seqs, seq_len] int64
    first_a: Tensor  # [n_seqs] position of the first A
    b: Tensor  # [n_seqs] position of B (= first_a + 1)
    second_a: Tensor  # [n_seqs] position of the second A (= seq_len - 1, the query)
    random: Tensor  # [n_seqs, n_random] baseline keys
    vocab_range: tuple[int, int]
    seed: int
    bos_id: int | None

    @property
    def n_seqs(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def query(self) -> int:
        return self.seq_len - 1

    def targets(self) -> dict[str, Tensor]:
        """Class -> target key positions ``[n_seqs, m]`` (``m`` = 4 for local, else 1)."""
        n, q = self.n_seqs, self.query
        const = lambda p: torch.full((n, 1), p, dtype=torch.long)  # noqa: E731
        return {
            "induction": self.b[:, None],
            "previous": const(q - 1),
            "duplicate": self.first_a[:, None],
            "bos": const(0),
            "self": const(q),
            "local": torch.tensor([q - o for o in LOCAL_OFFSETS], dtype=torch.long).expand(n, -1).clone(),
        }

    def describe(self) -> str:
        lo, hi = self.vocab_range
        bos = f"token {self.bos_id} (BOS) at position 0, " if self.bos_id is not None else ""
        return (
            f"{self.n_seqs} probe sequences of {self.seq_len} tokens `[filler] A B [filler] A` "
            f"({bos}ids from [{lo}, {hi}), seed {self.seed}; baseline: {self.random.shape[1]} random "
            f"filler keys per sequence)"
        )


def _exclude_two(u: Tensor, m1: Tensor, m2: Tensor) -> Tensor:
    """Map ``u`` uniform on ``[0, n - 2)`` to ``[0, n)`` minus ``{m1, m2}`` (``m1 < m2``), bijectively."""
    v = u + (u >= m1[:, None]).long()
    return v + (v >= m2[:, None]).long()


def probe_batch(
    n_seqs: int = 2000,
    seq_len: int = 256,
    vocab_range: tuple[int, int] = (1000, 10000),
    seed: int = 42,
    *,
    bos_id: int | None = None,
    n_random: int = N_RANDOM,
) -> Probe:
    """``n_seqs`` sequences ``[filler] A B [filler] A`` of ``seq_len`` tokens (see the module doc).

    ``vocab_range`` is half-open ``[lo, hi)``. The defaults are the paper's batch size, length and
    seed; the range is a placeholder: pass the model's own.
    """
    if not isinstance(n_seqs, int) or n_seqs < 1:
        raise ValueError(f"n_seqs must be a positive int, got {n_seqs!r}.")
    if not isinstance(n_random, int) or n_random < 1:
        raise ValueError(f"n_random must be a positive int, got {n_random!r}.")
    if not isinstance(seq_len, int) or seq_len < N_SPECIAL + n_random:
        raise ValueError(
            f"seq_len={seq_len!r} is too short: the probe needs {N_SPECIAL} special positions plus "
            f"n_random={n_random} baseline positions, so seq_len >= {N_SPECIAL + n_random}. "
            "Lower n_random or lengthen the sequences."
        )
    try:
        lo, hi = (int(v) for v in vocab_range)
    except (TypeError, ValueError):
        raise ValueError(f"vocab_range must be a pair (lo, hi), got {vocab_range!r}.") from None
    if lo < 0 or hi - lo < 3:
        raise ValueError(f"vocab_range [{lo}, {hi}) must hold at least 3 non-negative ids.")
    if bos_id is not None and lo <= bos_id < hi:
        raise ValueError(f"bos_id={bos_id} lies inside vocab_range [{lo}, {hi}); pick a range without it.")

    gen = torch.Generator().manual_seed(seed)
    n_ids = hi - lo
    q = seq_len - 1
    a = torch.randint(0, n_ids, (n_seqs,), generator=gen)
    b_tok = (a + 1 + torch.randint(0, n_ids - 1, (n_seqs,), generator=gen)) % n_ids  # != a
    m1, m2 = torch.minimum(a, b_tok), torch.maximum(a, b_tok)
    filler = _exclude_two(torch.randint(0, n_ids - 2, (n_seqs, seq_len), generator=gen), m1, m2)
    tokens = filler + lo
    first_a = torch.randint(1, q - 6, (n_seqs,), generator=gen)  # in [1, q - 7]
    rows = torch.arange(n_seqs)
    tokens[rows, first_a] = a + lo
    tokens[rows, first_a + 1] = b_tok + lo
    tokens[:, q] = a + lo
    if bos_id is not None:
        tokens[:, 0] = bos_id

    special = torch.zeros(n_seqs, seq_len, dtype=torch.bool)
    special[:, 0] = True
    special[rows, first_a] = True
    special[rows, first_a + 1] = True
    special[:, q - 5 :] = True  # q-5 ... q-1 and q itself
    scores = torch.rand(n_seqs, seq_len, generator=gen).masked_fill(special, -1.0)
    random = scores.topk(n_random, dim=1).indices.sort(dim=1).values
    return Probe(
        tokens=tokens.long(), first_a=first_a, b=first_a + 1, second_a=torch.full((n_seqs,), q),
        random=random, vocab_range=(lo, hi), seed=seed, bos_id=bos_id,
    )


@torch.no_grad()
def query_attention(model, tokens: Tensor, query: int = -1, batch_size: int = 64) -> Tensor:
    """The attention of position ``query`` of every sequence, per layer and head.

    Returns ``[layer, n_seqs, head, key]`` (float32). Works with any model whose hooks are named
    ``blocks.{l}.attn.hook_pattern`` (``[batch, head, q, k]``); only that row is kept, ``batch_size``
    sequences at a time.
    """
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [n_seqs, seq_len], got shape {tuple(tokens.shape)}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    n_layers = model.cfg.n_layers
    store: dict[int, Tensor] = {}

    def make_hook(layer: int):
        def hook(pattern: Tensor, hook) -> None:
            store[layer] = pattern[:, :, query, :].detach().float().cpu()

        return hook

    hooks = [(f"blocks.{l}.attn.hook_pattern", make_hook(l)) for l in range(n_layers)]
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, tokens.shape[0], batch_size):
        store.clear()
        model.run_with_hooks(tokens[start : start + batch_size].to(device), fwd_hooks=hooks)
        if len(store) != n_layers:
            raise RuntimeError(
                f"Captured {len(store)} of {n_layers} attention patterns: the model has no hooks "
                "named blocks.{l}.attn.hook_pattern (for a TransformerBridge, call "
                "enable_compatibility_mode() first)."
            )
        chunks.append(torch.stack([store[l] for l in range(n_layers)]))  # [layer, batch, head, key]
    return torch.cat(chunks, dim=1)


def _gather(attn: Tensor, positions: Tensor) -> Tensor:
    """``attn [L, N, H, K]``, ``positions [N, m]`` -> ``[L, N, H, m]``."""
    L, N, H, _ = attn.shape
    index = positions[None, :, None, :].expand(L, N, H, positions.shape[1])
    return attn.gather(-1, index)


def selectivity(attn: Tensor, probe: Probe, eps: float = 1e-12) -> Tensor:
    """Selectivity of every head for every class: ``[class, layer, head]`` (order :data:`CLASSES`).

    ``attn`` is the query row of every head, ``[layer, n_seqs, head, key]`` as returned by
    :func:`query_attention` (or ``[n_seqs, head, key]`` for one layer). The ratio is of means over
    the sequences; the baseline is floored at ``eps``.
    """
    if not isinstance(attn, Tensor):
        raise TypeError(f"attn must be a torch.Tensor, got {type(attn).__name__}.")
    if attn.ndim == 3:
        attn = attn[None]
    if attn.ndim != 4:
        raise ValueError(f"attn must be [layer, n_seqs, head, key], got shape {tuple(attn.shape)}.")
    if attn.shape[1] != probe.n_seqs or attn.shape[3] != probe.seq_len:
        raise ValueError(
            f"attn has {attn.shape[1]} sequences and {attn.shape[3]} keys, but the probe has "
            f"{probe.n_seqs} sequences of {probe.seq_len} tokens."
        )
    attn = attn.float()
    if torch.isnan(attn).any() or (attn < 0).any():
        raise ValueError("attn holds NaN or negative values; pass attention probabilities.")
    baseline = _gather(attn, probe.random).mean(-1).mean(1)  # [L, H]
    targets = probe.targets()
    out = torch.stack([_gather(attn, targets[c]).mean(-1).mean(1) for c in CLASSES])  # [C, L, H]
    return out / baseline.clamp_min(eps)


def classify(sel: Tensor, threshold: float = CLASSIFY_THRESHOLD) -> Tensor:
    """Each head's best class index (into :data:`CLASSES`) where its selectivity >= ``threshold``,
    else :data:`UNCLASSIFIED` (-1). ``sel [class, layer, head]`` -> ``[layer, head]`` int64."""
    if sel.ndim < 1 or sel.shape[0] != len(CLASSES):
        raise ValueError(f"sel must be [{len(CLASSES)} classes, ...], got shape {tuple(sel.shape)}.")
    best, idx = sel.max(dim=0)
    return torch.where(best >= threshold, idx, torch.full_like(idx, UNCLASSIFIED))


def induction_members(sel: Tensor, threshold: float = INDUCTION_THRESHOLD) -> Tensor:
    """Heads in the induction circuit: induction selectivity >= ``threshold``. ``[layer, head]`` bool."""
    if sel.ndim < 1 or sel.shape[0] != len(CLASSES):
        raise ValueError(f"sel must be [{len(CLASSES)} classes, ...], got shape {tuple(sel.shape)}.")
    return sel[CLASSES.index("induction")] >= threshold


def class_fractions(labels: Tensor) -> Tensor:
    """Share of each layer's heads in each class: ``[layer, head]`` labels -> ``[class, layer]``."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be [layer, head], got shape {tuple(labels.shape)}.")
    return torch.stack([(labels == i).float().mean(-1) for i in range(len(CLASSES))])


@dataclass
class Screen:
    """The screen of one model: selectivities, labels and induction-circuit membership."""

    selectivity: Tensor  # [class, layer, head]
    labels: Tensor  # [layer, head], -1 = unclassified
    induction: Tensor  # [layer, head] bool

    @property
    def fractions(self) -> Tensor:  # [class, layer]
        return class_fractions(self.labels)

    def selectivity_of(self, cls: str) -> Tensor:
        """``[layer, head]``: every head's selectivity for class ``cls`` (e.g. ``"induction"``)."""
        return self.selectivity[CLASSES.index(cls)]

    def fraction(self, cls: str) -> float:
        """Share of all heads (every layer) classified as ``cls``."""
        return float((self.labels == CLASSES.index(cls)).float().mean())

    @property
    def n_induction(self) -> int:
        return int(self.induction.sum())


def screen(
    model,
    probe: Probe,
    *,
    batch_size: int = 64,
    classify_threshold: float = CLASSIFY_THRESHOLD,
    induction_threshold: float = INDUCTION_THRESHOLD,
) -> Screen:
    """Run the probe through ``model`` and screen every head."""
    if probe.seq_len > model.cfg.n_ctx:
        raise ValueError(f"The probe's {probe.seq_len} tokens exceed the model's context of {model.cfg.n_ctx}.")
    if probe.vocab_range[1] > model.cfg.d_vocab:
        raise ValueError(f"The probe's ids reach {probe.vocab_range[1] - 1}, beyond the vocabulary of {model.cfg.d_vocab}.")
    sel = selectivity(query_attention(model, probe.tokens, batch_size=batch_size), probe)
    return Screen(sel, classify(sel, classify_threshold), induction_members(sel, induction_threshold))


def first_index_at_least(y: np.ndarray | Sequence[float] | Tensor, threshold: float) -> int | None:
    """The first index ``i`` with ``y[i] >= threshold`` (e.g. the first layer whose metric reaches a
    line, or the first checkpoint), or ``None`` if none does."""
    y = np.asarray(y, dtype=float)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {y.shape}.")
    hit = np.flatnonzero(y >= threshold)
    return int(hit[0]) if len(hit) else None


def first_crossing(x: np.ndarray | list, y: np.ndarray | list, threshold: float) -> float | None:
    """The first ``x`` (e.g. tokens seen) where ``y >= threshold``, or ``None`` if never."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got {x.shape} and {y.shape}.")
    i = first_index_at_least(y, threshold)
    return None if i is None else float(x[i])


def largest_jump(y: np.ndarray | list) -> dict:
    """Suddenness of a curve along checkpoints: the largest rise between adjacent checkpoints.

    Returns ``{"index": i, "jump": y[i+1] - y[i], "share": jump / (max(y) - y[0])}``; ``share`` is
    ``None`` when the curve never rises above its start. A share near 1 is a step; a gradual ramp
    over ``n`` checkpoints gives about ``1/n``.
    """
    y = np.asarray(y, dtype=float)
    if y.ndim != 1 or len(y) < 2:
        raise ValueError(f"y must be 1-D with at least 2 checkpoints, got shape {y.shape}.")
    d = np.diff(y)
    i = int(np.argmax(d))
    total = float(y.max() - y[0])
    return {"index": i, "jump": float(d[i]), "share": float(d[i] / total) if total > 0 else None}


def rise_shape(shares: Sequence[float | None], sudden_share: float = 0.5) -> str:
    """Label a scheme's rise from its runs' :func:`largest_jump` shares: ``"sudden"`` when the median
    share (over the runs that rise at all) is at least ``sudden_share``, ``"gradual"`` below it, and
    ``"no rise"`` when no run rises. Pass shares computed from whole head counts (not fractions held
    in float32), so that a share on the threshold is not decided by rounding."""
    if not 0 < sudden_share <= 1:
        raise ValueError(f"sudden_share must be in (0, 1], got {sudden_share}.")
    risen = [float(v) for v in shares if v is not None and not np.isnan(v)]
    if not risen:
        return "no rise"
    return "sudden" if float(np.median(risen)) >= sudden_share else "gradual"
