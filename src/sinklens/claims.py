"""Verdict rules: named, tested functions from measured values to a verdict and the rule in words.

A rule returns a :class:`Verdict` (one of :data:`sinklens.provenance.VERDICTS` plus the rule as a
sentence, which the chapter records as the claim's ``details`` and the scorecard shows). Chapters
call these functions instead of assigning verdict strings. Thresholds come from a baseline computed
here (for example uniform causal attention) or from the source, never typed in a chapter.

The module is being filled chapter by chapter; ``tests/test_claims.py`` has a case for every
outcome of every rule, including the ones that must fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

import numpy as np
import torch

from sinklens.provenance import VERDICTS
from sinklens.selectivity import first_index_at_least
from sinklens.scores import attention_kurtosis, column_means

V = TypeVar("V")
T = TypeVar("T")

#: Why the shared thresholds are what they are (written once; the chapters cite these names).
THRESHOLD_REASONS = {
    "induction_score": "0.4: the source blog's induction-score threshold (chapter 2)",
    "collapse": "0.5 x clean: an intervention 'collapses' an effect when it removes at least half of it",
    "jaccard": "0.8: two head sets agree when at most one head in five differs (Jaccard >= 0.8; a convention)",
    "dormant_share": "0.5: a head is parked on position 0 when most of its attention goes there",
    "value_drain": "0.5: position 0's value norm at most half the other positions' median (Guo et al. describe "
                   "the value-state drain; the 0.5 line is this book's convention)",
    "massive_ratio": "10 x the other positions' median (sinklens.circuits.MASSIVE_RATIO; Sun et al. 2024 report 100s-1000s)",
    "loss_ratio": "0.5: the second copy's loss at most half the first copy's (formation criteria, issue 15)",
    "early_share": "0.25: 'early' read as within the first quarter of training (the source gives no number; "
                   "its 0.5x / 2x verdicts are shown)",
}


@dataclass(frozen=True)
class Verdict:
    """A claim's verdict, the rule that produced it in words, (where the rule has a threshold) the
    verdicts the same rule gives at half and at twice that threshold, (where the claim rests on
    several seeds) the verdict with each seed left out (:func:`leave_one_seed_out`), and (for
    :func:`not_tested`) the reason the claim is not tested."""

    verdict: str
    rule: str
    sensitivity: Mapping[str, str] = field(default_factory=dict)
    without_seed: Mapping[int, str] = field(default_factory=dict)
    reason: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}.")

    @property
    def rests_on_one_seed(self) -> bool:
        """Leaving out some single seed changes the verdict: one model decides it."""
        return any(v != self.verdict for v in self.without_seed.values())


def measured(rule: str) -> Verdict:
    """A number reported without a published value or a rule to decide it."""
    return Verdict("measured", rule)


def not_tested(reason: str) -> Verdict:
    """A claim this book does not test, with the measured or stated reason."""
    if not reason.strip():
        raise ValueError("A claim that is not tested needs its reason.")
    return Verdict("not tested here", reason, reason=reason)


def varied_threshold(t: float, factor: float, *, floor: float | None = None, ceiling: float | None = None) -> float:
    """The threshold ``t`` scaled by ``factor`` for a sensitivity check, within the quantity's range.

    No bounds: ``factor * t``. ``floor`` (the least value the quantity can take): the distance
    above it is scaled, ``floor + factor (t - floor)``. ``ceiling`` (the most it can take, e.g. 1
    for a share of attention or a Jaccard overlap): the odds ``(t - floor) / (ceiling - t)`` are
    scaled, so the varied line stays strictly inside the range and moves the way ``factor * t``
    would (2x of 0.8 is 8/9, not 1.6; 0.5x is 2/3).

    >>> round(varied_threshold(0.8, 2.0, ceiling=1.0), 4), round(varied_threshold(0.5, 0.5, ceiling=1.0), 4)
    (0.8889, 0.3333)
    """
    low = 0.0 if floor is None else floor
    if ceiling is None:
        return low + factor * (t - low)
    if not low < t < ceiling:
        raise ValueError(f"A threshold varied within [{low:g}, {ceiling:g}] must lie strictly inside it, got {t}.")
    odds = factor * (t - low) / (ceiling - t)
    return low + (ceiling - low) * odds / (1.0 + odds)


def with_sensitivity(rule: Callable[..., Verdict], vary: str, /, *, floor: float | None = None,
                     ceiling: float | None = None, **kwargs) -> Verdict:
    """``rule(**kwargs)``, with the verdicts at 0.5x and 2x the threshold keyword ``vary`` recorded.

    ``floor``: the least value the measured quantity can take (verticality: 1). Then the threshold's
    distance above the floor is halved and doubled instead (``floor + 0.5 (t - floor)``): half of a
    threshold of 2 would otherwise be 1, which every verticality passes, a sensitivity that cannot
    come out any other way. ``ceiling``: the most it can take (a share: 1); then the threshold's
    odds within the range are halved and doubled (:func:`varied_threshold`), since twice a share of
    0.5 or more is a line no share can clear.

    >>> with_sensitivity(second_copy_loss_lower, "max_ratio", first=[4.0], second=[1.5], max_ratio=0.5).sensitivity
    {'0.5x': 'partly', '2x': 'reproduced'}
    """
    if vary not in kwargs:
        raise ValueError(f"{vary!r} must be passed by keyword to be varied.")
    base = rule(**kwargs)
    t = kwargs[vary]
    lines = {label: varied_threshold(t, factor, floor=floor, ceiling=ceiling) for label, factor in (("0.5x", 0.5), ("2x", 2.0))}
    varied = {label: rule(**{**kwargs, vary: line}).verdict for label, line in lines.items()}
    if ceiling is not None:
        base = replace(base, rule=f"{base.rule} (0.5x / 2x: of the threshold's odds within [{floor or 0:g}, "
                                  f"{ceiling:g}], the quantity's range: lines {lines['0.5x']:.3g} / {lines['2x']:.3g})")
    elif floor is not None:
        base = replace(base, rule=f"{base.rule} (0.5x / 2x: of the threshold's distance above {floor:g}, the least "
                                  "possible value)")
    return replace(base, sensitivity=varied)


#: The fewest seeds :func:`leave_one_seed_out` varies: leaving one of two out leaves a single seed,
#: where "in every seed" means "in this one" and no seed-to-seed spread is left to compare with.
MIN_SEEDS_TO_LEAVE_OUT = 3


def leave_one_seed_out(decide: Callable[[list[int]], V], seeds: Sequence[int], *,
                       min_seeds: int = MIN_SEEDS_TO_LEAVE_OUT) -> V:
    """``decide(seeds)``, with the verdict ``decide`` reaches on every subset that leaves one seed out.

    ``decide`` takes a list of seeds and decides the claim on those seeds' models alone. It returns a
    :class:`Verdict`, or a mapping from names to verdicts (then each is treated alike). The verdicts
    without each seed are stored in ``without_seed``; where any differs from the verdict on all the
    seeds, the verdict :attr:`~Verdict.rests_on_one_seed`: a retraining that moved that one model
    could change it. With fewer than ``min_seeds`` seeds nothing is recorded.

    Blind spot: under a rule of the form "reproduced = in every seed; not reproduced = in none",
    leaving a seed out can never overturn "reproduced" or "not reproduced"; mostly "partly" verdicts
    and rules on means can be flagged. Nor does it see every seed sitting just short of a threshold.

    >>> v = leave_one_seed_out(lambda ss: gain_grows([{0: 2.0, 1: 2.0, 2: 1.2}[s] for s in ss]), [0, 1, 2])
    >>> v.verdict, dict(v.without_seed), v.rests_on_one_seed
    ('partly', {0: 'partly', 1: 'partly', 2: 'reproduced'}, True)
    """
    seeds = list(seeds)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"Seeds must be distinct, got {seeds}.")
    full = decide(seeds)
    if not isinstance(full, (Verdict, Mapping)):
        raise TypeError(f"decide must return a Verdict or a mapping of them, got {type(full).__name__}.")
    if len(seeds) < min_seeds:
        return full
    without = {s: decide([x for x in seeds if x != s]) for s in seeds}
    if isinstance(full, Verdict):
        return replace(full, without_seed={s: v.verdict for s, v in without.items()})
    if any(set(w) != set(full) for w in without.values()):
        raise ValueError("decide must return the same verdict names for every subset of seeds.")
    return {name: replace(v, without_seed={s: without[s][name].verdict for s in seeds}) for name, v in full.items()}


def of_seeds(values: Sequence[T] | Mapping[int, T], seeds: Sequence[int], keep: Sequence[int]) -> list[T]:
    """The entries of ``values`` that belong to the seeds in ``keep``, in the order of ``seeds``.

    ``values``: one entry per seed of ``seeds``, in that order, or a mapping from seed to entry. The
    subsetting every :func:`leave_one_seed_out` decision of a chapter does.

    >>> of_seeds([0.1, 0.2, 0.3], [0, 1, 2], [2, 0])
    [0.1, 0.3]
    """
    seeds = list(seeds)
    if missing := [s for s in keep if s not in seeds]:
        raise ValueError(f"Seeds {missing} are not among {seeds}.")
    if isinstance(values, Mapping):
        return [values[s] for s in seeds if s in keep]
    values = list(values)
    if len(values) != len(seeds):
        raise ValueError(f"Need one value per seed: {len(values)} values for seeds {seeds}.")
    return [v for s, v in zip(seeds, values) if s in keep]


def seed_stability_words(without_seed: Mapping, verdict: str) -> str:
    """One phrase on a verdict's leave-one-seed-out check, for pages and the scorecard ('' when none)."""
    if not without_seed:
        return ""
    changed = [(s, v) for s, v in without_seed.items() if v != verdict]
    if not changed:
        return f"the same without any one of seeds {', '.join(str(s) for s in without_seed)}"
    (s0, v0), rest = changed[0], changed[1:]
    return (f"without seed {s0} it is {v0}" + "".join(f", without seed {s} {v}" for s, v in rest)
            + ", so one model decides it")


