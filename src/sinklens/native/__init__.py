"""Hand-written CPU kernels for training, built with the system C compiler on first use.

Three files of C, called through ctypes and registered as torch custom ops (so ``torch.compile``
calls each as one opaque op, and autograd uses the hand-written backward):

- ``sinkhorn.c``: Sinkhorn-Knopp over many small ``n x n`` matrices (``sinklens::sinkhorn`` and
  its backward). The same iterations and the same choice between linear and log space as
  :class:`sinklens.hyperconnections._ExpSinkhorn` / ``_LogSinkhorn`` (tested against autograd
  through the loop), 16 matrices per vector; the backward recomputes the iterations instead of
  storing 2 * n_iters intermediate matrices per token. Forward and backward at 2048 tokens, one
  core: about 0.7 ms (2.6 ms when every block needs log space), against 2-4 ms for
  ``_ExpSinkhorn`` and 10-12 ms for ``_LogSinkhorn``. Non-finite logits are handled outside the
  kernel (which assumes finite numbers): where exact log-space arithmetic gives NaN, so does it.
- ``streams.c``: the stream read ``sum_i h_pre_i X_i`` and write ``H_res X + h_post out``
  (``sinklens::read_streams``, ``sinklens::write_streams`` and their backwards), one pass over the
  streams each, instead of torch's batched 1 x n and n x n matrix products.
- ``attention.c``: causal softmax attention for heads of 16, 32, 64 or 128 dimensions
  (``sinklens::causal_attention`` and its backward). It reads and writes the model's ``[batch,
  position, head, d_head]`` layout (contiguous) without transposed copies, keeps each head's scaled
  keys and its values in small transposed buffers and register-tiles every product over 4 rows;
  like flash attention it saves only each query's log-sum-exp between forward and backward, and
  the backward recomputes the probabilities (holding one head's ``[T, T]`` probabilities and their
  gradient at a time). It has no threads: the model uses it with one torch thread. At the zoo's
  ``small`` shape (32 x 64 tokens, 4 heads of 32), one core, forward and backward took 3.0-3.7 ms
  per layer against 5.2-5.8 ms for torch's CPU flash kernel (README, "Benchmarks").

:func:`sinklens.hyperconnections.sinkhorn_knopp`, ``read_streams`` and ``write_streams`` use them
for float32 CPU tensors, and :class:`sinklens.model.Attention`'s fused path (training: no hook on
the pattern) uses ``causal_attention`` on the CPU, converting to float32 as it did for torch's
kernel. The library is compiled once per process into a temporary folder (``cc -O3
-march=native -ffast-math``, under a second) and the folder removed once loaded. Built for the
machine it runs on, a kernel's rounding can differ between CPUs (vector widths, fused
multiply-adds), as torch's own kernels' can; on one machine it is deterministic. Without a C
compiler, or if the build fails, :func:`available` is False, a one-line message says so, and the
torch implementations run instead. ``SINKLENS_NO_NATIVE=1`` turns the kernels off. The ops have
first derivatives only (the torch implementations also have second ones), and take coefficients of
exactly the streams' leading shape (no broadcasting).
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor

SOURCES = tuple(Path(__file__).with_name(name) for name in ("sinkhorn.c", "streams.c", "attention.c"))
# -ffast-math for the compile step only (vectorised exp/log from libmvec): linked with it, gcc would
# add crtfastmath.o, whose constructor turns on flush-to-zero for the whole process at load time
FLAGS = ("-O3", "-march=native", "-ffast-math", "-fPIC")


@functools.cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("SINKLENS_NO_NATIVE"):
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        print("[sinklens] no C compiler found: Sinkhorn-Knopp, the stream read/write and attention use "
              "their (slower) torch implementations.", file=sys.stderr)
        return None
    folder = tempfile.mkdtemp(prefix="sinklens-native-")
    try:
        target = os.path.join(folder, "libsinklens_native.so")
        objects = [os.path.join(folder, source.stem + ".o") for source in SOURCES]
        commands = [[compiler, *FLAGS, "-c", str(source), "-o", obj] for source, obj in zip(SOURCES, objects)]
        commands.append([compiler, "-shared", *objects, "-o", target, "-lm", "-lmvec"])
        error = None
        try:
            for command in commands:
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode:
                    error = done.stderr.strip().splitlines()[-1:] or f"exit {done.returncode}"
                    break
        except OSError as e:
            error = str(e)
        if error:
            print(f"[sinklens] building the native kernels with {compiler} failed ({error}): "
                  "Sinkhorn-Knopp, the stream read/write and attention use their (slower) torch implementations.",
                  file=sys.stderr)
            return None
        try:
            lib = ctypes.CDLL(target)
        except OSError as e:  # e.g. a temporary folder mounted noexec
            print(f"[sinklens] loading the native kernels failed ({e}): Sinkhorn-Knopp, the stream "
                  "read/write and attention use their (slower) torch implementations.", file=sys.stderr)
            return None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    sizes = [ctypes.c_int64, ctypes.c_int, ctypes.c_int]
    pointers = {"sinkhorn_forward": 2, "sinkhorn_backward": 3, "read_streams_forward": 3,
                "read_streams_backward": 5, "write_streams_forward": 5, "write_streams_backward": 9}
    for name, count in pointers.items():
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_void_p] * count + sizes
        fn.restype = ctypes.c_int if name.startswith("sinkhorn") else None
    attention_sizes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_int]
    for name, count in {"causal_attention_forward": 5, "causal_attention_backward": 9}.items():
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_void_p] * count + attention_sizes
        fn.restype = ctypes.c_int
    return lib


@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether the native kernels are built and loaded (builds them on the first call)."""
    return _library() is not None


