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


# --- the rule helpers and the results JSON ---------------------------------------------------------

def test_a_verdict_must_be_legal_and_record_refuses_bare_strings(tmp_path):
    from sinklens.provenance import ChapterResults

    with pytest.raises(ValueError, match="verdict must be one of"):
        claims.Verdict("probably", "r")
    res = ChapterResults(chapter="99_x")
    with pytest.raises(TypeError, match="Verdict"):
        res.record("a", "claim a", value=1, verdict="reproduced")
    entry = res.record("b", "claim b", value=1, verdict=claims.with_sensitivity(
        claims.second_copy_loss_lower, "max_ratio", first=[4.0], second=[1.5], max_ratio=0.5))
    assert entry["verdict"] == "reproduced" and entry["rule"].startswith("reproduced =")
    assert entry["sensitivity"] == {"0.5x": "partly", "2x": "reproduced"}
    text = claims.what_we_found(res.claims)
    assert text.startswith("## What we found") and "**reproduced**: claim b" in text and "0.5x / 2x" in text


def test_a_claim_not_tested_must_say_why_in_measured_terms():
    from sinklens.provenance import ChapterResults

    res = ChapterResults(chapter="99_x")
    absent = claims.layer_shift({}, heads_present=False)  # a rule's "not tested here" knows no model
    with pytest.raises(ValueError, match="says not why: pass why_not_tested"):
        res.record("a", "claim a", value=1, verdict=absent)
    with pytest.raises(ValueError, match="says not why"):
        res.record("a", "claim a", value=1, verdict=absent, why_not_tested="  ")
    entry = res.record("a", "claim a", value=1, verdict=absent,
                       why_not_tested="no duplicate-token head in residual seed 0 (best score 0.12 < 0.4)")
    assert entry["why_not_tested"].startswith("no duplicate-token head in residual seed 0")
    stated = res.record("b", "claim b", value=None, verdict=claims.not_tested("the screen is not implemented"))
    assert stated["why_not_tested"] == "the screen is not implemented"  # not_tested's reason is the why
    tested = res.record("c", "claim c", value=1, verdict=claims.layer_shift({"mhc": [0.1]}, heads_present=True),
                        why_not_tested="only read when the verdict is not tested here")
    assert tested["verdict"] == "reproduced" and "why_not_tested" not in tested
    with pytest.raises(ValueError, match="needs its reason"):
        claims.not_tested("")
    text = claims.what_we_found(res.claims)
    assert "*Why not tested:* no duplicate-token head in residual seed 0 (best score 0.12 < 0.4). *Rule:*" in text
    assert "Why not tested" not in [line for line in text.splitlines() if "claim b" in line][0]  # the rule says it


# --- leaving out one seed ---------------------------------------------------------------------------

HC_GAIN = {0: 2.0, 1: 2.0, 2: 1.2, 3: 1.8}  # per seed; seed 2 alone stays under gain_grows' 1.5


def _gain_verdict(seeds):
    return claims.gain_grows([HC_GAIN[s] for s in seeds])


def test_leave_one_seed_out_finds_a_verdict_one_seed_decides():
    v = claims.leave_one_seed_out(_gain_verdict, [0, 1, 2])
    assert v.verdict == "partly" and dict(v.without_seed) == {0: "partly", 1: "partly", 2: "reproduced"}
    assert v.rests_on_one_seed
    assert claims.seed_stability_words(v.without_seed, v.verdict) == "without seed 2 it is reproduced, so one model decides it"


def test_seed_stability_words_name_every_seed_that_changes_the_verdict():
    words = claims.seed_stability_words({0: "reproduced", 1: "partly", 2: "not reproduced"}, "partly")
    assert words == "without seed 0 it is reproduced, without seed 2 not reproduced, so one model decides it"
    assert claims.seed_stability_words({"0": "partly", "1": "partly", "2": "partly"}, "partly").startswith("the same")