def implementations_agree(difference: float, tolerance: float, *, quantity: str = "largest absolute difference") -> Verdict:
    """Self-check (chapter 1): two implementations agree to ``tolerance``; pass or fail, not evidence."""
    rule = f"pass = {quantity} <= {tolerance:g}; fail otherwise (a check of our code, not evidence)"
    return Verdict("pass" if difference <= tolerance else "fail", rule)


def uniform_causal_pattern(length: int) -> torch.Tensor:
    """Uniform causal attention, ``[length, length]``: query ``q`` spreads 1 / (q + 1) over keys ``0..q``."""
    if length < 2:
        raise ValueError(f"length must be >= 2, got {length}.")
    mask = torch.ones(length, length).tril()
    return mask / mask.sum(-1, keepdim=True)


def group_verticality(pattern: torch.Tensor) -> float:
    """mhc-interp's verticality of one (head-averaged) pattern ``[..., q, k]``: max column mean /
    mean column mean, column means over **all** rows (the causally masked zeros included), averaged
    over any leading batch dimensions. Runs from 1 to ``L``; see :func:`uniform_verticality`."""
    c = column_means(pattern, causal=False)
    return float((c.amax(-1) / c.mean(-1)).mean())


def uniform_verticality(length: int) -> float:
    """The verticality of uniform causal attention: the harmonic number ``H_L = 1 + 1/2 + ... + 1/L``.

    Column 0 receives ``1 / (q + 1)`` from every query, so its mean is ``H_L / L``, while the mean
    column mean is ``1 / L`` (every row sums to 1): a head that attends to nothing in particular
    already scores ``H_L`` (4.7 at ``L = 64``). A sink-like head must beat this, not a fixed 2 or 3.
    """
    return group_verticality(uniform_causal_pattern(length))