def _float32_cpu(op: str, *tensors: Tensor) -> list[Tensor]:
    """The tensors, contiguous, once checked to be float32 on the CPU (all the kernels take)."""
    for t in tensors:
        if t.dtype != torch.float32 or t.device.type != "cpu":
            raise TypeError(f"native {op} takes float32 CPU tensors, got {t.dtype} on {t.device}.")
    return [t.contiguous() for t in tensors]


def _ptrs(*tensors: Tensor) -> list[int]:
    return [t.data_ptr() for t in tensors]


def _undefined_matrices(x: Tensor) -> Tensor | None:
    """``[..., n, n]`` -> ``[...]`` mask of the matrices whose Sinkhorn result is NaN in exact
    (log-space) arithmetic: a NaN or +inf logit, or a row or column of -inf. None if all are finite.
    The kernel itself assumes finite logits (it is built with -ffast-math)."""
    if bool(torch.isfinite(x).all()):
        return None
    neg = torch.isneginf(x)
    return ((torch.isnan(x) | torch.isposinf(x)).any((-2, -1))
            | neg.all(-1).any(-1) | neg.all(-2).any(-1))


def _run_sinkhorn(kernel: str, logits: Tensor, *others: Tensor, n_iters: int) -> Tensor:
    """Run ``kernel`` (``sinkhorn_forward`` / ``sinkhorn_backward``) on ``[..., n, n]`` logits and
    the tensors beside them; returns its result, NaN for the matrices :func:`_undefined_matrices` marks."""
    x, *others = _float32_cpu("Sinkhorn", logits, *others)
    if x.dim() < 2 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"native Sinkhorn takes [..., n, n] logits, got shape {tuple(x.shape)}.")
    result = torch.empty_like(x)
    n = x.shape[-1]
    if x.numel() and getattr(_library(), kernel)(*_ptrs(x, *others, result), x.numel() // (n * n), n, n_iters):
        raise MemoryError("native Sinkhorn: out of memory for its scratch buffer.")
    undefined = _undefined_matrices(x)
    if undefined is not None:
        result[undefined] = float("nan")
    return result


@torch.library.custom_op("sinklens::sinkhorn", mutates_args=())
def sinkhorn(logits: Tensor, n_iters: int) -> Tensor:
    """``n_iters`` row-then-column normalisations of ``exp(logits)``: ``[..., n, n] -> [..., n, n]``.

    Only first derivatives (its backward is not itself differentiable)."""
    return _run_sinkhorn("sinkhorn_forward", logits, n_iters=n_iters)


@sinkhorn.register_fake
def _(logits: Tensor, n_iters: int) -> Tensor:
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@torch.library.custom_op("sinklens::sinkhorn_backward", mutates_args=())
def sinkhorn_backward(logits: Tensor, grad_out: Tensor, n_iters: int) -> Tensor:
    """Gradient of :func:`sinkhorn` w.r.t. its logits, recomputing the iterations: ``[..., n, n]``."""
    return _run_sinkhorn("sinkhorn_backward", logits, grad_out.to(torch.float32), n_iters=n_iters)


@sinkhorn_backward.register_fake
def _(logits: Tensor, grad_out: Tensor, n_iters: int) -> Tensor:
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output) -> None:
    logits, n_iters = inputs
    ctx.save_for_backward(logits)
    ctx.n_iters = n_iters