def test_leave_one_seed_out_passes_a_verdict_no_one_seed_decides():
    v = claims.leave_one_seed_out(_gain_verdict, [0, 1, 3])
    assert v.verdict == "reproduced" and set(v.without_seed.values()) == {"reproduced"}
    assert not v.rests_on_one_seed
    assert claims.seed_stability_words(v.without_seed, v.verdict) == "the same without any one of seeds 0, 1, 3"


def test_leave_one_seed_out_decides_on_the_subsets_it_names():
    calls = []
    claims.leave_one_seed_out(lambda ss: calls.append(ss) or _gain_verdict(ss), [3, 0, 1])
    assert calls == [[3, 0, 1], [0, 1], [3, 1], [3, 0]]


def test_leave_one_seed_out_keeps_the_rule_and_sensitivity_of_the_full_verdict():
    v = claims.leave_one_seed_out(
        lambda ss: claims.with_sensitivity(claims.gain_grows, "threshold", per_seed_max=[HC_GAIN[s] for s in ss],
                                           threshold=1.5), [0, 1, 2])
    assert v.sensitivity == {"0.5x": "reproduced", "2x": "not reproduced"} and v.rule.startswith("reproduced =")


def test_leave_one_seed_out_treats_each_verdict_of_a_mapping():
    out = claims.leave_one_seed_out(lambda ss: {"grows": _gain_verdict(ss),
                                                 "always": claims.gain_grows([5.0] * len(ss))}, [0, 1, 2])
    assert out["grows"].rests_on_one_seed and not out["always"].rests_on_one_seed
    assert dict(out["always"].without_seed) == {0: "reproduced", 1: "reproduced", 2: "reproduced"}


def test_leave_one_seed_out_records_nothing_below_three_seeds():
    v = claims.leave_one_seed_out(_gain_verdict, [0, 2])
    assert v.verdict == "partly" and not v.without_seed and not v.rests_on_one_seed
    assert claims.seed_stability_words(v.without_seed, v.verdict) == ""


def test_leave_one_seed_out_refuses_bad_input():
    with pytest.raises(ValueError, match="distinct"):
        claims.leave_one_seed_out(_gain_verdict, [0, 0, 1])
    with pytest.raises(ValueError, match="same verdict names"):
        claims.leave_one_seed_out(lambda ss: {f"n{len(ss)}": _gain_verdict(ss)}, [0, 1, 2])
    with pytest.raises(TypeError, match="Verdict or a mapping"):
        claims.leave_one_seed_out(lambda ss: "partly", [0, 1, 2])


def test_of_seeds_keeps_the_entries_of_the_seeds_asked_for_in_seed_order():
    assert claims.of_seeds([10, 11, 12], [3, 0, 1], [1, 3]) == [10, 12]
    assert claims.of_seeds({3: "a", 0: "b", 1: "c"}, [3, 0, 1], [0, 1]) == ["b", "c"]
    assert claims.of_seeds([10, 11, 12], [3, 0, 1], []) == []
    with pytest.raises(ValueError, match="not among"):
        claims.of_seeds([10, 11, 12], [3, 0, 1], [2])
    with pytest.raises(ValueError, match="one value per seed"):
        claims.of_seeds([10, 11], [3, 0, 1], [0])


def test_leave_one_seed_out_checks_what_decide_returns_even_below_three_seeds():
    with pytest.raises(TypeError, match="Verdict or a mapping"):
        claims.leave_one_seed_out(lambda ss: "partly", [0])


def test_the_results_json_and_what_we_found_carry_the_leave_one_seed_out_check(tmp_path):
    from sinklens.provenance import ChapterResults

    res = ChapterResults(chapter="99_x")
    entry = res.record("g", "claim g", value=1, verdict=claims.leave_one_seed_out(_gain_verdict, [0, 1, 2]))
    assert entry["without_seed"] == {"0": "partly", "1": "partly", "2": "reproduced"} and entry["rests_on_one_seed"]
    plain = res.record("h", "claim h", value=1, verdict=_gain_verdict([0, 1]))
    assert "without_seed" not in plain and "rests_on_one_seed" not in plain
    text = claims.what_we_found(res.claims)
    assert "Leaving out one seed: without seed 2 it is reproduced, so one model decides it." in text
    assert text.count("Leaving out one seed") == 1


