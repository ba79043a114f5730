"""The GPT model: config checks, the n = 1 residual block, hook names and shapes, all schemes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sinklens.hyperconnections import SCHEMES
from sinklens.model import GPT, GPTConfig

TINY = dict(n_layers=2, d_model=32, n_heads=4, n_ctx=16, d_vocab=64)


@pytest.fixture(autouse=True)
def _no_grad():  # overrides conftest's: some tests need gradients
    yield


def _tokens(batch: int = 2, pos: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, TINY["d_vocab"], (batch, pos), generator=torch.Generator().manual_seed(seed))


def test_config_rejects_bad_schemes_and_stream_counts():
    with pytest.raises(ValueError, match="Unknown residual scheme 'mhc2'"):
        GPTConfig(residual="mhc2")
    with pytest.raises(ValueError, match="n_streams"):
        GPTConfig(residual="hc", n_streams=0)
    with pytest.raises(ValueError, match="one stream"):
        GPTConfig(residual="residual", n_streams=4)
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(d_model=30, n_heads=4)
    assert GPTConfig(residual="mhc").n_streams == 4
    assert GPTConfig(residual="residual").n_streams == 1


def test_cfg_has_transformer_lens_attribute_names():
    cfg = GPT(GPTConfig(**TINY)).cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.n_ctx, cfg.d_vocab) == (2, 4, 32, 8, 16, 64)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg


def _plain_pre_ln_block(block, x: torch.Tensor) -> torch.Tensor:
    """x + Attn(LN(x)), then + MLP(LN(.)): written with stock torch ops from the block's weights."""
    b, p, d = x.shape
    h = block.attn.n_heads
    ln = lambda t, m: F.layer_norm(t, (d,), m.w, m.b, 1e-5)  # noqa: E731
    q, k, v = F.linear(ln(x, block.ln1), block.attn.qkv.weight, block.attn.qkv.bias).split(d, -1)
    q, k, v = (t.view(b, p, h, d // h).transpose(1, 2) for t in (q, k, v))
    z = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, p, d)
    x = x + F.linear(z, block.attn.out.weight, block.attn.out.bias)
    hidden = F.gelu(F.linear(ln(x, block.ln2), block.mlp.fc.weight, block.mlp.fc.bias), approximate="tanh")
    return x + F.linear(hidden, block.mlp.proj.weight, block.mlp.proj.bias)


def test_residual_block_is_a_plain_pre_ln_block():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY))
    for block in model.blocks:  # non-trivial LayerNorm weights too
        for ln in (block.ln1, block.ln2):
            ln.w.data.normal_(1.0, 0.2)
            ln.b.data.normal_(0.0, 0.2)
    x = torch.randn(2, 10, TINY["d_model"])
    for block in model.blocks:
        torch.testing.assert_close(block(x), _plain_pre_ln_block(block, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scheme", ["hc", "mhc", "mhc-lite"])
def test_every_scheme_starts_as_the_residual_model(scheme):
    """Streams start equal and H_res rows sum to 1, so at init a multi-stream model computes what
    the residual model with the same weights computes (LayerNorm eps aside, hence eps = 1e-12)."""
    torch.manual_seed(0)
    residual = GPT(GPTConfig(**TINY, layer_norm_eps=1e-12))
    multi = GPT(GPTConfig(**TINY, layer_norm_eps=1e-12, residual=scheme))
    missing, unexpected = multi.load_state_dict(residual.state_dict(), strict=False)
    assert not unexpected and all(".hc_" in name for name in missing)
    tokens = _tokens()
    with torch.no_grad():
        torch.testing.assert_close(multi(tokens), residual(tokens), atol=1e-4, rtol=1e-4)


EXPECTED_HOOKS = [
    "hook_embed", "hook_pos_embed", "ln_final.hook_normalized",
    "blocks.{l}.hook_resid_pre", "blocks.{l}.hook_resid_mid", "blocks.{l}.hook_resid_post",
    "blocks.{l}.ln1.hook_normalized", "blocks.{l}.ln2.hook_normalized",
    "blocks.{l}.attn.hook_q", "blocks.{l}.attn.hook_k", "blocks.{l}.attn.hook_v",
    "blocks.{l}.attn.hook_attn_scores", "blocks.{l}.attn.hook_pattern", "blocks.{l}.attn.hook_z",
    "blocks.{l}.hook_attn_out", "blocks.{l}.hook_mlp_out",
    "blocks.{l}.mlp.hook_pre", "blocks.{l}.mlp.hook_post",
]
MULTI_STREAM_HOOKS = [
    "blocks.{l}.hook_streams_pre", "blocks.{l}.hook_streams_mid", "blocks.{l}.hook_streams_post",
    *[f"blocks.{{l}}.{c}.hook_h_{m}" for c in ("hc_attn", "hc_mlp") for m in ("pre", "res", "post")],
]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_run_with_cache_has_transformer_lens_hooks_with_their_shapes(scheme):
    cfg = GPTConfig(**TINY, residual=scheme)
    model = GPT(cfg)
    b, p, n = 2, 12, cfg.n_streams
    with torch.no_grad():
        logits, cache = model.run_with_cache(_tokens(b, p))
    assert logits.shape == (b, p, cfg.d_vocab)
    names = EXPECTED_HOOKS + (MULTI_STREAM_HOOKS if scheme != "residual" else [])
    for l in range(cfg.n_layers):
        for name in names:
            assert name.format(l=l) in cache.cache_dict, name.format(l=l)
    if scheme == "residual":
        assert not any("streams" in k or "hook_h_" in k for k in cache.cache_dict)
    pattern = cache["pattern", 1]  # TransformerLens shorthand works
    assert pattern.shape == (b, cfg.n_heads, p, p)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(b, cfg.n_heads, p))
    assert (pattern.triu(1) == 0).all()  # causal
    assert cache["q", 0].shape == (b, p, cfg.n_heads, cfg.d_head)
    assert cache["z", 0].shape == (b, p, cfg.n_heads, cfg.d_head)
    assert cache["attn_scores", 0].shape == (b, cfg.n_heads, p, p)
    assert cache["resid_pre", 0].shape == (b, p, cfg.d_model)
    if scheme != "residual":
        streams = cache["blocks.0.hook_streams_post"]
        assert streams.shape == (b, p, n, cfg.d_model)
        torch.testing.assert_close(cache["resid_post", 0], streams.sum(-2))
        assert cache["blocks.1.hc_mlp.hook_h_res"].shape == (b, p, n, n)
        assert len(model.h_res_matrices(cache)) == 2 * cfg.n_layers


@pytest.mark.parametrize("scheme", ["hc", "mhc", "mhc-lite"])
def test_one_stream_and_other_stream_counts_work(scheme):
    for n in (1, 2, 3):
        model = GPT(GPTConfig(**TINY, residual=scheme, n_streams=n))
        with torch.no_grad():
            assert torch.isfinite(model(_tokens())).all()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_gradients_reach_every_parameter(scheme):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, residual=scheme))
    with torch.no_grad():  # leave the zero-init dynamic projections so their gates get gradient
        for name, p in model.named_parameters():
            if name.endswith(("phi", "w_pre", "w_res", "w_post")):
                p.normal_(0, 0.02)
    loss = model(_tokens(), return_type="loss")
    assert math.isfinite(loss.item())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


