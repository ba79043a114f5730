"""The measurement protocol of "MHC Interp #1" (github.com/Realmbird/mhc-interp), on our models.

Chapter 5 measures the same models twice: with its own protocol and with the source's, read from
the source's ``head_finder.py``, ``path_patch_pt.py`` and ``verticality_figure.py``:

- **Prompts** (:func:`source_prompts`). Previous-token score: one 15-token sentence without BOS,
  :data:`SOURCE_SENTENCE`, scored as the mean of ``A[i, i - 1]`` for ``i >= 1``. Induction and
  duplicate-token scores: EOT + 25 random ids from ``[1000, 40000)`` + the same 25 again
  (``numpy.random.default_rng(0)``). Our vocabulary is smaller, so the id range is scaled to the
  same fraction of it (:func:`adapted_id_range`) and EOT is our BOS.
- **Scores** (:func:`previous_token_score`, :func:`induction_score`, :func:`duplicate_score`):
  the source's exact index sets (induction: query ``1 + n + i`` on key ``2 + i``, ``i < n - 1``;
  duplicate: query ``1 + n + i`` on key ``1 + i``).
- **Ablation**: the loss increase when a head's output is zeroed, on the sentence (all positions)
  for previous-token heads and on the second copy (query positions ``1 + n .. 2n - 1``) for
  induction and duplicate-token heads (:meth:`SourcePrompts.second_copy_positions`).
- **Ranking** (:func:`top_heads`): the top 20 of 720 heads, here the same fraction of ours
  (:func:`top_k_for`). The source ranks its residual model by the raw pattern score and its mHC
  models by ``min(pattern percentile, ablation percentile)`` (:func:`min_percentile`): two
  ranking rules inside one comparison. :data:`RANKINGS` names the three ways to apply them.
- **Verticality** on the sentence: max column mean / mean column mean of the pattern averaged over
  the top 5 heads (:func:`sinklens.claims.group_verticality`), with "> 2 = sink-like"
  (:data:`SOURCE_SINK_VERTICALITY`). The source ranks those heads by "indirect effect", total
  minus direct, but its direct effect is 0 by construction (:mod:`sinklens.paths`), so its
  indirect effect is the total ablation effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

SOURCE_SENTENCE = "When Mary and John went to the store, John gave a drink to Mary"
#: The same 15-token frame (When A and B <verb> to the <place>, B <verb> a <object> to A) in words
#: of the book's 2048-id vocabulary (State of the Union addresses and Python code), which has none
#: of the source's names and few of its words: the source's sentence encodes to 9 unknowns of 15.
ADAPTED_SENTENCE = " When Congress and Mexico come to the Treasury, Mexico sent a message to Congress"
SOURCE_N_REPEAT = 25
SOURCE_ID_RANGE = (1000, 40000)  # of GPT-2's 50257 ids
SOURCE_D_VOCAB = 50257
SOURCE_TOP_K, SOURCE_N_HEADS = 20, 720  # top 20 of 36 x 20 heads per detector
SOURCE_VERTICALITY_TOP_N = 5  # heads averaged for verticality
SOURCE_SINK_VERTICALITY = 2.0  # verticality_figure.py: "> 2 = vertical/sink-like"
#: Median layers (of 36) of the source's top-20 heads: its pattern-only ranking, and the mixed
#: ranking it reports (residual by pattern; mHC models by min percentile). From its
#: results/heads/*/*/top_heads*.json (checked against the files).
SOURCE_MEDIAN_LAYERS = {
    "pattern": {"previous_token": {"residual": 15, "mhc": 6, "mhc-lite": 7},
                "induction": {"residual": 21, "mhc": 9, "mhc-lite": 9},
                "duplicate_token": {"residual": 3.5, "mhc": 21, "mhc-lite": 1}},
    "source": {"previous_token": {"residual": 15, "mhc": 7, "mhc-lite": 7},
               "induction": {"residual": 21, "mhc": 9, "mhc-lite": 9},
               "duplicate_token": {"residual": 3.5, "mhc": 8.5, "mhc-lite": 8}},
}
#: Ranking rules: every model by pattern score; the source's mix (residual by pattern, the
#: multi-stream schemes by min percentile); every model by min percentile.
RANKINGS = ("pattern", "source", "min_percentile")
KINDS = ("previous_token", "induction", "duplicate_token")


@dataclass(frozen=True)
class SourcePrompts:
    """The source's two prompts in our vocabulary: ``sentence [1, T]`` (no BOS), ``repeat [1, 1 + 2n]``."""

    sentence: Tensor
    repeat: Tensor
    n_repeat: int

    def with_bos(self, bos_id: int) -> "SourcePrompts":
        """The same prompts with ``bos_id`` put before the sentence, as every training row of our
        models starts (a control: the source's sentence has none, so its position 0 is a word)."""
        bos = torch.full((1, 1), bos_id, dtype=self.sentence.dtype)
        return SourcePrompts(torch.cat([bos, self.sentence], dim=1), self.repeat, self.n_repeat)

    def second_copy_positions(self) -> list[int]:
        """Query positions predicting the second copy's tokens 2..n (the source's ablation positions)."""
        return list(range(1 + self.n_repeat, 2 * self.n_repeat))


