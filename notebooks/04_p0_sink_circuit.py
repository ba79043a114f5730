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
# # 4. The P0 sink circuit
#
# Chapter 3 asked whether heads that have nothing to copy park their attention on the first
# token (its scorecard line gives the answer on this page's model). Here we ask *how* a model recognises position 0 and turns it into a sink. The claim under test comes
# from "How Attention Sinks Emerge in Large Language Models: An Interpretability Perspective"
# (arXiv 2603.06591, {cite}`p0sink2026`): a simple circuit recognises the token at position zero and induces the sink
# **within the first two transformer blocks**, **without semantic information**; in training it
# **emerges early** and **concentrates in the first two layers**. We measure each of these on a
# real pretrained model and on small models we train ourselves, and record a computed verdict.

# %% tags=["parameters"]
model_name = "auto"  # "gpt2" online, "smollm2-135m" offline
n_seqs = 16  # natural-text sequences
seq_len = 64
seed = 0
n_first_tokens = 24  # ordinary tokens tried at position 0
later_position = 20  # where BOS is moved / P0's residual is patched
epsilon = 0.3  # Gu et al.'s sink threshold
collapse = 0.5  # an intervention collapses the sink when it leaves less than this x the clean attention
massive_ratio = 10.0  # a position-0 residual norm this many times the others' median is massive (as in chapter 3)
zoo_size = "small"  # our trained models: "tiny" (CI) or "small" (the book)
zoo_seeds = [0, 1, 2]

# %%
import dataclasses

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from sinklens import circuits, claims
from sinklens.data import load_text_dataset, text_batch
from sinklens.models import load_model
from sinklens.plotting import attention_view, set_style
from sinklens.provenance import ChapterResults, provenance_markdown

torch.set_grad_enabled(False)
set_style()
model = load_model(model_name)
info = model.sinklens_info
texts = load_text_dataset("pile-10k" if info.is_gpt2 else "offline")
bos_id = model.tokenizer.bos_token_id if model.tokenizer.bos_token_id is not None else model.tokenizer.eos_token_id
tokens, _ = text_batch(texts, model.tokenizer, seq_len=seq_len, n_seqs=n_seqs, bos_token_id=bos_id, seed=seed)
n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
display(Markdown(provenance_markdown(
    info, f"{texts.description}: {n_seqs} windows of {seq_len} tokens starting with BOS (seed {seed})"
)))
results = ChapterResults(
    chapter="04_p0_sink_circuit", model=info.to_dict(), data=texts.description,
    parameters=dict(model_name=model_name, n_seqs=n_seqs, seq_len=seq_len, seed=seed,
                    n_first_tokens=n_first_tokens, epsilon=epsilon, massive_ratio=massive_ratio, zoo_size=zoo_size,
                    zoo_seeds=zoo_seeds),
)

# %% [markdown]
# ## 1. Where the sink is
#
# For every head, the mean attention that the later tokens pay to position 0; and Gu et al.'s
# sink metric (arXiv 2410.10781, {cite}`gu2024sinkemerges`): the share of a layer's heads whose mean attention to the first
# token exceeds ε.

# %%
logits, cache = model.run_with_cache(tokens)
attn0 = circuits.attention_to_position(cache, 0)  # [layer, head]
sink = circuits.sink_metric(attn0, epsilon)  # [layer]
norm_ratio = circuits.position_norm_ratio(cache, n_layers)  # [layer]
first_sink_layer = circuits.first_sink_layer(sink)  # the first layer with >= half its heads over ε

fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
axes[0].plot(attn0.mean(1), marker="o", label="mean over heads")
axes[0].fill_between(range(n_layers), attn0.min(1).values, attn0.max(1).values, alpha=0.2, label="min-max over heads")
axes[0].set(xlabel="layer", ylabel="attention to position 0", title="Attention to the first token")
axes[0].legend()
axes[1].bar(range(n_layers), sink)
axes[1].set(xlabel="layer", ylabel=f"share of heads > {epsilon}", title="Sink metric (Gu et al.)", ylim=(0, 1))
fig.tight_layout()
display(Markdown(
    f"The first layer where at least half the heads are sink heads is **layer {first_sink_layer}**; "
    f"layers 0-1 have sink metrics {sink[0]:.2f} and {sink[1]:.2f}. Averaged over all layers "
    f"{float(sink.mean()):.0%} of heads are sink heads."
))

