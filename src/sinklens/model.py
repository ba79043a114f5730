"""A small GPT-2-style decoder whose residual scheme is a config field.

One readable file in the spirit of nanoGPT: pre-LayerNorm blocks, multi-head causal attention, a
GELU MLP (GPT-2's tanh approximation), tied input/output embeddings, no dropout. Positions are
``GPTConfig.positional``: ``"learned"`` (GPT-2's learned absolute embeddings, added to the
residual stream) or ``"rotary"`` (RoPE on queries and keys only, as in Llama; nothing positional
enters the residual stream). The residual scheme is ``GPTConfig.residual``: ``"residual"`` (standard,
one stream), ``"hc"``, ``"mhc"`` or ``"mhc-lite"`` (``n_streams`` parallel streams, see
:mod:`sinklens.hyperconnections`).

The model is a TransformerLens ``HookedRootModule``, so ``model.run_with_cache(tokens)`` works
and activations have TransformerLens names (``cache["pattern", 0]`` is
``blocks.0.attn.hook_pattern``, ``[batch, head, query, key]``). ``model.cfg`` has the
TransformerLens attribute names ``n_layers, n_heads, d_model, d_head, n_ctx, d_vocab``.

Hook points (``l`` = layer):

- ``hook_embed``, ``hook_pos_embed`` (learned positions only): ``[batch, pos, d_model]``.
- ``blocks.l.hook_resid_pre / hook_resid_mid / hook_resid_post``: ``[batch, pos, d_model]``. For
  multi-stream schemes this is the *sum over streams* (what the readout sees), a read-only view:
  to intervene on the state, hook ``blocks.l.hook_streams_pre / _mid / _post``
  (``[batch, pos, n_streams, d_model]``).
- ``blocks.l.ln1.hook_normalized``, ``blocks.l.ln2.hook_normalized``, ``ln_final.hook_normalized``.
- ``blocks.l.attn.hook_q / hook_k / hook_v / hook_z``: ``[batch, pos, head, d_head]``, and with
  rotary positions ``hook_rot_q / hook_rot_k`` (after the rotation); ``hook_attn_scores``
  (causally masked with -inf) and ``hook_pattern``: ``[batch, head, query, key]``.

Attention has two paths that compute the same function. When no hook listens to
``hook_attn_scores`` or ``hook_pattern`` (training), it runs a fused kernel that never
materialises the pattern: on the CPU with one torch thread (training) the C kernel of
:mod:`sinklens.native` (heads of 16, 32, 64 or 128 dimensions, the kernels built), elsewhere
torch's ``scaled_dot_product_attention``; otherwise (any cache or intervention on the pattern)
it computes scores and softmax explicitly, so the hooks see them. ``tests/test_model.py`` checks that the paths give the same logits and
gradients.
- ``blocks.l.hook_attn_out``, ``blocks.l.hook_mlp_out``: ``[batch, pos, d_model]``;
  ``blocks.l.mlp.hook_pre / hook_post``: ``[batch, pos, d_mlp]``.
- Multi-stream only: ``blocks.l.hc_attn.hook_h_pre / hook_h_res / hook_h_post`` and the same
  under ``hc_mlp``: ``[batch, pos, n]``, ``[batch, pos, n, n]``, ``[batch, pos, n]``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint

from sinklens import native
from sinklens.attention import apply_rotary, rotary_cos_sin
from sinklens.hyperconnections import SCHEMES, make_connection, read_streams, write_streams


POSITIONALS = ("learned", "rotary")


@dataclass
class GPTConfig:
    """Shape and residual scheme of a :class:`GPT`. ``n_streams`` defaults to 1 or 4 by scheme."""

    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    n_ctx: int = 128
    d_vocab: int = 4096
    d_mlp: int | None = None  # default 4 * d_model
    positional: str = "learned"  # "learned" (GPT-2) or "rotary" (RoPE on q and k)
    rotary_base: float = 10000.0  # rotary only: RoPE's theta
    residual: str = "residual"  # one of SCHEMES
    n_streams: int | None = None  # default: 1 for "residual", 4 otherwise
    hc_dynamic: bool = True  # HC only: add the tanh-gated dynamic weights to the static ones
    sinkhorn_iters: int = 20  # mHC only: the paper's count, a cap when sinkhorn_tol is set
    sinkhorn_tol: float | None = None  # mHC only: stop once every row sum is within this of 1
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.residual not in SCHEMES:
            raise ValueError(f"Unknown residual scheme {self.residual!r}; expected one of {SCHEMES}.")
        if self.n_streams is None:
            self.n_streams = 1 if self.residual == "residual" else 4
        if not isinstance(self.n_streams, int) or self.n_streams < 1:
            raise ValueError(f"n_streams must be an int >= 1, got {self.n_streams!r}.")
        if self.residual == "residual" and self.n_streams != 1:
            raise ValueError(
                f"The plain residual scheme has one stream, got n_streams={self.n_streams}; "
                "use residual='hc', 'mhc' or 'mhc-lite' for several."
            )
        if self.residual == "mhc-lite" and self.n_streams > 6:
            raise ValueError(f"mhc-lite mixes all n! permutations; n_streams={self.n_streams} is too many.")
        if self.positional not in POSITIONALS:
            raise ValueError(f"positional must be one of {POSITIONALS}, got {self.positional!r}.")
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}.")
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"Unknown GPTConfig fields: {sorted(unknown)}.")
        return cls(**d)


class LayerNorm(nn.Module):
    """LayerNorm with a ``hook_normalized`` on its (affine) output."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.eps = cfg.layer_norm_eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_normalized = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        return self.hook_normalized(F.layer_norm(x, x.shape[-1:], self.w, self.b, self.eps))


