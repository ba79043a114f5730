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
# # 3. What induction heads do when there is nothing to copy
#
# On repeated random tokens, induction heads have a job. On ordinary text, most tokens have no
# earlier occurrence to complete. What do the heads do then? The source blog's answer, and Guo
# et al.'s ("Active-Dormant Attention Heads: Mechanistically Demystifying Extreme-Token
# Phenomena in LLMs", 2024 {cite}`guo2024activedormant`): they go *dormant*, parking their attention on the first token,
# which carries almost nothing (a small value vector), so the head adds almost nothing to the
# residual stream.
#
# Guo et al. describe three "extreme-token" signatures of the sink token: it receives most of
# the attention (attention sink), its value vectors are small (value-state drain), and its
# residual stream has a much larger norm than other tokens' (residual-state peak; compare the
# "massive activations" of {cite}`sun2024massive`, and the attention sinks of {cite}`xiao2024sinks`). The blog says
# instead that the first token's residual norm is "relatively small". We measure all of them, on
# the induction heads found afresh below, and end with a first look at whether the sink is the
# BOS *token* or the first *position*.

# %% tags=["parameters"]
model_name = "auto"  # "gpt2" online, "smollm2-135m" offline, "auto" picks
dataset_name = "auto"  # "pile-10k" online, "offline" (not the Pile), "auto" picks
seq_len = 128  # tokens per text sequence, BOS included
seed = 0  # the seed's setting: batch 1, this seed
n_seqs = 32  # the larger batch, for spread (its first sequence is the seed's)
n_repeat = 25  # N for re-finding the induction heads on BOS + R + R
n_seeds_induction = 8  # random sequences for re-finding them
threshold = 0.4  # induction-score threshold, as in Chapter 2
batch_size = 8
n_seqs_variants = 8  # text sequences for the first-token experiments
move_bos_to = 32  # where the BOS goes in the "BOS moved" variant
dormant_share = 0.5  # a head is parked on position 0 when at least this share of its attention goes there
value_drain_ratio = 0.5  # value-state drain: position 0's value norm at most this x the others' median
massive_ratio = 10.0  # a position-0 residual norm this many times the others' median is massive (as in chapter 4)
n_heads_to_plot = 4
n_probe_seqs = 64  # variable-offset screen that confirms the induction heads, as in Chapter 2
probe_len = 128
probe_vocab_range = [1000, 10000]

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto without ipywidgets

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import Markdown, display

from sinklens import circuits, claims, formation, probes
from sinklens import selectivity as screening
from sinklens.data import load_text_dataset, repeated_random_tokens, text_batch
from sinklens.models import load_model
from sinklens.plotting import attention_heatmaps, attention_view, set_style, token_labels
from sinklens.provenance import ChapterResults, provenance_markdown

torch.set_grad_enabled(False)
set_style()
model = load_model(model_name)
info = model.sinklens_info
cfg = model.cfg
tokenizer = model.tokenizer
bos_id = tokenizer.bos_token_id
dataset = load_text_dataset(dataset_name)
N = n_repeat
DATA = (f"{dataset.description}; {n_seqs} windows of {seq_len} tokens (BOS + {seq_len - 1}), seed {seed}; "
        f"and BOS + {N} random tokens repeated, {n_seeds_induction} seeds")
display(Markdown(provenance_markdown(info, DATA)))
caveats = []
if not info.is_gpt2:
    caveats.append(f"**Not GPT-2**: the blog's observations are on GPT-2 small; this page ran on {info.description}.")
if not dataset.is_pile:
    caveats.append("**Not the Pile**: the blog used Pile text; this page uses an offline stand-in: "
                   + "; ".join(f"{s['name']} ({s['licence']})" for s in dataset.sources) + ".")
if caveats:
    display(Markdown("> " + "\n> ".join(caveats)))

def name(layer, head):
    return probes.head_name(layer, head)

# %% [markdown]
# ## The induction heads, found again
#
# Chapters run independently, so we recompute Chapter 2's list: BOS + `N` random tokens + the same
# `N` tokens, over several seeds, heads whose mean induction score reaches the threshold, each
# confirmed as in Chapter 2 by the variable-offset screen and a previous-token head in a lower
# layer (`sinklens.formation.confirmed_induction_heads`; the screen's varying offset already
# rules out a head that looks `N - 1` back by position, so Chapter 2's fixed-offset control is
# not repeated here).