def adapted_id_range(d_vocab: int) -> tuple[int, int]:
    """The source's random-id range ``[1000, 40000)`` of 50257, scaled to ``d_vocab`` (ids 0 and 1,
    our BOS and UNK, excluded)."""
    lo = max(2, round(SOURCE_ID_RANGE[0] * d_vocab / SOURCE_D_VOCAB))
    hi = round(SOURCE_ID_RANGE[1] * d_vocab / SOURCE_D_VOCAB)
    if hi - lo < SOURCE_N_REPEAT:
        raise ValueError(f"A vocabulary of {d_vocab} ids is too small for the source's random-id range.")
    return lo, hi


def source_prompts(encode: Callable[[str], Sequence[int]], d_vocab: int, bos_id: int, *,
                   sentence: str = SOURCE_SENTENCE, n_repeat: int = SOURCE_N_REPEAT, seed: int = 0) -> SourcePrompts:
    """The source's prompts: ``encode(sentence)`` (ids, no BOS; :data:`ADAPTED_SENTENCE` for our
    vocabulary) and BOS + R + R with ``R`` drawn as the source draws it
    (``default_rng(seed).integers``), in :func:`adapted_id_range`."""
    sentence = [int(i) for i in encode(sentence)]
    if len(sentence) < 2:
        raise ValueError("The sentence encodes to fewer than 2 tokens.")
    lo, hi = adapted_id_range(d_vocab)
    r = np.random.default_rng(seed).integers(low=lo, high=hi, size=n_repeat).tolist()
    return SourcePrompts(torch.tensor([sentence]), torch.tensor([[bos_id] + r + r]), n_repeat)


def _check(patterns: Tensor) -> Tensor:
    if patterns.dim() < 2 or patterns.shape[-1] != patterns.shape[-2]:
        raise ValueError(f"patterns must be [..., q, k], square; got {tuple(patterns.shape)}.")
    return patterns.float()


def previous_token_score(patterns: Tensor) -> Tensor:
    """Mean of ``A[i, i - 1]`` over ``i = 1 .. T - 1``: ``[..., q, k] -> [...]``."""
    p = _check(patterns)
    i = torch.arange(1, p.shape[-1])
    return p[..., i, i - 1].mean(-1)


def induction_score(patterns: Tensor, n_repeat: int) -> Tensor:
    """On BOS + R + R: query ``1 + n + i`` on key ``2 + i`` (the token after the earlier copy), ``i < n - 1``."""
    p = _check(patterns)
    if p.shape[-1] < 1 + 2 * n_repeat:
        raise ValueError(f"Need {1 + 2 * n_repeat} positions for n = {n_repeat}, got {p.shape[-1]}.")
    i = torch.arange(n_repeat - 1)
    return p[..., 1 + n_repeat + i, 2 + i].mean(-1)


def duplicate_score(patterns: Tensor, n_repeat: int) -> Tensor:
    """On BOS + R + R: query ``1 + n + i`` on key ``1 + i`` (the same token, earlier), ``i < n``."""
    p = _check(patterns)
    if p.shape[-1] < 1 + 2 * n_repeat:
        raise ValueError(f"Need {1 + 2 * n_repeat} positions for n = {n_repeat}, got {p.shape[-1]}.")
    i = torch.arange(n_repeat)
    return p[..., 1 + n_repeat + i, 1 + i].mean(-1)