def test_with_sensitivity_needs_the_threshold_by_keyword():
    with pytest.raises(ValueError, match="by keyword"):
        claims.with_sensitivity(claims.gain_grows, "threshold", per_seed_max=[2.0])


def test_implementations_agree_is_a_self_check():
    assert claims.implementations_agree(0.5, 1.0).verdict == "pass"
    assert claims.implementations_agree(1.5, 1.0).verdict == "fail"


def test_kv_groups_count_heads_that_share_keys_once():
    heads = [(17, 3), (17, 4), (17, 5), (18, 6), (18, 7)]
    assert claims.kv_groups(heads, n_heads=9, n_kv_heads=3) == {(17, 1), (18, 2)}
    assert len(claims.kv_groups(heads, n_heads=9, n_kv_heads=None)) == 5
    assert claims.jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3) and claims.jaccard(set(), set()) == 1.0


# --- chapter 2 -------------------------------------------------------------------------------------

def test_induction_heads_found_rejects_a_positional_head():
    rep = torch.tensor([[0.9, 0.1]])
    assert claims.induction_heads_found(rep, torch.tensor([[0.05, 0.1]]), threshold=0.4).verdict == "reproduced"
    # the same head scores as high without a repeat: it attends N-1 back by position alone
    assert claims.induction_heads_found(rep, torch.tensor([[0.85, 0.1]]), threshold=0.4).verdict == "not reproduced"
    with pytest.raises(ValueError, match="one shape"):
        claims.induction_heads_found(rep, torch.zeros(2, 2), threshold=0.4)


@pytest.mark.parametrize("found, ref, expected", [
    ({1, 2, 3, 4, 5}, {1, 2, 3, 4, 5}, "reproduced"), ({1, 9}, {1, 2, 3}, "partly"),
    ({7}, {1, 2}, "not reproduced"), ({1}, set(), "not tested here"),
])
def test_same_head_set(found, ref, expected):
    assert claims.same_head_set(found, ref).verdict == expected


@pytest.mark.parametrize("without_prev, without_ctrl, present, expected", [
    (0.1, 0.55, True, "reproduced"),
    (0.1, 0.1, True, "not reproduced"),  # the control hurts as much: any ablation of that size would do
    (0.4, 0.55, True, "partly"),
    (0.6, 0.5, True, "not reproduced"),
    (0.1, 0.5, False, "not tested here"),
])
def test_previous_token_heads_compose(without_prev, without_ctrl, present, expected):
    v = claims.previous_token_heads_compose(0.6, without_prev, without_ctrl, heads_present=present)
    assert v.verdict == expected


def test_previous_token_heads_compose_takes_the_strongest_control():
    # one of several random control sets hurts as much as the previous-token heads: not the circuit's effect
    assert claims.previous_token_heads_compose(0.6, 0.1, [0.55, 0.58, 0.1]).verdict == "not reproduced"
    # every control is mild: reproduced; a control that hurts more than min_drop but less than the heads: partly
    assert claims.previous_token_heads_compose(0.6, 0.1, [0.55, 0.5, 0.45]).verdict == "reproduced"
    assert claims.previous_token_heads_compose(0.6, 0.1, [0.55, 0.2]).verdict == "partly"
    with pytest.raises(ValueError):
        claims.previous_token_heads_compose(0.6, 0.1, [])
    for bad in [(float("nan"), 0.1, [0.5]), (0.6, float("nan"), [0.5]), (0.6, 0.1, [0.5, float("nan")])]:
        with pytest.raises(ValueError, match="finite"):
            claims.previous_token_heads_compose(*bad)


