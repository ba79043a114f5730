"""The C causal-attention kernel of sinklens.native: the same function as torch's SDPA, used by
the model's fused path on the CPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sinklens import native
from sinklens.model import GPT, GPTConfig


@pytest.fixture(autouse=True)
def _no_grad():  # overrides conftest's: these tests need gradients
    yield


@pytest.fixture(autouse=True)
def _one_thread():  # as in training (TrainConfig.threads = 1): where the model takes the kernel
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _masked_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Scaled, causally masked scores: ``[b, p, h, dh]`` x2 -> ``[b, h, p, p]``."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    p = q.shape[1]
    return scores.masked_fill(~torch.ones(p, p, dtype=torch.bool).tril(), float("-inf"))


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention in float64, explicitly: ``[b, p, h, dh]`` -> ``[b, p, h, dh]``."""
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(_masked_scores(q, k), -1), v)


@pytest.mark.parametrize("d_head", native.ATTENTION_HEAD_SIZES)
@pytest.mark.parametrize("n_pos", [1, 3, 17, 64, 70])
def test_native_attention_matches_float64_attention_and_its_gradients(d_head, n_pos):
    assert native.available()  # CI has a C compiler; without one the model falls back silently
    torch.manual_seed(n_pos)
    q, k, v = (2 * torch.randn(3, n_pos, 2, d_head, dtype=torch.float64) for _ in range(3))
    grad = torch.randn(3, n_pos, 2, d_head, dtype=torch.float64)
    ins = [t.float().requires_grad_() for t in (q, k, v)]
    z, lse = native.causal_attention(*ins)
    got = torch.autograd.grad(z, ins, grad.float())
    exact = [t.clone().requires_grad_() for t in (q, k, v)]
    z_ref = _reference(*exact)
    want = torch.autograd.grad(z_ref, exact, grad)
    torch.testing.assert_close(z.double(), z_ref, atol=2e-5, rtol=1e-5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, atol=5e-5, rtol=1e-4)
    torch.testing.assert_close(lse.double(), torch.logsumexp(_masked_scores(q, k), -1), atol=2e-5, rtol=1e-5)


def test_native_attention_is_as_close_to_float64_as_torch_sdpa():
    """The kernel's float32 rounding error is of the same size as torch's own fused kernel's."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(8, 64, 4, 32, dtype=torch.float64) for _ in range(3))
    exact = _reference(q, k, v)
    z, _ = native.causal_attention(q.float(), k.float(), v.float())
    sdpa = F.scaled_dot_product_attention(*(t.float().transpose(1, 2) for t in (q, k, v)), is_causal=True)
    err_native = (z.double() - exact).abs().max().item()
    err_sdpa = (sdpa.transpose(1, 2).double() - exact).abs().max().item()
    assert err_native < 3 * err_sdpa + 1e-7, (err_native, err_sdpa)


def test_native_attention_reads_strided_inputs_and_rejects_what_it_has_no_kernel_for():
    torch.manual_seed(1)
    qkv = torch.randn(2, 9, 3, 2, 16)  # [b, p, 3, h, dh]: q, k, v as strided views, as in the model
    q, k, v = qkv.unbind(2)
    z, _ = native.causal_attention(q, k, v)
    torch.testing.assert_close(z.double(), _reference(q.double(), k.double(), v.double()), atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="d_head"):
        native.causal_attention(*(torch.randn(1, 4, 2, 8) for _ in range(3)))
    with pytest.raises(ValueError, match="one shape"):
        native.causal_attention(torch.randn(1, 4, 2, 16), torch.randn(1, 5, 2, 16), torch.randn(1, 4, 2, 16))
    with pytest.raises(TypeError, match="float32"):
        native.causal_attention(*(torch.randn(1, 4, 2, 16, dtype=torch.float64) for _ in range(3)))
    assert not native.attention_fits(torch.device("cpu"), 8)
    assert native.attention_fits(torch.device("cpu"), 32)
    assert not native.attention_fits(torch.device("cuda"), 32)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the kernel has no threads of its own: torch's SDPA runs in parallel
    try:
        assert not native.attention_fits(torch.device("cpu"), 32)
    finally:
        torch.set_num_threads(threads)


def test_native_attention_says_clearly_when_the_kernels_are_not_built(monkeypatch):
    monkeypatch.setattr(native, "_library", lambda: None)
    assert not native.attention_fits(torch.device("cpu"), 32)
    with pytest.raises(RuntimeError, match="not built"):
        native.causal_attention(*(torch.randn(1, 4, 2, 16) for _ in range(3)))


def test_native_attention_compiles_without_a_graph_break():
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 8, 2, 32, requires_grad=True) for _ in range(3))

    def loss(q, k, v):
        return (native.causal_attention(q, k, v)[0] ** 2).sum()

    compiled = torch.compile(loss, fullgraph=True)
    eager_grads = torch.autograd.grad(loss(q, k, v), (q, k, v))
    compiled_grads = torch.autograd.grad(compiled(q, k, v), (q, k, v))
    for a, b in zip(eager_grads, compiled_grads):
        torch.testing.assert_close(a, b)


def test_the_model_trains_through_the_native_kernel_when_it_fits(monkeypatch):
    """d_head 32 on the CPU: the fused path calls the kernel (also under bf16 autocast, in fp32);
    d_head 8 keeps torch's SDPA."""
    from sinklens import model as model_module

    calls = []
    kernel = native.causal_attention
    monkeypatch.setattr(model_module.native, "causal_attention", lambda *a: calls.append(a[0].dtype) or kernel(*a))
    tokens = torch.randint(0, 64, (2, 16))
    for d_model, expected in ((64, [torch.float32] * 2), (16, [])):
        calls.clear()
        model = GPT(GPTConfig(n_layers=2, d_model=d_model, n_heads=2, n_ctx=16, d_vocab=64, positional="rotary"))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(tokens, return_type="loss")
        loss.backward()
        assert calls == expected