def group_kurtosis(pattern: torch.Tensor) -> float:
    """The book's kurtosis of one (head-averaged) pattern ``[q, k]``: the excess kurtosis of its causal
    column means over the keys (:func:`sinklens.scores.attention_kurtosis`; the source names kurtosis
    but computes none)."""
    if pattern.dim() != 2:
        raise ValueError(f"pattern must be [q, k], got shape {tuple(pattern.shape)}.")
    return float(attention_kurtosis(pattern[None, None, None]).squeeze())  # [layer, batch, head, q, k]


def uniform_kurtosis(length: int) -> float:
    """:func:`group_kurtosis` of uniform causal attention: the baseline a sink's heavy tail must beat."""
    return group_kurtosis(uniform_causal_pattern(length))


def sink_like_previous_token_heads(
    verticality_mhc: Sequence[float],
    kurtosis_mhc: Sequence[float],
    verticality_residual: Sequence[float],
    *,
    length: int,
    heads_present: bool,
) -> Verdict:
    """Claim: under mHC, load-bearing previous-token heads act as sinks (high verticality and kurtosis).

    Inputs per seed: the verticality (:func:`group_verticality`) and mean kurtosis of mHC's
    load-bearing previous-token heads, and the same verticality in the residual model (the control:
    if residual heads are just as vertical, the effect is not mHC's). ``heads_present``: every model
    has previous-token heads (else the claim cannot be tested).
    """
    v_base, k_base = uniform_verticality(length), uniform_kurtosis(length)
    rule = (f"reproduced = in every seed mHC's load-bearing previous-token heads beat uniform causal attention on "
            f"verticality (H_L = {v_base:.2f} at L = {length}) and on kurtosis ({k_base:.2f}), and their mean "
            "verticality exceeds the residual model's (the control); partly = they beat the uniform baselines "
            "but not the residual control; not tested here = no previous-token heads")
    if not heads_present:
        return Verdict("not tested here", rule)
    v, k, r = (np.asarray(x, dtype=float) for x in (verticality_mhc, kurtosis_mhc, verticality_residual))
    if v.size == 0 or k.size != v.size or r.size == 0:
        raise ValueError("Need one value per seed for mHC's verticality and kurtosis, and the residual control.")
    beats_uniform = bool((v > v_base).all() and (k > k_base).all())
    beats_control = bool(v.mean() > r.mean())
    if beats_uniform and beats_control:
        return Verdict("reproduced", rule)
    return Verdict("partly" if beats_uniform else "not reproduced", rule)


# --- shared helpers -----------------------------------------------------------------------------

def jaccard(a: Iterable, b: Iterable) -> float:
    """|a & b| / |a | b| of two sets (1.0 for two empty sets)."""
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def kv_group(layer: int, head: int, n_heads: int, n_kv_heads: int | None) -> tuple[int, int]:
    """The (layer, key/value head) that query head ``head`` reads under grouped-query attention.

    Heads ``h`` and ``h'`` of a layer share keys and values when ``h // g == h' // g`` with
    ``g = n_heads / n_kv_heads``; without GQA (``n_kv_heads`` None or equal) every head is its own group.
    """
    return int(layer), int(head) // (n_heads // (n_kv_heads or n_heads))


def kv_groups(heads: Iterable[tuple[int, int]], n_heads: int, n_kv_heads: int | None) -> set[tuple[int, int]]:
    """The independent (layer, key/value head) groups of ``heads`` (:func:`kv_group`)."""
    return {kv_group(l, h, n_heads, n_kv_heads) for l, h in heads}


# --- chapter 2: induction heads -----------------------------------------------------------------

def induction_heads_found(scores_repeated, scores_control, *, threshold: float) -> Verdict:
    """Claim: some heads are induction heads on BOS + R + R.

    ``scores_repeated`` ``[layer, head]``: the induction score A[q, q-N+1] on BOS + R + R;
    ``scores_control``: the same score on BOS + R + R' (a fresh second half, nothing to copy). A
    head counts when it clears ``threshold`` on the repeat but not on the control: a head that
    attends N-1 back by position alone scores on both, and is not counted.
    """
    rep, ctrl = (np.asarray(x, dtype=float) for x in (scores_repeated, scores_control))
    if rep.shape != ctrl.shape:
        raise ValueError(f"Scores and control scores must have one shape, got {rep.shape} and {ctrl.shape}.")
    rule = (f"reproduced = some head scores >= {threshold:g} on BOS + R + R and < {threshold:g} on the control "
            "BOS + R + R' (fresh second half); not reproduced = none does (a positional head scores on both)")
    counted = (rep >= threshold) & (ctrl < threshold)
    return Verdict("reproduced" if counted.any() else "not reproduced", rule)


def same_head_set(found: Iterable, reference: Iterable, *, min_jaccard: float = 0.8) -> Verdict:
    """Claim: a formula finds the same heads as the reference score (Jaccard overlap of the two sets)."""
    found, reference = set(found), set(reference)
    rule = (f"reproduced = Jaccard(found, reference) >= {min_jaccard:g} ({THRESHOLD_REASONS['jaccard'].split(':')[1].strip()}); "
            "partly = the sets share a head; not reproduced = they share none; not tested here = no reference heads")
    if not reference:
        return Verdict("not tested here", rule)
    if jaccard(found, reference) >= min_jaccard:
        return Verdict("reproduced", rule)
    return Verdict("partly" if found & reference else "not reproduced", rule)