# %% [markdown]
# The strongest sink heads on the first tokens of one text window, interactive (pick a head; hover
# over a token) to see how much of each token's attention goes to position 0.

# %%
n_view = min(24, tokens.shape[1])
sink_heads = [divmod(int(i), attn0.shape[1]) for i in attn0.flatten().argsort(descending=True)[:3]]
display(attention_view(
    [model.tokenizer.decode([int(t)]) for t in tokens[0, :n_view]],
    torch.stack([cache["pattern", l][0, h, :n_view, :n_view] for l, h in sink_heads]),  # [head, q, k]
    [f"L{l}H{h}" for l, h in sink_heads],
))

# %% [markdown]
# ## 2. Position, not token
#
# Two swaps. (a) Drop BOS and put an ordinary token at position 0, many different ones: if the
# sink belongs to the *position*, attention to position 0 should stay. (b) Keep the BOS at
# position 0 and also write the BOS token at a later position: if the sink belonged to the BOS
# *token*, that later position should become a sink too.

# %%
special = set(model.tokenizer.all_special_ids)
gen = torch.Generator().manual_seed(seed)
ordinary = [i for i in torch.randperm(model.cfg.d_vocab, generator=gen).tolist() if i not in special][:n_first_tokens]
swapped = circuits.first_token_swap(model, tokens, ordinary)  # [n, layer, head]
layers_after = slice(first_sink_layer or 0, n_layers)
baseline = float(attn0[layers_after].mean())
per_token = swapped[:, layers_after].mean((1, 2))  # [n]

moved = tokens.clone()
moved[:, later_position] = bos_id
_, cache_moved = model.run_with_cache(moved, names_filter=lambda n: n.endswith("hook_pattern"))
to_moved = circuits.attention_to_position(cache_moved, later_position)[layers_after].mean().item()
to_zero_moved = circuits.attention_to_position(cache_moved, 0)[layers_after].mean().item()

fig, ax = plt.subplots(figsize=(7, 3.2))
ax.hist(per_token.numpy(), bins=12, color="C0", alpha=0.8, label=f"ordinary token at position 0 ({len(ordinary)} tokens)")
ax.axvline(baseline, color="k", ls="--", label="BOS at position 0 (original)")
ax.axvline(to_moved, color="C3", ls=":", label=f"BOS written at position {later_position}: attention to it")
ax.set(xlabel=f"mean attention to that position, layers {layers_after.start}-{n_layers - 1}", ylabel="count")
ax.legend(fontsize=8)
fig.tight_layout()
v_position = claims.sink_follows_position(baseline, float(per_token.min()), to_moved, has_sink=first_sink_layer is not None)
display(Markdown(
    f"With BOS at position 0 the later layers pay it {baseline:.2f} of their attention. With an "
    f"ordinary token there instead, they pay position 0 between {per_token.min():.2f} and "
    f"{per_token.max():.2f} (median {per_token.median():.2f}) across {len(ordinary)} different tokens. "
    f"A BOS written at position {later_position} receives {to_moved:.3f}, while position 0 still "
    f"receives {to_zero_moved:.2f}. **Does the sink follow the position, not the token? "
    f"{v_position.verdict}** ({v_position.rule})."
))
results.record(
    "sink-independent-of-semantics",
    "The sink is at position 0 whatever token is there, without semantic information",
    value={"attention_with_bos": baseline, "ordinary_first_token_min": float(per_token.min()),
           "ordinary_first_token_median": float(per_token.median()), "bos_at_later_position": to_moved,
           "n_tokens": len(ordinary)},
    verdict=v_position,
    source="arXiv 2603.06591", seeds=[seed],
    why_not_tested=f"no sink: no layer puts half its heads over ε = {epsilon} on position 0 (later layers' "
                   f"attention to it with BOS there: {baseline:.2f})",
)

# %% [markdown]
# ## 3. Why position 0 is special
#
# Under the causal mask, the query at position 0 can attend only to itself, so every head's
# pattern row 0 is `[1, 0, 0, ...]` in every layer. Its attention output is then a function of its
# own token alone, and so is its whole residual stream: position 0 never sees the rest of the
# text. Two sequences that share their first token therefore share position 0's residual stream
# exactly, at every layer; no other position has that property.