# %%
rep = torch.cat([
    repeated_random_tokens(N, 1, vocab_size=cfg.d_vocab, bos_token_id=bos_id, seed=seed + i,
                           exclude_ids=tokenizer.all_special_ids, n_ctx=cfg.n_ctx)
    for i in range(n_seeds_induction)
])
rep_out = probes.score_batch(model, rep, n_repeat=N, batch_size=batch_size, include_head_output=True)
ind_mean = rep_out["induction"].mean(0)
probe = screening.probe_batch(n_probe_seqs, probe_len, tuple(probe_vocab_range), seed, bos_id=bos_id)
screen_induction = screening.screen(model, probe, batch_size=batch_size).selectivity_of("induction")
confirmed_mask = formation.confirmed_induction_heads(ind_mean, screen_induction, rep_out["previous_token"].mean(0),
                                                     formation.Criteria(previous_token=threshold, induction=threshold))
scored = probes.heads_over_threshold(ind_mean, threshold)
found = [(l, h, s) for l, h, s in scored if confirmed_mask[l, h]]
induction_found = bool(found)  # else the claims about induction heads are not tested (the best head is only shown)
not_confirmed = [name(l, h) for l, h, _ in scored if not confirmed_mask[l, h]]
if found:
    display(Markdown(
        f"**{len(found)} induction heads** (mean over {n_seeds_induction} seeds, score >= {threshold}, confirmed): "
        + ", ".join(f"{name(l, h)} ({s:.2f}; screen {float(screen_induction[l, h]):.0f}x)" for l, h, s in found) + "."
        + (f" Over the score but not confirmed: {', '.join(not_confirmed)}." if not_confirmed else "")
    ))
else:  # keep the chapter meaningful on any model: follow the best-scoring head, and say so
    flat = int(ind_mean.flatten().argmax())
    found = [(flat // cfg.n_heads, flat % cfg.n_heads, float(ind_mean.flatten()[flat]))]
    display(Markdown(
        f"No confirmed induction head (score >= {threshold}, screen >= {screening.INDUCTION_THRESHOLD:g}x and a "
        f"previous-token head below); we follow the best-scoring head, {name(*found[0][:2])} "
        f"({found[0][2]:.2f}), which is **not** an induction head by this book's rule."))
heads = [(l, h) for l, h, _ in found]
L_idx, H_idx = [l for l, _ in heads], [h for _, h in heads]

# %% [markdown]
# ## Natural text
#
# Windows of `seq_len` tokens cut from the corpus, each starting with the BOS. The seed's
# setting is one sequence (batch 1); the larger batch adds spread. Its first sequence *is* the
# seed's sequence (same seed, same draws), checked below.

# %%
text, sources = text_batch(dataset, tokenizer, seq_len=seq_len, n_seqs=n_seqs, bos_token_id=bos_id, seed=seed)
seed_text, seed_source = text_batch(dataset, tokenizer, seq_len=seq_len, n_seqs=1, bos_token_id=bos_id, seed=seed)
assert torch.equal(text[0], seed_text[0]), "the batch's first sequence must be the seed's sequence"
print(f"seed sequence, from {seed_source[0]}:", repr(tokenizer.decode(seed_text[0, 1:60]))[:300], "...")
print(f"{n_seqs} sequences from {len(set(sources))} documents:",
      ", ".join(sorted(set(s.split('/')[0] for s in sources))))
extra_bos = int((text[:, 1:] == bos_id).sum())
if extra_bos:
    print(f"note: {extra_bos} BOS token(s) inside the text windows (a document's own start token)")
txt_out = probes.score_batch(model, text, batch_size=batch_size, include_norms=True, keep_patterns=heads,
                             include_head_output=True)

# %% [markdown]
# ### Attention to the first token: text vs repeated tokens
#
# For each induction head, the attention from every query (position >= 1) to position 0, in three
# settings: natural text; the first copy of the repeated tokens (nothing to copy yet); the second
# copy (something to copy). The table gives the seed sequence alone (batch 1) and the means
# (± sd across sequences) of the larger batches.

# %%
a_txt = txt_out["attn_to_first"][:, L_idx, H_idx, 1:]  # [seq, head, q]
a_rep1 = rep_out["attn_to_first"][:, L_idx, H_idx, 1 : N + 1]  # first copy
a_rep2 = rep_out["attn_to_first"][:, L_idx, H_idx, N + 1 :]  # second copy
txt_seq, rep2_seq = a_txt.mean(-1), a_rep2.mean(-1)  # per-sequence means [seq, head]
sd = lambda x: x.std(0) if x.shape[0] > 1 else torch.zeros(x.shape[1:])
table = pd.DataFrame({
    "head": [name(l, h) for l, h in heads],
    "induction score": [s for _, _, s in found],
    f"text, seed {seed} (batch 1)": a_txt[0].mean(-1).numpy(),
    f"text, {n_seqs} seqs": [f"{m:.2f} ± {s:.2f}" for m, s in zip(txt_seq.mean(0).tolist(), sd(txt_seq).tolist())],
    "repeated, 1st copy": a_rep1.mean((0, 2)).numpy(),
    "repeated, 2nd copy": [f"{m:.2f} ± {s:.2f}" for m, s in zip(rep2_seq.mean(0).tolist(), sd(rep2_seq).tolist())],
})
display(table.style.format(precision=2).hide(axis="index"))

long = []
for cond, arr in [("natural text", a_txt), ("repeated: 1st copy", a_rep1), ("repeated: 2nd copy", a_rep2)]:
    for k, (l, h) in enumerate(heads):
        vals = arr[:, k].flatten().numpy()
        long.append(pd.DataFrame({"head": name(l, h), "setting": cond, "attention to position 0": vals}))
long = pd.concat(long, ignore_index=True)
fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(heads) + 2), 3.6))
sns.boxplot(long, x="head", y="attention to position 0", hue="setting", ax=ax, fliersize=1,
            palette=["C2", "C0", "C3"], linewidth=0.8)
