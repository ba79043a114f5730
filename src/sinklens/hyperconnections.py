"""Residual schemes: the plain residual stream, Hyper-Connections, mHC and mHC-lite.

A transformer sub-layer ``F`` (attention or MLP) normally updates one residual stream,
``x <- x + F(LN(x))``. Hyper-connections widen that stream to ``n`` parallel streams, a matrix
``X`` of shape ``[n, d_model]`` per token, and learn how each sub-layer reads from and writes to
them. In the notation of the mHC paper (rows of ``X`` are streams)::

    X_next = H_res @ X  +  H_post^T  F(H_pre @ X)        H_res: [n, n], H_pre, H_post: [n]

- ``"residual"`` (n = 1): ``H_res = H_pre = H_post = 1``; the standard pre-LN transformer.
- ``"hc"``, Hyper-Connections (Zhu et al. 2024, arXiv 2409.19606). Static weights plus dynamic
  ones computed from each (normalised) stream: ``A + s * tanh(norm(X) W)``, with ``W`` initialised
  to zero and the scales ``s`` to 0.01. Initialisation is identity-dominant: ``H_res = I``,
  ``H_post = 1`` for every stream and ``H_pre = e_(k mod n)`` for the k-th sub-layer, so at
  initialisation all streams hold the same vector and the model computes what a residual model
  with the same weights computes. Nothing bounds ``H_res``: its product across depth can grow.
- ``"mhc"``, Manifold-Constrained Hyper-Connections (Xie et al. 2025, arXiv 2512.24880). The
  coefficients come from the whole flattened, RMS-normalised ``n * d_model`` state:
  ``H~ = alpha * (RMSNorm(vec X) @ phi) + b``, then ``H_pre = sigmoid(H~_pre)``,
  ``H_post = 2 sigmoid(H~_post)`` and ``H_res = SinkhornKnopp(exp(H~_res))``, 20 alternating
  row/column normalisations (in linear space, or in log space for widely spread logits).
  ``H_res`` is then (close to) doubly stochastic, a convex mixture of streams, so products
  across depth stay bounded.
- ``"mhc-lite"`` (Yang & Gao 2026, arXiv 2601.05732): as mHC, but
  ``H_res = sum_k softmax(H~_res)_k P_k`` over all ``n!`` permutation matrices ``P_k``
  (Birkhoff-von Neumann): exactly doubly stochastic, no iterations.

Choices the papers leave open, made here and used everywhere in sinklens:

- The dynamic projections ``W`` / ``phi`` are initialised to zero and the gating scales
  ``s`` / ``alpha`` to 0.01, so every scheme starts from its static (bias) weights.
- mHC / mHC-lite biases mirror HC's identity-dominant start: ``H_post = 2 sigmoid(0) = 1`` per
  stream; ``H_pre`` = ``sigmoid(+-4)``, about 0.98 on stream ``k mod n`` and 0.02 elsewhere;
  ``H_res`` has 0.95 on the diagonal at initialisation (not exactly ``I``: ``exp`` and
  softmax never reach 0). Because every stream starts equal and ``H_res`` rows sum to one,
  an mHC model also computes exactly what the residual model computes at initialisation
  (a pre-LN sub-layer does not see the scale of its input).
- The readout sums the streams (``sum_i X_i``), as in HC; TransformerLens-style
  ``hook_resid_*`` points in :mod:`sinklens.model` carry that stream sum.

What 20 Sinkhorn iterations give (measured in ``tests/test_hyperconnections.py``): the last
half-step normalises columns, so column sums are exact and the *backward* Amax gain is 1; row
sums are only approximately 1. For logits of standard deviation 0.5 the worst row error after 20
iterations is ~1e-7, for std 1 ~1e-4, for std 2 ~3e-2 (the worst of 4096 random 4 x 4
matrices). During training the forward gain of mHC drifts slightly above 1 (1.005 after a few
hundred steps of the tiny zoo model); mHC-lite's is 1 to float precision, as its paper argues.

:func:`amax_gain` measures how far the composite mixing ``H_res^(L) ... H_res^(1)`` is from
preserving signal size: its largest absolute row sum (forward gain) and column sum (backward
gain), the "Amax gain magnitude" of the mHC paper. It is 1 for doubly stochastic matrices.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from sinklens import native

SCHEMES = ("residual", "hc", "mhc", "mhc-lite")

DYNAMIC_SCALE_INIT = 0.01  # s_alpha, s_beta (HC) and alpha_pre/post/res (mHC) at initialisation
H_PRE_LOGIT_INIT = 4.0  # mHC: sigmoid(+4) = 0.982 on the sub-layer's own stream, sigmoid(-4) elsewhere
H_RES_DIAGONAL_INIT = 0.95
RMS_EPS = 1e-6  # mHC / mHC-lite: diagonal of H_res at initialisation


def _at_least_fp32(t: Tensor) -> Tensor:
    """``t`` in fp32 if it is in a lower precision (bf16 / fp16 under autocast), else unchanged."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