class Attention(nn.Module):
    """Causal multi-head attention: ``[b, p, d_model] -> [b, p, d_model]``."""

    fused: bool = True  # a fused kernel (the C kernel or SDPA) when no hook needs the pattern

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        causal = torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool).tril()
        self.register_buffer("causal", causal, persistent=False)
        self.rotary = cfg.positional == "rotary"
        if self.rotary:
            cos, sin = rotary_cos_sin(cfg.n_ctx, cfg.d_head, cfg.rotary_base)  # [n_ctx, d_head]
            self.register_buffer("rotary_cos", cos, persistent=False)
            self.register_buffer("rotary_sin", sin, persistent=False)
            self.hook_rot_q = HookPoint()
            self.hook_rot_k = HookPoint()
        self.hook_q = HookPoint()
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()

    def pattern_is_observed(self) -> bool:
        """Whether any hook listens to the scores or the pattern (then they must be computed)."""
        return any(h._forward_hooks or h._forward_pre_hooks or h._backward_hooks
                   for h in (self.hook_attn_scores, self.hook_pattern))

    def forward(self, x: Tensor) -> Tensor:
        b, p, _ = x.shape
        q, k, v = self.qkv(x).view(b, p, 3, self.n_heads, self.d_head).unbind(2)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)  # [b, p, h, dh]
        if self.rotary:
            cos, sin = self.rotary_cos[:p], self.rotary_sin[:p]
            q, k = self.hook_rot_q(apply_rotary(q, cos, sin)), self.hook_rot_k(apply_rotary(k, cos, sin))
        if self.fused and not self.pattern_is_observed():
            # in fp32 even under a bf16 autocast: torch's CPU flash kernel is several times
            # slower in bf16 than in fp32 at these head sizes (benchmarks/bench_training.py)
            with torch.autocast(x.device.type, enabled=False):
                if native.attention_fits(q.device, self.d_head):  # sinklens.native's (one thread)
                    z, _ = native.causal_attention(*(t.float().contiguous() for t in (q, k, v)))
                else:
                    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # [b, h, p, dh]
                    z = F.scaled_dot_product_attention(qf, kf, vf, is_causal=True).transpose(1, 2)
        else:
            scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.d_head)
            scores = scores.masked_fill(~self.causal[:p, :p], float("-inf"))
            pattern = self.hook_pattern(torch.softmax(self.hook_attn_scores(scores), dim=-1))
            z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
        z = self.hook_z(z)  # [b, p, h, dh]
        return self.out(z.reshape(b, p, -1))