def previous_token_heads_compose(clean_score: float, score_without_previous: float,
                                 score_without_control: float | Sequence[float],
                                 *, min_drop: float = 0.5, heads_present: bool = True) -> Verdict:
    """Claim: the induction heads rely on previous-token heads below them (K-composition).

    The induction heads' mean score on BOS + R + R, clean, with the previous-token heads below them
    zero-ablated, and with each control set zero-ablated: as many other heads of the same layers,
    one score per set (``head_ablation.matched_random_head_sets``; any ablation of that size
    might hurt). The control that hurts most is the one the previous-token ablation must beat.
    ``min_drop``: the share of the score that must go.
    """
    rule = (f"reproduced = ablating the previous-token heads removes >= {min_drop:.0%} of the induction score and "
            f"every matched control (as many random other heads, same layers) removes less than {min_drop:.0%}; "
            f"partly = the previous-token ablation hurts more than every control, but removes less than {min_drop:.0%} "
            f"or some control also removes {min_drop:.0%} or more; not reproduced = some control hurts as much; "
            "not tested here = no previous-token heads below induction heads")
    if not heads_present:
        return Verdict("not tested here", rule)
    controls = np.atleast_1d(np.asarray(score_without_control, dtype=float))
    if controls.size == 0:
        raise ValueError("Need at least one control score.")
    if not (np.isfinite(clean_score) and np.isfinite(score_without_previous) and np.isfinite(controls).all()):
        raise ValueError("The clean, previous-token-ablated and control scores must all be finite numbers.")
    if clean_score <= 0:
        raise ValueError(f"The clean induction score must be positive, got {clean_score}.")
    drop_prev = 1 - score_without_previous / clean_score
    drop_ctrl = float((1 - controls / clean_score).max())  # the strongest control
    if drop_prev >= min_drop and drop_ctrl < min_drop:
        return Verdict("reproduced", rule)
    return Verdict("partly" if drop_prev > drop_ctrl else "not reproduced", rule)


def known_heads_recovered(found: Iterable, expected: Iterable, *, available: bool = True) -> Verdict:
    """Claim: the published heads of a known model are found (recall of the expected set)."""
    found, expected = set(found), set(expected)
    rule = ("reproduced = every published head is found; partly = some are; not reproduced = none; "
            "not tested here = the run is not on the published model")
    if not available or not expected:
        return Verdict("not tested here", rule)
    hits = len(found & expected)
    return Verdict("reproduced" if hits == len(expected) else "partly" if hits else "not reproduced", rule)


def second_copy_loss_lower(first: Sequence[float], second: Sequence[float], *, max_ratio: float = 0.5) -> Verdict:
    """Claim: the loss on the second copy of a random sequence is far below the first copy's.

    ``first``, ``second``: mean next-token loss per seed on each copy.
    """
    f, s = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if f.shape != s.shape or f.size == 0:
        raise ValueError("Need one first-copy and one second-copy loss per seed.")
    rule = (f"reproduced = the second copy's loss is lower in every seed and its mean <= {max_ratio:g} x the first "
            "copy's; partly = lower on average; not reproduced = not lower")
    if (s < f).all() and s.mean() <= max_ratio * f.mean():
        return Verdict("reproduced", rule)
    return Verdict("partly" if s.mean() < f.mean() else "not reproduced", rule)


# --- chapter 3: dormant heads -------------------------------------------------------------------

def dormant_heads(text_share, copy_share, *, min_share: float = 0.5) -> np.ndarray:
    """Per head, ``[n]`` bool: dormant on text, i.e. at least ``min_share`` of its attention on
    position 0 on text and more than on the second copy of repeated tokens (where it copies)."""
    t, c = np.asarray(text_share, dtype=float), np.asarray(copy_share, dtype=float)
    if t.shape != c.shape:
        raise ValueError(f"Need one text and one copy share per head, got shapes {t.shape} and {c.shape}.")
    return (t >= min_share) & (t > c)


def dormant_on_text(text_share, copy_share, all_text_share, all_copy_share, *, groups: Sequence, min_share: float = 0.5) -> Verdict:
    """Claim: induction heads are dormant on text, parking on the first token, and wake to copy.

    Per induction head: its attention share on position 0 on text (``text_share``) and on the second
    copy of repeated tokens (``copy_share``); ``all_*``: the same for every head of the model (the
    baseline: most heads of a pretrained model park on position 0 everywhere). ``groups``: each
    induction head's key/value group (:func:`kv_groups`), so heads sharing keys and values are
    counted once. A head is dormant when ``text >= min_share`` and ``text > copy``; the switch
    ``text - copy`` of the induction heads must beat the all-heads mean switch.
    """
    t, c = np.asarray(text_share, dtype=float), np.asarray(copy_share, dtype=float)
    at, ac = np.asarray(all_text_share, dtype=float).ravel(), np.asarray(all_copy_share, dtype=float).ravel()
    if t.shape != c.shape or len(groups) != t.size or at.shape != ac.shape:
        raise ValueError("Need one text and one copy share, and one group, per induction head; all-heads arrays of one shape.")
    rule = (f"reproduced = every independent key/value group of induction heads is dormant (>= {min_share:g} of the "
            "attention on position 0 on text and more than on the second copy) and the induction heads' mean switch "
            "(text - second copy) exceeds the all-heads mean switch (the baseline); partly = some group is dormant; "
            "not reproduced = none; not tested here = no induction heads")
    if t.size == 0:
        return Verdict("not tested here", rule)
    dormant = dormant_heads(t, c, min_share=min_share)
    by_group: dict = {}
    for g, d in zip(groups, dormant):
        by_group[g] = by_group.get(g, True) and bool(d)
    switch_beats_baseline = float((t - c).mean()) > float((at - ac).mean())
    if all(by_group.values()) and switch_beats_baseline:
        return Verdict("reproduced", rule)
    return Verdict("partly" if any(by_group.values()) else "not reproduced", rule)


def value_drain(value_ratio, *, max_ratio: float = 0.5) -> Verdict:
    """Claim (Guo et al.): the sink's value vector is small. ``value_ratio`` per induction head:
    position 0's value norm / the other positions' median."""
    r = np.asarray(value_ratio, dtype=float)
    rule = (f"reproduced = ratio < {max_ratio:g} for every induction head; partly = some ratio < 1; "
            "not reproduced = none below 1; not tested here = no induction heads")
    if r.size == 0:
        return Verdict("not tested here", rule)
    if (r < max_ratio).all():
        return Verdict("reproduced", rule)
    return Verdict("partly" if (r < 1).any() else "not reproduced", rule)


