"""Verdict rules: named, tested functions from measured values to a verdict and the rule in words.

A rule returns a :class:`Verdict` (one of :data:`sinklens.provenance.VERDICTS` plus the rule as a
sentence, which the chapter records as the claim's ``details`` and the scorecard shows). Chapters
call these functions instead of assigning verdict strings. Thresholds come from a baseline computed
here (for example uniform causal attention) or from the source, never typed in a chapter.

The module is being filled chapter by chapter; ``tests/test_claims.py`` has a case for every
outcome of every rule, including the ones that must fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from sinklens.scores import attention_kurtosis, column_means


@dataclass(frozen=True)
class Verdict:
    """A claim's verdict and the rule that produced it, in words."""

    verdict: str
    rule: str


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


def uniform_kurtosis(length: int) -> float:
    """Excess kurtosis of the causal column means (:func:`sinklens.scores.attention_kurtosis`) of
    uniform causal attention: the baseline a sink's heavy tail must beat."""
    pattern = uniform_causal_pattern(length)[None, None, None]  # [layer, batch, head, q, k]
    return float(attention_kurtosis(pattern).squeeze())


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