# --- Doubly stochastic matrices ------------------------------------------------------------------


EXP_SPACE_MAX_SPREAD = 60.0  # exp(-60) = 9e-27: exp-space Sinkhorn cannot underflow to 0 below this


class _LogSinkhorn(torch.autograd.Function):
    """Log-space Sinkhorn-Knopp with a hand-written backward through every iteration.

    Works on ``[n, n, tokens]`` (tokens last, so the small row/column reductions vectorise over
    tokens). Each half-step is a ``log_softmax`` over rows or columns; its backward is
    ``g - softmax * g.sum()``, using the softmaxes kept from the forward pass. Same numbers as
    letting autograd unroll the loop (tested), at about a third of the cost on CPU. Used for
    logits too spread out for :class:`_ExpSinkhorn`.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, n_iters: int, tol: float | None) -> Tensor:
        log_m = logits.movedim((-2, -1), (0, 1)).contiguous()  # [n(row), n(col), ...]
        normalised = []  # exp of every half-step's output, for the backward pass
        for _ in range(n_iters):
            log_m = torch.log_softmax(log_m, dim=1)  # rows sum to 1
            normalised.append(log_m.exp())
            log_m = torch.log_softmax(log_m, dim=0)  # columns sum to 1
            normalised.append(log_m.exp())
            if tol is not None and (normalised[-1].sum(1) - 1).abs().max().item() <= tol:
                break  # rows are within tol of 1 too: converged
        ctx.save_for_backward(*normalised)
        return normalised[-1].movedim((0, 1), (-2, -1)).contiguous()  # bmm is slow on strided input

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        normalised = ctx.saved_tensors
        g = grad.movedim((-2, -1), (0, 1)) * normalised[-1]  # gradient w.r.t. log of the output
        for step in range(len(normalised) - 1, -1, -1):
            dim = 0 if step % 2 == 1 else 1  # odd steps normalised columns, even steps rows
            g = torch.addcmul(g, normalised[step], g.sum(dim, keepdim=True), value=-1.0)
        return g.movedim((0, 1), (-2, -1)), None, None


class _ExpSinkhorn(torch.autograd.Function):
    """The same iterations as :class:`_LogSinkhorn`, in linear space: ``M <- M / M.sum(rows)``,
    then columns, starting from ``exp(logits - max)``. Two cheap ops per half-step instead of a
    ``log_softmax`` and an ``exp`` (2.6 ms against 7.2 ms per sub-layer, forward and backward,
    at 2048 tokens on one core). Only for logits whose spread within each matrix is at most
    :data:`EXP_SPACE_MAX_SPREAD`, so no entry underflows to 0 (:func:`sinkhorn_knopp` checks).

    Backward of ``y = m / s`` with ``s = m.sum(dim)``: ``dm = (g - (g * y).sum(dim)) / s``.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, n_iters: int, tol: float | None) -> Tensor:
        x = logits.movedim((-2, -1), (0, 1)).contiguous()  # [n(row), n(col), ...]
        m = torch.exp(x - x.amax((0, 1), keepdim=True))
        outputs, sums = [], []
        for _ in range(n_iters):
            for dim in (1, 0):  # rows sum to 1, then columns
                s = m.sum(dim, keepdim=True)
                m = m / s
                outputs.append(m)
                sums.append(s)
            if tol is not None and (m.sum(1) - 1).abs().max().item() <= tol:
                break
        ctx.n_half_steps = len(outputs)
        ctx.save_for_backward(*outputs, *sums)
        return m.movedim((0, 1), (-2, -1)).contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        k = ctx.n_half_steps
        outputs, sums = ctx.saved_tensors[:k], ctx.saved_tensors[k:]
        g = grad.movedim((-2, -1), (0, 1)).contiguous()
        for step in range(k - 1, -1, -1):
            dim = 0 if step % 2 == 1 else 1
            g = (g - (g * outputs[step]).sum(dim, keepdim=True)) / sums[step]
        g = g * (outputs[0] * sums[0])  # d exp(x - max) / dx; the shift by the max cancels out
        return g.movedim((0, 1), (-2, -1)), None, None


