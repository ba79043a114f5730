"""Residual schemes: Sinkhorn-Knopp, Birkhoff-von Neumann mixtures, Amax gain, the connections,
and a comparison with the PyPI ``hyper-connections`` package where the definitions coincide.

Where that package differs from the papers (checked here and written down in the book):

- HC: it normalises each stream with RMSNorm (learnable gain) where the paper uses LayerNorm.
  With a LayerNorm swapped in, its HC and ours agree to float precision (static and dynamic).
- mHC (``hyper_connections.mHC``, v0.4.11) is HC with the mHC constraints bolted on, not the
  paper's mHC: (1) the dynamic weights of each stream come from that stream alone
  (``norm(x_i) @ W``), where the paper projects the whole flattened ``n * d`` state
  (``RMSNorm(vec X) @ phi``), so its H_res cannot depend on how streams relate; (2) Sinkhorn
  normalises columns first, in exp space (the paper: log space is an option there); (3) its
  static init is HC's (``H_pre`` logits one-hot 1/0, ``H_res`` logits ``I``, ``H_post``
  logits 1), so at init ``sigmoid`` gives ``H_pre`` = 0.73 / 0.5 and ``H_res`` = softmax-like
  0.48 on the diagonal, far from the identity-dominant start; (4) one gating scale is shared
  by ``H_pre``; ``H_res`` has its own. The static path, with dynamic weights zero, coincides
  with ours up to those conventions and is compared below.
"""

from __future__ import annotations

import math

import pytest
import torch

from sinklens.hyperconnections import (
    HyperConnection,
    ManifoldHyperConnection,
    amax_gain,
    birkhoff_mixture,
    doubly_stochastic_error,
    permutation_matrices,
    read_streams,
    sinkhorn_knopp,
    write_streams,
)


@pytest.fixture(autouse=True)
def _no_grad():  # overrides conftest's: these tests need gradients
    yield


def _reference_sinkhorn(logits: torch.Tensor, n_iters: int) -> torch.Tensor:
    """Plain autograd log-space Sinkhorn (rows then columns), the definition."""
    for _ in range(n_iters):
        logits = logits - torch.logsumexp(logits, -1, keepdim=True)
        logits = logits - torch.logsumexp(logits, -2, keepdim=True)
    return logits.exp()


def test_sinkhorn_is_doubly_stochastic_within_1e4_and_error_shrinks_with_iterations():
    base = torch.randn(4096, 4, 4, generator=torch.Generator().manual_seed(0))
    # the identity-dominant init of mHC (diagonal logit ln 57) and moderate logits: 20 iterations do
    init = ManifoldHyperConnection(8, 4, layer_index=0).b_res.detach().view(4, 4)
    assert doubly_stochastic_error(sinkhorn_knopp(init, 20)) < 1e-6
    errors = [doubly_stochastic_error(sinkhorn_knopp(0.5 * base, t)).item() for t in (1, 2, 5, 10, 20)]
    assert errors[-1] < 1e-4
    assert all(a > b for a, b in zip(errors, errors[1:]))  # worst case shrinks with every step
    # larger logits converge slowly: with std 1 the worst of 4096 matrices needs more than 20
    # iterations for 1e-4, and with std 2, 20 iterations leave an error above 1e-2. This is the
    # approximation gap mHC-lite removes (its mixtures are exact, see below).
    assert doubly_stochastic_error(sinkhorn_knopp(base, 50)) < 1e-5
    assert doubly_stochastic_error(sinkhorn_knopp(2 * base, 20)) > 1e-2
    assert (sinkhorn_knopp(2 * base, 20) >= 0).all()
    # the last half-step normalises columns: those are exact whatever the row error
    assert ((sinkhorn_knopp(2 * base, 20).sum(-2) - 1).abs().max() < 1e-5)


