from __future__ import annotations

import pytest
import torch

from sinklens import circuits


@pytest.fixture(scope="module")
def tokens():
    gen = torch.Generator().manual_seed(0)
    toks = torch.randint(100, 5000, (3, 12), generator=gen)
    toks[:, 0] = 50256
    return toks


def test_sink_metric_counts_heads_over_epsilon():
    a = torch.tensor([[0.1, 0.5, 0.31, 0.2], [0.9, 0.9, 0.9, 0.0]])
    assert circuits.sink_metric(a).tolist() == [0.5, 0.75]
    with pytest.raises(ValueError, match="epsilon"):
        circuits.sink_metric(a, 1.5)


def test_attention_to_position_on_constructed_patterns():
    pat = torch.zeros(1, 2, 4, 4)
    pat[0, 0, :, 0] = 1.0  # head 0: everything on position 0
    for q in range(4):
        pat[0, 1, q, q] = 1.0  # head 1: each token on itself
    cache = {"blocks.0.attn.hook_pattern": pat}
    assert circuits.attention_to_position(cache, 0).tolist() == [[1.0, 0.0]]
    with pytest.raises(IndexError):
        circuits.attention_to_position(cache, 3)


def test_residual_components_sum_to_the_residual_stream(tiny_model, tokens):
    _, cache = tiny_model.run_with_cache(tokens)
    for pos in (0, 5):
        parts = circuits.residual_components(cache, pos, tiny_model.cfg.n_layers)
        total = sum(parts.values())
        torch.testing.assert_close(total, cache[f"blocks.{tiny_model.cfg.n_layers - 1}.hook_resid_post"][:, pos],
                                   rtol=1e-5, atol=1e-5)


def test_ablation_changes_only_the_run_and_leaves_the_model_unchanged(tiny_model, tokens):
    before, _ = tiny_model.run_with_cache(tokens)
    _, ablated = circuits.ablate_at_position(tiny_model, tokens, ["blocks.0.hook_mlp_out"], position=0)
    assert torch.all(ablated["blocks.0.hook_mlp_out"][:, 0] == 0)
    assert not torch.all(ablated["blocks.0.hook_mlp_out"][:, 1] == 0)
    _, mean_abl = circuits.ablate_at_position(tiny_model, tokens, ["blocks.0.hook_mlp_out"], position=0, mode="mean")
    assert not torch.all(mean_abl["blocks.0.hook_mlp_out"][:, 0] == 0)
    after, _ = tiny_model.run_with_cache(tokens)
    assert torch.equal(before, after), "an ablation hook was left on the model"
    assert not any(h.fwd_hooks for h in tiny_model.hook_dict.values())
    with pytest.raises(ValueError, match="mode"):
        circuits.ablate_at_position(tiny_model, tokens, ["blocks.0.hook_mlp_out"], mode="half")


def test_patch_residual_copies_position_zero(tiny_model, tokens):
    _, cache = circuits.patch_residual(tiny_model, tokens, 1, source=0, target=7)
    # block 1 reads the patched stream: position 7's normalised input now equals position 0's
    assert not torch.equal(cache["blocks.1.ln1.hook_normalized"][:, 7], cache["blocks.1.ln1.hook_normalized"][:, 6])
    torch.testing.assert_close(cache["blocks.1.ln1.hook_normalized"][:, 7], cache["blocks.1.ln1.hook_normalized"][:, 0])
    with pytest.raises(IndexError):
        circuits.patch_residual(tiny_model, tokens, 5, target=3)


def test_first_token_swap_drops_bos(tiny_model, tokens):
    out = circuits.first_token_swap(tiny_model, tokens, [11, 12])
    assert out.shape == (2, tiny_model.cfg.n_layers, tiny_model.cfg.n_heads)


def test_attend_only_to_self_makes_a_one_hot_row(tiny_model, tokens):
    _, cache = circuits.attend_only_to_self(tiny_model, tokens, [0], position=6)
    row = cache["blocks.0.attn.hook_pattern"][:, :, 6]
    assert torch.all(row[..., 6] == 1) and torch.all(row.sum(-1) == 1)


def test_sink_signature_and_position_embedding_move(tiny_model, tokens):
    sig = circuits.sink_signature(tiny_model, tokens)
    assert sig["sink_metric"].shape == (tiny_model.cfg.n_layers,)
    assert sig["norm_ratio"].shape == (tiny_model.cfg.n_layers,)
    if "hook_pos_embed" in tiny_model.hook_dict:
        _, cache = circuits.give_position_embedding_of_first(tiny_model, tokens, 4)
        assert cache["blocks.0.hook_resid_pre"].shape[1] == tokens.shape[1]


def test_one_definition_of_a_massive_norm():
    """Chapters 3 and 4 share it: position 0's mean norm over the others' median, massive at 10x."""
    import torch

    from sinklens import circuits

    norms = torch.ones(3, 8)
    norms[:, 0] = 12.0
    norms[0, 5] = 1000.0  # one other huge position: the median ignores it, a mean would not
    assert float(circuits.norm_ratio_to_median(norms)) == pytest.approx(12.0)
    assert float(circuits.norm_ratio_to_median(norms)) >= circuits.MASSIVE_RATIO
    stacked = torch.stack([norms, torch.ones(3, 8)])  # [layer, batch, pos]
    assert circuits.norm_ratio_to_median(stacked).tolist() == pytest.approx([12.0, 1.0])
    assert float(circuits.norm_ratio_to_median(norms, position=5)) == pytest.approx((1000 + 2) / 3)