ax.set_ylim(-0.02, 1.02)
ax.set_title("Induction heads: attention from each query to position 0")
ax.legend(fontsize=8, loc="lower left")
plt.show()

txt_mean = txt_seq.mean(0)  # [head]
rep2_mean = rep2_seq.mean(0)
seed_txt = a_txt[0].mean(-1)
n_dormant = int(claims.dormant_heads(txt_mean, rep2_mean, min_share=dormant_share).sum())
# The baseline: every head of the model, on the same text and the same second copies.
all_txt = txt_out["attn_to_first"][..., 1:].mean((0, -1))  # [layer, head]
all_rep2 = rep_out["attn_to_first"][..., N + 1 :].mean((0, -1))
n_kv = getattr(cfg, "n_key_value_heads", None)
groups = [claims.kv_group(l, h, cfg.n_heads, n_kv) for l, h in heads]
n_groups = len(set(groups))
dormant_verdict = claims.with_sensitivity(
    claims.dormant_on_text, "min_share", ceiling=1.0, text_share=txt_mean.tolist() if induction_found else [],
    copy_share=rep2_mean.tolist() if induction_found else [], all_text_share=all_txt.flatten().tolist(),
    all_copy_share=all_rep2.flatten().tolist(), groups=groups if induction_found else [], min_share=dormant_share)
all_parked = float((all_txt >= dormant_share).float().mean())
copy_bound = 1 - ind_mean[L_idx, H_idx]  # [head]: position 0 and the induction target share the second copy's attention
assert bool((rep2_mean <= copy_bound + 1e-5).all()), "the second-copy share must respect its bound"
switch_by_selection = float((txt_mean - copy_bound).mean())  # the switch the bound alone guarantees
display(Markdown(
    f"On natural text the induction heads put **{float(txt_mean.min()):.2f}-{float(txt_mean.max()):.2f}** of "
    f"their attention on position 0 (mean over {n_seqs} sequences; {float(seed_txt.min()):.2f}-"
    f"{float(seed_txt.max()):.2f} on the seed's single sequence), against "
    f"{float(rep2_mean.min()):.2f}-{float(rep2_mean.max()):.2f} on the second copy of repeated tokens, where "
    f"they have something to copy, and {float(a_rep1.mean((0, 2)).min()):.2f}-{float(a_rep1.mean((0, 2)).max()):.2f} "
    f"on the first copy, where they do not. {n_dormant} of {len(heads)} heads put at least {dormant_share:g} of their "
    f"attention on position 0 on text and more than on the second copy.\n\n"
    f"**The baseline.** Parking on position 0 is not special to induction heads: {all_parked:.0%} of all "
    f"{cfg.n_layers * cfg.n_heads} heads put at least {dormant_share:g} of their attention there on text. What is "
    f"special is the *switch*: the induction heads' attention to position 0 drops by "
    f"{float((txt_mean - rep2_mean).mean()):.2f} on average from text to the second copy, against "
    f"{float((all_txt - all_rep2).mean()):.2f} for the average head. Much of that switch is how the heads were "
    f"chosen: over the second copy, a head's attention to position 0 is at most 1 minus its induction score on the "
    f"same sequences (here those bounds are {float(copy_bound.min()):.2f}-{float(copy_bound.max()):.2f}, and the "
    f"shares {float(rep2_mean.min()):.2f}-{float(rep2_mean.max()):.2f}), so with these text shares the bound alone guarantees a mean switch "
    f"of {switch_by_selection:.2f} of the {float((txt_mean - rep2_mean).mean()):.2f}. What the test adds is the "
    "text share.\n\n"
    + (f"**Grouped-query attention:** this model has {cfg.n_heads} query heads but {n_kv} key/value heads per layer, "
       f"so these {len(heads)} heads are {n_groups} independent key/value groups, and the verdict counts groups. "
       if n_kv and n_kv != cfg.n_heads else "")
    + f"Verdict on \"induction heads are dormant on text, parking on the first token\": **{dormant_verdict.verdict}** "
      f"({dormant_verdict.rule})."
))