# %%
row0 = torch.stack([cache["pattern", l][:, :, 0, 0] for l in range(n_layers)])
resid_p0 = torch.stack([cache[f"blocks.{l}.hook_resid_post"][:, 0] for l in range(n_layers)])  # [layer, batch, d]
resid_p1 = torch.stack([cache[f"blocks.{l}.hook_resid_post"][:, 1] for l in range(n_layers)])
spread_p0 = float((resid_p0 - resid_p0[:, :1]).abs().max())
spread_p1 = float((resid_p1 - resid_p1[:, :1]).abs().max())
display(Markdown(
    f"Attention of position 0 to itself: min {row0.min():.6f} over all layers, heads and sequences. "
    f"Across the {n_seqs} sequences (all starting with BOS), position 0's residual stream differs by at most "
    f"{spread_p0:.2e}; position 1's (different tokens, different contexts) by up to {spread_p1:.1f}."
))

# %% [markdown]
# ## 4. The circuit inside the first blocks
#
# First the signature: the residual-stream norm of position 0 against the other positions,
# layer by layer. Then we split position 0's residual stream into what each component wrote
# (the embedding, each attention output, each MLP output) and ask which components build the
# direction it ends up with.

# %%
norms = torch.stack([cache[f"blocks.{l}.hook_resid_post"].norm(dim=-1) for l in range(n_layers)])  # [layer, batch, pos]
jump_layer = claims.first_massive_layer(norm_ratio.tolist(), massive_ratio)
fig, ax = plt.subplots(figsize=(7, 3.2))
ax.plot(norms[:, :, 0].mean(1), marker="o", label="position 0")
ax.plot(norms[:, :, 1:].flatten(1).median(-1).values, marker="s", label="other positions (median)")
ax.set(yscale="log", xlabel="layer (residual stream after the block)", ylabel="L2 norm", title="Residual-stream norm")
ax.legend()
fig.tight_layout()

n_early = min(3, n_layers)
parts = circuits.residual_components(cache, 0, n_early)
final_p0 = cache[f"blocks.{n_early - 1}.hook_resid_post"][:, 0]
direction = final_p0 / final_p0.norm(dim=-1, keepdim=True)
contrib = pd.DataFrame({
    "norm at position 0": {k: float(v.norm(dim=-1).mean()) for k, v in parts.items()},
    "projection on P0's direction": {k: float((v * direction).sum(-1).mean()) for k, v in parts.items()},
})
others = circuits.residual_components(cache, 5, n_early)
contrib["norm at position 5"] = {k: float(v.norm(dim=-1).mean()) for k, v in others.items()}
display(contrib.style.format("{:.1f}"))
top = contrib["projection on P0's direction"].sort_values(ascending=False)
writer = top.index[0]
share = float(top.iloc[0] / final_p0.norm(dim=-1).mean())
display(Markdown(
    f"Position 0's residual norm is {norm_ratio[n_early - 1]:.1f}x the other positions' median after block "
    f"{n_early - 1} (first layer where it is massive, at least {massive_ratio:g}x: {jump_layer}). The component that writes most of that "
    f"direction is **{writer}** ({share:.0%} of the norm after block {n_early - 1}); next is "
    f"{top.index[1]} ({float(top.iloc[1] / final_p0.norm(dim=-1).mean()):.0%}). Writing the most is not "
    "the same as being necessary: an early component can trigger a later one. Section 5 tests that causally."
))

# %% [markdown]
# ## 5. Causal tests
#
# Which component makes the sink? The largest writer of P0's direction need not be the one the
# sink depends on, so we scan the components of the first blocks: the one whose removal **at
# position 0 only** hurts the later layers' attention to position 0 most is the candidate, and if
# it makes the sink, removing it should collapse the sink in all later layers. We zero it, and separately replace it by its mean over ordinary
# positions (both must collapse it: necessity). The controls are interventions that *could*
# collapse the sink if the claim were false, each read over the layers it can reach: the same
# component ablated at every position except 0 (if the sink needed what that component writes at
# the queries), and the next most harmful early component ablated at P0 (if any large early write
# at P0 would do). Then the converse, sufficiency: copy position 0's early residual stream into
# another position, or make that position attend only to itself in the first blocks, as position
# 0 must. Does it become a sink? The verdict (`sinklens.claims.recognised_within_two_blocks`)
# needs all three.