def sinkhorn_knopp(logits: Tensor, n_iters: int = 20, tol: float | None = None) -> Tensor:
    """``exp(logits)`` scaled to be (nearly) doubly stochastic: ``[..., n, n] -> [..., n, n]``.

    Alternates row and column normalisation ``n_iters`` times over every matrix of the batch at
    once: in linear space from ``exp(logits - max)`` when every matrix's logits span at most
    :data:`EXP_SPACE_MAX_SPREAD` (nothing can underflow), else in log space (``log_softmax``),
    which cannot overflow or divide by zero whatever the logits. Both give the same numbers to
    float precision (tested). The last step
    normalises columns, so columns sum to 1 to float precision and rows approach 1 as ``n_iters``
    grows. With ``tol``, it stops as soon as every row sum is within ``tol`` of 1 (``n_iters``
    is then the cap): the result differs from the full ``n_iters`` by at most about ``tol``, and
    near the identity-dominant initialisation one or two iterations suffice. Always done in fp32
    (also under autocast). Differentiable: the gradient goes through every iteration that ran, as
    in the mHC paper.

    Where it runs: float32 CPU logits without ``tol`` go to the C kernel of
    :mod:`sinklens.native` (the same iterations and the same choice of path, made per block of 16
    matrices; eager and compiled alike). Otherwise (float64, a tolerance, a GPU, no C compiler) the
    torch implementation runs: eager as above, and inside ``torch.compile`` always in log space.
    """
    if n_iters < 1:
        raise ValueError(f"n_iters must be >= 1, got {n_iters}.")
    if tol is not None and not tol > 0:
        raise ValueError(f"tol must be > 0 or None, got {tol}.")
    with torch.autocast(logits.device.type, enabled=False):
        logits = _at_least_fp32(logits)
        if tol is None and _native_fits(logits):
            # the same iterations and path choice, per block of 16 matrices, in a C kernel
            # (sinklens.native): one opaque op for torch.compile, a backward that recomputes
            return native.sinkhorn(logits, n_iters)
        if torch.compiler.is_compiling():
            # a compiled graph cannot branch on the logits' values without breaking in two at
            # the check's .item(); the log-space path is right for any logits, and compiled it
            # costs about 15 ms more per small-mHC step than the linear-space one (README)
            return _LogSinkhorn.apply(logits, n_iters, tol)
        spread = (logits.amax((-2, -1)) - logits.amin((-2, -1))).max() if logits.numel() else logits.new_zeros(())
        fast = bool(torch.isfinite(spread)) and spread.item() <= EXP_SPACE_MAX_SPREAD
        return (_ExpSinkhorn if fast else _LogSinkhorn).apply(logits, n_iters, tol)


def permutation_matrices(n: int) -> Tensor:
    """All ``n!`` permutation matrices of size ``n``, ``[n!, n, n]``; index 0 is the identity."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    if n > 6:
        raise ValueError(f"n = {n} gives {math.factorial(n)} permutations: mHC-lite is for n <= 6.")
    eye = torch.eye(n)
    return torch.stack([eye[list(p)] for p in itertools.permutations(range(n))])


def birkhoff_mixture(logits: Tensor, perms: Tensor) -> Tensor:
    """``sum_k softmax(logits)_k P_k``: ``[..., n!]`` logits, ``[n!, n, n]`` perms -> ``[..., n, n]``."""
    weights = torch.softmax(logits, dim=-1)
    n = perms.shape[-1]
    flat = perms.reshape(perms.shape[0], n * n)
    if torch.compiler.is_compiling():
        # the same sum as a broadcast product: torch.compile fuses it with the softmax into one
        # pass, where the matrix product would be a separate [tokens, n!] x [n!, n*n] GEMM call
        return (weights.unsqueeze(-1) * flat).sum(-2).unflatten(-1, (n, n))
    return (weights @ flat).unflatten(-1, (n, n))


def doubly_stochastic_error(m: Tensor) -> Tensor:
    """Largest deviation of any row or column sum from 1, over all matrices in ``[..., n, n]``."""
    rows = (m.sum(-1) - 1).abs().amax()
    cols = (m.sum(-2) - 1).abs().amax()
    return torch.maximum(rows, cols)


def amax_gain(h_res: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Forward and backward Amax gain of the composite mixing ``h_res[-1] @ ... @ h_res[0]``.

    ``h_res``: one ``[..., n, n]`` matrix per sub-layer, in the order they act (any leading
    batch/position dimensions broadcast). Returns ``(forward, backward)``, each ``[...]``: the
    largest absolute row sum (how much a signal can grow going forward) and the largest absolute
    column sum (how much a gradient can grow going backward) of the product.
    """
    if len(h_res) == 0:
        raise ValueError("amax_gain needs at least one H_res matrix.")
    composite = h_res[0]
    for h in h_res[1:]:
        composite = h @ composite
    forward = composite.abs().sum(-1).amax(-1)
    backward = composite.abs().sum(-2).amax(-1)
    return forward, backward