def test_known_heads_and_second_copy_loss():
    assert claims.known_heads_recovered({1, 2}, {1, 2}).verdict == "reproduced"
    assert claims.known_heads_recovered({1}, {1, 2}).verdict == "partly"
    assert claims.known_heads_recovered({3}, {1, 2}).verdict == "not reproduced"
    assert claims.known_heads_recovered({1}, {1}, available=False).verdict == "not tested here"
    assert claims.second_copy_loss_lower([6.0, 6.0], [2.0, 2.5]).verdict == "reproduced"
    assert claims.second_copy_loss_lower([6.0, 6.0], [5.0, 6.5]).verdict == "partly"
    assert claims.second_copy_loss_lower([6.0], [7.0]).verdict == "not reproduced"
    with pytest.raises(ValueError):
        claims.second_copy_loss_lower([6.0], [1.0, 2.0])


# --- chapter 3 -------------------------------------------------------------------------------------

def test_dormant_on_text_needs_the_switch_to_beat_all_heads():
    all_t, all_c = [0.9, 0.9, 0.2], [0.9, 0.85, 0.2]  # most heads park everywhere: a small mean switch
    ok = claims.dormant_on_text([0.8, 0.7], [0.1, 0.2], all_t, all_c, groups=[(1, 0), (1, 0)])
    assert ok.verdict == "reproduced"
    # parking that does not switch off on the copy is what every sink head does: not dormancy
    assert claims.dormant_on_text([0.8], [0.85], all_t, all_c, groups=[(1, 0)]).verdict == "not reproduced"
    # a switch no larger than the average head's is not evidence
    same = claims.dormant_on_text([0.8], [0.7], [0.8], [0.7], groups=[(1, 0)])
    assert same.verdict == "partly"
    # grouped-query attention: one group dormant and one not -> partly
    assert claims.dormant_on_text([0.8, 0.3], [0.1, 0.1], all_t, all_c, groups=[(1, 0), (2, 0)]).verdict == "partly"
    assert claims.dormant_on_text([], [], all_t, all_c, groups=[]).verdict == "not tested here"
    # the per-head condition the chapter counts is the rule's own
    assert claims.dormant_heads([0.8, 0.8, 0.4], [0.1, 0.9, 0.1]).tolist() == [True, False, False]
    assert claims.dormant_heads([0.45], [0.1], min_share=0.4).tolist() == [True]
    with pytest.raises(ValueError, match="one text and one copy"):
        claims.dormant_heads([0.8, 0.7], [0.1])


def test_value_drain_and_residual_norm_rules():
    assert claims.value_drain([0.1, 0.3]).verdict == "reproduced"
    assert claims.value_drain([0.1, 0.8]).verdict == "partly"
    assert claims.value_drain([1.2]).verdict == "not reproduced"
    assert claims.value_drain([]).verdict == "not tested here"
    assert claims.residual_relatively_small([0.5] * 9 + [2.0]).verdict == "reproduced"
    assert claims.residual_relatively_small([0.5, 2, 2, 2]).verdict == "partly"
    assert claims.residual_relatively_small([2, 2]).verdict == "not reproduced"
    assert claims.residual_peak_massive([1, 20, 30], [1, 2], massive_ratio=10).verdict == "reproduced"
    assert claims.residual_peak_massive([0.5, 20, 30], [0], massive_ratio=10).verdict == "partly"
    assert claims.residual_peak_massive([1, 2, 3], [1], massive_ratio=10).verdict == "not reproduced"


# --- chapter 4 -------------------------------------------------------------------------------------

def test_chapter_3s_first_look_at_where_the_sink_sits():
    assert claims.sink_stays_at_position_0(0.8, 0.5, 0.01, 0.7)  # kept 62%, moved BOS draws little
    assert not claims.sink_stays_at_position_0(0.8, 0.3, 0.01, 0.7)  # an ordinary first token loses the sink
    assert not claims.sink_stays_at_position_0(0.8, 0.6, 0.4, 0.7)  # the moved BOS takes it along
    assert claims.sink_stays_at_position_0(0.8, 0.4, 0.0, 0.7)  # exactly half kept counts as kept
    with pytest.raises(ValueError, match="positive attention"):
        claims.sink_stays_at_position_0(0.0, 0.0, 0.0, 0.0)