def residual_relatively_small(norm_ratio_by_layer, *, min_share_of_layers: float = 0.8) -> Verdict:
    """Claim (the source blog): the first token's residual norm is "relatively small".
    ``norm_ratio_by_layer``: position 0's norm / the other positions' median, per layer."""
    r = np.asarray(norm_ratio_by_layer, dtype=float)
    small = int((r < 1).sum())
    rule = (f"reproduced = below the other positions' median in >= {min_share_of_layers:.0%} of the layers (a "
            "convention: the blog gives no number); partly = in some layer; not reproduced = in none")
    if small >= min_share_of_layers * r.size:
        return Verdict("reproduced", rule)
    return Verdict("partly" if small else "not reproduced", rule)


def residual_peak_massive(norm_ratio_by_layer, induction_layers: Sequence[int], *, massive_ratio: float) -> Verdict:
    """Claim (Guo et al.; Sun et al.): the sink token's residual norm is massive.

    ``norm_ratio_by_layer``: position 0's norm over the others' median, per ``resid_post`` layer;
    ``induction_layers``: the ``resid_post`` layers the induction heads read (a head in layer l
    reads the output of layer l - 1)."""
    r = np.asarray(norm_ratio_by_layer, dtype=float)
    rule = (f"reproduced = position 0's norm >= {massive_ratio:g}x the others' median in some layer and above it in "
            "the stream every induction head reads; partly = massive somewhere only; not reproduced = never massive")
    massive = (r >= massive_ratio).any()
    if massive and all(r[l] > 1 for l in induction_layers):
        return Verdict("reproduced", rule)
    return Verdict("partly" if massive else "not reproduced", rule)


def sink_stays_at_position_0(with_bos: float, ordinary_first_min: float, to_moved_bos: float,
                             to_position_0_same_queries: float, *, keep: float = 0.5, moved_max: float = 0.5) -> bool:
    """Chapter 3's first look (chapter 4 tests it): does the sink belong to position 0 rather than the BOS?

    ``with_bos``: the heads' attention to position 0 with the BOS there; ``ordinary_first_min``: the
    least of it with an ordinary token there instead; ``to_moved_bos``: the attention a BOS written at
    a later position receives, against ``to_position_0_same_queries``, what position 0 receives from
    those queries. True when every edit keeps >= ``keep`` of the attention (the 'collapse' line of
    :data:`THRESHOLD_REASONS`: it did not lose half) and the moved BOS draws < ``moved_max`` x position 0's.
    """
    if with_bos <= 0 or to_position_0_same_queries < 0:
        raise ValueError(f"Need positive attention to position 0 with the BOS there, got {with_bos}.")
    return ordinary_first_min >= keep * with_bos and to_moved_bos < moved_max * to_position_0_same_queries


# --- chapter 4: the P0 sink circuit -------------------------------------------------------------

def sink_follows_position(attention_with_bos: float, ordinary_first_min: float, bos_moved: float,
                          *, keep: float = 0.5, moved_max: float = 0.25, has_sink: bool = True) -> Verdict:
    """Claim: the sink belongs to position 0, not to the BOS token.

    Attention to position 0 with BOS there; the least attention position 0 keeps with an ordinary
    token there instead; the attention a BOS written at a later position receives. ``has_sink``:
    some layer of the model has a sink at all (attention is never exactly 0, so without this the
    claim would be decided on layers that have no sink).
    """
    rule = (f"reproduced = every ordinary first token keeps > {keep:g} x the BOS's attention and a BOS at a later "
            f"position gets < {moved_max:g} x it; not reproduced otherwise; not tested here = no sink at position 0 "
            "to begin with")
    if not has_sink or attention_with_bos <= 0:
        return Verdict("not tested here", rule)
    ok = ordinary_first_min > keep * attention_with_bos and bos_moved < moved_max * attention_with_bos
    return Verdict("reproduced" if ok else "not reproduced", rule)


def recognition_conditions(clean: float, zero_ablated: float, mean_ablated: float, controls: Mapping[str, float],
                           sufficiency: Mapping[str, float], responsible_layer: int, *, collapse: float = 0.5,
                           control_keep: float = 0.5, sufficient_share: float = 0.5) -> dict[str, bool]:
    """The four conditions :func:`recognised_within_two_blocks` decides on, each true or false, so a
    page can say which one failed: ``necessary`` (zero- and mean-ablating the component at P0 both
    leave < ``collapse`` x clean), ``controls_hold`` (every control leaves >= ``control_keep`` x
    clean), ``sufficient`` (some position given what P0 has draws >= ``sufficient_share`` x clean)
    and ``in_blocks_0_1``."""
    return {
        "necessary": zero_ablated < collapse * clean and mean_ablated < collapse * clean,
        "controls_hold": all(v >= control_keep * clean for v in controls.values()),
        "sufficient": any(v >= sufficient_share * clean for v in sufficiency.values()),
        "in_blocks_0_1": responsible_layer <= 1,
    }