_SQRT_8_OVER_PI = math.sqrt(8 / math.pi)


def gelu_tanh(x: Tensor) -> Tensor:
    """GPT-2's tanh-approximate GELU, ``0.5 x (1 + tanh(u))`` with ``u = sqrt(2/pi) (x + 0.044715 x^3)``.

    Under ``torch.compile`` it is written as ``x * sigmoid(2u)``, the same function
    (``0.5 (1 + tanh(u)) = sigmoid(2u)``): the generated CPU kernel then needs an exp instead of
    a tanh, which costs about half as much (README, "Benchmarks"). Other floats, same maths:
    compiled runs carry it in their run id (``sinklens.train.COMPILED_CODE_VERSION``).
    """
    if torch.compiler.is_compiling():
        return gelu_tanh_by_sigmoid(x)
    return F.gelu(x, approximate="tanh")


def gelu_tanh_by_sigmoid(x: Tensor) -> Tensor:
    """:func:`gelu_tanh` written as ``x * sigmoid(sqrt(8/pi) (x + 0.044715 x^3))`` (what compiled code runs)."""
    return x * torch.sigmoid(_SQRT_8_OVER_PI * (x + 0.044715 * x * x * x))


class MLP(nn.Module):
    """``[b, p, d_model] -> [b, p, d_model]`` through ``d_mlp`` GELU units."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.proj = nn.Linear(cfg.d_mlp, cfg.d_model)
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        pre = self.hook_pre(self.fc(x))
        return self.proj(self.hook_post(gelu_tanh(pre)))


class Block(nn.Module):
    """One pre-LN transformer block; the residual scheme decides how its sub-layers connect.

    Input and output: ``[b, p, d_model]`` (one stream) or ``[b, p, n, d_model]`` (n streams).
    """

    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.multi_stream = cfg.residual != "residual"
        self.ln1 = LayerNorm(cfg)
        self.attn = Attention(cfg)
        self.ln2 = LayerNorm(cfg)
        self.mlp = MLP(cfg)
        self.hook_resid_pre = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_resid_post = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_mlp_out = HookPoint()
        if self.multi_stream:
            kw = dict(hc_dynamic=cfg.hc_dynamic, sinkhorn_iters=cfg.sinkhorn_iters, sinkhorn_tol=cfg.sinkhorn_tol)
            self.hc_attn = make_connection(cfg.residual, cfg.d_model, cfg.n_streams, 2 * layer, **kw)
            self.hc_mlp = make_connection(cfg.residual, cfg.d_model, cfg.n_streams, 2 * layer + 1, **kw)
            self.hook_streams_pre = HookPoint()
            self.hook_streams_mid = HookPoint()
            self.hook_streams_post = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        if not self.multi_stream:
            resid = self.hook_resid_pre(x)
            resid = self.hook_resid_mid(resid + self.hook_attn_out(self.attn(self.ln1(resid))))
            return self.hook_resid_post(resid + self.hook_mlp_out(self.mlp(self.ln2(resid))))
        streams = self.hook_streams_pre(x)
        _observe_sum(self.hook_resid_pre, streams)
        h_pre, h_res, h_post = self.hc_attn.coefficients(streams)
        attn_out = self.hook_attn_out(self.attn(self.ln1(read_streams(streams, h_pre))))
        streams = self.hook_streams_mid(write_streams(streams, h_res, h_post, attn_out))
        _observe_sum(self.hook_resid_mid, streams)
        h_pre, h_res, h_post = self.hc_mlp.coefficients(streams)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(read_streams(streams, h_pre))))
        streams = self.hook_streams_post(write_streams(streams, h_res, h_post, mlp_out))
        _observe_sum(self.hook_resid_post, streams)
        return streams


def _observe_sum(hook: HookPoint, streams: Tensor) -> None:
    """Show the stream sum ``[b, p, d]`` to ``hook`` (read-only); skipped when nothing listens."""
    if hook._forward_hooks:
        hook(streams.sum(-2))


class GPT(HookedRootModule):
    """The decoder: tokens ``[b, p]`` -> logits ``[b, p, d_vocab]``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.hook_embed = HookPoint()
        if cfg.positional == "learned":
            self.pos_embed = nn.Embedding(cfg.n_ctx, cfg.d_model)
            self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList([Block(cfg, layer) for layer in range(cfg.n_layers)])
        self.ln_final = LayerNorm(cfg)
        self.apply(self._init_weights)
        for name, param in self.named_parameters():  # GPT-2: scale the writes into the residual
            if name.endswith(("attn.out.weight", "mlp.proj.weight")):
                nn.init.normal_(param, std=cfg.init_std / math.sqrt(2 * cfg.n_layers))
        self.setup()  # HookedRootModule: index the hook points by name

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=self.cfg.init_std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=self.cfg.init_std)

    @property
    def W_U(self) -> Tensor:
        """Unembedding ``[d_model, d_vocab]`` (tied to the token embedding)."""
        return self.embed.weight.T

    def forward(self, tokens: Tensor, return_type: str = "logits") -> Tensor:
        """``tokens [b, p]`` -> logits ``[b, p, d_vocab]``, or the mean next-token loss (``"loss"``)."""
        if return_type not in ("logits", "loss"):
            raise ValueError(f"return_type must be 'logits' or 'loss', got {return_type!r}.")
        b, p = tokens.shape
        if p > self.cfg.n_ctx:
            raise ValueError(f"{p} positions is more than the model's context of {self.cfg.n_ctx}.")
        x = self.hook_embed(self.embed(tokens))
        if self.cfg.positional == "learned":
            x = x + self.hook_pos_embed(self.pos_embed(torch.arange(p, device=tokens.device)))
        if self.cfg.residual != "residual":  # every stream starts as the embedding
            x = x.unsqueeze(-2).repeat(1, 1, self.cfg.n_streams, 1)  # [b, p, n, d]
        for block in self.blocks:
            x = block(x)
        if self.cfg.residual != "residual":
            # the readout sums the streams. Written with unbind, not x.sum(-2): sum's backward
            # hands the last block a stride-0 gradient, which CPU bmm copies matrix by matrix.
            x = sum(x.unbind(-2))
        logits = self.ln_final(x) @ self.embed.weight.T
        if return_type == "logits":
            return logits
        return next_token_loss(logits, tokens)

    def run_with_cache(self, *args, return_cache_object: bool = True, **kwargs):
        """As ``HookedRootModule.run_with_cache``, but the cache is an ``ActivationCache``
        (so ``cache["pattern", 0]`` works), as with TransformerLens models."""
        out, cache_dict = super().run_with_cache(*args, **kwargs)
        if return_cache_object:
            return out, ActivationCache(cache_dict, self, has_batch_dim=not kwargs.get("remove_batch_dim", False))
        return out, cache_dict

    def h_res_matrices(self, cache) -> list[Tensor]:
        """Every sub-layer's ``H_res`` ``[b, p, n, n]`` from a cache, in the order they act."""
        if self.cfg.residual == "residual":
            raise ValueError("The plain residual scheme has no H_res.")
        return [
            cache[f"blocks.{l}.{part}.hook_h_res"]
            for l in range(self.cfg.n_layers)
            for part in ("hc_attn", "hc_mlp")
        ]


def next_token_loss(logits: Tensor, tokens: Tensor) -> Tensor:
    """Mean cross-entropy of predicting ``tokens[:, 1:]`` from ``logits[:, :-1]``.

    Under ``torch.compile`` it is written as ``mean(logsumexp(x) - x[target])`` in float32, the same
    function: its backward then needs no sum over the vocabulary of the one-hot gradient, which the
    generated CPU kernel computes element by element for ``F.cross_entropy`` (README, "Benchmarks").
    """
    if torch.compiler.is_compiling():
        return next_token_loss_by_logsumexp(logits, tokens)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


def next_token_loss_by_logsumexp(logits: Tensor, tokens: Tensor) -> Tensor:
    """:func:`next_token_loss` as ``mean(logsumexp(x) - x[target])`` (what compiled code runs)."""
    x = logits[:, :-1].float()  # [b, p - 1, d_vocab]
    picked = x.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (torch.logsumexp(x, -1) - picked).mean()