def test_sink_follows_position():
    assert claims.sink_follows_position(0.8, 0.6, 0.01).verdict == "reproduced"
    assert claims.sink_follows_position(0.8, 0.2, 0.01).verdict == "not reproduced"
    assert claims.sink_follows_position(0.8, 0.6, 0.5).verdict == "not reproduced"
    assert claims.sink_follows_position(0.0, 0.0, 0.0).verdict == "not tested here"
    assert claims.sink_follows_position(0.8, 0.6, 0.01, has_sink=False).verdict == "not tested here"  # no layer has a sink


CLEAN = 0.8


@pytest.mark.parametrize("zero, mean, controls, suff, layer, expected", [
    (0.1, 0.2, {"a": 0.7}, {"s": 0.5}, 0, "reproduced"),
    (0.1, 0.5, {"a": 0.7}, {"s": 0.5}, 0, "not reproduced"),  # mean-ablation leaves too much
    (0.1, 0.2, {"a": 0.1}, {"s": 0.5}, 0, "not reproduced"),  # a control collapses the sink too
    (0.1, 0.2, {"a": 0.7}, {"s": 0.05}, 0, "partly"),  # necessary, not sufficient
    (0.1, 0.2, {"a": 0.7}, {"s": 0.5}, 2, "partly"),  # not in blocks 0-1
    (0.7, 0.7, {"a": 0.7}, {"s": 0.5}, 0, "not reproduced"),
])
def test_recognised_within_two_blocks(zero, mean, controls, suff, layer, expected):
    v = claims.recognised_within_two_blocks(CLEAN, zero, mean, controls, suff, layer)
    assert v.verdict == expected
    assert claims.recognised_within_two_blocks(CLEAN, zero, mean, controls, suff, layer, has_sink=False).verdict == "not tested here"


def test_recognition_lines_are_separate():
    """Varying the necessity line must not move the controls' or the sufficiency line."""
    # necessary only under a looser line (mean-ablation leaves 0.45 of 0.8 > 0.5 x clean); a control at 0.5 of clean
    args = (CLEAN, 0.01, 0.45, {"runner-up": 0.47}, {"patched": 0.05}, 0)
    assert claims.recognised_within_two_blocks(*args).verdict == "not reproduced"
    assert claims.recognised_within_two_blocks(*args, collapse=1.0).verdict == "partly"  # controls still hold at 0.5
    cond = claims.recognition_conditions(*args, collapse=1.0)
    assert cond == {"necessary": True, "controls_hold": True, "sufficient": False, "in_blocks_0_1": True}
    v = claims.with_sensitivity(claims.recognised_within_two_blocks, "collapse", clean=CLEAN, zero_ablated=0.01,
                                mean_ablated=0.45, controls={"runner-up": 0.47}, sufficiency={"patched": 0.05},
                                responsible_layer=0, collapse=0.5)
    assert v.sensitivity == {"0.5x": "not reproduced", "2x": "partly"}