def percentile_rank(scores) -> np.ndarray:
    """Each entry's rank among all, as a fraction in [0, 1] (1 = highest); ties broken by position
    (a stable sort; the source uses numpy's default, unstable ``argsort``, which matters only for
    exact ties). Same shape as ``scores``."""
    s = np.asarray(scores, dtype=float)
    flat = s.ravel()
    ranks = np.empty(flat.size)
    ranks[np.argsort(flat, kind="stable")] = np.arange(flat.size)
    return (ranks / max(flat.size - 1, 1)).reshape(s.shape)


def min_percentile(pattern, ablation) -> np.ndarray:
    """The source's combined rank: ``min(pattern percentile, ablation percentile)``, high only when
    a head is high by both."""
    return np.minimum(percentile_rank(pattern), percentile_rank(ablation))


def top_k_for(n_heads_total: int, k: int = SOURCE_TOP_K, of: int = SOURCE_N_HEADS) -> int:
    """The source's top ``k`` of ``of`` heads as the same fraction of ``n_heads_total`` (at least 1)."""
    return max(1, round(k * n_heads_total / of))


def ranking_scores(pattern, ablation, scheme: str, ranking: str) -> np.ndarray:
    """The ``[layer, head]`` map that ``ranking`` (one of :data:`RANKINGS`) sorts ``scheme``'s heads by."""
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}.")
    if ranking == "pattern" or (ranking == "source" and scheme == "residual"):
        return np.asarray(pattern, dtype=float)
    return min_percentile(pattern, ablation)


@dataclass
class SourceMeasurement:
    """One model measured by the source's protocol. Maps are ``[layer, head]`` numpy arrays.

    ``pattern[kind]`` and ``ablation[kind]`` for each of :data:`KINDS`; ``direct``: the
    previous-token ablation's direct part (:func:`sinklens.paths.head_direct_effects`) and
    ``source_direct`` the source's (0 by construction below the last layer); ``sentence_patterns``
    ``[layer, head, q, k]`` on the sentence.
    """

    pattern: dict[str, np.ndarray]
    ablation: dict[str, np.ndarray]
    direct: np.ndarray
    source_direct: np.ndarray
    sentence_patterns: Tensor

    @property
    def indirect(self) -> np.ndarray:
        return self.ablation["previous_token"] - self.direct

    @property
    def source_indirect(self) -> np.ndarray:
        return self.ablation["previous_token"] - self.source_direct


@torch.no_grad()
def measure(model, prompts: SourcePrompts, *, mode: str = "zero") -> SourceMeasurement:
    """Measure ``model`` (a :class:`sinklens.model.GPT`) by the source's protocol (module docstring)."""
    from sinklens import head_ablation as ha
    from sinklens import paths

    n_layers = int(model.cfg.n_layers)
    is_pattern = lambda n: n.endswith("hook_pattern")  # noqa: E731
    _, cache_s = model.run_with_cache(prompts.sentence, names_filter=is_pattern)
    _, cache_r = model.run_with_cache(prompts.repeat, names_filter=is_pattern)
    sentence = torch.stack([cache_s["pattern", l][0] for l in range(n_layers)]).float()  # [layer, head, q, k]
    repeat = torch.stack([cache_r["pattern", l][0] for l in range(n_layers)]).float()
    n = prompts.n_repeat
    pattern = {"previous_token": previous_token_score(sentence).numpy(),
               "induction": induction_score(repeat, n).numpy(),
               "duplicate_token": duplicate_score(repeat, n).numpy()}
    second = prompts.second_copy_positions()
    prev_ablation = ha.head_ablation_effects(model, prompts.sentence, mode=mode, progress=False).numpy()
    copy_ablation = ha.head_ablation_effects(model, prompts.repeat, mode=mode, positions=second, progress=False).numpy()
    ablation = {"previous_token": prev_ablation, "induction": copy_ablation, "duplicate_token": copy_ablation}
    direct = paths.head_direct_effects(model, prompts.sentence, mode=mode).numpy()
    source_direct = paths.head_direct_effects(model, prompts.sentence, mode=mode, freeze="block_outputs").numpy()
    return SourceMeasurement(pattern, ablation, direct, source_direct, sentence)