# %% [markdown]
# Attention is not output. A head that parks on position 0 is *dormant* only if what it writes
# becomes small. The norm of each induction head's output `hook_z` (the attention-weighted
# values, before the output projection), on text and on the second copy:

# %%
z_txt = txt_out["z_norm"][:, L_idx, H_idx, 1:].mean((0, -1))  # [head]
z_rep2 = rep_out["z_norm"][:, L_idx, H_idx, N + 1 :].mean((0, -1))
z_all_ratio = (txt_out["z_norm"][..., 1:].mean((0, -1)) / rep_out["z_norm"][..., N + 1 :].mean((0, -1)))  # [layer, head]
out_table = pd.DataFrame({"head": [name(*lh) for lh in heads], "output norm, text": z_txt.numpy(),
                          "output norm, 2nd copy": z_rep2.numpy(), "text / 2nd copy": (z_txt / z_rep2).numpy()})
display(out_table.style.format(precision=2).hide(axis="index"))
display(Markdown(
    f"The induction heads' output on text is {float((z_txt / z_rep2).min()):.2f}-{float((z_txt / z_rep2).max()):.2f}x "
    f"their output on the second copy; across all heads the median of the same ratio is "
    f"{float(z_all_ratio.median()):.2f}. A ratio well below 1 means the head writes less when it parks."
))

# %% [markdown]
# ### Exercise: the first-token score
#
# The numbers above are attention to position 0, averaged over queries. Write the score behind
# them as `first_token_scores(pattern)`: `[..., q, k]` with any leading dimensions -> `[...]`,
# the mean of `A[q, 0]` over the queries `q = 1 .. L - 1` (query 0 can attend only to itself, so
# it is left out). The check compares it with `sinklens.scores.first_token_scores`.

# %% tags=["exercise", "hide-input"]
import torch
from torch import Tensor


def first_token_scores(pattern: Tensor) -> Tensor:
    """Sink score: ``[..., q, k]`` -> ``[...]``, the mean of ``A[q, 0]`` over the queries ``q = 1 .. L - 1``."""
    # BEGIN SOLUTION
    return pattern[..., 1:, 0].mean(-1)
    # END SOLUTION


# %%
from sinklens import exercises

exercises.check_first_token_scores(first_token_scores)

# %% [markdown]
# ### The patterns themselves
#
# The seed's sequence, for the strongest induction heads: the first column (position 0) is bright
# for almost every query; the few bright cells elsewhere are where the text does repeat itself.

# %%
plot_k = list(range(min(n_heads_to_plot, len(heads))))
fig = attention_heatmaps(
    [txt_out["patterns"][0, k].numpy() for k in plot_k],
    [f"{name(*heads[k])} on text: {float(seed_txt[k]):.2f} to position 0" for k in plot_k],
    ncols=2, cell=3.8,
)
plt.show()
n_show = 24
fig = attention_heatmaps(
    [txt_out["patterns"][0, plot_k[0], :n_show, :n_show].numpy()],
    [f"{name(*heads[plot_k[0]])}, first {n_show} tokens"],
    token_labels(tokenizer, text[0, :n_show]), ncols=1, cell=5.5,
)
plt.show()

# %% [markdown]
# Interactive: the same heads on the first tokens of the text (pick a head; hover over a token).