# %%
pattern_only = lambda n: n.endswith("hook_pattern") or n.endswith("hook_resid_post")  # noqa: E731
late = slice(max(n_early, first_sink_layer or 0), n_layers)  # the layers after the candidate circuit
clean_late = float(attn0[late].mean())
tests_p0 = circuits.p0_necessity_and_controls(model, tokens, n_early=n_early, late=late)
scan = pd.DataFrame({name: {"zero-ablated at P0": v["zero"], "mean-ablated at P0": v["mean"]}
                     for name, v in tests_p0["scan"].items()}).T.rename_axis("component")
display(scan.style.format("{:.3f}").set_caption(
    f"Attention to P0 in layers {late.start}-{n_layers - 1} after ablating one component at P0 (clean: {clean_late:.3f})"))
responsible, resp_layer = tests_p0["responsible"], tests_p0["responsible_layer"]
# Controls that could collapse the sink if the claim were false (sinklens.circuits.p0_necessity_and_controls):
# (a) the same component ablated at every position except 0 (if the sink needed query-side features,
#     this would collapse it); (b) the next most harmful component of blocks 0-2, ablated at P0 (if any
#     large early write at P0 mattered, this would collapse it too). tests/test_circuits.py builds
#     small models where each control does collapse the sink.
ablation = tests_p0["curves"]
fig, ax = plt.subplots(figsize=(8, 3.4))
for name, curve in ablation.items():
    ax.plot(curve, marker=".", label=name)
ax.axhline(collapse * clean_late, color="grey", ls=":", lw=0.8, label=f"collapse line ({collapse:g} x clean, layers {late.start}+)")
ax.set(xlabel="layer", ylabel="mean attention to position 0", title="Ablations at position 0, and the controls")
ax.legend(fontsize=7)
fig.tight_layout()
zero_late, mean_late, controls = tests_p0["zero_ablated"], tests_p0["mean_ablated"], tests_p0["controls"]
zero_curve = ablation[f"zero {responsible} @ P0"][late]
recovery = [late.start + i for i, v in enumerate(zero_curve.tolist()) if v >= collapse * clean_late]

patched = {}
for layer in range(1, min(4, n_layers)):
    _, c = circuits.patch_residual(model, tokens, layer, source=0, target=later_position, names_filter=pattern_only)
    patched[layer] = float(circuits.attention_to_position(c, later_position, n_layers=n_layers)[late].mean())
display(Markdown(
    f"The component whose removal at P0 hurts the sink most is **{responsible}**. Zeroing it at position 0 "
    f"moves attention to position 0 in layers {late.start}+ from {clean_late:.2f} to {zero_late:.2f} "
    f"(mean-ablating it: {mean_late:.2f}); the controls leave {', '.join(f'{k}: {v:.2f}' for k, v in controls.items())}. "
    + (f"The largest writer of P0's direction, {writer} ({share:.0%} of it, Section 4), zero-ablated at P0 leaves "
       f"{tests_p0['scan'][writer]['zero']:.2f}: " + (f"writing most of P0's direction, it is still not needed for the sink (clean: {clean_late:.2f}). " if tests_p0['scan'][writer]['zero'] >= collapse * clean_late else
       "it is needed too. ") if writer in tests_p0["scan"] and writer != responsible else "")
    + (f"Under zero-ablation the sink comes back in layers {recovery[0]}-{recovery[-1]} ({len(recovery)} of the "
       f"{n_layers - late.start} later layers reach {collapse:g} x clean again): a second stage rebuilds it there. "
       if recovery else "")
    + f"Patching position 0's residual stream into position {later_position} at the input of blocks "
    f"{', '.join(map(str, patched))} gives that position {', '.join(f'{v:.3f}' for v in patched.values())} "
    f"of the later layers' attention, against {clean_late:.2f} for the real position 0."
    + (" Copying P0's residual is **not** enough to make a sink elsewhere in this model. One likely "
       "reason, not tested here: with rotary positions a key also depends on where it sits." if info.positional == "rotary" and max(patched.values()) < collapse * clean_late else "")
))
# %% [markdown]
# ### Exercise: the P0 ablation
#
# Every ablation above is `sinklens.circuits.ablate_at_position`. Write the position-0 case
# yourself: `p0_ablation(model, tokens, hook_name, mode)` runs `tokens` (`[batch, pos]`) with the
# output at hook `hook_name` (e.g. `"blocks.0.hook_attn_out"`, `[batch, pos, d_model]`) replaced
# **at position 0 only**: by zero (`mode="zero"`), or by its mean over the positions after the
# first of every sequence of a clean run on the same tokens (`mode="mean"`: what an ordinary
# position writes). It returns the logits `[batch, pos, d_vocab]` and leaves no hook behind
# (`model.run_with_hooks` removes its hooks). The check runs it on a small, randomly initialised
# GPT from `sinklens.model`, so it needs no trained model.