def top_heads(m: SourceMeasurement, kind: str, scheme: str, ranking: str, k: int) -> list[tuple[int, int]]:
    """The top ``k`` heads of ``kind`` under ``ranking`` for a model of ``scheme``."""
    from sinklens.head_ablation import top_k_heads

    return top_k_heads(ranking_scores(m.pattern[kind], m.ablation[kind], scheme, ranking), k)


def median_depth(heads: Sequence[tuple[int, int]], n_layers: int) -> float:
    """Median normalised depth ``(layer + 0.5) / n_layers`` of a set of heads."""
    if not heads:
        raise ValueError("No heads.")
    return float((np.median([l for l, _ in heads]) + 0.5) / n_layers)


def group_pattern(patterns: Tensor, heads: Sequence[tuple[int, int]]) -> Tensor:
    """The pattern averaged over ``heads``: ``[layer, head, q, k] -> [q, k]``."""
    if not heads:
        raise ValueError("No heads.")
    return torch.stack([patterns[l, h] for l, h in heads]).mean(0)


def median_depths(measurements: Mapping[tuple[str, int], SourceMeasurement], n_layers: int, k: int) -> dict:
    """``[ranking][kind][(scheme, seed)]``: the median normalised depth of the top ``k`` heads."""
    return {r: {kind: {key: median_depth(top_heads(m, kind, key[0], r, k), n_layers) for key, m in measurements.items()}
                for kind in KINDS} for r in RANKINGS}


def depth_shifts(depths: Mapping[tuple[str, int], float], seeds: Sequence[int], *, later: bool = False,
                 variants: Sequence[str] = ("mhc", "mhc-lite")) -> dict[str, list[float]]:
    """Per variant and seed, the residual model's median depth minus the variant's (``later=True``:
    the variant's minus the residual's), so positive = the direction the source claims."""
    sign = -1.0 if later else 1.0
    return {v: [sign * (depths["residual", s] - depths[v, s]) for s in seeds] for v in variants}


#: The head groups whose averaged pattern the sink comparison measures (:func:`sink_groups`).
SINK_GROUPS = {
    "source_load_bearing": "top by the source's 'indirect effect' (= total: its direct part is 0)",
    "indirect": "top by indirect effect (total - direct, sinklens.paths)",
    "pattern_top": "top by previous-token pattern score",
}


def sink_groups(m: SourceMeasurement, k: int) -> dict[str, list[tuple[int, int]]]:
    """The top ``k`` heads of each :data:`SINK_GROUPS` group (``indirect`` left out when the
    measurement has no direct/indirect split)."""
    from sinklens.head_ablation import top_k_heads

    groups = {"source_load_bearing": top_k_heads(m.source_indirect, k) if np.isfinite(m.source_indirect).all()
              else top_k_heads(m.ablation["previous_token"], k),
              "pattern_top": top_k_heads(m.pattern["previous_token"], k)}
    if np.isfinite(m.direct).all():
        groups["indirect"] = top_k_heads(m.indirect, k)
    return groups


def sink_rows(measurements: Mapping[tuple[str, int], SourceMeasurement], k: int) -> list[dict]:
    """Per model and group: the heads, and the verticality (the source's) and kurtosis (ours) of
    their averaged pattern on the sentence."""
    from sinklens import claims
    from sinklens.head_ablation import head_label

    rows = []
    for (scheme, seed), m in measurements.items():
        for group, heads in sink_groups(m, k).items():
            avg = group_pattern(m.sentence_patterns, heads)
            rows.append(dict(scheme=scheme, seed=seed, group=group, heads=", ".join(head_label(*h) for h in heads),
                             verticality=claims.group_verticality(avg), kurtosis=claims.group_kurtosis(avg)))
    return rows