def test_emergence_rules():
    assert claims.sink_emerges_early({0: 10, 1: 20}, 100).verdict == "reproduced"
    assert claims.sink_emerges_early({0: 10, 1: 80}, 100).verdict == "partly"
    assert claims.sink_emerges_early({0: 10, 1: None}, 100).verdict == "partly"
    assert claims.sink_emerges_early({0: None}, 100).verdict == "not tested here"
    # a sink that forms only late in every seed refutes "early" (before, the rule could only say partly)
    assert claims.sink_emerges_early({0: 70, 1: 70, 2: 90}, 100).verdict == "not reproduced"
    assert claims.sink_emerges_early({0: 70, 1: None}, 100).verdict == "not reproduced"
    sig = claims.signature_in_first_two_layers
    assert sig({"trained": [3, 12, 40], "pretrained": [15, 20]}).verdict == "reproduced"
    assert sig({"trained": [3, 4, 40], "pretrained": [15, 20]}).verdict == "partly"
    assert sig({"trained": [1, 2, 3, 40], "pretrained": [1, 2, 3, 4, 11]}).verdict == "not reproduced"
    # a model whose norm is never massive is not tested there: it counts neither way
    assert sig({"trained": [2, 3, 4], "pretrained": [15, 20]}).verdict == "reproduced"
    assert sig({"trained": [2, 3, 4], "pretrained": [1, 2, 10.5]}).verdict == "not reproduced"
    assert sig({"trained": [2, 3, 4], "pretrained": [1, 2, 3]}).verdict == "not tested here"
    # the threshold decides which layer is the first massive one
    assert sig({"pretrained": [1, 6, 10.5]}, massive_ratio=5.0).verdict == "reproduced"
    assert sig({"pretrained": [1, 6, 10.5]}, massive_ratio=20.0).verdict == "not tested here"
    assert claims.first_massive_layer([1, 9.99, 10.0], 10.0) == 2 and claims.first_massive_layer([1, 2], 10.0) is None


# --- chapter 5 -------------------------------------------------------------------------------------

def test_layer_shift_and_combination():
    assert claims.layer_shift({"mhc": [0.1, 0.2], "mhc-lite": [0.1]}, heads_present=True).verdict == "reproduced"
    assert claims.layer_shift({"mhc": [0.3, -0.1], "mhc-lite": [-0.1]}, heads_present=True).verdict == "partly"
    assert claims.layer_shift({"mhc": [0.0, -0.1], "mhc-lite": [-0.1]}, heads_present=True).verdict == "not reproduced"
    assert claims.layer_shift({}, heads_present=False).verdict == "not tested here"
    with pytest.raises(ValueError):
        claims.layer_shift({"mhc": []}, heads_present=True)
    V = claims.Verdict
    assert claims.both_head_types(V("reproduced", ""), V("reproduced", "")).verdict == "reproduced"
    assert claims.both_head_types(V("reproduced", ""), V("not reproduced", "")).verdict == "partly"
    assert claims.both_head_types(V("not tested here", ""), V("not reproduced", "")).verdict == "not reproduced"
    assert claims.both_head_types(V("not tested here", ""), V("not tested here", "")).verdict == "not tested here"


def test_pattern_and_ablation_disagree_uses_the_residual_control():
    f = claims.pattern_and_ablation_disagree
    assert f([0.2], [0.3], [0.8], heads_present=True).verdict == "reproduced"
    assert f([0.2], [0.3], [0.1], heads_present=True).verdict == "partly"  # the residual model disagrees more
    assert f([0.2], [0.9], [0.8], heads_present=True).verdict == "partly"
    assert f([0.8], [0.9], [0.8], heads_present=True).verdict == "not reproduced"
    assert f([0.2], [0.3], [0.8], heads_present=False).verdict == "not tested here"


def test_gain_and_parity_rules():
    assert claims.gain_bounded_by_construction(1.05, 1.0).verdict == "by construction"
    assert claims.gain_bounded_by_construction(1.3, 1.0).verdict == "not reproduced"
    assert claims.gain_grows([2.0, 3.0]).verdict == "reproduced"
    assert claims.gain_grows([2.0, 1.2]).verdict == "partly"
    assert claims.gain_grows([1.0]).verdict == "not reproduced"
    assert claims.losses_match([3.0, 3.1, 2.9], [3.01, 3.12, 2.91]).verdict == "reproduced"
    assert claims.losses_match([3.0, 3.01, 2.99], [3.2, 3.21, 3.19]).verdict == "not reproduced"
    assert claims.losses_match([3.0], [3.0]).verdict == "not tested here"  # one seed: no spread, no test


# --- chapter 6 -------------------------------------------------------------------------------------