# %%
display(attention_view(
    [tokenizer.decode([int(t)]) for t in text[0, :n_show]],
    txt_out["patterns"][0, plot_k, :n_show, :n_show],  # [head, q, k]
    [name(*heads[k]) for k in plot_k],
))

# %% [markdown]
# ## Value vectors: is the sink's value small?
#
# A head that parks on position 0 writes `sum_k A[q, k] v_k`, i.e. mostly `v_0`. If `v_0` is
# small, the head adds almost nothing: it is *dormant*, not merely looking somewhere. Guo et al.
# report exactly this "value-state drain". Below: the L2 norm of each induction head's value
# vector (its key/value head, under grouped-query attention) at position 0 and at every other
# position, over the text batch.

# %%
vn = txt_out["value_norm"]  # [seq, layer, head, pos]
v0 = vn[:, L_idx, H_idx, 0]  # [seq, head]
v_rest = vn[:, L_idx, H_idx, 1:]  # [seq, head, pos-1]
v_ratio = v0.mean(0) / v_rest.transpose(0, 1).flatten(1).median(-1).values  # [head]
vlong = []
for k, (l, h) in enumerate(heads):
    vlong.append(pd.DataFrame({"head": name(l, h), "position": "other positions",
                               "value norm": v_rest[:, k].flatten().numpy()}))
    vlong.append(pd.DataFrame({"head": name(l, h), "position": "position 0", "value norm": v0[:, k].numpy()}))
vlong = pd.concat(vlong, ignore_index=True)
fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(heads) + 2), 3.4))
sns.boxplot(vlong, x="head", y="value norm", hue="position", ax=ax, fliersize=1, linewidth=0.8,
            palette=["0.7", "C3"])
ax.set_title("Value-vector norm of each induction head: position 0 vs the rest (text)")
ax.legend(fontsize=8)
plt.show()

# every layer, all heads: position 0's value norm relative to the others' median
all_ratio = vn[..., 0].mean(0) / vn[..., 1:].movedim(0, -2).flatten(-2).median(-1).values  # [layer, head]
n_small = int((v_ratio < value_drain_ratio).sum())
value_verdict = claims.with_sensitivity(claims.value_drain, "max_ratio",
                                        value_ratio=v_ratio.tolist() if induction_found else [], max_ratio=value_drain_ratio)
display(Markdown(
    f"Position 0's value norm divided by the median of the other positions': "
    + ", ".join(f"{name(l, h)} {float(r):.2f}" for (l, h), r in zip(heads, v_ratio))
    + f". Across all {cfg.n_layers * cfg.n_heads} heads the ratio is below {value_drain_ratio:g} for "
      f"{int((all_ratio < value_drain_ratio).sum())} and below 1 for {int((all_ratio < 1).sum())}. Verdict on "
      f"Guo et al.'s value-state drain for the induction heads: **{value_verdict.verdict}** ({value_verdict.rule})."
))

# %% [markdown]
# ## The residual stream at position 0: "relatively small"?
#
# The blog says the first token's residual-stream norm is "relatively small"; Guo et al. (and the
# "massive activations" literature, Sun et al. 2024) report the opposite for the sink token: a
# norm far larger than any other token's. Below: the L2 norm of the residual stream after each
# layer (`resid_post`) at position 0, and the median and range of the other positions, over the
# text batch (log scale).

# %%
rn = txt_out["residual_norm"]  # [seq, layer, pos]
r0 = rn[:, :, 0].mean(0)  # [layer]
r_rest = rn[:, :, 1:].transpose(0, 1).flatten(1)  # [layer, seq * (pos-1)]
r_med = r_rest.median(-1).values
r_lo, r_hi, r_max = r_rest.quantile(0.1, -1), r_rest.quantile(0.9, -1), r_rest.max(-1).values
layers = np.arange(cfg.n_layers)
fig, ax = plt.subplots(figsize=(6.4, 3.6))
ax.fill_between(layers, r_lo, r_hi, color="0.6", alpha=0.3, label="other positions, 10-90%")
ax.plot(layers, r_med, color="0.3", label="other positions, median")
ax.plot(layers, r_max, color="0.3", ls=":", label="other positions, max")
ax.plot(layers, r0, color="C3", marker="o", ms=3, label="position 0")
read_layers = sorted({l - 1 for l in L_idx if l > 0})  # a head in layer l reads resid_post of layer l - 1
for l in read_layers:
    ax.axvline(l, color="C2", lw=0.6, alpha=0.6)
