"""The attention-class screen (arXiv 2606.02378) on constructed patterns whose class is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sinklens import selectivity as S
from sinklens.model import GPT, GPTConfig

N, T = 24, 64


@pytest.fixture(scope="module")
def probe():
    return S.probe_batch(N, T, (10, 200), seed=42, bos_id=0)


def peaked(probe: S.Probe, targets: torch.Tensor, mass: float) -> torch.Tensor:
    """One head's query row per sequence: ``mass`` spread over ``targets [N, m]``, the rest uniform
    over every other key (all keys are causally valid for the last query)."""
    attn = torch.zeros(probe.n_seqs, probe.seq_len)
    on = torch.zeros_like(attn, dtype=torch.bool)
    on.scatter_(1, targets, True)
    attn[on] = (mass / on.sum(1, keepdim=True).float()).expand_as(attn)[on]
    attn[~on] = ((1 - mass) / (~on).sum(1, keepdim=True).float()).expand_as(attn)[~on]
    return attn


def heads_for(probe, classes, mass=0.9):
    """``[1 layer, N, head, key]`` with one head per class in ``classes``."""
    targets = probe.targets()
    return torch.stack([peaked(probe, targets[c], mass) for c in classes], dim=1)[None]


# --- the probe -----------------------------------------------------------------------------------


def test_probe_layout(probe):
    rows = torch.arange(N)
    tok, q = probe.tokens, probe.query
    assert tok.shape == (N, T) and tok.dtype == torch.long and q == T - 1
    assert (tok[:, 0] == 0).all()  # BOS
    assert (tok[rows, probe.first_a] == tok[:, q]).all()  # A ... A
    assert (tok[rows, probe.b] != tok[:, q]).all() and (probe.b == probe.first_a + 1).all()
    assert (probe.first_a >= 1).all() and (probe.b <= q - 6).all()  # B never in the local window
    assert ((tok[:, 1:] >= 10) & (tok[:, 1:] < 200)).all()
    for i in range(N):  # A occurs exactly twice, B exactly once
        a, b = tok[i, q], tok[i, probe.b[i]]
        assert int((tok[i] == a).sum()) == 2 and int((tok[i] == b).sum()) == 1


def test_probe_baseline_keys_avoid_every_target(probe):
    assert probe.random.shape == (N, S.N_RANDOM)
    targets = torch.cat(list(probe.targets().values()), dim=1)
    for i in range(N):
        r = set(probe.random[i].tolist())
        assert len(r) == S.N_RANDOM and not r & set(targets[i].tolist())
        assert min(r) >= 1 and max(r) <= probe.query - 6


def test_probe_is_deterministic_and_seeded():
    a, b = S.probe_batch(8, 60, (5, 50), seed=3), S.probe_batch(8, 60, (5, 50), seed=3)
    c = S.probe_batch(8, 60, (5, 50), seed=4)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.random, b.random)
    assert not torch.equal(a.tokens, c.tokens)
    assert "8 probe sequences of 60 tokens" in a.describe()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seq_len=40), "too short"),
        (dict(seq_len=40, n_random=32), "too short"),
        (dict(vocab_range=(5, 7)), "at least 3"),
        (dict(vocab_range=(-1, 50)), "at least 3 non-negative"),
        (dict(vocab_range=5), "pair"),
        (dict(bos_id=20), "inside vocab_range"),
        (dict(n_seqs=0), "n_seqs"),
        (dict(n_random=0), "n_random"),
    ],
)
def test_probe_rejects_bad_input(kwargs, match):
    args = dict(n_seqs=4, seq_len=64, vocab_range=(10, 100), seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
        S.probe_batch(**args)


def test_a_shorter_probe_works_with_fewer_baseline_keys():
    p = S.probe_batch(4, 20, (10, 100), n_random=11)
    assert p.random.shape == (4, 11)


# --- selectivity and classes ---------------------------------------------------------------------


def test_each_constructed_head_gets_its_class(probe):
    attn = heads_for(probe, S.CLASSES)
    sel = S.selectivity(attn, probe)
    assert sel.shape == (len(S.CLASSES), 1, len(S.CLASSES))
    assert S.classify(sel).tolist() == [list(range(len(S.CLASSES)))]
    # 0.9 on m targets against 0.1 / (T - m) elsewhere
    for h, c in enumerate(S.CLASSES):
        m = probe.targets()[c].shape[1]
        expected = (0.9 / m) / (0.1 / (T - m))
        assert float(sel[h, 0, h]) == pytest.approx(expected, rel=1e-4)
    assert S.induction_members(sel).tolist() == [[True, False, False, False, False, False]]


def test_uniform_attention_has_selectivity_one_and_no_class(probe):
    attn = torch.full((2, N, 3, T), 1.0 / T)
    sel = S.selectivity(attn, probe)
    assert torch.allclose(sel, torch.ones_like(sel))
    assert (S.classify(sel) == S.UNCLASSIFIED).all()
    assert S.class_fractions(S.classify(sel)).sum() == 0


def test_thresholds_separate_classification_from_circuit_membership(probe):
    # mass chosen so that the induction selectivity is 40x: classified (>= 30) but not a member (< 50)
    x = 40.0
    mass = x / (T - 1 + x)  # (mass) / ((1 - mass) / (T - 1)) = x
    attn = heads_for(probe, ["induction"], mass)
    sel = S.selectivity(attn, probe)
    assert float(sel[0, 0, 0]) == pytest.approx(x, rel=1e-4)
    assert S.classify(sel).item() == S.CLASSES.index("induction")
    assert not S.induction_members(sel).item()
    assert S.classify(sel, threshold=41).item() == S.UNCLASSIFIED
    assert S.induction_members(sel, threshold=39).item()


def test_best_class_wins_when_two_pass(probe):
    attn = torch.full((N, T), 0.05 / (T - 2))
    attn[:, 0] = 0.7  # BOS
    attn[torch.arange(N), probe.b] = 0.25  # B
    sel = S.selectivity(attn[None, :, None], probe)
    assert sel[S.CLASSES.index("bos")].item() > sel[S.CLASSES.index("induction")].item() > 50
    assert S.classify(sel).item() == S.CLASSES.index("bos")
    assert S.induction_members(sel).item()  # membership is independent of the best class


def test_vectorised_over_layers_heads_and_sequences(probe):
    # layer 0: bos, self; layer 1: previous, induction. Per-layer fractions follow.
    l0 = heads_for(probe, ["bos", "self"])[0]
    l1 = heads_for(probe, ["previous", "induction"])[0]
    sel = S.selectivity(torch.stack([l0, l1]), probe)
    labels = S.classify(sel)
    idx = S.CLASSES.index
    assert labels.tolist() == [[idx("bos"), idx("self")], [idx("previous"), idx("induction")]]
    frac = S.class_fractions(labels)
    assert frac.shape == (len(S.CLASSES), 2)
    assert frac[idx("bos")].tolist() == [0.5, 0.0] and frac[idx("induction")].tolist() == [0.0, 0.5]
    # one sequence at a time gives the same ratio of means when every sequence is identical in mass
    one = S.selectivity(l0, probe)
    assert torch.allclose(one, sel[:, :1])


def test_screen_dataclass_summaries(probe):
    sel = S.selectivity(heads_for(probe, ["bos", "bos", "induction", "self"]), probe)
    sc = S.Screen(sel, S.classify(sel), S.induction_members(sel))
    assert sc.fraction("bos") == 0.5 and sc.n_induction == 1
    assert sc.fractions.shape == (len(S.CLASSES), 1)


@pytest.mark.parametrize(
    "attn, err, match",
    [
        (np.zeros((1, N, 2, T)), TypeError, "torch.Tensor"),
        (torch.zeros(N, T), ValueError, "layer, n_seqs, head, key"),
        (torch.zeros(1, N + 1, 2, T), ValueError, "sequences"),
        (torch.zeros(1, N, 2, T - 1), ValueError, "keys"),
        (-torch.ones(1, N, 2, T), ValueError, "negative"),
        (torch.full((1, N, 2, T), float("nan")), ValueError, "NaN"),
    ],
)
def test_selectivity_rejects_bad_input(probe, attn, err, match):
    with pytest.raises(err, match=match):
        S.selectivity(attn, probe)


def test_classify_rejects_wrong_class_axis():
    with pytest.raises(ValueError, match="classes"):
        S.classify(torch.zeros(5, 2, 2))
    with pytest.raises(ValueError, match="classes"):
        S.induction_members(torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match="layer, head"):
        S.class_fractions(torch.zeros(3))


# --- timeline helpers ----------------------------------------------------------------------------


def test_first_crossing_and_largest_jump():
    x = [0, 10, 20, 40, 80]
    assert S.first_crossing(x, [0, 0.1, 0.6, 0.7, 0.7], 0.5) == 20
    assert S.first_crossing(x, [0, 0.1, 0.2, 0.3, 0.4], 0.5) is None
    assert S.first_index_at_least([0, 0.1, 0.6, 0.7], 0.6) == 2 and S.first_index_at_least(torch.tensor([0.1]), 0.5) is None
    with pytest.raises(ValueError, match="1-D"):
        S.first_index_at_least([[0.6]], 0.5)
    step = S.largest_jump([0.07, 0.07, 0.7, 0.72])
    assert step["index"] == 1 and step["share"] == pytest.approx(0.63 / 0.65)
    ramp = S.largest_jump(np.linspace(0, 1, 11))
    assert ramp["share"] == pytest.approx(0.1)
    assert S.largest_jump([0.5, 0.4, 0.3])["share"] is None
    with pytest.raises(ValueError):
        S.first_crossing([0, 1], [0], 0.5)
    with pytest.raises(ValueError):
        S.largest_jump([1.0])


def test_rise_shape_labels_a_scheme_by_its_median_share():
    assert S.rise_shape([0.9, 0.6, 0.2], 0.5) == "sudden"
    assert S.rise_shape([0.1, 0.4, 0.9], 0.5) == "gradual"
    assert S.rise_shape([0.5, 0.5, 0.2], 0.5) == "sudden"  # on the threshold counts as sudden
    assert S.rise_shape([None, 0.8, float("nan")], 0.5) == "sudden"  # runs that never rise are left out
    assert S.rise_shape([None, None], 0.5) == "no rise"
    # whole head counts give an exact share on the threshold, where float32 fractions need not
    counts = S.largest_jump([0, 6, 12, 12])  # 24 heads: 0 -> 6 -> 12 BOS heads
    assert counts["share"] == 0.5 and S.rise_shape([counts["share"]], 0.5) == "sudden"
    with pytest.raises(ValueError):
        S.rise_shape([0.5], 0.0)


# --- a tiny random model, for shapes -------------------------------------------------------------


def test_screen_on_a_tiny_random_model():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layers=2, d_model=32, n_heads=4, n_ctx=64, d_vocab=128)).eval()
    p = S.probe_batch(10, 64, (2, 128), seed=42, bos_id=0)
    attn = S.query_attention(model, p.tokens, batch_size=4)  # chunked
    assert attn.shape == (2, 10, 4, 64)
    assert torch.allclose(attn.sum(-1), torch.ones(2, 10, 4), atol=1e-5)
    with torch.no_grad():
        _, cache = model.run_with_cache(p.tokens)
    assert torch.allclose(attn[1], cache["pattern", 1][:, :, -1, :], atol=1e-6)
    sc = S.screen(model, p)
    assert sc.selectivity.shape == (len(S.CLASSES), 2, 4) and sc.labels.shape == (2, 4)
    assert torch.equal(sc.selectivity_of("induction"), sc.selectivity[S.CLASSES.index("induction")])
    # an untrained model attends almost uniformly: nothing is classified
    assert (sc.labels == S.UNCLASSIFIED).all() and sc.n_induction == 0
    with pytest.raises(ValueError, match="context"):
        S.screen(model, S.probe_batch(2, 80, (2, 128)))
    with pytest.raises(ValueError, match="vocabulary"):
        S.screen(model, S.probe_batch(2, 64, (2, 500)))
