"""Per-head ablation effects and layer-distribution helpers (sinklens.head_ablation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sinklens import head_ablation as ha
from sinklens.model import GPT, GPTConfig


def _model(residual: str = "residual", seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layers=2, d_model=32, n_heads=4, n_ctx=16, d_vocab=40, residual=residual))
    # random init gives every head a near-zero effect: make the heads matter
    with torch.no_grad():
        for block in model.blocks:
            block.attn.out.weight.mul_(30)
            block.attn.qkv.weight.mul_(5)
    return model.eval()


def _tokens(batch: int = 5, pos: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 40, (batch, pos), generator=torch.Generator().manual_seed(seed))


def _loop_reference(model, tokens, mode="zero"):
    """One forward pass per head, the obvious way."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    base = ha.per_sequence_loss(model(tokens), tokens).mean()
    means = ha.mean_head_outputs(model, tokens)
    out = torch.zeros(n_layers, n_heads)
    for layer in range(n_layers):
        for head in range(n_heads):
            def hook(z, hook=None, head=head, layer=layer):
                z = z.clone()
                z[:, :, head] = 0 if mode == "zero" else means[layer, head]
                return z
            logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])
            out[layer, head] = ha.per_sequence_loss(logits, tokens).mean() - base
    return out


@pytest.mark.parametrize("residual", ["residual", "mhc"])
@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_batched_ablation_matches_one_pass_per_head(residual, mode):
    model, tokens = _model(residual), _tokens()
    got = ha.head_ablation_effects(model, tokens, mode=mode, batch_size=2, progress=False)
    want = _loop_reference(model, tokens, mode)
    assert got.shape == (2, 4)
    assert torch.allclose(got, want, atol=1e-5), (got, want)
    assert got.abs().max() > 1e-3  # the heads do matter in this model


def test_hooks_leave_the_model_unchanged():
    model, tokens = _model(), _tokens()
    before = model(tokens).clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ha.head_ablation_effects(model, tokens, progress=False)
    assert torch.equal(model(tokens), before)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(not hp._forward_hooks for hp in model.hook_dict.values())


def test_a_head_that_writes_nothing_has_zero_effect_and_per_sequence_shape():
    model, tokens = _model(), _tokens()
    d_head = model.cfg.d_head
    with torch.no_grad():  # head 2 of layer 1 writes nothing into the residual stream
        model.blocks[1].attn.out.weight[:, 2 * d_head : 3 * d_head] = 0
    per_seq = ha.head_ablation_effects(model, tokens, per_sequence=True, progress=False)
    assert per_seq.shape == (2, 4, tokens.shape[0])
    assert per_seq[1, 2].abs().max() < 1e-5
    assert per_seq.mean(-1).abs().max() > 1e-3
    only_layer_0 = ha.head_ablation_effects(model, tokens, layers=[0], progress=False)
    assert torch.isnan(only_layer_0[1]).all() and torch.isfinite(only_layer_0[0]).all()


def test_per_sequence_loss_matches_cross_entropy():
    logits = torch.randn(3, 6, 11)
    tokens = torch.randint(0, 11, (3, 6))
    per_seq = ha.per_sequence_loss(logits, tokens)
    want = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    assert per_seq.shape == (3,) and torch.allclose(per_seq.mean(), want)
    with pytest.raises(ValueError):
        ha.per_sequence_loss(logits, tokens[:, :4])


def test_bad_arguments_are_rejected():
    model, tokens = _model(), _tokens()
    with pytest.raises(ValueError, match="mode"):
        ha.head_ablation_effects(model, tokens, mode="resample", progress=False)
    with pytest.raises(ValueError, match="layers"):
        ha.head_ablation_effects(model, tokens, layers=[5], progress=False)


def test_layer_distribution_helpers():
    assert ha.normalised_depth(15, 36) == pytest.approx(15.5 / 36)
    assert ha.normalised_depth(0, 2) == 0.25 and ha.normalised_depth(1, 2) == 0.75
    scores = np.array([[0.1, 0.9, np.nan], [0.5, 0.9, 0.2], [0.8, 0.0, 0.3]])
    assert ha.top_k_heads(scores, 3) == [(0, 1), (1, 1), (2, 0)]  # tie broken by order; NaN never
    assert len(ha.top_k_heads(scores, 100)) == 8
    assert ha.median_layer_of_top_k(scores, 3, normalise=False) == 1.0
    assert ha.median_layer_of_top_k(scores, 3) == pytest.approx(1.5 / 3)
    assert ha.median_layer_of_top_k(torch.tensor(scores), 2, normalise=False) == 0.5
    np.testing.assert_allclose(ha.layer_shares_of_top_k(scores, 4), [0.25, 0.5, 0.25])
    with pytest.raises(ValueError):
        ha.top_k_heads(scores[0], 1)


