"""Direct and indirect effects of heads (sinklens.paths), on hand-built models with known answers."""

from __future__ import annotations

import pytest
import torch

from sinklens import head_ablation as ha
from sinklens import paths
from sinklens.model import GPT, GPTConfig


def _model(residual: str = "residual", n_layers: int = 3, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layers=n_layers, d_model=32, n_heads=4, n_ctx=16, d_vocab=40, residual=residual, **kw))
    with torch.no_grad():  # random init gives every head a near-zero effect: make the heads matter
        for block in model.blocks:
            block.attn.out.weight.mul_(30)
            block.attn.qkv.weight.mul_(5)
            block.mlp.proj.weight.mul_(10)
    return model.eval()


def _tokens(batch: int = 4, pos: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(2, 40, (batch, pos), generator=torch.Generator().manual_seed(seed))


def _cut_everything_after(model: GPT, layer: int) -> None:
    """Zero every sub-layer after ``layer``'s attention: its heads then reach the logits only directly."""
    with torch.no_grad():
        for j, block in enumerate(model.blocks):
            if j >= layer:
                block.mlp.proj.weight.zero_()
                block.mlp.proj.bias.zero_()
            if j > layer:
                block.attn.out.weight.zero_()
                block.attn.out.bias.zero_()


@pytest.mark.parametrize("residual", ["residual", "mhc"])
def test_a_head_wired_straight_to_the_logits_is_all_direct(residual):
    kw = {} if residual == "residual" else {"n_streams": 2}
    model = _model(residual, **kw)
    _cut_everything_after(model, 0)
    tokens = _tokens()
    total = ha.head_ablation_effects(model, tokens, progress=False)
    direct = paths.head_direct_effects(model, tokens)
    assert total[0].abs().min() > 1e-3  # the heads matter
    # (the connections' dynamic weights start at 0 here, so their mixing does not react to the
    # ablation either; the test below makes it react)
    torch.testing.assert_close(direct[0], total[0], atol=1e-5, rtol=1e-4)
    # the source's split (every later block's output frozen) sees none of this known direct effect
    source = paths.head_direct_effects(model, tokens, freeze="block_outputs")
    assert torch.equal(source[:-1], torch.zeros_like(source[:-1]))
    torch.testing.assert_close(source[-1], total[-1], atol=1e-5, rtol=1e-4)  # only the last layer is unfrozen


def test_direct_effect_equals_removing_the_head_write_from_the_final_residual():
    """Residual scheme: the direct path is exactly 'final residual minus the head's write'."""
    model = _model("residual")
    tokens = _tokens()
    direct = paths.head_direct_effects(model, tokens)
    total = ha.head_ablation_effects(model, tokens, progress=False)
    _, cache = model.run_with_cache(tokens)
    final = cache["blocks.2.hook_resid_post"]
    base = ha.per_sequence_loss(model.ln_final(final) @ model.embed.weight.T, tokens)
    d_head = model.cfg.d_head
    for layer in range(3):
        W_O = model.blocks[layer].attn.out.weight  # [d_model, n_heads * d_head]
        z = cache[f"blocks.{layer}.attn.hook_z"]  # [b, p, head, d_head]
        for head in range(4):
            write = z[:, :, head] @ W_O[:, head * d_head : (head + 1) * d_head].T
            loss = ha.per_sequence_loss(model.ln_final(final - write) @ model.embed.weight.T, tokens)
            assert float((loss - base).mean()) == pytest.approx(float(direct[layer, head]), abs=1e-5)
    # and in a model with working later layers the two effects differ: there is an indirect part
    assert float((total[:2] - direct[:2]).abs().max()) > 1e-2


def test_positions_and_mean_mode_and_bad_arguments():
    model = _model("residual", n_layers=2)
    tokens = _tokens()
    some = paths.head_direct_effects(model, tokens, positions=[6, 7, 8])
    assert some.shape == (2, 4) and not torch.allclose(some, paths.head_direct_effects(model, tokens))
    assert paths.head_direct_effects(model, tokens, mode="mean").shape == (2, 4)
    with pytest.raises(ValueError, match="freeze"):
        paths.head_direct_effects(model, tokens, freeze="everything")
    with pytest.raises(ValueError, match="mode"):
        paths.head_direct_effects(model, tokens, mode="resample")
    with pytest.raises(ValueError, match="positions"):
        paths.head_direct_effects(model, tokens, positions=[11])  # query 11 has no next token
    assert not any(h._forward_hooks for h in model.hook_dict.values())


def test_frozen_names_cover_later_sublayers_and_connections():
    model = _model("mhc", n_layers=2, n_streams=2)
    names = paths.frozen_hook_names(model, 0)
    assert "blocks.0.hook_mlp_out" in names and "blocks.1.hook_attn_out" in names
    assert "blocks.0.hook_attn_out" not in names  # it carries the ablation
    assert "blocks.1.hc_attn.hook_h_res" in names and "blocks.0.hc_mlp.hook_h_post" in names
    assert paths.frozen_hook_names(model, 1, "block_outputs") == []


@pytest.mark.parametrize("residual", ["hc", "mhc", "mhc-lite"])
def test_multi_stream_direct_effect_equals_the_write_mixed_by_the_frozen_coefficients(residual, monkeypatch):
    """With input-dependent mixing weights, the direct path is the head's write spread by its own
    H_post and mixed by every later (clean) H_res, read out through the final layer norm."""
    model = _model(residual, n_streams=2)
    torch.manual_seed(1)
    with torch.no_grad():  # make the connections' coefficients depend on the streams
        for name, p in model.named_parameters():
            if name.endswith(("phi", "w_pre", "w_res", "w_post")):
                p.normal_(std=0.05)
            elif name.endswith(("alpha_pre", "alpha_post", "alpha_res", "scale_alpha", "scale_beta")):
                p.fill_(1.0)
    tokens = _tokens()
    direct = paths.head_direct_effects(model, tokens)
    _, cache = model.run_with_cache(tokens)
    final = cache["blocks.2.hook_streams_post"]  # [b, p, n, d]
    readout = lambda s: ha.per_sequence_loss(model.ln_final(s.sum(-2)) @ model.embed.weight.T, tokens)  # noqa: E731
    base = readout(final)
    d_head, layer = model.cfg.d_head, 0
    later = [cache[f"blocks.{j}.{part}.hook_h_res"] for j in range(3) for part in ("hc_attn", "hc_mlp")][1:]
    h_post = cache["blocks.0.hc_attn.hook_h_post"]  # [b, p, n]
    W_O = model.blocks[layer].attn.out.weight
    for head in range(4):
        write = cache[f"blocks.{layer}.attn.hook_z"][:, :, head] @ W_O[:, head * d_head : (head + 1) * d_head].T
        delta = -h_post[..., :, None] * write[..., None, :]  # [b, p, n, d]: the write removed from each stream
        for h_res in later:
            delta = h_res @ delta
        expected = float((readout(final + delta) - base).mean())
        assert expected == pytest.approx(float(direct[layer, head]), abs=1e-5)
    # the mixing weights matter here: without holding them, the answer changes
    monkeypatch.setattr(paths, "_COEFFICIENTS", ())
    loose = paths.head_direct_effects(model, tokens)
    assert float((loose[0] - direct[0]).abs().max()) > 1e-4