def protocol_verdicts(measurements: Mapping[tuple[str, int], SourceMeasurement], *, n_layers: int, n_heads: int,
                      seeds: Sequence[int], present: Mapping[str, bool], variants: Sequence[str] = ("mhc", "mhc-lite")) -> dict:
    """The chapter's three protocol-dependent claims, decided on measurements taken the source's way.

    Returns ``{"shifts": {ranking: {kind: {variant: [per seed]}}}, "verdicts": {name: Verdict},
    "sinks": rows of :func:`sink_rows`, "top_k": k, "group_size": k_vert, "length": T}``. Verdict
    names: ``"<claim> / <ranking>"`` for ``mhc-heads-earlier`` and ``duplicate-heads-later`` under each
    of :data:`RANKINGS`, and ``"prev-token-heads-are-sinks / <group>, <threshold>"`` for the
    source's load-bearing heads (and ours, where there is a split) against the source's 2 and
    against uniform causal attention's ``H_T`` (with 0.5x / 2x sensitivity). ``present``: whether
    every model has previous-token / induction / duplicate-token heads (else "not tested here").
    """
    from sinklens import claims

    k = top_k_for(n_layers * n_heads)
    k_vert = top_k_for(n_layers * n_heads, SOURCE_VERTICALITY_TOP_N)
    depths = median_depths(measurements, n_layers, k)
    out: dict = {"shifts": {}, "verdicts": {}, "top_k": k, "group_size": k_vert}
    for r in RANKINGS:
        sh = {kind: depth_shifts(depths[r][kind], seeds, later=kind == "duplicate_token", variants=variants) for kind in KINDS}
        out["shifts"][r] = sh
        vp = claims.layer_shift(sh["previous_token"], heads_present=present["previous_token"])
        vi = claims.layer_shift(sh["induction"], heads_present=present["induction"])
        out["verdicts"][f"mhc-heads-earlier / {r}"] = claims.both_head_types(vp, vi)
        out["verdicts"][f"duplicate-heads-later / {r}"] = claims.layer_shift(
            sh["duplicate_token"], heads_present=present["duplicate_token"], direction="later")
    rows = sink_rows(measurements, k_vert)
    out["sinks"] = rows
    length = next(iter(measurements.values())).sentence_patterns.shape[-1]
    out["length"] = length
    thresholds = {"source's 2": (SOURCE_SINK_VERTICALITY, "the source's '> 2 = sink-like'"),
                  f"uniform H_{length}": (claims.uniform_verticality(length), f"uniform causal attention's H_{length}")}
    for scheme in ("mhc", "mhc-lite"):  # keys without a scheme are mHC's (the source's headline claim)
        tag = "" if scheme == "mhc" else f" ({scheme})"
        for group in ("source_load_bearing", "indirect"):
            v = [r["verticality"] for r in rows if r["scheme"] == scheme and r["group"] == group]
            if not v:
                continue
            for name, (t, why) in thresholds.items():
                out["verdicts"][f"prev-token-heads-are-sinks{tag} / {group}, {name}"] = claims.with_sensitivity(
                    claims.vertical_above, "threshold", floor=1.0, verticality_mhc=v, threshold=t,
                    heads_present=present["previous_token"], baseline=why)
    return out


def verdicts_leaving_out_seeds(measurements: Mapping[tuple[str, int], SourceMeasurement], *, n_layers: int, n_heads: int,
                               seeds: Sequence[int], present_in: Callable[[list[int]], Mapping[str, bool]],
                               variants: Sequence[str] = ("mhc", "mhc-lite")) -> dict:
    """The verdicts of :func:`protocol_verdicts`, each decided again without each seed in turn
    (:func:`sinklens.claims.leave_one_seed_out`). ``present_in(seeds)``: whether every model of those
    seeds has each head type, so a type absent only in the left-out seed's model counts as present."""
    from sinklens import claims

    def decide(ss: list[int]) -> dict:
        subset = {key: m for key, m in measurements.items() if key[1] in ss}
        return protocol_verdicts(subset, n_layers=n_layers, n_heads=n_heads, seeds=ss, present=present_in(ss),
                                 variants=variants)["verdicts"]

    return claims.leave_one_seed_out(decide, seeds)


def protocol_dependent_claims(verdicts: Mapping[str, Sequence[str]]) -> list[str]:
    """The claims whose verdict is not the same under every protocol and ranking rule.

    ``verdicts``: claim id -> its verdicts, one per (protocol, ranking). Returns the claim ids, in order.
    """
    return [claim for claim, vs in verdicts.items() if len(set(vs)) > 1]