ax.set_yscale("log")
ax.set_xlabel("layer (resid_post); green lines: the stream the induction heads read")
ax.set_ylabel("residual-stream L2 norm")
ax.set_title("Residual norm by layer, text")
ax.legend(fontsize=7)
plt.show()

ratio = circuits.norm_ratio_to_median(rn.transpose(0, 1))  # [layer]: P0's mean norm / the others' median
n_small_layers = int((ratio < 1).sum())
massive_layers = [int(l) for l in (ratio >= massive_ratio).nonzero().flatten()]
small_verdict = claims.residual_relatively_small(ratio.tolist())
peak_verdict = claims.with_sensitivity(claims.residual_peak_massive, "massive_ratio", norm_ratio_by_layer=ratio.tolist(),
                                       induction_layers=read_layers if induction_found else [], massive_ratio=massive_ratio)
peak = int(ratio.argmax())


def layer_ranges(layers: list[int]) -> str:
    """[2, 11, 12, 13] -> '2, 11-13'."""
    runs: list[list[int]] = []
    for l in layers:
        if runs and l == runs[-1][-1] + 1:
            runs[-1].append(l)
        else:
            runs.append([l])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


display(Markdown(
    f"Position 0's residual norm is below the other positions' median in **{n_small_layers} of "
    f"{cfg.n_layers} layers**, and at least {massive_ratio:g}x that median in **{len(massive_layers)} "
    f"layers**" + (f" ({layer_ranges(massive_layers)})" if massive_layers else "")
    + f". The largest ratio is {float(ratio[peak]):.0f}x at layer {peak} (norm {float(r0[peak]):.0f} vs a "
      f"median of {float(r_med[peak]):.0f} and a maximum of {float(r_max[peak]):.0f} elsewhere). At the "
      f"stream the induction heads read "
      + (f"(the output of layer{'s' if len(read_layers) > 1 else ''} {', '.join(str(l) for l in read_layers)}) the ratio "
         f"is {float(ratio[read_layers].min()):.0f}x-{float(ratio[read_layers].max()):.0f}x. " if read_layers else
         "the ratio is not measured (a layer-0 head reads the embeddings). ")
      + f"Verdict on the blog's \"relatively small\": **{small_verdict.verdict}**; on Guo et al.'s residual-state peak "
      f"(massive norm at the sink): **{peak_verdict.verdict}**."
))

# %% [markdown]
# Is position 0 the only token with a massive norm? At the layer of the largest ratio, we list the
# other positions in the batch whose norm also reaches `massive_ratio` times the median.

# %%
from collections import Counter

peak_norms = rn[:, peak, 1:]  # [seq, pos-1]
hot = (peak_norms >= massive_ratio * r_med[peak]).nonzero().tolist()
hot_tokens = Counter(repr(tokenizer.decode([int(text[s, p + 1])])) for s, p in hot)
display(Markdown(
    f"At layer {peak}, **{len(hot)} of {peak_norms.numel()}** other positions also reach "
    f"{massive_ratio:g}x the median"
    + (": " + ", ".join(f"{tokenizer.decode([int(text[q, p + 1])])!r} at position {p + 1}" for q, p in hot[:8])
       + (f" and {len(hot) - 8} more (most common tokens: "
          + ", ".join(f"{t} x{c}" for t, c in hot_tokens.most_common(5)) + ")" if len(hot) > 8 else "")
       + "." if hot else ". Position 0 is alone.")
))

# %% [markdown]
# ## Position 0, or the BOS token?
#
# Is the sink the BOS *token*, or whatever token sits at the *first position*? A first look (a
# later chapter goes deep): we edit the text sequences and re-measure the induction heads'
# attention to position 0 and position 0's residual norm.
#
# - **BOS + text**: the original.
# - **BOS dropped**: the text alone; position 0 is an ordinary word piece.
# - **BOS → " the"**, **BOS → "\n"**: the BOS replaced by an ordinary token.
# - **BOS → random token**: a random ordinary token per sequence.
# - **BOS moved**: the BOS taken out of position 0 and put at position `move_bos_to`; an ordinary
#   token is first. We also measure the attention the moved BOS receives (from the queries after
#   it) and compare with position 0's attention from the same queries.

# %%
def ordinary_id(s):
    ids = tokenizer.encode(s, add_special_tokens=False)
    assert len(ids) == 1, (s, ids)
    return ids[0]

