# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. The attention mechanism
#
# Every later chapter reads attention patterns: which earlier token each head looks at. Before
# trusting those patterns we write multi-head attention ourselves, from the layer's input to
# what it adds to the residual stream {cite}`vaswani2017attention`, including rotary positions
# {cite}`su2021roformer` and grouped-query attention {cite}`ainslie2023gqa` where the model uses
# them, and check that it equals the model library's own attention (TransformerLens
# {cite}`nanda2022transformerlens`), number for number, on a real pretrained model (GPT-2
# {cite}`radford2019gpt2` online, SmolLM2 {cite}`allal2025smollm2` offline).

# %% tags=["parameters"]
model_name = "auto"  # "gpt2" online, "smollm2-135m" offline, "auto" picks
sentence = (
    "When Mary and John went to the store, John gave a drink to Mary. "
    "The store was closed, so they went home."
)
layers_to_check = -1  # -1: every layer; otherwise the first k layers
tolerance = 1e-5  # fp32: atol = rtol = tolerance, as in torch.allclose
n_heads_to_plot = 4

# %%
import numpy as np
import torch
from IPython.display import Markdown, display

from sinklens import claims
from sinklens.attention import attention_weights, multi_head_attention
from sinklens.models import load_model
from sinklens.plotting import attention_heatmaps, attention_view, set_style, token_labels
from sinklens.provenance import ChapterResults, provenance_markdown

torch.set_grad_enabled(False)
set_style()
model = load_model(model_name)
info = model.sinklens_info
display(Markdown(provenance_markdown(info, "one English sentence typed in this page")))

# %% [markdown]
# ## The input
#
# The model reads token ids. A first token marks the start of the text (GPT-2's `<|endoftext|>`,
# SmolLM2's `<|im_start|>`): it matters a great deal in the chapters to come.

# %%
tokens = model.to_tokens(sentence)  # [batch=1, pos], the start token prepended
labels = token_labels(model.tokenizer, tokens[0])
print(f"{tokens.shape[1]} tokens:", " ".join(labels))
logits, cache = model.run_with_cache(tokens)
cfg = model.cfg
n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
print(f"{cfg.n_layers} layers, {cfg.n_heads} query heads and {n_kv} key/value heads per layer, "
      f"d_model = {cfg.d_model}, d_head = {cfg.d_head}")

# %% [markdown]
# ## Attention, step by step
#
# Take one layer. Its input `x` is the residual stream after the layer's normalisation
# (`blocks.{l}.ln1.hook_out`), shape `[batch, pos, d_model]`.
#
# **Exercise.** Using the weights `W_Q, W_K, W_V` (`[head, d_model, d_head]`) and `W_O`
# (`[head, d_head, d_model]`), compute each head's queries, keys and values; the scaled scores
# `q·k / sqrt(d_head)`; the causal mask (a token sees itself and earlier tokens only); the
# softmax over keys; each head's output `z` (the pattern-weighted sum of values); and the layer's
# output, `z` mapped back to `d_model` and summed over heads. Try it before reading on.
#
# Two details differ between models. GPT-2 adds learned position embeddings to the residual
# stream once, at the bottom; SmolLM2 (a Llama) instead *rotates* queries and keys by an angle
# that grows with position (rotary embeddings, RoPE), so that `q·k` depends on the distance
# between tokens. And SmolLM2 uses grouped-query attention: 3 key/value heads, each shared by
# 3 query heads.

# %%
layer = min(1, cfg.n_layers - 1)
w = attention_weights(model, layer)
x = cache[f"blocks.{layer}.ln1.hook_out"]  # [batch, pos, d_model]

# 1. project: [batch, pos, head, d_head]
q = torch.einsum("bpd,hde->bphe", x, w.W_Q)
k = torch.einsum("bpd,hde->bphe", x, w.W_K)
v = torch.einsum("bpd,hde->bphe", x, w.W_V)
if w.b_Q is not None:
    q, k, v = q + w.b_Q, k + w.b_K, v + w.b_V