# %% tags=["exercise", "hide-input"]
import torch
from torch import Tensor


def p0_ablation(model, tokens: Tensor, hook_name: str, mode: str = "zero") -> Tensor:
    """Logits ``[batch, pos, d_vocab]`` of ``tokens [batch, pos]`` with ``hook_name``'s output replaced at position 0.

    ``mode="zero"``: by 0; ``mode="mean"``: by its mean over positions ``1..`` and the batch in a clean run.
    """
    # BEGIN SOLUTION
    replacement = 0.0
    if mode == "mean":
        _, clean_cache = model.run_with_cache(tokens, names_filter=lambda name: name == hook_name)
        replacement = clean_cache[hook_name][:, 1:].mean((0, 1))  # [d_model]

    def replace_p0(activation: Tensor, hook) -> Tensor:
        activation = activation.clone()
        activation[:, 0] = replacement
        return activation

    return model.run_with_hooks(tokens, fwd_hooks=[(hook_name, replace_p0)])
    # END SOLUTION


# %%
from sinklens import exercises

exercises.check_p0_ablation(p0_ablation)

# %% [markdown]
# Last, give an ordinary position the one thing that is special about position 0: in the early
# layers, make it attend only to itself, as position 0 must. Does it grow position 0's massive
# norm, and does it become a sink?

# %%
self_only = []
for k in range(1, n_early + 1):
    layers = list(range(k))
    _, c = circuits.attend_only_to_self(model, tokens, layers, position=later_position, names_filter=pattern_only)
    norm_at = c[f"blocks.{n_early - 1}.hook_resid_post"].norm(dim=-1)  # [batch, pos]
    self_only.append({  # the ratio to the median of the other positions, position 0 left out too
        "self-only in layers": f"0-{k - 1}",
        f"norm ratio at pos {later_position} after block {n_early - 1}": float(
            circuits.norm_ratio_to_median(norm_at[:, 1:], later_position - 1)),
        f"attention to pos {later_position}, layers {late.start}+": float(
            circuits.attention_to_position(c, later_position, n_layers=n_layers)[late].mean()),
    })
self_only = pd.DataFrame(self_only).set_index("self-only in layers")
display(self_only.style.format("{:.3f}"))
best = self_only.iloc[-1]
display(Markdown(
    f"Attending only to itself in layers 0-{n_early - 1} gives position {later_position} a residual norm "
    f"{best.iloc[0]:.1f}x the other positions' median (position 0: {float(norm_ratio[n_early - 1]):.1f}x), and "
    f"{best.iloc[1]:.3f} of the later layers' attention (position 0: {clean_late:.2f})."
))

# %%
sufficiency = {f"P0's residual patched into position {later_position} at block {k}": v for k, v in patched.items()}
sufficiency[f"position {later_position} self-only in layers 0-{n_early - 1}"] = float(best.iloc[1])
# the controls and sufficiency keep their lines when the necessity line is varied (0.5x / 2x)
recognition = dict(clean=clean_late, zero_ablated=zero_late, mean_ablated=mean_late, controls=controls,
                   sufficiency=sufficiency, responsible_layer=resp_layer, control_keep=collapse, sufficient_share=collapse)
v_within = claims.with_sensitivity(claims.recognised_within_two_blocks, "collapse", **recognition, collapse=collapse,
                                   has_sink=first_sink_layer is not None)
conditions = claims.recognition_conditions(**recognition, collapse=collapse)
condition_words = {"necessary": "necessity", "controls_hold": "the controls", "sufficient": "sufficiency",
                   "in_blocks_0_1": "a component in blocks 0-1"}