def test_spearman_and_overlap():
    a = np.arange(12.0).reshape(3, 4)
    assert ha.spearman(a, a**3) == pytest.approx(1.0)
    assert ha.spearman(a, -a) == pytest.approx(-1.0)
    assert math.isnan(ha.spearman(a, np.ones_like(a)))
    b = a.copy()
    b[0, 0] = np.nan
    assert ha.spearman(a, b) == pytest.approx(1.0)  # NaN pair dropped
    # ties get averaged ranks: [1, 2, 2, 3] vs [1, 2, 3, 4]
    assert ha.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1])
    assert ha.top_k_overlap(a, a, 3) == 1.0
    assert ha.top_k_overlap(a, -a, 3) == 0.0
    assert ha.head_label(3, 1) == "L3H1"


def test_published_reference_numbers_normalise():
    ref = ha.MHC_INTERP_MEDIAN_LAYERS
    assert ref["previous_token"]["residual"] == 15 and ref["induction"]["mhc"] == 9
    assert ha.normalised_depth(ref["previous_token"]["mhc"], ha.MHC_INTERP_N_LAYERS) == pytest.approx(6.5 / 36)


def test_patterns_with_heads_ablated_changes_only_later_layers_and_leaves_no_hook():
    model, tokens = _model(), _tokens()
    _, clean = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    ablated = ha.patterns_with_heads_ablated(model, tokens, [(0, 1), (0, 2)])
    key0, key1 = "blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"
    assert torch.allclose(ablated[key0], clean[key0])  # a head's own pattern does not change
    assert not torch.allclose(ablated[key1], clean[key1])  # the next layer sees a residual without them
    _, again = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    assert torch.equal(again[key1], clean[key1])  # hooks removed
    assert torch.allclose(ha.patterns_with_heads_ablated(model, tokens, [])[key1], clean[key1])


def test_matched_random_head_sets_match_layers_and_avoid_excluded_heads():
    heads = [(0, 1), (0, 3), (2, 0)]
    exclude = [(0, 1), (0, 3), (0, 5), (2, 0)]
    sets = ha.matched_random_head_sets(heads, 8, exclude=exclude, n_sets=20, seed=3)
    assert len(sets) == 20
    for s in sets:
        assert sorted(l for l, _ in s) == [0, 0, 2]  # as many per layer as the ablated heads
        assert len(set(s)) == 3 and not set(s) & set(exclude)
    assert len({tuple(s) for s in sets}) > 1  # random, not the same set every time
    assert sets == ha.matched_random_head_sets(heads, 8, exclude=exclude, n_sets=20, seed=3)  # seeded
    assert sets == ha.matched_random_head_sets(heads[::-1], 8, exclude=exclude, n_sets=20, seed=3)  # order-free
    with pytest.raises(ValueError, match="distinct"):
        ha.matched_random_head_sets([(0, 1), (0, 1)], 8, exclude=[], n_sets=1)
    with pytest.raises(ValueError, match="distinct"):
        ha.matched_random_head_sets([(0, 8)], 8, exclude=[], n_sets=1)
    with pytest.raises(ValueError, match="fewer than"):
        ha.matched_random_head_sets([(0, 0), (0, 1)], 3, exclude=[(0, 2)], n_sets=1)
    with pytest.raises(ValueError):
        ha.matched_random_head_sets(heads, 8, exclude=exclude, n_sets=0)


def test_score_batch_head_output_norms_match_hook_z():
    from sinklens import probes

    model, tokens = _model(), _tokens()
    out = probes.score_batch(model, tokens, batch_size=2, include_head_output=True, progress=False)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"))
    z1 = cache["blocks.1.attn.hook_z"]  # [batch, pos, head, d_head]
    assert out["z_norm"].shape == (5, 2, 4, 12)
    assert torch.allclose(out["z_norm"][:, 1], z1.norm(dim=-1).transpose(1, 2), atol=1e-5)
