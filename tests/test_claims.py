"""Verdict rules (sinklens.claims): analytic baselines, and every outcome of every rule."""

from __future__ import annotations

import pytest
import torch

from sinklens import claims
from sinklens.provenance import VERDICTS


@pytest.mark.parametrize("length", [2, 15, 64, 128])
def test_uniform_causal_attention_has_verticality_h_l(length):
    harmonic = sum(1 / i for i in range(1, length + 1))
    assert claims.uniform_verticality(length) == pytest.approx(harmonic, rel=1e-5)


def test_verticality_runs_from_1_to_l_and_a_perfect_previous_token_head_scores_2():
    length = 15
    sink = torch.zeros(length, length)
    sink[:, 0] = 1.0
    assert claims.group_verticality(sink) == pytest.approx(length)
    prev = torch.zeros(length, length)
    prev[0, 0] = 1.0
    prev[torch.arange(1, length), torch.arange(0, length - 1)] = 1.0
    assert claims.group_verticality(prev) == pytest.approx(2.0)  # column 0 gets rows 0 and 1
    assert claims.group_verticality(torch.eye(length)) == pytest.approx(1.0)


def test_uniform_kurtosis_is_the_statistic_of_the_uniform_pattern():
    assert claims.uniform_kurtosis(64) < 2.0  # smooth column means: no heavy tail
    with pytest.raises(ValueError, match="length"):
        claims.uniform_causal_pattern(1)


L = 64
H = claims.uniform_verticality(L)
K = claims.uniform_kurtosis(L)


@pytest.mark.parametrize("v_mhc, k_mhc, v_res, present, expected", [
    ([H + 3, H + 4], [K + 5, K + 6], [H, H], True, "reproduced"),
    ([H + 3, H + 4], [K + 5, K + 6], [H + 9, H + 9], True, "partly"),  # the residual control is as vertical
    ([H - 0.5, H + 4], [K + 5, K + 6], [H, H], True, "not reproduced"),  # one seed at the uniform baseline
    ([H + 3, H + 4], [K - 0.1, K + 6], [H, H], True, "not reproduced"),  # kurtosis is part of the rule
    ([3.0, 3.5], [K + 5, K + 6], [1.0, 1.0], True, "not reproduced"),  # >= 3 is not enough at L = 64
    ([H + 3], [K + 5], [H], False, "not tested here"),
])
def test_sink_like_previous_token_heads_rule(v_mhc, k_mhc, v_res, present, expected):
    v = claims.sink_like_previous_token_heads(v_mhc, k_mhc, v_res, length=L, heads_present=present)
    assert v.verdict == expected and v.verdict in VERDICTS
    assert "H_L" in v.rule and f"{H:.2f}" in v.rule


def test_sink_like_rule_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="one value per seed"):
        claims.sink_like_previous_token_heads([5.0, 6.0], [3.0], [1.0], length=L, heads_present=True)
