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


# --- chapter 4's controls, on hand-built models where the claim is false -------------------------


def _e(i: int, d: int = 16) -> torch.Tensor:
    """A zero-mean unit direction (+ at 2i, - at 2i + 1), so LayerNorm keeps it."""
    v = torch.zeros(d)
    v[2 * i], v[2 * i + 1] = 1.0, -1.0
    return v / 2**0.5


def _sink_model(*, query_from_mlp: bool, key_needs_second_mlp: bool):
    """A model whose last layer's head attends to position 0 because of what early MLPs write there.

    Every position carries a base direction e7 (position embedding); position 0 also carries e0.
    Block 0's MLP fires only at P0 (it reads e0) and writes e1 there; its output bias writes e4 at
    every position. With ``key_needs_second_mlp``, block 1's MLP fires only where e1 is present and
    writes e5, and the sink head's key reads e5 (so both MLPs are needed at P0); otherwise the key
    reads e1. The sink head's query reads e4 (``query_from_mlp``: the sink then also needs what
    block 0's MLP writes at the queries) or the base e7 (it does not). Attention outputs are zero
    everywhere but the sink head's pattern.
    """
    from sinklens.model import GPT, GPTConfig

    n_layers = 3 if key_needs_second_mlp else 2
    model = GPT(GPTConfig(n_layers=n_layers, d_model=16, n_heads=1, n_ctx=16, d_vocab=8, positional="learned", d_mlp=4))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for ln in [model.ln_final] + [m for b in model.blocks for m in (b.ln1, b.ln2)]:
            ln.w.fill_(1.0)
        model.pos_embed.weight[:] = _e(7)
        model.pos_embed.weight[0] += 2 * _e(0)
        mlp0 = model.blocks[0].mlp
        mlp0.fc.weight[0] = 4 * _e(0)
        mlp0.fc.bias[0] = -4.0  # off (gelu(-4) ~ 0) where e0 is absent
        mlp0.proj.weight[:, 0] = _e(1)
        mlp0.proj.bias[:] = _e(4)
        key_dir = _e(1)
        if key_needs_second_mlp:
            mlp1 = model.blocks[1].mlp
            mlp1.fc.weight[0] = 4 * _e(1)
            mlp1.fc.bias[0] = -4.0
            mlp1.proj.weight[:, 0] = 2 * _e(5)
            key_dir = _e(5)
        sink = model.blocks[-1].attn
        d = 16  # qkv rows: q = 0..15, k = 16..31 (one head of d_head 16)
        sink.qkv.weight[0:d] = 6 * torch.outer(_e(0), _e(4) if query_from_mlp else _e(7))
        sink.qkv.weight[d : 2 * d] = 6 * torch.outer(_e(0), key_dir)
    return model.eval()


def _verdict(model, tokens, n_early):
    from sinklens import claims

    late = slice(n_early, model.cfg.n_layers)
    t = circuits.p0_necessity_and_controls(model, tokens, n_early=n_early, late=late)
    v = claims.recognised_within_two_blocks(t["clean"], t["zero_ablated"], t["mean_ablated"], t["controls"],
                                           sufficiency={}, responsible_layer=t["responsible_layer"])
    return t, v


@pytest.mark.parametrize("query_from_mlp", [False, True])
def test_the_query_side_control_fires_when_the_sink_needs_the_component_at_the_queries(query_from_mlp):
    tokens = torch.randint(0, 8, (2, 12), generator=torch.Generator().manual_seed(0))
    t, v = _verdict(_sink_model(query_from_mlp=query_from_mlp, key_needs_second_mlp=False), tokens, n_early=1)
    line = 0.5 * t["clean"]
    assert t["clean"] > 0.8 and t["responsible"] == "L0 mlp"
    assert t["zero_ablated"] < line and t["mean_ablated"] < line  # necessary at P0 in both models
    control = t["controls"]["zero L0 mlp @ all but P0 (control)"]
    if query_from_mlp:  # the claim is false: the sink needs the MLP at the queries too
        assert control < line and v.verdict == "not reproduced"
    else:
        assert control >= line and v.verdict == "partly"  # necessary, controls intact, no sufficiency given


@pytest.mark.parametrize("key_needs_second_mlp", [False, True])
def test_the_runner_up_control_fires_when_another_early_write_is_needed_too(key_needs_second_mlp):
    tokens = torch.randint(0, 8, (2, 12), generator=torch.Generator().manual_seed(0))
    model = _sink_model(query_from_mlp=False, key_needs_second_mlp=key_needs_second_mlp)
    n_early = 2 if key_needs_second_mlp else 1
    t, v = _verdict(model, tokens, n_early)
    line = 0.5 * t["clean"]
    runner_up = t["controls"][f"zero {t['runner_up']} @ P0 (control)"]
    assert t["clean"] > 0.8 and t["zero_ablated"] < line
    if key_needs_second_mlp:  # the claim "one component makes the sink" is false: two are needed
        assert {t["responsible"], t["runner_up"]} == {"L0 mlp", "L1 mlp"}
        assert runner_up < line and v.verdict == "not reproduced"
    else:
        assert runner_up >= line and v.verdict == "partly"


def test_first_sink_layer_and_sink_onset():
    assert circuits.first_sink_layer([0.0, 0.25, 0.5, 1.0]) == 2
    assert circuits.first_sink_layer(torch.tensor([0.0, 0.49])) is None
    assert circuits.sink_onset([0, 10, 100, 1000], [0.0, 0.25, 0.5, 0.75]) == {"tokens": 100, "before": 10}
    assert circuits.sink_onset([0, 10], [0.5, 0.5]) == {"tokens": 0, "before": None}
    assert circuits.sink_onset([0, 10], [0.0, 0.4]) == {"tokens": None, "before": None}
    with pytest.raises(ValueError, match="ascending"):
        circuits.sink_onset([10, 0], [0.0, 0.6])
    with pytest.raises(ValueError, match="one sink metric per checkpoint"):
        circuits.sink_onset([0, 10], [0.0])