def test_timing_rules():
    assert claims.no_bos_heads_early(0, 5).verdict == "reproduced"
    assert claims.no_bos_heads_early(2, 5).verdict == "not reproduced"
    assert claims.no_bos_heads_early(0, 0).verdict == "not tested here"
    # (induction tokens, BOS-transition tokens) per run; None = never within training
    assert claims.induction_before_bos([(1.0, 12.0), (1.0, 20.0)]).verdict == "reproduced"
    assert claims.induction_before_bos([(1.0, 12.0), (1.0, None)]).verdict == "partly"  # one run censored
    assert claims.induction_before_bos([(1.0, 3.0), (1.0, 20.0)]).verdict == "partly"  # too little later
    assert claims.induction_before_bos([(2.0, 1.0), (1.0, 20.0)]).verdict == "not reproduced"  # BOS first
    assert claims.induction_before_bos([(1.0, 1.0), (1.0, 20.0)]).verdict == "not reproduced"  # same checkpoint
    # the BOS attractor forms in a run that never forms induction: counter-evidence, not missing data
    assert claims.induction_before_bos([(None, 5.0), (1.0, None)]).verdict == "not reproduced"
    assert claims.induction_before_bos([(None, 5.0), (1.0, 20.0)]).verdict == "not reproduced"
    # induction in the untrained model (0 tokens) comes before any later BOS transition
    assert claims.induction_before_bos([(0.0, 5.0)]).verdict == "reproduced"
    # no BOS transition in any run: nothing to order
    assert claims.induction_before_bos([(1.0, None), (None, None)]).verdict == "not tested here"
    assert claims.induction_before_bos([]).verdict == "not tested here"
    assert claims.with_sensitivity(claims.induction_before_bos, "min_ratio", runs=[(1.0, 15.0)],
                                   min_ratio=11.0).sensitivity == {"0.5x": "reproduced", "2x": "partly"}
    assert claims.rise_shape_measured(0.5, 2).verdict == "measured"
    assert claims.rise_shape_measured(0.05, 2).verdict == "not tested here"
    assert claims.not_tested("no screen").verdict == "not tested here"


def test_position0_share_and_the_mhc_rule():
    scores = torch.tensor([[0.9, 0.2], [0.6, 0.5]])
    assert claims.position0_share(scores) == pytest.approx(0.5)  # 0.5 itself is not "more than half"
    f = claims.fewer_position0_heads_under_mhc
    assert f({"residual": [0.6, 0.5], "mhc": [0.1, 0.2], "mhc-lite": [0.2, 0.1]}).verdict == "reproduced"
    assert f({"residual": [0.6, 0.5], "mhc": [0.1, 0.6], "mhc-lite": [0.7, 0.6]}).verdict == "partly"
    assert f({"residual": [0.2, 0.2], "mhc": [0.3, 0.6], "mhc-lite": [0.7, 0.6]}).verdict == "not reproduced"
    assert f({"residual": [0.0], "mhc": [0.3], "mhc-lite": [0.0]}).verdict == "not tested here"


@pytest.mark.parametrize("length", [15, 64])
def test_top_key_share_is_length_free_for_a_sink(length):
    sink = torch.zeros(length, length)
    sink[:, 0] = 1.0
    assert claims.top_key_share(sink) == pytest.approx(1.0)  # verticality: length
    assert claims.group_verticality(sink) == pytest.approx(length)
    prev = torch.zeros(length, length)
    prev[0, 0] = 1.0
    prev[torch.arange(1, length), torch.arange(0, length - 1)] = 1.0
    assert claims.top_key_share(prev) == pytest.approx(1 / (length - 1))
    harmonic = sum(1 / i for i in range(1, length + 1))
    assert claims.top_key_share(claims.uniform_causal_pattern(length)) == pytest.approx((harmonic - 1) / (length - 1), rel=1e-5)
    with pytest.raises(ValueError):
        claims.top_key_share(torch.ones(1, 1))