def test_sinkhorn_survives_extreme_logits():
    logits = torch.tensor([[1000.0, -1000.0, 0.0], [0.0, 500.0, -500.0], [-1000.0, 0.0, 1000.0]])
    m = sinkhorn_knopp(logits, 20)
    assert torch.isfinite(m).all()
    assert doubly_stochastic_error(m) < 1e-4


def test_sinkhorn_custom_backward_matches_autograd_through_the_loop():
    logits = torch.randn(3, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: sinkhorn_knopp(x, 5), (logits,))
    out_grad = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    (g_ours,) = torch.autograd.grad(sinkhorn_knopp(logits, 20), logits, out_grad)
    (g_ref,) = torch.autograd.grad(_reference_sinkhorn(logits, 20), logits, out_grad)
    torch.testing.assert_close(sinkhorn_knopp(logits, 20), _reference_sinkhorn(logits, 20))
    torch.testing.assert_close(g_ours, g_ref)


@pytest.mark.parametrize("path", ["_ExpSinkhorn", "_LogSinkhorn"])
def test_both_sinkhorn_paths_match_autograd_through_the_loop(path):
    import sinklens.hyperconnections as hc

    function = getattr(hc, path)
    logits = torch.randn(5, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: function.apply(x, 5, None), (logits,))
    out_grad = torch.randn(5, 4, 4, dtype=torch.float64)
    (g_ours,) = torch.autograd.grad(function.apply(logits, 20, None), logits, out_grad)
    (g_ref,) = torch.autograd.grad(_reference_sinkhorn(logits, 20), logits, out_grad)
    torch.testing.assert_close(function.apply(logits, 20, None), _reference_sinkhorn(logits, 20))
    torch.testing.assert_close(g_ours, g_ref)