display(Markdown(
    f"**Verdict on \"a circuit in the first two blocks recognises position 0\": {v_within.verdict}.** Necessity: "
    f"zero-ablating {responsible} at P0 leaves {zero_late:.2f}, mean-ablating it {mean_late:.2f} (collapse line "
    f"{collapse * clean_late:.2f}). Sufficiency: at most {max(sufficiency.values()):.3f} (line {collapse * clean_late:.2f}). "
    + ("Every condition holds. " if all(conditions.values()) else
       "Failed: " + ", ".join(condition_words[k] for k, ok in conditions.items() if not ok) + "; held: "
       + (", ".join(condition_words[k] for k, ok in conditions.items() if ok) or "none") + ". ")
    + f"With the necessity line at 0.5x / 2x (the other lines kept): {v_within.sensitivity.get('0.5x')} / "
      f"{v_within.sensitivity.get('2x')}. Rule: {v_within.rule}."
))
results.record(
    "recognised-within-two-blocks",
    "A circuit in the first two blocks recognises position 0 and makes it the sink (ablating it at P0 collapses the sink)",
    value={"responsible_component": responsible, "largest_writer": writer, "largest_writer_share": share,
           "attention_clean": clean_late, "attention_zero_ablated": zero_late, "attention_mean_ablated": mean_late,
           "controls": controls, "patched_into_other_position": patched,
           "self_only_attention_at_other_position": self_only.reset_index().to_dict("records"),
           "sufficiency": sufficiency, "zero_ablated_recovers_in_layers": recovery, "conditions": conditions},
    verdict=v_within,
    source="arXiv 2603.06591", seeds=[seed],
    details="responsible = the component in blocks 0-2 whose zero-ablation at P0 lowers later attention to P0 most",
    why_not_tested=f"no sink: no layer puts half its heads over ε = {epsilon} on position 0, so there is nothing to collapse "
                   f"(later layers' attention to position 0: {clean_late:.2f})",
)

# %% [markdown]
# ## 6. Learned absolute positions versus rotary
#
# GPT-2 adds a learned embedding for each position, so position 0 could be marked by its position
# embedding alone. A rotary model (SmolLM2) has no position embedding at all: the only thing that
# sets position 0 apart is the causal mask of Section 3. Where this page's model has learned
# absolute positions, we move the position-0 embedding to another position and see whether the
# sink follows. (Our own trained models of Section 7 are rotary, like SmolLM2.)

# %%
display(Markdown(f"This page's model uses **{info.positional}** positions."))
if info.positional != "rotary":
    _, c = circuits.give_position_embedding_of_first(model, tokens, later_position, names_filter=pattern_only)
    moved_pos = float(circuits.attention_to_position(c, later_position, n_layers=n_layers)[layers_after].mean())
    display(Markdown(f"Giving position {later_position} the position-0 embedding: it receives {moved_pos:.3f} of the attention."))

# %% [markdown]
# ## 7. Emergence during training, on our own small models
#
# We cannot watch a 30B model train, so we train small GPT-2-style models (rotary positions; the
# training lab of `sinklens.train`) and read their log-spaced checkpoints. **These
# models are tiny next to the paper's 30B-A3B mixture-of-experts**: what we see is what a small
# model does in a short CPU budget, not a test at the paper's scale.

# %%
from sinklens import zoo
from sinklens.train import get_batch, load_data

zoo_cfg = zoo.config("residual", zoo_size, zoo_seeds[0])
eval_cfg = zoo_cfg.text_only(batch_size=n_seqs)
zoo_data = load_data(zoo_cfg.data, zoo_cfg.model.d_vocab)
eval_tokens = get_batch(eval_cfg, zoo_data.val, 0, split_salt=4)  # held-out text, BOS at position 0
rows = []
with torch.enable_grad():
    runs_by_seed = {s: zoo.load_checkpoints("residual", zoo_size, s) for s in zoo_seeds}
for s, ckpts in runs_by_seed.items():
    for step, seen, m in ckpts:
        sig = circuits.sink_signature(m, eval_tokens, epsilon)
        for layer in range(m.cfg.n_layers):
            rows.append(dict(seed=s, step=step, tokens=seen, layer=layer,
                             sink_metric=float(sig["sink_metric"][layer]),
                             attention_to_first=float(sig["attention_to_first"][layer].mean()),
                             norm_ratio=float(sig["norm_ratio"][layer])))