def test_sensitivity_above_a_floor_varies_the_distance_to_it():
    # verticality is >= 1 for any pattern: half of a threshold of 2 (= 1) would pass anything
    plain = claims.with_sensitivity(claims.vertical_above, "threshold", verticality_mhc=[1.2], threshold=2.0,
                                    heads_present=True)
    assert plain.sensitivity["0.5x"] == "reproduced"
    floored = claims.with_sensitivity(claims.vertical_above, "threshold", floor=1.0, verticality_mhc=[1.2],
                                      threshold=2.0, heads_present=True)
    assert floored.verdict == plain.verdict == "not reproduced"
    assert floored.sensitivity == {"0.5x": "not reproduced", "2x": "not reproduced"}  # 1.5 and 3
    assert claims.with_sensitivity(claims.vertical_above, "threshold", floor=1.0, verticality_mhc=[1.6],
                                   threshold=2.0, heads_present=True).sensitivity["0.5x"] == "reproduced"
    assert "above 1" in floored.rule


def test_sensitivity_of_a_share_stays_inside_its_range():
    # twice a Jaccard line of 0.8 is 1.6, which no overlap can reach: identical sets would read "partly"
    same = {(1, 0), (2, 3)}
    plain = claims.with_sensitivity(claims.same_head_set, "min_jaccard", found=same, reference=same, min_jaccard=0.8)
    assert plain.verdict == "reproduced" and plain.sensitivity["2x"] == "partly"
    bounded = claims.with_sensitivity(claims.same_head_set, "min_jaccard", ceiling=1.0, found=same, reference=same,
                                      min_jaccard=0.8)
    assert bounded.sensitivity == {"0.5x": "reproduced", "2x": "reproduced"}
    assert "0.667 / 0.889" in bounded.rule
    # the odds move the way the plain factor does, and the check can still fail: Jaccard 0.8 < 8/9
    near = claims.with_sensitivity(claims.same_head_set, "min_jaccard", ceiling=1.0, found={1, 2, 3, 4},
                                   reference={1, 2, 3, 4, 5}, min_jaccard=0.8)
    assert near.verdict == "reproduced" and near.sensitivity["2x"] == "partly"
    assert claims.varied_threshold(0.5, 2.0, ceiling=1.0) == pytest.approx(2 / 3)
    assert claims.varied_threshold(0.25, 0.5, ceiling=1.0) == pytest.approx(1 / 7)
    assert claims.varied_threshold(0.4, 2.0) == pytest.approx(0.8)  # unbounded: the plain factor
    with pytest.raises(ValueError, match="strictly inside"):
        claims.varied_threshold(1.0, 2.0, ceiling=1.0)


def test_vertical_above_every_outcome():
    assert claims.vertical_above([4.0, 5.0], threshold=2.0, heads_present=True).verdict == "reproduced"
    assert claims.vertical_above([1.5, 5.0], threshold=2.0, heads_present=True).verdict == "partly"
    assert claims.vertical_above([1.5, 1.9], threshold=2.0, heads_present=True).verdict == "not reproduced"
    assert claims.vertical_above([4.0], threshold=2.0, heads_present=False).verdict == "not tested here"
    # the same heads fail once the threshold is uniform attention's H_15 instead of 2
    h15 = claims.uniform_verticality(15)
    assert claims.vertical_above([3.0, 3.2], threshold=h15, heads_present=True, baseline="H_15").verdict == "not reproduced"
    with pytest.raises(ValueError):
        claims.vertical_above([], threshold=2.0, heads_present=True)


def test_direct_split_by_construction():
    zero_below_last = torch.zeros(3, 4)
    zero_below_last[-1] = 0.3
    assert claims.direct_split_by_construction(zero_below_last).verdict == "by construction"
    some = zero_below_last.clone()
    some[0, 1] = 0.01
    assert claims.direct_split_by_construction(some).verdict == "measured"
    with pytest.raises(ValueError):
        claims.direct_split_by_construction(torch.zeros(1, 4))