base = text[:n_seqs_variants]
gen = torch.Generator().manual_seed(seed)
special = set(tokenizer.all_special_ids)
rand_ids = torch.randint(cfg.d_vocab, (base.shape[0] * 4,), generator=gen)
rand_ids = torch.tensor([i for i in rand_ids.tolist() if i not in special][: base.shape[0]])
variants = {
    "BOS + text": base,
    "BOS dropped": probes.drop_first_token(base),
    'BOS → " the"': probes.replace_first_token(base, ordinary_id(" the")),
    'BOS → "\\n"': probes.replace_first_token(base, ordinary_id("\n")),
    "BOS → random token": probes.replace_first_token(base, rand_ids),
    f"BOS moved to {move_bos_to}": probes.move_first_token(base, move_bos_to),
}
rows = []
for vname, toks in variants.items():
    out = probes.score_batch(model, toks, batch_size=batch_size, include_norms=True, keep_patterns=heads)
    att0 = out["attn_to_first"][:, L_idx, H_idx, 1:].mean(-1)  # [seq, head]
    rn_v = out["residual_norm"].mean(0)  # [layer, pos]
    row = {"input": vname, "first token": repr(tokenizer.decode([int(toks[0, 0])])),
           "attention to position 0 (mean over heads)": float(att0.mean()),
           "min over heads": float(att0.mean(0).min()),
           "position-0 residual norm / median (max over layers)": float((rn_v[:, 0] / rn_v[:, 1:].median(-1).values).max())}
    if vname.startswith("BOS moved"):
        pats = out["patterns"]  # [seq, head, q, k]
        row["attention to the moved BOS"] = float(probes.attention_to_key(pats, move_bos_to).mean())
        row["attention to position 0, same queries"] = float(probes.attention_to_key(pats, 0, q_start=move_bos_to + 1).mean())
        row["moved-BOS residual norm / median (max over layers)"] = float(
            (rn_v[:, move_bos_to] / rn_v[:, 1:].median(-1).values).max())
    rows.append(row)
var_df = pd.DataFrame(rows)
display(var_df.style.format(precision=2, na_rep="").hide(axis="index"))

fig, ax = plt.subplots(figsize=(7, 3.2))
sns.barplot(var_df, y="input", x="attention to position 0 (mean over heads)", ax=ax, color="C3")
ax.set_xlim(0, 1)
ax.set_title("Induction heads' attention to position 0 after editing the first token")
plt.show()

orig = rows[0]["attention to position 0 (mean over heads)"]
edited = rows[1:]
edited_min = min(r["attention to position 0 (mean over heads)"] for r in edited)
kept = edited_min / orig
moved = rows[-1]
stays = claims.sink_stays_at_position_0(  # the rule, tested in tests/test_claims.py
    orig, edited_min, moved["attention to the moved BOS"], moved["attention to position 0, same queries"])
answer = ("position 0: the sink stays at the first position whatever token is there, and the BOS elsewhere "
          "does not attract it" if stays else
          "not simply position 0: editing the first token moves or weakens the sink")
display(Markdown(
    f"With the BOS at position 0 the induction heads put {orig:.2f} of their attention there. With an "
    f"ordinary token at position 0 they still put {edited_min:.2f}-"
    f"{max(r['attention to position 0 (mean over heads)'] for r in edited):.2f} there ({kept:.0%} of the original "
    f"at worst). The BOS moved to position {move_bos_to} receives {moved['attention to the moved BOS']:.2f} from the "
    f"queries after it, against {moved['attention to position 0, same queries']:.2f} for position 0 from the same "
    f"queries. Position 0's residual norm peaks at {min(r['position-0 residual norm / median (max over layers)'] for r in edited):.0f}x-"
    f"{max(r['position-0 residual norm / median (max over layers)'] for r in edited):.0f}x the other positions' median in the "
    f"edited inputs ({rows[0]['position-0 residual norm / median (max over layers)']:.0f}x with the BOS), while the moved "
    f"BOS's peaks at {moved['moved-BOS residual norm / median (max over layers)']:.1f}x. "
    f"**First answer: {answer}.** (With rotary positions, \"position 0\" means the first token the model "
    f"sees; a later chapter asks why.)"
))

# %% [markdown]
# ## Record the results