# 2. rotary positions (Llama-style models only): rotate pairs (i, i + d_head/2) by pos * theta_i
if w.rotary_base is not None:
    d_head = q.shape[-1]
    inv_freq = 1.0 / (w.rotary_base ** (torch.arange(0, d_head, 2) / d_head))
    angles = torch.outer(torch.arange(x.shape[1]).float(), inv_freq)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    def rotate(t):
        half = t.shape[-1] // 2
        return t * cos[None, :, None] + torch.cat([-t[..., half:], t[..., :half]], -1) * sin[None, :, None]

    q, k = rotate(q), rotate(k)

# 3. grouped-query attention: each key/value head serves n_heads / n_kv_heads query heads
group = q.shape[2] // k.shape[2]
k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)

# 4. scores, causal mask, softmax: [batch, head, query, key]
scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / q.shape[-1] ** 0.5
n = x.shape[1]
scores = scores.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), float("-inf"))
pattern = scores.softmax(dim=-1)

# 5. head outputs and the layer's output
z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)  # [batch, pos, head, d_head]
out = torch.einsum("bqhe,hed->bqd", z, w.W_O)  # [batch, pos, d_model]
if w.b_O is not None:
    out = out + w.b_O

# %% [markdown]
# ### Exercise: the attention pattern
#
# Step 4 is where each head decides where to look. Write it as a function:
# `attention_pattern(q, k)` takes queries and keys `[batch, pos, head, d_head]` (after the rotary
# step and the grouped-query expansion) and returns the pattern `[batch, head, query, key]`: the
# scores `q·k / sqrt(d_head)`, every key after the query masked, a softmax over the keys.
#
# Every chapter has exercises like this one. The solution sits in the next cell, hidden behind
# its toggle; the cell after it checks your function against the package's own
# (`sinklens.attention.causal_attention_pattern`) on small random inputs and edge cases, and says
# what is wrong when it differs. `python -m sinklens.exercises student DIR` writes the chapters
# with every solution replaced by a stub, for working through them yourself.

# %% tags=["exercise", "hide-input"]
import torch
from torch import Tensor


def attention_pattern(q: Tensor, k: Tensor) -> Tensor:
    """Causal attention pattern: ``q``, ``k`` ``[batch, pos, head, d_head]`` -> ``[batch, head, q_pos, k_pos]``.

    Row ``i`` is a softmax over the keys ``0..i`` of ``q_i·k_j / sqrt(d_head)``; later keys get 0.
    """
    # BEGIN SOLUTION
    n, d_head = q.shape[1], q.shape[-1]
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / d_head**0.5  # [batch, head, q, k]
    future = torch.triu(torch.ones(n, n, dtype=torch.bool, device=q.device), diagonal=1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1)
    # END SOLUTION


# %%
from sinklens import exercises

exercises.check_attention_pattern(attention_pattern)

# %% [markdown]
# ## Is it right? Compare with the model's own hooks
#
# The library records every intermediate value in the cache under TransformerLens hook names.
# Our `pattern`, `z` and `out` must equal `hook_pattern`, `hook_z` and `hook_attn_out`.

# %%
def max_diff(a, b):
    return (a - b).abs().max().item()

step_by_step = {
    "pattern": max_diff(pattern, cache[f"blocks.{layer}.attn.hook_pattern"]),
    "z": max_diff(z, cache[f"blocks.{layer}.attn.hook_z"]),
    "out": max_diff(out, cache[f"blocks.{layer}.hook_attn_out"]),
}
print(f"layer {layer}, largest absolute differences:", step_by_step)

# %% [markdown]
# The same computation is packaged as `sinklens.attention.multi_head_attention`; we run it on
# every layer. A floating-point number carries about seven significant digits, so the error we
# can expect grows with the size of the numbers: attention outputs can reach magnitudes in the
# hundreds (the table below gives each layer's largest). The test is therefore
# `torch.allclose`'s: every element must satisfy `|ours - model| <= tolerance + tolerance * |model|`. The column `worst_ratio` is the largest
# left side divided by the right side: below 1 passes.

# %%
def allclose_ratio(ours, theirs):
    return ((ours - theirs).abs() / (tolerance + tolerance * theirs.abs())).max().item()