def recognised_within_two_blocks(clean: float, zero_ablated: float, mean_ablated: float, controls: Mapping[str, float],
                                 sufficiency: Mapping[str, float], responsible_layer: int, *,
                                 collapse: float = 0.5, control_keep: float = 0.5, sufficient_share: float = 0.5,
                                 has_sink: bool = True) -> Verdict:
    """Claim: a circuit in the first two blocks recognises position 0 and makes it the sink.

    ``clean``: later layers' attention to position 0. The responsible component ablated at P0 by
    zero and by its mean (necessity: both must collapse the sink below ``collapse x clean``);
    ``controls``: the attention left by interventions that could plausibly collapse the sink if the
    claim were false (each must leave ``control_keep x clean``); ``sufficiency``: the attention
    another position draws when given what P0 has (its residual, or self-only attention): one must
    reach ``sufficient_share x clean``. The three lines are separate, so that varying the necessity
    line (``collapse``, the one :func:`with_sensitivity` varies) does not also move the controls'.
    """
    rule = (f"reproduced = a component of blocks 0-1 is necessary (zero- and mean-ablating it at P0 both leave < "
            f"{collapse:g} x clean), every control leaves >= {control_keep:g} x clean, and giving another position "
            f"what P0 has makes it draw >= {sufficient_share:g} x clean (sufficiency); partly = necessary under both "
            "ablations with the controls intact, but not sufficient or not in blocks 0-1; not reproduced = otherwise; "
            "not tested here = no sink")
    if not has_sink or clean <= 0:
        return Verdict("not tested here", rule)
    c = recognition_conditions(clean, zero_ablated, mean_ablated, controls, sufficiency, responsible_layer,
                               collapse=collapse, control_keep=control_keep, sufficient_share=sufficient_share)
    if all(c.values()):
        return Verdict("reproduced", rule)
    return Verdict("partly" if c["necessary"] and c["controls_hold"] else "not reproduced", rule)


def sink_emerges_early(onset_tokens: Mapping[int, int | None], total_tokens: int, *, max_share: float = 0.25) -> Verdict:
    """Claim: the sink emerges early in training. ``onset_tokens`` per seed (None: never formed)."""
    rule = (f"reproduced = a sink forms within the first {max_share:.0%} of training in every seed "
            f"({THRESHOLD_REASONS['early_share'].split(': ', 1)[1]}); partly = in some seed; not reproduced = it "
            "forms only later, or not at all, in every seed; not tested here = no sink forms in any seed")
    onsets = [v for v in onset_tokens.values() if v is not None]
    if not onsets:
        return Verdict("not tested here", rule)
    early = [v <= max_share * total_tokens for v in onsets]
    if len(onsets) == len(onset_tokens) and all(early):
        return Verdict("reproduced", rule)
    return Verdict("partly" if any(early) else "not reproduced", rule)


def first_massive_layer(norm_ratio_by_layer: Sequence[float], massive_ratio: float) -> int | None:
    """The first layer whose position-0 residual norm ratio (to the other positions' median) is at
    least ``massive_ratio``; ``None`` when no layer's is."""
    return first_index_at_least(norm_ratio_by_layer, massive_ratio)


def signature_in_first_two_layers(norm_ratios: Mapping[str, Sequence[float]], *, massive_ratio: float = 10.0,
                                  last_layer: int = 1) -> Verdict:
    """Claim: the P0 signature (a massive residual norm) is built in layers 0-``last_layer``.

    ``norm_ratios[model]``: per layer, position 0's residual norm over the other positions' median.
    A model in which no layer's ratio is massive has no signature, so it neither supports nor
    contradicts the claim (it is not tested there); the verdict is decided on the models that have one.

    >>> signature_in_first_two_layers({"a": [2, 12, 30], "b": [1, 2, 3]}).verdict
    'reproduced'
    """
    rule = (f"on the models whose position-0 norm reaches {massive_ratio:g}x in some layer: reproduced = the first such "
            f"layer is <= {last_layer} in every one; partly = in some; not reproduced = in none; not tested here = "
            "no model's norm is massive")
    first = [first_massive_layer(r, massive_ratio) for r in norm_ratios.values()]
    tested = [f for f in first if f is not None]
    if not tested:
        return Verdict("not tested here", rule)
    hits = [f <= last_layer for f in tested]
    return Verdict("reproduced" if all(hits) else "partly" if any(hits) else "not reproduced", rule)


# --- chapter 5: mHC sink heads ------------------------------------------------------------------

def layer_shift(shift_per_seed: Mapping[str, Sequence[float]], *, heads_present: bool, direction: str = "earlier") -> Verdict:
    """Claim: under mHC a head type sits ``direction`` than in the residual baseline.

    ``shift_per_seed[variant]``: per seed, the shift of the median depth of the top-k heads in the
    claimed direction (positive = as claimed), for each mHC variant.
    """
    rule = (f"reproduced = the median depth moves {direction} in every seed of every mHC variant; partly = on average "
            "in some variant; not reproduced = in none; not tested here = the head type is absent in some model")
    if not heads_present:
        return Verdict("not tested here", rule)
    d = {k: np.asarray(v, dtype=float) for k, v in shift_per_seed.items()}
    if not d or any(v.size == 0 for v in d.values()):
        raise ValueError("Need a shift per seed for every variant.")
    if all((v > 0).all() for v in d.values()):
        return Verdict("reproduced", rule)
    return Verdict("partly" if any(v.mean() > 0 for v in d.values()) else "not reproduced", rule)


def both_head_types(previous_token: Verdict, induction: Verdict) -> Verdict:
    """A claim about two head types: reproduced only if both are; not tested here only if neither can be."""
    a, b = previous_token.verdict, induction.verdict
    rule = ("reproduced = both head types reproduced; not tested here = neither testable; not reproduced = neither "
            f"reproduced nor partly; partly otherwise (previous-token: {a}; induction: {b})")
    if a == b == "reproduced":
        return Verdict("reproduced", rule)
    if a == b == "not tested here":
        return Verdict("not tested here", rule)
    if {a, b} <= {"not reproduced", "not tested here"}:
        return Verdict("not reproduced", rule)
    return Verdict("partly", rule)


