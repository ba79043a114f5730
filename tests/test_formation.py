"""The formation criteria: each decision on hand-made numbers (including the traps), then on a model."""

from __future__ import annotations

import numpy as np
import pytest

from sinklens import formation as F

L, H = 4, 2


def _formation(**overrides) -> F.Formation:
    """No head scores anything; copying does not happen. Tests switch things on."""
    zeros = np.zeros((L, H))
    spec = dict(
        previous_token_text=zeros.copy(), previous_token_rr=zeros.copy(), induction_rr=zeros.copy(),
        duplicate_rr=zeros.copy(), induction_selectivity=np.ones((L, H)), first_token_text=zeros.copy(),
        first_copy_loss=6.0, second_copy_loss=6.0, n_repeat=31,
    )
    spec.update(overrides)
    return F.Formation(**spec)


def _at(value: float, *heads: tuple[int, int], fill: float = 0.0) -> np.ndarray:
    a = np.full((L, H), fill)
    for l, h in heads:
        a[l, h] = value
    return a


def test_a_two_step_circuit_that_copies_passes():
    f = _formation(
        previous_token_text=_at(0.7, (1, 0)), induction_rr=_at(0.8, (2, 1)),
        induction_selectivity=_at(120.0, (2, 1), fill=1.0), first_token_text=_at(0.6, (2, 1)),
        second_copy_loss=1.0,
    )
    d = F.decide(f)
    assert d.formed and d.passes == {"previous_token": True, "induction": True, "copying": True, "dormant": True}
    assert d.previous_token_heads == [(1, 0)] and d.induction_heads == [(2, 1)]
    assert d.induction_p0 == {"L2H1": pytest.approx(0.6)} and d.sink_heads == [(2, 1)]


def test_nothing_formed_fails_every_criterion():
    d = F.decide(_formation())
    assert not d.formed and not any(d.passes.values())
    assert d.induction_heads == [] and d.induction_p0 == {}


def test_the_fixed_offset_trap_is_not_an_induction_head():
    """A positional head scores high on BOS + R + R but not on the variable-offset screen."""
    f = _formation(previous_token_rr=_at(0.9, (0, 0)), induction_rr=_at(0.94, (1, 0)),
                   induction_selectivity=_at(1.0, (1, 0), fill=1.0), second_copy_loss=1.0)
    d = F.decide(f)
    assert not d.passes["induction"] and d.induction_score_only == [(1, 0)] and not d.formed


def test_confirmed_induction_heads_is_the_rule_decide_uses():
    """Score, screen and a previous-token head in a lower layer: each one missing drops the head."""
    score = _at(0.8, (2, 0), (2, 1), (3, 0), (0, 1))
    screen_sel = _at(120.0, (2, 0), (3, 0), (0, 1), fill=1.0)  # (2, 1) is the positional trap
    prev = _at(0.6, (1, 1)) + _at(0.5, (0, 1))
    prev[0, 1] = 0.3  # under the line: the lowest previous-token head is in layer 1
    mask = F.confirmed_induction_heads(score, screen_sel, prev)
    assert F._heads(mask) == [(2, 0), (3, 0)]  # (0, 1) is not above layer 1, (2, 1) fails the screen
    assert not F.confirmed_induction_heads(score, screen_sel, np.zeros((L, H))).any()
    lower = F.Criteria(previous_token=0.25)  # now layer 0 has one, so layer 1 and up count; (0, 1) still not
    assert F._heads(F.confirmed_induction_heads(score, screen_sel, prev, lower)) == [(2, 0), (3, 0)]
    f = _formation(previous_token_rr=prev, induction_rr=score, induction_selectivity=screen_sel)
    assert F.decide(f).induction_heads == F._heads(mask)
    assert F.above_a_previous_token_head(prev)[:, 0].tolist() == [False, False, True, True]  # above layer 1
    with pytest.raises(ValueError, match="one shape"):
        F.confirmed_induction_heads(score, screen_sel[:2], prev)


def test_an_induction_head_needs_a_previous_token_head_below_it():
    screen_ok = dict(induction_rr=_at(0.8, (1, 1)), induction_selectivity=_at(200.0, (1, 1), fill=1.0),
                     second_copy_loss=1.0)
    same_layer = F.decide(_formation(previous_token_text=_at(0.6, (1, 0)), **screen_ok))
    assert not same_layer.passes["induction"]
    below = F.decide(_formation(previous_token_text=_at(0.6, (0, 0)), **screen_ok))
    assert below.passes["induction"] and below.formed
    none = F.decide(_formation(**screen_ok))
    assert not none.passes["previous_token"] and not none.passes["induction"]


def test_copying_needs_the_second_copy_at_half_the_first_copys_loss():
    assert F.decide(_formation(second_copy_loss=3.0)).passes["copying"]  # exactly 0.5
    assert not F.decide(_formation(second_copy_loss=3.01)).passes["copying"]


def test_thresholds_come_from_the_criteria():
    f = _formation(previous_token_text=_at(0.35, (0, 0)))
    assert not F.decide(f).passes["previous_token"]
    assert F.decide(f, F.Criteria(previous_token=0.3)).passes["previous_token"]


def test_dormant_effect_is_reported_but_not_required():
    f = _formation(previous_token_text=_at(0.7, (0, 0)), induction_rr=_at(0.8, (2, 1)),
                   induction_selectivity=_at(120.0, (2, 1), fill=1.0), first_token_text=_at(0.2, (2, 1)),
                   second_copy_loss=1.0)
    d = F.decide(f)
    assert d.formed and not d.passes["dormant"] and d.induction_p0["L2H1"] == pytest.approx(0.2)


def test_measure_runs_on_a_model_and_rejects_bad_repeats():
    import torch

    from sinklens.model import GPT, GPTConfig
    from sinklens.train import TrainConfig

    torch.manual_seed(0)
    cfg = TrainConfig(model=GPTConfig(n_layers=2, d_model=32, n_heads=2, n_ctx=64, d_vocab=1024, positional="rotary"))
    model = GPT(cfg.model).eval()
    text, repeated, probe = F.standard_inputs(cfg, n_seqs=4, n_probe=16)
    f = F.measure(model, text, repeated, probe)
    shape = (model.cfg.n_layers, model.cfg.n_heads)
    assert f.induction_rr.shape == shape and f.induction_selectivity.shape == shape
    assert f.first_copy_loss > 0 and f.n_repeat == (model.cfg.n_ctx - 1) // 2
    assert isinstance(F.decide(f).to_dict()["formed"], bool)
    with pytest.raises(ValueError, match="odd length"):
        F.measure(model, text, repeated[:, :-1], probe)