# --- Connections ---------------------------------------------------------------------------------


class HyperConnection(nn.Module):
    """One sub-layer's HC connection (Zhu et al.): static plus tanh-gated dynamic weights.

    ``read(X)`` returns the sub-layer input and the mixing weights; ``write`` applies them.
    """

    def __init__(self, d_model: int, n_streams: int, layer_index: int, dynamic: bool = True):
        super().__init__()
        n = n_streams
        self.n_streams = n
        self.dynamic = dynamic
        h_pre = torch.zeros(n)
        h_pre[layer_index % n] = 1.0
        self.static_h_pre = nn.Parameter(h_pre)  # A_m in the paper
        self.static_h_res = nn.Parameter(torch.eye(n))  # A_r^T
        self.static_h_post = nn.Parameter(torch.ones(n))  # B
        if dynamic:
            self.norm = nn.LayerNorm(d_model)  # the paper normalises each stream with LayerNorm
            self.w_pre = nn.Parameter(torch.zeros(d_model))  # W_m
            self.w_res = nn.Parameter(torch.zeros(d_model, n))  # W_r
            self.w_post = nn.Parameter(torch.zeros(d_model))  # W_beta
            self.scale_alpha = nn.Parameter(torch.tensor(DYNAMIC_SCALE_INIT))
            self.scale_beta = nn.Parameter(torch.tensor(DYNAMIC_SCALE_INIT))
        self.hook_h_pre = HookPoint()  # [b, p, n]
        self.hook_h_res = HookPoint()  # [b, p, n, n]
        self.hook_h_post = HookPoint()  # [b, p, n]

    def coefficients(self, streams: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``streams [b, p, n, d]`` -> ``H_pre [b, p, n]``, ``H_res [b, p, n, n]``, ``H_post [b, p, n]``."""
        with torch.autocast(streams.device.type, enabled=False):  # coefficients in fp32
            return self._coefficients(_at_least_fp32(streams))

    def _coefficients(self, streams: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if not self.dynamic:
            lead = streams.shape[:-2]
            h_pre = self.static_h_pre.expand(*lead, -1)
            h_res = self.static_h_res.expand(*lead, -1, -1)
            h_post = self.static_h_post.expand(*lead, -1)
            return self.hook_h_pre(h_pre), self.hook_h_res(h_res), self.hook_h_post(h_post)
        normed = self.norm(streams)  # [b, p, n, d]
        # the three projections as one matmul (one pass over the normalised streams, not three)
        n = self.n_streams
        w = torch.cat([self.w_pre.unsqueeze(-1), self.w_res, self.w_post.unsqueeze(-1)], dim=-1)  # [d, n + 2]
        gated = torch.tanh(normed @ w)  # [b, p, n, n + 2]
        h_pre = self.static_h_pre + self.scale_alpha * gated[..., 0]
        # Row j of the paper's dynamic A_r comes from stream j and says where stream j goes:
        # that is column j of H_res = A_r^T.
        dyn_res = self.scale_alpha * gated[..., 1 : n + 1]  # [b, p, n(from), n(to)]
        h_res = self.static_h_res + dyn_res.transpose(-1, -2)
        h_post = self.static_h_post + self.scale_beta * gated[..., n + 1]
        return self.hook_h_pre(h_pre), self.hook_h_res(h_res), self.hook_h_post(h_post)


class ManifoldHyperConnection(nn.Module):
    """One sub-layer's mHC connection (Xie et al.), or mHC-lite's (Yang & Gao) with ``exact=True``."""

    def __init__(
        self,
        d_model: int,
        n_streams: int,
        layer_index: int,
        exact: bool = False,
        sinkhorn_iters: int = 20,
        sinkhorn_tol: float | None = None,
    ):
        super().__init__()
        n = n_streams
        self.n_streams = n
        self.exact = exact
        self.sinkhorn_iters = sinkhorn_iters
        self.sinkhorn_tol = sinkhorn_tol
        self.norm_weight = nn.Parameter(torch.ones(n * d_model))  # RMSNorm over the flat n*d state
        n_res = math.factorial(n) if exact else n * n
        # one projection for H~_pre, H~_post and H~_res together: [n*d, n + n + n_res]
        self.phi = nn.Parameter(torch.zeros(n * d_model, 2 * n + n_res))
        self.alpha_pre = nn.Parameter(torch.tensor(DYNAMIC_SCALE_INIT))
        self.alpha_post = nn.Parameter(torch.tensor(DYNAMIC_SCALE_INIT))
        self.alpha_res = nn.Parameter(torch.tensor(DYNAMIC_SCALE_INIT))
        b_pre = torch.full((n,), -H_PRE_LOGIT_INIT)
        b_pre[layer_index % n] = H_PRE_LOGIT_INIT
        self.b_pre = nn.Parameter(b_pre)
        self.b_post = nn.Parameter(torch.zeros(n))  # 2 sigmoid(0) = 1
        p = H_RES_DIAGONAL_INIT
        if exact:
            self.register_buffer("perms", permutation_matrices(n), persistent=False)
            b_res = torch.zeros(n_res)  # weight p on the identity (index 0), the rest shared
            b_res[0] = math.log(p * (n_res - 1) / (1 - p)) if n > 1 else 0.0
        else:
            b_res = torch.zeros(n, n)  # exp(): diagonal a, off-diagonal 1 -> diagonal a / (a + n - 1)
            if n > 1:
                b_res += math.log(p * (n - 1) / (1 - p)) * torch.eye(n)
            b_res = b_res.flatten()
        self.b_res = nn.Parameter(b_res)
        self.hook_h_pre = HookPoint()  # [b, p, n]
        self.hook_h_res = HookPoint()  # [b, p, n, n]
        self.hook_h_post = HookPoint()  # [b, p, n]

    def coefficients(self, streams: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``streams [b, p, n, d]`` -> ``H_pre [b, p, n]``, ``H_res [b, p, n, n]``, ``H_post [b, p, n]``."""
        with torch.autocast(streams.device.type, enabled=False):  # coefficients in fp32
            return self._coefficients(_at_least_fp32(streams))

    def _coefficients(self, streams: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = self.n_streams
        flat = streams.flatten(-2)  # [b, p, n*d]
        # RMSNorm(flat) @ phi, with the 1/rms applied after the matmul (as the mHC paper does):
        # it never materialises the normalised n*d vector.
        mean_square = torch.linalg.vector_norm(flat, dim=-1, keepdim=True).square() / flat.shape[-1]
        inv_rms = torch.rsqrt(mean_square + RMS_EPS)
        proj = (flat @ (self.norm_weight.unsqueeze(-1) * self.phi)) * inv_rms  # [b, p, 2n + n_res]
        h_pre = torch.sigmoid(self.alpha_pre * proj[..., :n] + self.b_pre)
        h_post = 2 * torch.sigmoid(self.alpha_post * proj[..., n : 2 * n] + self.b_post)
        res_logits = self.alpha_res * proj[..., 2 * n :] + self.b_res
        if self.exact:
            h_res = birkhoff_mixture(res_logits, self.perms)
        else:
            h_res = sinkhorn_knopp(res_logits.unflatten(-1, (n, n)), self.sinkhorn_iters, self.sinkhorn_tol)
        return self.hook_h_pre(h_pre), self.hook_h_res(h_res), self.hook_h_post(h_post)


def make_connection(
    scheme: str,
    d_model: int,
    n_streams: int,
    layer_index: int,
    *,
    hc_dynamic: bool = True,
    sinkhorn_iters: int = 20,
    sinkhorn_tol: float | None = None,
) -> nn.Module:
    """The connection module for one sub-layer of a multi-stream scheme ("hc", "mhc", "mhc-lite")."""
    if scheme == "hc":
        return HyperConnection(d_model, n_streams, layer_index, dynamic=hc_dynamic)
    if scheme == "mhc":
        return ManifoldHyperConnection(d_model, n_streams, layer_index, sinkhorn_iters=sinkhorn_iters,
                                       sinkhorn_tol=sinkhorn_tol)
    if scheme == "mhc-lite":
        return ManifoldHyperConnection(d_model, n_streams, layer_index, exact=True)
    raise ValueError(f"No multi-stream connection for scheme {scheme!r}; expected one of {SCHEMES[1:]}.")


class _ReadStreams(torch.autograd.Function):
    """``y = sum_i h_pre_i X_i`` as one batched matmul per token, with a backward that gives every
    batched matmul contiguous operands (torch's CPU bmm otherwise copies matrix by matrix)."""

    @staticmethod
    def forward(ctx, streams: Tensor, h_pre: Tensor) -> Tensor:
        *lead, n, d = streams.shape
        x = streams.reshape(-1, n, d)
        p = h_pre.reshape(-1, 1, n)
        ctx.save_for_backward(x, p)
        ctx.shapes = (streams.shape, h_pre.shape)
        return torch.bmm(p, x).view(*lead, d)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, p = ctx.saved_tensors
        streams_shape, pre_shape = ctx.shapes
        g = grad.reshape(-1, 1, x.shape[-1]).contiguous()  # [T, 1, d]
        g_streams = (p.view(-1, p.shape[-1], 1) * g).view(streams_shape) if ctx.needs_input_grad[0] else None
        g_pre = torch.bmm(x, g.view(-1, x.shape[-1], 1)).view(pre_shape) if ctx.needs_input_grad[1] else None
        return g_streams, g_pre


class _WriteStreams(torch.autograd.Function):
    """``H_res @ X + H_post^T out`` as two batched matmuls per token; contiguous operands in the
    backward too. Measured in ``benchmarks/bench_training.py``: with plain autograd, the backward's
    transposed operands made CPU bmm copy each token's matrices one by one."""

    @staticmethod
    def forward(ctx, streams: Tensor, h_res: Tensor, h_post: Tensor, out: Tensor) -> Tensor:
        *lead, n, d = streams.shape
        x = streams.reshape(-1, n, d)
        h = h_res.reshape(-1, n, n).contiguous()
        post = h_post.reshape(-1, n, 1)
        o = out.reshape(-1, 1, d)
        ctx.save_for_backward(x, h, post, o)
        ctx.shapes = (streams.shape, h_res.shape, h_post.shape, out.shape)
        return torch.baddbmm(post * o, h, x).view(*lead, n, d)  # an outer product is cheaper as a broadcast

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, h, post, o = ctx.saved_tensors
        streams_shape, res_shape, post_shape, out_shape = ctx.shapes
        n, d = x.shape[-2:]
        g = grad.reshape(-1, n, d).contiguous()  # [T, n, d]
        need = ctx.needs_input_grad
        g_streams = torch.bmm(h.transpose(1, 2).contiguous(), g).view(streams_shape) if need[0] else None
        g_res = torch.bmm(g, x.transpose(1, 2).contiguous()).view(res_shape) if need[1] else None
        g_post = torch.bmm(g, o.view(-1, d, 1)).view(post_shape) if need[2] else None
        g_out = torch.bmm(post.view(-1, 1, n), g).view(out_shape) if need[3] else None
        return g_streams, g_res, g_post, g_out


def read_streams(streams: Tensor, h_pre: Tensor) -> Tensor:
    """The sub-layer input ``H_pre @ X``: ``[b, p, n, d]``, ``[b, p, n]`` -> ``[b, p, d]``, in fp32."""
    with torch.autocast(streams.device.type, enabled=False):
        args = tuple(map(_at_least_fp32, (streams, h_pre)))
        if _native_fits(*args):
            return native.read_streams(*args)
        return _ReadStreams.apply(*args)


def write_streams(streams: Tensor, h_res: Tensor, h_post: Tensor, out: Tensor) -> Tensor:
    """``H_res @ X + H_post^T out``: ``[b,p,n,d]``, ``[b,p,n,n]``, ``[b,p,n]``, ``[b,p,d]`` -> ``[b,p,n,d]``.

    Always in fp32, also under a bf16 autocast: the streams are the residual state, which mixed
    precision keeps in fp32 (as the plain residual stream is, ``x + bf16 sub-layer output``).
    """
    with torch.autocast(streams.device.type, enabled=False):
        args = tuple(map(_at_least_fp32, (streams, h_res, h_post, out)))
        if _native_fits(*args):
            return native.write_streams(*args)
        return _WriteStreams.apply(*args)


def _native_fits(*tensors: Tensor) -> bool:
    """Whether the C kernels of :mod:`sinklens.native` take these (float32 CPU tensors, built)."""
    return all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors) and native.available()