def _backward(ctx, grad: Tensor):
    (logits,) = ctx.saved_tensors
    return sinkhorn_backward(logits, grad, ctx.n_iters), None


sinkhorn.register_autograd(_backward, setup_context=_setup_context)


# --- Multi-stream read and write (streams.c) ---------------------------------------------------


def _check_stream_shapes(streams: Tensor, **coefficients: tuple[Tensor, tuple[int, ...]]) -> None:
    """Each coefficient must have exactly its full shape (the kernels do not broadcast)."""
    for name, (tensor, shape) in coefficients.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}; for streams of shape "
                             f"{tuple(streams.shape)} it must be {shape}.")


@torch.library.custom_op("sinklens::read_streams", mutates_args=())
def read_streams(streams: Tensor, h_pre: Tensor) -> Tensor:
    """``sum_i h_pre_i X_i``: ``[..., n, d]``, ``[..., n]`` -> ``[..., d]`` (first derivatives only)."""
    x, pre = _float32_cpu("stream ops", streams, h_pre)
    *lead, n, d = x.shape
    _check_stream_shapes(x, h_pre=(pre, (*lead, n)))
    y = x.new_empty(*lead, d)
    if y.numel():
        _library().read_streams_forward(*_ptrs(x, pre, y), x.numel() // (n * d), n, d)
    else:
        y.zero_()
    return y


@read_streams.register_fake
def _(streams: Tensor, h_pre: Tensor) -> Tensor:
    return streams.new_empty(streams.shape[:-2] + streams.shape[-1:])


@torch.library.custom_op("sinklens::read_streams_backward", mutates_args=())
def read_streams_backward(streams: Tensor, h_pre: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    x, pre, g = _float32_cpu("stream ops", streams, h_pre, grad)
    n, d = x.shape[-2:]
    if not x.numel():  # nothing to read from: zero gradients (also for d = 0)
        return torch.zeros_like(x), torch.zeros_like(pre)
    g_streams, g_pre = torch.empty_like(x), torch.empty_like(pre)
    _library().read_streams_backward(*_ptrs(x, pre, g, g_streams, g_pre), x.numel() // (n * d), n, d)
    return g_streams, g_pre


@read_streams_backward.register_fake
def _(streams: Tensor, h_pre: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    return streams.new_empty(streams.shape), h_pre.new_empty(h_pre.shape)


def _save_inputs(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _read_backward(ctx, grad: Tensor):
    return read_streams_backward(*ctx.saved_tensors, grad)


read_streams.register_autograd(_read_backward, setup_context=_save_inputs)


@torch.library.custom_op("sinklens::write_streams", mutates_args=())
def write_streams(streams: Tensor, h_res: Tensor, h_post: Tensor, out: Tensor) -> Tensor:
    """``H_res @ X + H_post^T out`` per token: ``[..., n, d]``, ``[..., n, n]``, ``[..., n]``, ``[..., d]``
    (first derivatives only)."""
    x, h, post, o = _float32_cpu("stream ops", streams, h_res, h_post, out)
    *lead, n, d = x.shape
    _check_stream_shapes(x, h_res=(h, (*lead, n, n)), h_post=(post, (*lead, n)), out=(o, (*lead, d)))
    y = torch.empty_like(x)
    if x.numel():
        _library().write_streams_forward(*_ptrs(x, h, post, o, y), x.numel() // (n * d), n, d)
    return y


@write_streams.register_fake
def _(streams: Tensor, h_res: Tensor, h_post: Tensor, out: Tensor) -> Tensor:
    return streams.new_empty(streams.shape)


@torch.library.custom_op("sinklens::write_streams_backward", mutates_args=())
def write_streams_backward(streams: Tensor, h_res: Tensor, h_post: Tensor, out: Tensor,
                           grad: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x, h, post, o, g = _float32_cpu("stream ops", streams, h_res, h_post, out, grad)
    n, d = x.shape[-2:]
    if not x.numel():
        return tuple(torch.zeros_like(t) for t in (x, h, post, o))
    grads = [torch.empty_like(t) for t in (x, h, post, o)]
    _library().write_streams_backward(*_ptrs(x, h, post, o, g, *grads), x.numel() // (n * d), n, d)
    return tuple(grads)


@write_streams_backward.register_fake
def _(streams: Tensor, h_res: Tensor, h_post: Tensor, out: Tensor, grad: Tensor):
    return tuple(t.new_empty(t.shape) for t in (streams, h_res, h_post, out))


def _write_backward(ctx, grad: Tensor):
    return write_streams_backward(*ctx.saved_tensors, grad)


write_streams.register_autograd(_write_backward, setup_context=_save_inputs)


# --- Causal attention (attention.c) -------------------------------------------------------------

ATTENTION_HEAD_SIZES = (16, 32, 64, 128)


def attention_fits(device: torch.device, d_head: int) -> bool:
    """Whether :func:`causal_attention` runs for heads of ``d_head`` on ``device``: the CPU with
    one torch thread (the kernel has no threads of its own; with more, torch's SDPA runs in
    parallel), a head size it has a kernel for, the kernels built. It takes float32; callers convert."""
    return device.type == "cpu" and d_head in ATTENTION_HEAD_SIZES and _one_thread() and available()


@torch.compiler.assume_constant_result
def _one_thread() -> bool:
    return torch.get_num_threads() == 1


def _check_attention(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError("native attention takes q, k, v of one shape [batch, position, head, d_head]; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}.")
    if q.shape[-1] not in ATTENTION_HEAD_SIZES:
        raise ValueError(f"native attention has kernels for d_head in {ATTENTION_HEAD_SIZES}, got {q.shape[-1]}.")


def _attention_library() -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise RuntimeError("native attention: the C kernels are not built (no C compiler, a failed build, or "
                           "SINKLENS_NO_NATIVE=1); use torch.nn.functional.scaled_dot_product_attention.")
    return lib


def _check_attention_status(status: int) -> None:
    """The C functions return 0, 1 (out of memory for the scratch buffers) or 2 (no kernel for d_head)."""
    if status == 1:
        raise MemoryError("native attention: out of memory for its scratch buffers.")
    if status:
        raise ValueError(f"native attention: no kernel for this head size (status {status}).")


@torch.library.custom_op("sinklens::causal_attention", mutates_args=())
def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Causal softmax attention with scores scaled by ``1/sqrt(d_head)``:
    ``[b, p, h, dh]`` x3 -> (``z [b, p, h, dh]``, ``lse [b, h, p]``, each query's log-sum-exp of
    its scaled scores, not differentiable). Equals ``scaled_dot_product_attention(...,
    is_causal=True)`` up to rounding; first derivatives only."""
    q, k, v = _float32_cpu("attention", q, k, v)
    _check_attention(q, k, v)
    b, p, h, dh = q.shape
    z, lse = torch.empty_like(q), q.new_empty(b, h, p)
    if q.numel():
        _check_attention_status(_attention_library().causal_attention_forward(*_ptrs(q, k, v, z, lse), b, p, h, dh))
    return z, lse


@causal_attention.register_fake
def _(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    b, p, h, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(b, h, p)


@torch.library.custom_op("sinklens::causal_attention_backward", mutates_args=())
def causal_attention_backward(q: Tensor, k: Tensor, v: Tensor, z: Tensor, lse: Tensor,
                              grad_z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`causal_attention`'s ``z`` w.r.t. q, k, v, recomputing the pattern from ``lse``."""
    q, k, v, z, lse, g = _float32_cpu("attention", q, k, v, z, lse, grad_z)
    b, p, h, dh = q.shape
    grads = [torch.empty_like(q) for _ in range(3)]
    if q.numel():
        _check_attention_status(
            _attention_library().causal_attention_backward(*_ptrs(q, k, v, z, lse, g, *grads), b, p, h, dh))
    return tuple(grads)


@causal_attention_backward.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, z: Tensor, lse: Tensor, grad_z: Tensor):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _attention_setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs, *output)
    ctx.mark_non_differentiable(output[1])


def _attention_backward(ctx, grad_z: Tensor, grad_lse: Tensor | None):
    return causal_attention_backward(*ctx.saved_tensors, grad_z)


causal_attention.register_autograd(_attention_backward, setup_context=_attention_setup_context)