n_check = cfg.n_layers if layers_to_check < 0 else min(layers_to_check, cfg.n_layers)
rows = []
for l in range(n_check):
    ours = multi_head_attention(cache[f"blocks.{l}.ln1.hook_out"], attention_weights(model, l))
    theirs = {
        "pattern": cache[f"blocks.{l}.attn.hook_pattern"],
        "z": cache[f"blocks.{l}.attn.hook_z"],
        "out": cache[f"blocks.{l}.hook_attn_out"],
    }
    row = {"layer": l, "largest |out|": theirs["out"].abs().max().item()}
    for key in theirs:
        row[f"max |diff| {key}"] = max_diff(ours[key], theirs[key])
    row["worst_ratio"] = max(allclose_ratio(ours[key], theirs[key]) for key in theirs)
    rows.append(row)
worst_ratio = max(r["worst_ratio"] for r in rows)
worst_abs = {key: max(r[f"max |diff| {key}"] for r in rows) for key in ("pattern", "z", "out")}
agree = worst_ratio <= 1.0
import pandas as pd

display(pd.DataFrame(rows).set_index("layer").style.format("{:.2e}"))
display(Markdown(
    f"Across {n_check} layers the largest absolute differences are: pattern {worst_abs['pattern']:.1e}, "
    f"z {worst_abs['z']:.1e}, attention output {worst_abs['out']:.1e}; the worst allclose ratio is "
    f"{worst_ratio:.2f} at tolerance {tolerance:.0e}: **{'they agree' if agree else 'they DISAGREE'}**."
))
assert agree, f"attention from scratch differs from the model's hooks: ratio {worst_ratio}, {worst_abs}"

# %% [markdown]
# ## What the heads look at
#
# A few heads' patterns on the sentence, queries down, keys across; a row is one token's
# attention, summing to 1. We pick the heads with the strongest *previous-token* habit (each
# token looks at the one before it), and the head that puts the most attention on the first
# token. That last habit, attention parked on the first token, is what the rest of the book is
# about.

# %%
patterns = torch.stack([cache["pattern", l][0] for l in range(cfg.n_layers)])  # [layer, head, q, k]
prev_token = patterns.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)  # [layer, head]
first_token = patterns[:, :, 1:, 0].mean(-1)  # [layer, head], queries after the first
picks = []
for flat in prev_token.flatten().argsort(descending=True)[: max(1, n_heads_to_plot - 1)].tolist():
    picks.append((flat // cfg.n_heads, flat % cfg.n_heads, "previous-token"))
flat = int(first_token.flatten().argmax())
picks.append((flat // cfg.n_heads, flat % cfg.n_heads, "first-token"))
fig = attention_heatmaps(
    [patterns[l, h].numpy() for l, h, _ in picks],
    [f"L{l}H{h} ({kind}: {float(prev_token[l, h] if kind == 'previous-token' else first_token[l, h]):.2f})"
     for l, h, kind in picks],
    labels,
)

# %% [markdown]
# The same heads, interactive (circuitsvis {cite}`cooney2023circuitsvis`): pick a head, hover over
# a token to see where it looks.

# %%
display(attention_view(labels, torch.stack([patterns[l, h] for l, h, _ in picks]),
                       [f"L{l}H{h} {kind}" for l, h, kind in picks]))

# %% [markdown]
# ## Record the results

# %%
results = ChapterResults(
    chapter="01_attention",
    model=info.to_dict(),
    data="one English sentence typed in this page",
    parameters={"model_name": model_name, "layers_checked": n_check, "tolerance": tolerance},
)
results.record(
    "attention-from-scratch-equals-model",
    "Multi-head attention written from scratch equals the model library's attention (pattern, z, output) in fp32",
    value={"max_abs_diff": worst_abs, "worst_allclose_ratio": worst_ratio, "layers": n_check,
           "tolerance": tolerance},
    verdict=claims.implementations_agree(worst_ratio, 1.0, quantity=(
        f"worst |ours - library| / (atol + rtol |library|) over {n_check} layers (atol = rtol = {tolerance:g})")),
    source="this book",
)
results.record(
    "strongest-first-token-head",
    "Some heads already park most of their attention on the first token of an ordinary sentence",
    value={"head": f"L{picks[-1][0]}H{picks[-1][1]}", "mean_attention_to_first_token": float(first_token.max())},
    verdict=claims.measured("the largest mean attention to position 0 over queries 1.., over all heads"),
    source="this book",
)
print(results.save())
display(Markdown(claims.what_we_found(results.claims)))