emergence = pd.DataFrame(rows)
zoo_layers = zoo_cfg.model.n_layers
total_tokens = emergence.tokens.max()
display(Markdown(
    f"Models: `{zoo_size}` residual GPT ({zoo_layers} layers, d_model {zoo_cfg.model.d_model}, "
    f"{zoo_cfg.model.n_heads} heads, {zoo_cfg.model.positional} positions), seeds {zoo_seeds}, {total_tokens:,} training tokens each, "
    f"trained in {zoo.training_precision(zoo_size)}; "
    f"data: {zoo_data.description} {zoo_cfg.data_mixture()}"
))

fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), sharex=True)
for layer in range(zoo_layers):
    g = emergence[emergence.layer == layer].groupby("tokens")
    mean, lo, hi = g.attention_to_first.mean(), g.attention_to_first.min(), g.attention_to_first.max()
    axes[0].plot(np.maximum(mean.index.values, 1), mean, marker=".", label=f"layer {layer}")
    axes[0].fill_between(np.maximum(mean.index.values, 1), lo, hi, alpha=0.15)
    r = g.norm_ratio.mean()
    axes[1].plot(np.maximum(r.index.values, 1), r, marker=".", label=f"layer {layer}")
axes[0].set(xscale="log", xlabel="training tokens", ylabel="mean attention to position 0",
            title=f"Attention to the first token (band: {len(zoo_seeds)} seeds)")
axes[1].set(xscale="log", xlabel="training tokens", ylabel="P0 norm / median of the others",
            title="Position-0 residual norm ratio (mean over seeds)")
axes[0].axhline(epsilon, color="grey", ls=":", label=f"ε = {epsilon:g} (sink head)")
axes[1].axhline(massive_ratio, color="grey", ls=":", label=f"massive ({massive_ratio:g}x)")
axes[0].legend(fontsize=7)
axes[1].legend(fontsize=7)
fig.tight_layout()

final = emergence[emergence.step == emergence.step.max()]
final_by_layer = final.groupby("layer")[["sink_metric", "attention_to_first", "norm_ratio"]].mean()
display(final_by_layer.style.format("{:.2f}").set_caption("At the end of training (mean over seeds)"))
onset = {}  # per seed: the first checkpoint where some layer has a sink, and the checkpoint before it
for s in zoo_seeds:
    e = emergence[emergence.seed == s].groupby("tokens").sink_metric.max()  # best layer, per checkpoint
    onset[s] = circuits.sink_onset(e.index.tolist(), e.tolist())
per_seed_onset = {s: o["tokens"] for s, o in onset.items()}
final_sink = {s: float(final[final.seed == s].sink_metric.max()) for s in zoo_seeds}
formed_seeds = [s for s, o in onset.items() if o["tokens"] is not None]
seeds_by_onset = {}  # (onset tokens, the checkpoint before) -> the seeds with that onset
for s in formed_seeds:
    seeds_by_onset.setdefault((onset[s]["tokens"], onset[s]["before"]), []).append(s)