def test_same_seed_same_model_and_loss_is_near_log_vocab_at_init():
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = GPT(GPTConfig(**TINY, residual="mhc"))
        with torch.no_grad():
            outs.append(model(_tokens(), return_type="loss"))
    assert torch.equal(outs[0], outs[1])
    assert abs(outs[0].item() - math.log(TINY["d_vocab"])) < 0.2


def test_forward_rejects_too_long_inputs_and_bad_return_types():
    model = GPT(GPTConfig(**TINY))
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, TINY["n_ctx"] + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="return_type"):
        model(_tokens(), return_type="both")


# --- positions and the two attention paths -------------------------------------------------------


def test_rotary_model_has_no_position_embedding_and_rotates_q_and_k():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, positional="rotary"))
    assert not hasattr(model, "pos_embed") and "hook_pos_embed" not in model.hook_dict
    with torch.no_grad():
        _, cache = model.run_with_cache(_tokens())
    q, rot_q = cache["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_rot_q"]
    torch.testing.assert_close(q[:, 0], rot_q[:, 0])  # position 0 turns by angle 0
    assert not torch.allclose(q[:, 3], rot_q[:, 3])
    torch.testing.assert_close(q.norm(dim=-1), rot_q.norm(dim=-1))  # a rotation keeps norms
    with pytest.raises(ValueError, match="positional"):
        GPTConfig(positional="alibi")