def pattern_and_ablation_disagree(overlap_mhc: Sequence[float], overlap_lite: Sequence[float], overlap_residual: Sequence[float],
                                  *, max_overlap: float = 0.5, heads_present: bool, chance: float | None = None) -> Verdict:
    """Claim: under mHC, the top-k heads by previous-token score and by ablation effect disagree.

    Per seed, the top-k overlap of the two rankings in each scheme; the residual model is the control.
    """
    rule = (f"reproduced = mean top-k overlap <= {max_overlap:g} under mHC and mHC-lite and below the residual "
            "model's (the control); partly = in one variant; not reproduced = in neither; not tested here = no "
            "previous-token heads" + (f" (chance overlap {chance:.2f})" if chance is not None else ""))
    if not heads_present:
        return Verdict("not tested here", rule)
    res = float(np.mean(overlap_residual))
    means = [float(np.mean(o)) for o in (overlap_mhc, overlap_lite)]
    disagree = [m <= max_overlap for m in means]
    if all(d and m < res for d, m in zip(disagree, means)):
        return Verdict("reproduced", rule)
    return Verdict("partly" if any(disagree) else "not reproduced", rule)


def gain_bounded_by_construction(mhc_max: float, lite_max: float, *, mhc_tolerance: float = 1.1,
                                 lite_tolerance: float = 1.001) -> Verdict:
    """mHC's composite Amax gain is about 1: a guarantee of doubly stochastic mixing, unless the
    approximation broke it (then the guarantee did not hold: not reproduced)."""
    rule = (f"by construction = mHC's gain < {mhc_tolerance:g} and mHC-lite's < {lite_tolerance:g} everywhere (a doubly "
            "stochastic product has gain 1); not reproduced = the bound is broken")
    ok = mhc_max < mhc_tolerance and lite_max < lite_tolerance
    return Verdict("by construction" if ok else "not reproduced", rule)


def gain_grows(per_seed_max: Sequence[float], *, threshold: float = 1.5) -> Verdict:
    """Claim: without the constraint (HC), the composite Amax gain grows. Per seed, its largest value."""
    g = np.asarray(per_seed_max, dtype=float)
    rule = f"reproduced = HC's largest composite gain > {threshold:g} in every seed; partly = in some; not reproduced = in none"
    if g.size == 0:
        raise ValueError("Need one gain per seed.")
    if (g > threshold).all():
        return Verdict("reproduced", rule)
    return Verdict("partly" if (g > threshold).any() else "not reproduced", rule)


def losses_match(loss_a: Sequence[float], loss_b: Sequence[float], *, spread_factor: float = 2.0) -> Verdict:
    """Claim: two schemes reach the same held-out loss. Per seed, each scheme's final held-out loss:
    the mean difference must be within ``spread_factor`` x the larger seed-to-seed std."""
    a, b = np.asarray(loss_a, dtype=float), np.asarray(loss_b, dtype=float)
    rule = (f"reproduced = |mean difference| <= {spread_factor:g} x the larger seed std; not reproduced = larger; "
            "not tested here = fewer than 2 seeds (no spread to compare with)")
    if a.shape != b.shape:
        raise ValueError("Need one loss per seed for both schemes.")
    if a.size < 2:
        return Verdict("not tested here", rule)
    spread = max(float(a.std()), float(b.std()))
    return Verdict("reproduced" if abs(float((b - a).mean())) <= spread_factor * spread else "not reproduced", rule)


# --- chapter 6: when circuits form --------------------------------------------------------------

#: arXiv 2606.02378 ("When Do Attention Circuits Form?"), the published values chapter 6 compares with.
CIRCUIT_TIMING_PAPER = {
    "induction_min_heads": 3,  # its induction circuit: at least 3 heads at >= 50x
    "induction_lead": (11.0, 21.0),  # induction forms 11-21x earlier in tokens than the BOS fraction passes 50%
    "olmo_bos_fraction": (0.07, 0.70),  # OLMo 1B-0724's BOS fraction at two adjacent checkpoints ...
    "olmo_tokens": (117e9, 264e9),  # ... of 117B and 264B tokens
}


def no_bos_heads_early(bos_heads_in_first_layers: int, bos_heads_total: int) -> Verdict:
    """Claim: no head in layers 0-1 is classified BOS-attractor at any checkpoint."""
    rule = ("reproduced = BOS-classified heads exist and none is in layers 0-1; not reproduced = some is; "
            "not tested here = no BOS-classified head at all")
    if bos_heads_in_first_layers > 0:
        return Verdict("not reproduced", rule)
    return Verdict("reproduced" if bos_heads_total > 0 else "not tested here", rule)


def induction_before_bos(runs: Sequence[tuple[float | None, float | None]], *, min_ratio: float = 11.0) -> Verdict:
    """Claim: induction forms ``min_ratio``x or more earlier in tokens than the BOS fraction passes 50%.

    ``runs``: one ``(induction_tokens, bos_tokens)`` per run, the tokens seen when each first happened,
    ``None`` for never within training. A run where the BOS fraction passes 50% and induction never
    forms (or forms no earlier) contradicts the claim; a run where induction forms and the BOS
    fraction never passes 50% cannot say how much later it would have (training ended first), so it
    neither supports nor contradicts it, and makes "reproduced" impossible.

    >>> induction_before_bos([(1e5, 2e6), (2e5, None)]).verdict
    'partly'
    >>> induction_before_bos([(None, 2e6), (1e5, 2e6)]).verdict
    'not reproduced'
    """
    rule = (f"reproduced = in every run both happen and the BOS transition comes >= {min_ratio:g}x later; "
            "not reproduced = in some run the BOS fraction passes 50% with no induction before it; "
            "partly otherwise; not tested here = the BOS fraction passes 50% in no run")
    runs = list(runs)
    ratios = []
    for induction, bos in runs:
        if bos is None:
            continue  # the BOS transition never came: censored, says nothing about the order
        if induction is None or induction >= bos:
            return Verdict("not reproduced", rule)
        ratios.append(float("inf") if induction <= 0 else bos / induction)
    if not ratios:
        return Verdict("not tested here", rule)
    every = len(ratios) == len(runs)
    return Verdict("reproduced" if every and min(ratios) >= min_ratio else "partly", rule)


def rise_shape_measured(max_fraction: float, n_rises: int, *, min_fraction: float = 0.1) -> Verdict:
    """The shape (sudden or gradual) of the BOS fraction's rise: measured where it rises at all."""
    rule = f"measured = the BOS fraction rises in some run and reaches >= {min_fraction:.0%}; not tested here otherwise"
    return Verdict("measured" if n_rises and max_fraction >= min_fraction else "not tested here", rule)