display(Markdown(
    f"At the end of training the largest sink metric over layers (mean over seeds) is {final_by_layer.sink_metric.max():.2f} "
    f"and the largest P0 norm ratio {final_by_layer.norm_ratio.max():.2f}. "
    + ("A sink (≥ half the heads of some layer over ε) is first seen " + "; ".join(
        f"in seed{'s' if len(ss) > 1 else ''} {', '.join(map(str, ss))} at the checkpoint of {t:,} tokens "
        f"({t / total_tokens:.0%} of training; " + (f"none at the one before, {b:,} tokens)" if b is not None else "the first one)")
        for (t, b), ss in seeds_by_onset.items())
       + f". At the last checkpoint the best layer's sink metric is "
       + ", ".join(f"{v:.2f} (seed {s})" for s, v in final_sink.items())
       + f": the sink {'is still there in every seed' if all(v >= circuits.SINK_LAYER_SHARE for v in final_sink.values()) else 'is not still there in every seed'}."
       if formed_seeds else
       "**No sink formed at this scale**: no layer reached half its heads over ε in any seed.")
))
results.record(
    "sink-emerges-early",
    "The sink emerges early in training",
    value={"onset_tokens_per_seed": per_seed_onset, "total_tokens": int(total_tokens),
           "final_max_sink_metric": float(final_by_layer.sink_metric.max())},
    verdict=claims.leave_one_seed_out(lambda ss: claims.with_sensitivity(  # decided again without each seed in turn
        claims.sink_emerges_early, "max_share", onset_tokens={s: per_seed_onset[s] for s in ss},
        total_tokens=int(total_tokens), max_share=0.25), list(zoo_seeds)),
    source="arXiv 2603.06591", seeds=list(zoo_seeds), model=f"sinklens-zoo-{zoo_size}",
    details=f"{zoo_size} residual GPT trained by sinklens; onset = sink metric >= 0.5 in some layer",
    why_not_tested=f"no sink formed in any of seeds {list(zoo_seeds)}: the largest sink metric over layers and "
                   f"checkpoints is {float(emergence.sink_metric.max()):.2f}, under 0.5",
)
# per model: position 0's norm ratio per layer at the end of training; a model never massive is not tested there
trained_ratios = {s: final[final.seed == s].sort_values("layer").norm_ratio.tolist() for s in zoo_seeds}
trained_first = {s: claims.first_massive_layer(r, massive_ratio) for s, r in trained_ratios.items()}


def signature_verdict(ss: list[int]) -> claims.Verdict:
    ratios = {info.name: norm_ratio.tolist(), **{f"{zoo_size} residual seed {s}": trained_ratios[s] for s in ss}}
    return claims.with_sensitivity(claims.signature_in_first_two_layers, "massive_ratio", norm_ratios=ratios,
                                   massive_ratio=massive_ratio)


any_trained_massive = any(v is not None for v in trained_first.values())
# leaving a seed out can change something only where some trained model has the signature
v_signature = (claims.leave_one_seed_out(signature_verdict, list(zoo_seeds)) if any_trained_massive
               else signature_verdict(list(zoo_seeds)))
display(Markdown(
    f"**Where the P0 signature is built.** In {info.name} position 0's residual norm first reaches {massive_ratio:g}x the "
    f"others' median in layer {jump_layer}" + (f" ({float(norm_ratio[jump_layer]):.1f}x)" if jump_layer is not None else "")
    + "; in our trained models " + ", ".join(
        f"seed {s}: " + ("never" if f is None else f"layer {f}") for s, f in trained_first.items())
    + f" (largest ratio at the end of training {max(max(r) for r in trained_ratios.values()):.1f}x). "
    + ("" if any_trained_massive else "So the trained models do not test this claim, and the verdict rests on "
       f"{info.name} alone. ")
    + f"Verdict: **{v_signature.verdict}** (with the massive line at 0.5x / 2x: {v_signature.sensitivity.get('0.5x')} / "
      f"{v_signature.sensitivity.get('2x')}). The source says the mechanism becomes *increasingly* concentrated in the "
      "first two layers during training; this tests where it is at the end of training only."
))
results.record(
    "sink-circuit-in-first-two-layers",
    "The P0 signature (massive residual norm) is built in the first two layers",
    value={"trained_first_massive_layer_per_seed": {str(s): f for s, f in trained_first.items()},
           "final_norm_ratio_by_layer": final_by_layer.norm_ratio.tolist(),
           "pretrained_first_massive_layer": jump_layer, "massive_ratio": massive_ratio,
           "decided_on": [info.name] + [f"seed {s}" for s, f in trained_first.items() if f is not None]},
    verdict=v_signature,
    source="arXiv 2603.06591", seeds=list(zoo_seeds),
    model=f"{info.name} + sinklens-zoo-{zoo_size}",
    details=f"massive = P0 residual norm >= {massive_ratio:g}x the other positions' median (chapter 3's definition); "
            "a model whose norm is never massive is not tested; at the end of training only",
    why_not_tested=f"position 0's residual norm is never massive (>= {massive_ratio:g}x the others' median), in {info.name} "
                   f"or in the trained models (largest ratio at the end of training: {final_by_layer.norm_ratio.max():.1f}x)",
)
print(results.save())
display(Markdown(claims.what_we_found(results.claims)))