# %%
results = ChapterResults(
    chapter="03_dormant_heads",
    model=info.to_dict(),
    data=DATA,
    parameters={"model_name": model_name, "dataset": dataset.name, "seq_len": seq_len, "seed": seed,
                "n_seqs": n_seqs, "n_repeat": N, "n_seeds_induction": n_seeds_induction,
                "threshold": threshold, "n_seqs_variants": n_seqs_variants, "move_bos_to": move_bos_to,
                "massive_ratio": massive_ratio, "n_probe_seqs": n_probe_seqs, "probe_len": probe_len,
                "probe_vocab_range": probe_vocab_range},
)
note = "; ".join(c.replace("**", "") for c in caveats)
no_induction_heads = (f"no confirmed induction head: score >= {threshold} (best {float(ind_mean.max()):.2f}), variable-offset "
                      f"screen >= {screening.INDUCTION_THRESHOLD:g}x (best {float(screen_induction.max()):.0f}x) and a "
                      "previous-token head in a lower layer")
results.record(
    "induction-heads-dormant-on-text",
    "On natural text, induction heads park their attention on the first token (they have nothing to copy)",
    value={"heads": [name(*lh) for lh in heads],
           "attn_to_pos0_text_mean": dict(zip([name(*lh) for lh in heads], txt_mean.tolist())),
           "attn_to_pos0_text_seed_batch1": dict(zip([name(*lh) for lh in heads], seed_txt.tolist())),
           "attn_to_pos0_repeated_second_copy": dict(zip([name(*lh) for lh in heads], rep2_mean.tolist())),
           "attn_to_pos0_repeated_first_copy": dict(zip([name(*lh) for lh in heads], a_rep1.mean((0, 2)).tolist())),
           "n_heads_dormant": n_dormant, "n_kv_groups": n_groups,
           "share_of_all_heads_parked_on_text": all_parked,
           "switch_text_minus_copy_induction_mean": float((txt_mean - rep2_mean).mean()),
           "switch_text_minus_copy_all_heads_mean": float((all_txt - all_rep2).mean()),
           "second_copy_share_bound_one_minus_induction_score": dict(zip([name(*lh) for lh in heads], copy_bound.tolist())),
           "switch_guaranteed_by_the_bound_mean": switch_by_selection,
           "output_norm_text_over_copy": dict(zip([name(*lh) for lh in heads], (z_txt / z_rep2).tolist())),
           "output_norm_text_over_copy_all_heads_median": float(z_all_ratio.median())},
    verdict=dormant_verdict, source="source blog; Guo et al. 2024", seeds=[seed], details=note,
    why_not_tested=no_induction_heads,
)
results.record(
    "value-state-drain",
    "The first token's value vectors are small in the induction heads (value-state drain)",
    value={"value_norm_ratio_pos0_over_median": dict(zip([name(*lh) for lh in heads], v_ratio.tolist())),
           "heads_below_drain_ratio_all": int((all_ratio < value_drain_ratio).sum()), "heads_total": cfg.n_layers * cfg.n_heads},
    verdict=value_verdict, source="Guo et al. 2024", seeds=[seed], details=note, why_not_tested=no_induction_heads,
)
results.record(
    "first-token-residual-norm-relatively-small",
    "The first token's residual-stream norm is relatively small",
    value={"layers_below_median": n_small_layers, "n_layers": cfg.n_layers,
           "ratio_pos0_over_median_by_layer": ratio.tolist(), "max_ratio": float(ratio[peak]), "max_ratio_layer": peak},
    verdict=small_verdict, source="source blog", seeds=[seed], details=note,
)
results.record(
    "residual-state-peak",
    f"The sink token's residual norm is massive (>= {massive_ratio:g}x the other positions' median)",
    value={"massive_layers": massive_layers, "max_ratio": float(ratio[peak]), "pos0_norm_at_peak": float(r0[peak]),
           "median_other_at_peak": float(r_med[peak]), "other_massive_positions": len(hot),
           "other_massive_tokens": dict(hot_tokens)},
    verdict=peak_verdict, source="Guo et al. 2024; Sun et al. 2024 (massive activations)", seeds=[seed], details=note,
)
results.record(
    "sink-is-position-not-bos",
    "Is the sink the first position or the BOS token? (first look)",
    value={"answer": answer, "variants": rows, "worst_kept_fraction": kept},
    verdict=claims.measured("attention to position 0 after moving or replacing the BOS (a first look; chapter 4 tests it)"),
    source="this book", seeds=[seed], details=note,
)
print(results.save())
display(Markdown(claims.what_we_found(results.claims)))