def why_not_tested_words(claim: Mapping) -> str:
    """A recorded claim's ``why_not_tested``, without its final period; '' when there is none or when it
    only repeats the rule (as :func:`not_tested`'s reason does)."""
    why = claim.get("why_not_tested") or ""
    return "" if why == claim.get("rule") else why.rstrip(".")


def what_we_found(claims: Sequence[Mapping]) -> str:
    """Markdown for a chapter's closing "What we found": one line per recorded claim, with its
    verdict and rule, generated from the results (never typed)."""
    lines = ["## What we found", ""]
    for c in claims:
        sens = c.get("sensitivity") or {}
        extra = f" At 0.5x / 2x the threshold: {sens.get('0.5x')} / {sens.get('2x')}." if sens else ""
        stability = seed_stability_words(c.get("without_seed") or {}, c["verdict"])
        extra += f" Leaving out one seed: {stability}." if stability else ""
        why = f" *Why not tested:* {stated}." if (stated := why_not_tested_words(c)) else ""
        lines.append(f"- **{c['verdict']}**: {c['claim']}.{why} *Rule:* {c.get('rule') or c.get('details') or '–'}.{extra}")
    return "\n".join(lines)


#: "MHC Interp #1": share of heads putting more than 0.5 of their attention on position 0, from its
#: saved attention arrays (issue 17): residual 57%, mHC 12%, mHC-lite 16%.
MHC_INTERP_POSITION0_SHARE = {"residual": 0.57, "mhc": 0.12, "mhc-lite": 0.16}


def position0_share(first_token_scores, *, min_attention: float = 0.5) -> float:
    """The share of heads whose mean attention to position 0 (``[layer, head]`` first-token
    scores, queries 1..) exceeds ``min_attention``: the source's position-0 statistic."""
    s = np.asarray(first_token_scores, dtype=float)
    if s.size == 0:
        raise ValueError("Need at least one head's first-token score.")
    return float((s > min_attention).mean())


def fewer_position0_heads_under_mhc(share_per_seed: Mapping[str, Sequence[float]]) -> Verdict:
    """Claim (source): fewer heads park on position 0 under mHC and mHC-lite than in the residual model.

    ``share_per_seed[scheme]``: :func:`position0_share` of each seed's model, for ``residual``,
    ``mhc`` and ``mhc-lite``; seeds are paired by index.
    """
    rule = ("reproduced = the share is lower under mHC and under mHC-lite than in the residual model, in every "
            "seed; partly = lower on average in one variant; not reproduced = in neither; not tested here = no "
            "residual head parks on position 0")
    res = np.asarray(share_per_seed["residual"], dtype=float)
    if res.size == 0:
        raise ValueError("Need one share per seed.")
    if (res == 0).all():
        return Verdict("not tested here", rule)
    variants = [np.asarray(share_per_seed[v], dtype=float) for v in ("mhc", "mhc-lite")]
    if all(v.shape == res.shape and (v < res).all() for v in variants):
        return Verdict("reproduced", rule)
    return Verdict("partly" if any(v.mean() < res.mean() for v in variants) else "not reproduced", rule)


def top_key_share(pattern: torch.Tensor) -> float:
    """A length-free alternative to verticality: the attention share of the single most-attended key.

    ``pattern`` ``[..., q, k]`` (e.g. head-averaged, per sequence): the largest column mean over the
    queries ``1 .. T - 1`` (query 0 can only attend to itself), averaged over leading dimensions. It
    runs from 0 to 1 at every length: a perfect first-token sink scores 1 whatever ``T`` (verticality
    scores ``T``), a perfect previous-token head ``1 / (T - 1)``, uniform causal attention
    ``(H_T - 1) / (T - 1)``.
    """
    if pattern.shape[-1] < 2:
        raise ValueError("Need at least 2 positions.")
    cols = pattern[..., 1:, :].float().mean(-2)  # [..., k]
    return float(cols.amax(-1).mean())


# --- chapter 5: the source's protocol beside ours -------------------------------------------------


def vertical_above(verticality_mhc: Sequence[float], *, threshold: float, heads_present: bool,
                   baseline: str = "the source's '> 2 = sink-like'") -> Verdict:
    """Claim (as the source decides it): mHC's load-bearing heads are sink-like, i.e. their verticality
    exceeds ``threshold`` (``baseline`` says where it comes from). Per seed, one verticality."""
    rule = (f"reproduced = verticality > {threshold:.2f} ({baseline}) in every seed; partly = in some; "
            "not reproduced = in none; not tested here = no previous-token heads")
    if not heads_present:
        return Verdict("not tested here", rule)
    v = np.asarray(verticality_mhc, dtype=float)
    if v.size == 0:
        raise ValueError("Need one verticality per seed.")
    above = v > threshold
    if above.all():
        return Verdict("reproduced", rule)
    return Verdict("partly" if above.any() else "not reproduced", rule)


def direct_split_by_construction(source_direct, *, tolerance: float = 0.0) -> Verdict:
    """The source's direct/indirect split: its "direct effect" is 0 for every head below the last
    layer by construction when it freezes every later block's output. ``source_direct`` ``[layer,
    head]``, measured with that freeze. 'by construction' when every layer but the last is within
    ``tolerance`` of 0 (then its "indirect effect" is the total effect); 'measured' otherwise."""
    d = np.asarray(source_direct, dtype=float)
    if d.ndim != 2 or d.shape[0] < 2:
        raise ValueError("Need a [layer, head] map of at least 2 layers.")
    rule = (f"by construction = the split's direct effect is within {tolerance:g} of 0 for every head below the last "
            "layer (freezing every later block's output freezes the logits), so its indirect effect is the total")
    return Verdict("by construction" if bool((np.abs(d[:-1]) <= tolerance).all()) else "measured", rule)