def test_rotary_scores_depend_on_relative_position_only():
    """Shift a sequence right by s positions: with rotary positions every score between the same
    two tokens is unchanged (learned absolute positions would change them)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, positional="rotary"))
    tokens = _tokens(1, 8)
    shifted = torch.cat([torch.zeros(1, 3, dtype=torch.long), tokens], dim=1)
    with torch.no_grad():
        # layer 0's q and k depend on each token alone, so compare its scores
        _, a = model.run_with_cache(tokens, names_filter=lambda n: n == "blocks.0.attn.hook_attn_scores")
        _, b = model.run_with_cache(shifted, names_filter=lambda n: n == "blocks.0.attn.hook_attn_scores")
    torch.testing.assert_close(a["blocks.0.attn.hook_attn_scores"], b["blocks.0.attn.hook_attn_scores"][:, :, 3:, 3:],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_heads", [4, 1])  # d_head 8: torch's SDPA; d_head 32: sinklens.native's kernel
@pytest.mark.parametrize("positional", ["learned", "rotary"])
@pytest.mark.parametrize("scheme", ["residual", "mhc"])
def test_fused_and_explicit_attention_give_the_same_logits_and_gradients(scheme, positional, n_heads):
    """The fused path (no hook on the pattern) and the explicit one agree to 1e-5 (fp32)."""
    from sinklens.model import Attention

    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY, "n_heads": n_heads}, residual=scheme, positional=positional))
    tokens = _tokens()
    outs = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in training: the model takes the C kernel with one thread
    try:
        for fused in (True, False):
            Attention.fused = fused
            model.zero_grad()
            loss = model(tokens, return_type="loss")
            loss.backward()
            outs[fused] = (model(tokens).detach(), [p.grad.clone() for p in model.parameters()])
    finally:
        Attention.fused = True
        torch.set_num_threads(threads)
    torch.testing.assert_close(outs[True][0], outs[False][0], atol=1e-5, rtol=1e-5)
    for g_fused, g_explicit in zip(outs[True][1], outs[False][1]):
        torch.testing.assert_close(g_fused, g_explicit, atol=1e-5, rtol=1e-4)


def test_a_hook_on_the_pattern_switches_to_the_explicit_path():
    model = GPT(GPTConfig(**TINY))
    attn = model.blocks[0].attn
    assert not attn.pattern_is_observed()
    seen = []
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda t, hook: seen.append(t.shape))]):
        assert attn.pattern_is_observed()
        model(_tokens())
    assert seen == [(2, TINY["n_heads"], 12, 12)]
    assert not attn.pattern_is_observed()  # the hook is gone afterwards


def _traced_ops(fn, *args) -> list[str]:
    """The ops of the graph ``torch.compile`` traces for ``fn(*args)`` (a backend that only notes them)."""
    traced: list[str] = []

    def record(gm, example_inputs):
        traced.extend(str(node.target) for node in gm.graph.nodes)
        return gm.forward

    torch.compile(fn, backend=record)(*args)
    return traced


def test_compiled_gelu_is_gpt2s_tanh_gelu():
    """Compiled, the GELU is written with a sigmoid (a cheaper CPU kernel); it is the same function."""
    from sinklens.model import gelu_tanh, gelu_tanh_by_sigmoid

    x = torch.cat([torch.linspace(-12, 12, 4001), torch.tensor([-1e30, -100.0, 0.0, 100.0, 1e30, float("nan")])])
    expected = F.gelu(x, approximate="tanh")
    torch.testing.assert_close(gelu_tanh(x), expected, rtol=0, atol=0, equal_nan=True)  # eager: the library's own
    torch.testing.assert_close(gelu_tanh_by_sigmoid(x), expected, rtol=1e-6, atol=1e-6, equal_nan=True)
    traced = _traced_ops(gelu_tanh, x)
    assert any("sigmoid" in t for t in traced) and not any("gelu" in t for t in traced), traced
    torch.testing.assert_close(torch.compile(gelu_tanh)(x), expected, rtol=1e-6, atol=1e-6, equal_nan=True)
    x16 = x[:-6].bfloat16()  # as under autocast: bf16 in and out, computed in fp32 in between
    torch.testing.assert_close(torch.compile(gelu_tanh)(x16).float(), F.gelu(x16, approximate="tanh").float(),
                               rtol=1e-2, atol=1e-2)


def test_compiled_loss_is_the_cross_entropy_and_has_its_gradient():
    """Compiled, the loss is written as logsumexp minus the target's logit (a cheaper backward);
    it is the same function, with the same gradient, in fp32 and from bf16 logits."""
    from sinklens.model import next_token_loss, next_token_loss_by_logsumexp

    torch.manual_seed(0)
    tokens = torch.randint(0, 50, (3, 9))
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-5)):
        logits = (4 * torch.randn(3, 9, 50)).to(dtype)
        grads = []
        for loss_fn in (next_token_loss, next_token_loss_by_logsumexp, torch.compile(next_token_loss)):
            # bf16 logits come from the unembedding under autocast, which runs the loss in fp32
            with torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                x = logits.clone().requires_grad_()
                loss = loss_fn(x, tokens)
                grads.append((loss.detach().float(), torch.autograd.grad(loss, x)[0].float()))
        expected = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), tokens[:, 1:].flatten())
        for loss, grad in grads:
            torch.testing.assert_close(loss, expected, rtol=tol, atol=tol)
            torch.testing.assert_close(grad, grads[0][1], rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-5)
    traced = _traced_ops(next_token_loss, logits.float(), tokens)
    assert any("logsumexp" in t for t in traced) and not any("cross_entropy" in t for t in traced), traced