def test_sinkhorn_takes_the_log_space_path_for_widely_spread_logits(monkeypatch):
    import sinklens.hyperconnections as hc

    monkeypatch.setattr(hc.native, "available", lambda: False)  # the torch implementation
    used = []
    for name in ("_ExpSinkhorn", "_LogSinkhorn"):
        function = getattr(hc, name)
        monkeypatch.setattr(hc, name, type(name, (function,), {"apply": staticmethod(
            lambda *a, f=function, n=name: used.append(n) or f.apply(*a))}))
    narrow = torch.randn(8, 4, 4)
    sinkhorn_knopp(narrow, 20)
    sinkhorn_knopp(narrow * 100, 20)
    assert used == ["_ExpSinkhorn", "_LogSinkhorn"]


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("scale", [0.5, 3.0, 100.0])  # linear-space blocks, and log-space ones
def test_native_sinkhorn_matches_autograd_through_the_loop(n, scale):
    from sinklens import native

    assert native.available()  # CI has a C compiler; without one this would fall back silently
    gen = torch.Generator().manual_seed(n)
    logits = scale * torch.randn(37, n, n, generator=gen)  # 2 full blocks of 16 and a partial one
    logits[5] *= 100  # one wide matrix sends its block to the log-space path, the others not
    logits.requires_grad_()
    out_grad = torch.randn(37, n, n, generator=gen)
    ours = sinkhorn_knopp(logits, 20)
    (g_ours,) = torch.autograd.grad(ours, logits, out_grad)
    reference_logits = logits.detach().double().requires_grad_()
    reference = _reference_sinkhorn(reference_logits, 20)
    (g_ref,) = torch.autograd.grad(reference, reference_logits, out_grad.double())
    torch.testing.assert_close(ours.double(), reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(g_ours.double(), g_ref, atol=1e-5, rtol=0)


def test_native_sinkhorn_is_used_for_float32_and_compiles_without_a_graph_break(monkeypatch):
    import sinklens.hyperconnections as hc

    calls = []
    kernel = hc.native.sinkhorn
    monkeypatch.setattr(hc.native, "sinkhorn", lambda *a: calls.append(a[0].dtype) or kernel(*a))
    logits = torch.randn(2, 8, 4, 4)
    eager = sinkhorn_knopp(logits, 20)
    assert calls == [torch.float32]
    sinkhorn_knopp(logits.double(), 20)  # float64 (gradcheck) takes the torch implementation
    assert calls == [torch.float32]
    monkeypatch.undo()
    compiled = torch.compile(lambda x: sinkhorn_knopp(x, 20), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(logits), eager, atol=0, rtol=0)


def test_native_stream_read_and_write_match_the_torch_functions():
    import sinklens.hyperconnections as hc

    assert hc.native.available()
    gen = torch.Generator().manual_seed(7)
    b, p, n, d = 3, 5, 4, 24
    streams, h_res = torch.randn(b, p, n, d, generator=gen), torch.randn(b, p, n, n, generator=gen)
    h_pre, h_post, out = torch.randn(b, p, n, generator=gen), torch.randn(b, p, n, generator=gen), torch.randn(b, p, d, generator=gen)
    h_pre = torch.randn(b, p, 2 * n, generator=gen)[..., :n]  # a strided slice, as mHC's are
    g_read, g_write = torch.randn(b, p, d, generator=gen), torch.randn(b, p, n, d, generator=gen)

    def run(read, write):
        inputs = [t.clone().requires_grad_() for t in (streams, h_pre, h_res, h_post, out)]
        s, pre, res, post, o = inputs
        y, new = read(s, pre), write(s, res, post, o)
        grads = torch.autograd.grad((y * g_read).sum() + (new * g_write).sum(), inputs)
        return [y, new, *grads]

    ours = run(hc.read_streams, hc.write_streams)
    torch_path = run(hc._ReadStreams.apply, hc._WriteStreams.apply)
    for a, b_ in zip(ours, torch_path):
        torch.testing.assert_close(a, b_, atol=1e-5, rtol=1e-5)


def test_native_sinkhorn_gives_nan_where_exact_arithmetic_does():
    # the kernel is built with -ffast-math, which assumes finite numbers: non-finite logits are
    # handled outside it, as the log-space definition handles them
    logits = torch.randn(20, 3, 3)
    logits[2, 0, 0] = float("nan")
    logits[5, 1, 1] = float("inf")
    logits[7, 2, :] = float("-inf")  # a whole row of zeros: no doubly stochastic scaling
    logits[9, 0, 1] = float("-inf")  # one zero entry: fine
    logits.requires_grad_()
    ours = sinkhorn_knopp(logits, 20)
    reference = _reference_sinkhorn(logits.detach().double(), 20)
    undefined = torch.isnan(reference).any(-1).any(-1)
    assert undefined.tolist() == [i in (2, 5, 7) for i in range(20)]
    assert torch.isnan(ours[undefined]).all() and torch.isfinite(ours[~undefined]).all()
    torch.testing.assert_close(ours[~undefined].double(), reference[~undefined], atol=1e-5, rtol=0)
    (grad,) = torch.autograd.grad(ours[~undefined].sum(), logits)
    assert torch.isnan(grad[undefined]).all() and torch.isfinite(grad[~undefined]).all()


def test_loading_the_native_kernels_leaves_denormal_floats_alone():
    from sinklens import native

    assert native.available()
    assert torch.tensor([1e-40]).mul(1.0).item() != 0.0  # no flush-to-zero leaked into the process
    native.sinkhorn(torch.randn(4, 4, 4), 20)
    assert torch.tensor([1e-40]).mul(1.0).item() != 0.0


def test_native_stream_ops_reject_coefficients_of_the_wrong_shape():
    from sinklens import native

    streams = torch.randn(64, 4, 8)
    with pytest.raises(ValueError, match="h_pre has shape"):
        native.read_streams(streams, torch.ones(4))
    with pytest.raises(ValueError, match="h_res has shape"):
        native.write_streams(streams, torch.eye(4), torch.ones(64, 4), torch.randn(64, 8))


def test_native_kernels_fall_back_with_a_message_without_a_compiler(monkeypatch, capsys):
    from sinklens import native

    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert native._library.__wrapped__() is None
    assert "torch implementation" in capsys.readouterr().err


def test_sinkhorn_rejects_zero_iterations():
    with pytest.raises(ValueError, match="n_iters"):
        sinkhorn_knopp(torch.zeros(2, 2), 0)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_permutation_matrices_are_all_distinct_permutations(n):
    perms = permutation_matrices(n)
    assert perms.shape == (math.factorial(n), n, n)
    assert torch.equal(perms[0], torch.eye(n))
    assert ((perms == 0) | (perms == 1)).all()
    assert (perms.sum(-1) == 1).all() and (perms.sum(-2) == 1).all()
    assert len({tuple(p.flatten().tolist()) for p in perms}) == math.factorial(n)


def test_birkhoff_mixture_is_exactly_doubly_stochastic():
    perms = permutation_matrices(4)
    logits = 5.0 * torch.randn(512, 24, generator=torch.Generator().manual_seed(1))
    m32 = birkhoff_mixture(logits, perms)
    m64 = birkhoff_mixture(logits.double(), perms.double())
    assert doubly_stochastic_error(m32) < 1e-6  # float32 rounding only
    assert doubly_stochastic_error(m64) < 1e-14
    assert (m32 >= 0).all()


def test_amax_gain_of_known_products():
    eye = torch.eye(3)
    fwd, bwd = amax_gain([eye, eye])
    assert fwd.item() == 1.0 and bwd.item() == 1.0
    fwd, bwd = amax_gain([2 * eye] * 3)
    assert fwd.item() == pytest.approx(8.0) and bwd.item() == pytest.approx(8.0)
    # rows and columns differ: everything flows into stream 0
    gather = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    fwd, bwd = amax_gain([gather])
    assert fwd.item() == 2.0 and bwd.item() == 1.0
    # order matters: the product is h[-1] @ ... @ h[0]
    a, b = torch.tensor([[1.0, -2.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [3.0, 0.0]])
    fwd, _ = amax_gain([a, b])
    assert fwd.item() == pytest.approx((b @ a).abs().sum(-1).max().item())
    # doubly stochastic products keep gain 1
    ds = sinkhorn_knopp(torch.randn(6, 4, 4), 20)
    fwd, bwd = amax_gain(list(ds))
    assert fwd.item() == pytest.approx(1.0, abs=1e-4) and bwd.item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("kind", ["hc", "mhc", "mhc-lite"])
def test_connection_shapes_init_and_gradients(kind):
    d, n = 16, 4
    if kind == "hc":
        conn = HyperConnection(d, n, layer_index=1)
    else:
        conn = ManifoldHyperConnection(d, n, layer_index=1, exact=kind == "mhc-lite")
    streams = torch.randn(2, 5, n, d, requires_grad=True)
    h_pre, h_res, h_post = conn.coefficients(streams)
    assert h_pre.shape == (2, 5, n) and h_res.shape == (2, 5, n, n) and h_post.shape == (2, 5, n)
    # identity-dominant start: the sub-layer reads mostly stream 1, H_res is near I, H_post = 1
    assert h_pre[..., 1].min() > 0.9 and h_pre[..., [0, 2, 3]].max() < 0.1
    assert (h_res.diagonal(dim1=-2, dim2=-1) > 0.9).all()
    torch.testing.assert_close(h_post, torch.ones_like(h_post))
    if kind != "hc":
        assert doubly_stochastic_error(h_res) < 1e-4
    # gradients reach the dynamic projections (zero at init) and the inputs
    out = write_streams(streams, h_res, h_post, torch.tanh(read_streams(streams, h_pre)))
    (out * torch.randn_like(out)).sum().backward()
    dynamic = [conn.w_res, conn.w_pre, conn.w_post] if kind == "hc" else [conn.phi]
    for p in dynamic:
        assert p.grad is not None and p.grad.abs().max() > 0
    assert streams.grad.abs().max() > 0


def test_read_and_write_streams_match_the_matrix_formula():
    b, p, n, d = 2, 3, 4, 5
    x, h_pre, h_res, h_post, out = (
        torch.randn(b, p, n, d), torch.randn(b, p, n), torch.randn(b, p, n, n), torch.randn(b, p, n), torch.randn(b, p, d),
    )
    torch.testing.assert_close(read_streams(x, h_pre), torch.einsum("bpn,bpnd->bpd", h_pre, x))
    expected = torch.einsum("bpij,bpjd->bpid", h_res, x) + torch.einsum("bpi,bpd->bpid", h_post, out)
    torch.testing.assert_close(write_streams(x, h_res, h_post, out), expected)


# --- The PyPI hyper-connections package -----------------------------------------------------------

hc_pkg = pytest.importorskip("hyper_connections")


def _theirs_step(layer, streams: torch.Tensor, branch) -> torch.Tensor:
    """Run one of their connections on ``[b, p, n, d]`` streams (they use ``[(b n), p, d]``)."""
    b, p, n, d = streams.shape
    flat = streams.permute(0, 2, 1, 3).reshape(b * n, p, d)
    branch_input, add_residual = layer(flat)
    new = add_residual(branch(branch_input))
    return new.reshape(b, n, p, d).permute(0, 2, 1, 3)


def _ours_step(conn, streams: torch.Tensor, branch) -> torch.Tensor:
    h_pre, h_res, h_post = conn.coefficients(streams)
    return write_streams(streams, h_res, h_post, branch(read_streams(streams, h_pre)))


def test_hc_matches_the_package_static_and_dynamic_with_layernorm():
    from hyper_connections.hyper_connections import HyperConnections

    torch.manual_seed(0)
    d, n = 16, 4
    theirs = HyperConnections(n, dim=d, layer_index=2)
    theirs.norm = torch.nn.LayerNorm(d)  # the paper's (and our) per-stream norm
    ours = HyperConnection(d, n, layer_index=2)
    with torch.no_grad():  # random weights everywhere, mapped across conventions
        h_pre, h_res, h_post = torch.randn(n), torch.randn(n, n), torch.randn(n)
        w_pre, w_res, w_post = torch.randn(d), torch.randn(d, n), torch.randn(d)
        theirs.static_alpha.copy_(torch.cat([h_pre[:, None], h_res.T], 1))
        theirs.static_beta.copy_(h_post)
        theirs.dynamic_alpha_fn.copy_(torch.cat([w_pre[:, None], w_res], 1))
        theirs.dynamic_beta_fn.copy_(w_post)
        theirs.dynamic_alpha_scale.fill_(0.3)
        theirs.dynamic_beta_scale.fill_(0.2)
        for name, value in dict(static_h_pre=h_pre, static_h_res=h_res, static_h_post=h_post,
                                w_pre=w_pre, w_res=w_res, w_post=w_post).items():
            getattr(ours, name).copy_(value)
        ours.scale_alpha.fill_(0.3)
        ours.scale_beta.fill_(0.2)
    streams = torch.randn(2, 3, n, d)
    branch = torch.nn.Linear(d, d)
    torch.testing.assert_close(_ours_step(ours, streams, branch), _theirs_step(theirs, streams, branch))


def test_sinkhorn_matches_the_package_up_to_transpose():
    from hyper_connections.manifold_constrained_hyper_connections import (
        log_domain_sinkhorn_knopps,
        sinkhorn_knopps,
    )

    logits = 2.0 * torch.randn(64, 4, 4)
    ours = sinkhorn_knopp(logits, 20)
    # they normalise columns first and apply alpha[s, t] as "stream s -> stream t": transposed
    torch.testing.assert_close(ours, log_domain_sinkhorn_knopps(logits.mT, 20).mT)
    torch.testing.assert_close(ours, sinkhorn_knopps(logits.mT, 20).mT)


def test_mhc_static_path_matches_the_package():
    from hyper_connections.manifold_constrained_hyper_connections import ManifoldConstrainedHyperConnections

    torch.manual_seed(0)
    d, n = 16, 4
    theirs = ManifoldConstrainedHyperConnections(n, dim=d, layer_index=0)  # dynamic fns are zero
    ours = ManifoldHyperConnection(d, n, layer_index=0)
    with torch.no_grad():
        b_pre, b_res, b_post = torch.randn(n), 2 * torch.randn(n, n), torch.randn(n)
        theirs.static_alpha.copy_(torch.cat([b_pre[:, None], b_res.T], 1))
        theirs.static_beta.copy_(b_post)
        ours.b_pre.copy_(b_pre)
        ours.b_res.copy_(b_res.flatten())
        ours.b_post.copy_(b_post)
        ours.phi.normal_()  # nonzero, but switched off by the gates:
        for gate in (ours.alpha_pre, ours.alpha_post, ours.alpha_res):
            gate.zero_()
    streams = torch.randn(2, 3, n, d)
    branch = torch.nn.Linear(d, d)
    torch.testing.assert_close(_ours_step(ours, streams, branch), _theirs_step(theirs, streams, branch))


# --- the fast paths ---------------------------------------------------------------------------------


def test_sinkhorn_with_a_tolerance_stops_early_and_stays_within_it():
    base = torch.randn(512, 4, 4, generator=torch.Generator().manual_seed(1))
    init = ManifoldHyperConnection(8, 4, layer_index=0).b_res.detach().view(4, 4)
    # at the identity-dominant init one iteration is already doubly stochastic
    torch.testing.assert_close(sinkhorn_knopp(init, 20, tol=1e-6), sinkhorn_knopp(init, 1))
    for scale in (0.5, 1.0):
        full, early = sinkhorn_knopp(scale * base, 20), sinkhorn_knopp(scale * base, 20, tol=1e-5)
        assert doubly_stochastic_error(early) <= max(1e-5, doubly_stochastic_error(full).item()) + 1e-6
        assert (early - full).abs().max() < 1e-4
    # the cap holds: logits too large to converge in 20 iterations give what 20 iterations give
    torch.testing.assert_close(sinkhorn_knopp(2 * base, 20, tol=1e-7), sinkhorn_knopp(2 * base, 20))
    with pytest.raises(ValueError, match="tol"):
        sinkhorn_knopp(base, 20, tol=0.0)


def test_sinkhorn_with_a_tolerance_has_the_gradient_of_the_iterations_it_ran():
    logits = torch.randn(3, 4, 4, dtype=torch.double, generator=torch.Generator().manual_seed(2), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: sinkhorn_knopp(x, 20, tol=1e-4), (logits,))


def test_sinkhorn_runs_in_fp32_under_bf16_autocast():
    logits = torch.randn(8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m = sinkhorn_knopp(logits.bfloat16(), 20)
    assert m.dtype == torch.float32 and doubly_stochastic_error(m) < 1e-5


def test_read_and_write_streams_have_exact_gradients():
    b, p, n, d = 2, 3, 4, 5
    gen = torch.Generator().manual_seed(0)
    args = [torch.randn(*s, dtype=torch.double, generator=gen, requires_grad=True)
            for s in ((b, p, n, d), (b, p, n, n), (b, p, n), (b, p, d))]
    assert torch.autograd.gradcheck(write_streams, tuple(args))
    assert torch.autograd.gradcheck(read_streams, (args[0], args[2]))


def test_streams_stay_fp32_under_bf16_autocast():
    x, h_res, h_post = torch.randn(2, 3, 4, 8), torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4)
    out = torch.randn(2, 3, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = write_streams(x, h_res, h_post, out)
        r = read_streams(x, h_post)
    assert y.dtype == torch.float32 and r.dtype == torch.float32
    torch.testing.assert_close(y, write_streams(x, h_res, h_post, out.float()))
