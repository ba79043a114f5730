"""Tests for sinklens.scores: known answers, equality with detect_head, vectorised == naive, errors."""

from __future__ import annotations

import copy
import math
import types

import pytest
import torch
from transformer_lens import ActivationCache
from transformer_lens.head_detector import detect_head

from sinklens import scores as S
from sinklens.scores import ScoreInputError

N = 8  # repeat length in the repeated-token tests
L = 1 + 2 * N


# --- fixtures -----------------------------------------------------------------------------------


def causal_softmax(logits: torch.Tensor) -> torch.Tensor:
    n = logits.shape[-1]
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    return logits.masked_fill(~mask, float("-inf")).softmax(-1)


def random_patterns(shape=(3, 2, 4), n=L, seed=0, sharpness=3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return causal_softmax(torch.randn(*shape, n, n, generator=g) * sharpness)


def as_cache(patterns: torch.Tensor) -> dict[str, torch.Tensor]:
    """[layer, batch, head, q, k] -> {blocks.l.attn.hook_pattern: [batch, head, q, k]}."""
    return {f"blocks.{l}.attn.hook_pattern": patterns[l].clone() for l in range(patterns.shape[0])}


def ideal_patterns(n: int = N) -> torch.Tensor:
    """[layer 1, batch 1, head 5, q, k]: induction, duplicate, previous-token, sink, self heads."""
    length = 1 + 2 * n
    p = torch.zeros(5, length, length)
    q = torch.arange(length)
    second = q >= 1 + n
    p[0, q[~second], 0] = 1  # induction head: BOS until the second repeat ...
    p[0, q[second], q[second] - n + 1] = 1  # ... then the token after the first occurrence
    p[1, q[~second], 0] = 1
    p[1, q[second], q[second] - n] = 1  # duplicate-token head
    p[2, 0, 0] = 1
    p[2, q[1:], q[1:] - 1] = 1  # previous-token head
    p[3, :, 0] = 1  # sink
    p[4] = torch.eye(length)  # self
    return p[None, None]


@pytest.fixture(scope="module")
def native():
    """A tiny random native bridge with grouped-query attention (4 query heads, 2 KV heads), its
    cache on BOS + R + R (R: N distinct tokens, batch 3) and the tokens."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = TransformerBridgeConfig(
        d_model=32, d_head=8, n_layers=3, n_ctx=64, n_heads=4, d_vocab=100, n_key_value_heads=2,
        seed=0, positional_embedding_type="rotary", normalization_type="RMS", act_fn="silu",
    )
    model = TransformerBridge.boot_native(cfg)
    g = torch.Generator().manual_seed(0)
    rand = torch.stack([torch.randperm(99, generator=g)[:N] + 1 for _ in range(3)])  # distinct, no 0
    tokens = torch.cat([torch.zeros(3, 1, dtype=torch.long), rand, rand], dim=1)  # BOS id 0
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    return model, cache, tokens


# --- known answers on constructed patterns ------------------------------------------------------


def test_ideal_heads_known_answers():
    p = ideal_patterns()
    cache = as_cache(p)
    ind = S.induction_scores(cache, N)
    dup = S.duplicate_token_scores(cache, N)
    prev = S.previous_token_scores(cache)
    first = S.first_token_scores(cache)
    assert ind.shape == (1, 5)
    torch.testing.assert_close(ind[0], torch.tensor([1.0, 0, 0, 0, 0]))
    torch.testing.assert_close(dup[0], torch.tensor([0.0, 1, 0, 0, 0]))
    # prev: the induction, duplicate and sink heads put query 1's attention on BOS, which is also
    # query 1's previous token.
    torch.testing.assert_close(prev[0], torch.tensor([1 / (L - 1), 1 / (L - 1), 1, 1 / (L - 1), 0]))
    torch.testing.assert_close(first[0], torch.tensor([N / (L - 1), N / (L - 1), 1 / (L - 1), 1, 0]))
    # The blog's off-by-one: "mean A[i+N, i]" is the duplicate-token score, diagonal(-N+1) the
    # induction score (with BOS at position 0 the copy of query q sits at q - N).
    torch.testing.assert_close(S.diagonal_score(p, N, 1 + N)[0, 0], dup[0])
    torch.testing.assert_close(S.diagonal_score(p, N - 1, 1 + N)[0, 0], ind[0])


def test_verticality_and_kurtosis_known_answers():
    p = ideal_patterns(25)  # L = 51
    v = S.verticality(p)[0]
    k = S.attention_kurtosis(p)[0]
    n_keys = 27  # keys seen by >= ceil(50 / 2) = 25 of the queries 1..50: k = 0..26
    assert S.column_means(p).shape[-1] == n_keys
    assert v[3].item() == pytest.approx(n_keys)  # pure sink: max / mean = K
    pk = 1 / n_keys
    assert k[3].item() == pytest.approx(1 / (pk * (1 - pk)) - 6, rel=1e-5)  # one spike among K
    assert v[2].item() < 2 and v[4].item() < 2  # previous-token and self heads: not sinks
    assert v[0].item() > 2 and v[3].item() > 2
    # mhc-interp's plain definition: col means over all rows; a sink gives L, max col sum.
    vm = S.verticality(p, causal=False)[0]
    assert vm[3].item() == pytest.approx(51)
    torch.testing.assert_close(vm, p[0, 0].sum(-2).amax(-1))  # max column sum, since mean = 1/L
    # Uniform causal attention: the causal definition does not call it a sink, the plain one does.
    uni = causal_softmax(torch.zeros(1, 1, 1, 51, 51))
    assert S.verticality(uni).item() < 2 < S.verticality(uni, causal=False).item()
    # Equal column means: kurtosis undefined.
    flat = torch.full((1, 1, 1, 4, 4), 0.25)
    assert math.isnan(S.attention_kurtosis(flat, causal=False).item())


def test_column_means_definition():
    p = random_patterns(n=11)
    c = S.column_means(p, min_queries=3)  # keys with >= 3 valid queries among 1..10: k <= 8
    assert c.shape == (3, 2, 4, 9)
    for k in range(9):
        qs = range(max(k, 1), 11)
        expect = torch.stack([p[..., q, k] for q in qs]).mean(0)
        torch.testing.assert_close(c[..., k], expect)
    torch.testing.assert_close(S.column_means(p, causal=False), p.mean(-2))


# --- vectorised == naive per-head loop ----------------------------------------------------------


def naive_scores(p: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """Per (layer, batch, head) Python loops, straight from the definitions; -> [batch, layer, head]."""
    n_layers, batch, heads, length, _ = p.shape
    out = {k: torch.zeros(batch, n_layers, heads) for k in
           ("induction", "duplicate_token", "previous_token", "first_token", "verticality", "kurtosis")}
    n_min = math.ceil((length - 1) / 2)
    for l in range(n_layers):
        for b in range(batch):
            for h in range(heads):
                a = p[l, b, h].double()
                second = range(1 + n, 1 + 2 * n)
                out["induction"][b, l, h] = sum(a[q, q - n + 1] for q in second) / n
                out["duplicate_token"][b, l, h] = sum(a[q, q - n] for q in second) / n
                out["previous_token"][b, l, h] = sum(a[q, q - 1] for q in range(1, length)) / (length - 1)
                out["first_token"][b, l, h] = sum(a[q, 0] for q in range(1, length)) / (length - 1)
                cols = []
                for k in range(length):
                    qs = list(range(max(k, 1), length))
                    if len(qs) >= n_min:
                        cols.append(sum(a[q, k] for q in qs) / len(qs))
                c = torch.stack(cols)
                out["verticality"][b, l, h] = c.max() / c.mean()
                d = c - c.mean()
                out["kurtosis"][b, l, h] = (d**4).mean() / (d**2).mean() ** 2 - 3
    return out


def test_vectorised_equals_naive_loop():
    p = random_patterns()
    got = S.all_head_scores(as_cache(p), N, per_batch=True)
    want = naive_scores(p, N)
    assert set(got) == set(want)
    for key in want:
        assert got[key].shape == (2, 3, 4), key
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-5, msg=key)
    # [layer, head] is the batch mean of the per-batch version.
    agg = S.all_head_scores(as_cache(p), N)
    for key in want:
        torch.testing.assert_close(agg[key], got[key].mean(0), msg=key)
    # Each single-score function agrees with all_head_scores, from the cache and from the stack.
    stack = S.stack_patterns(as_cache(p))
    torch.testing.assert_close(stack, p)
    for key, fn in [("induction", lambda c: S.induction_scores(c, N)),
                    ("duplicate_token", lambda c: S.duplicate_token_scores(c, N)),
                    ("previous_token", S.previous_token_scores), ("first_token", S.first_token_scores),
                    ("verticality", S.verticality), ("kurtosis", S.attention_kurtosis)]:
        torch.testing.assert_close(fn(as_cache(p)), agg[key], msg=key)
        torch.testing.assert_close(fn(stack), agg[key], msg=key)


def test_diagonal_score_any_leading_dims_and_ranges():
    p = random_patterns(shape=(2, 3), n=9)
    for offset in range(9):
        for q_start in range(offset, 9):
            got = S.diagonal_score(p, offset, q_start)
            want = torch.stack([p[..., q, q - offset] for q in range(q_start, 9)]).mean(0)
            torch.testing.assert_close(got, want)
    assert S.diagonal_score(p[0, 0], 1).shape == ()


def test_batchless_cache_reads_as_batch_one(native):
    _, cache, _ = native
    batchless = {k: v[0] for k, v in cache.items() if k.endswith(("hook_pattern", "hook_v", "hook_resid_post"))}
    one = {k: v[:1] for k, v in cache.items()}
    a = S.all_head_scores(batchless, N, include_norms=True)
    b = S.all_head_scores(one, N, include_norms=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


# --- equality with transformer_lens.head_detector.detect_head ------------------------------------


def detect_all(model, tokens, pattern_cache, name, **kw):
    """detect_head on a cache without batch dim; the stub gives detect_head our exact tokens."""
    stub = types.SimpleNamespace(cfg=model.cfg, to_tokens=lambda seq: tokens[None])
    return detect_head(stub, "unused", name, cache=pattern_cache, error_measure="mul", **kw)


@pytest.mark.parametrize("exclude_bos", [False, True])
@pytest.mark.parametrize("exclude_current_token", [False, True])
def test_equal_to_detect_head(native, exclude_bos, exclude_current_token):
    """detect_head("mul") = (attention on the detection pattern) / (total attention), summed over the
    whole [q, k] matrix, with column 0 (exclude_bos) and/or the diagonal (exclude_current_token)
    zeroed first. Its numerator on BOS + R + R (R distinct, no BOS inside) is, for induction and
    duplicate-token, N times our mean over the second repeat; for previous-token (L - 1) times ours,
    less A[1, 0] when the BOS column is zeroed. Its denominator is L (rows sum to 1) less the
    excluded mass, which our first-token and diagonal_score(offset 0) give. So ours differ by:
    (1) a mean over the N second-repeat queries (L - 1 for previous-token) instead of a share of all
    L rows, (2) no renormalisation after exclusions. With those factors they agree to 1e-6."""
    model, cache, tokens = native
    p = S.stack_patterns(cache)
    ind = S.induction_scores(cache, N, per_batch=True)
    dup = S.duplicate_token_scores(cache, N, per_batch=True)
    prev = S.previous_token_scores(cache, per_batch=True)
    prev_from2 = S.previous_token_scores(cache, q_start=2, per_batch=True)
    first = S.first_token_scores(cache, per_batch=True)
    self_attn = S.diagonal_score(p, 0).movedim(1, 0)  # mean over all L queries of A[q, q]

    denom = torch.full_like(ind, float(L))
    if exclude_bos:
        denom -= 1 + (L - 1) * first  # A[0, 0] = 1 plus the rest of column 0
    if exclude_current_token:
        denom -= L * self_attn
    if exclude_bos and exclude_current_token:
        denom += 1  # A[0, 0] was subtracted twice
    prev_num = (L - 2) * prev_from2 if exclude_bos else (L - 1) * prev
    # (the previous-token pattern has no diagonal entries, so exclude_current_token leaves its
    # numerator alone; neither has the induction or duplicate pattern with R distinct)
    expected = {"induction_head": N * ind / denom, "duplicate_token_head": N * dup / denom,
                "previous_token_head": prev_num / denom}

    for b in range(tokens.shape[0]):
        single = ActivationCache({k: v[b].clone() for k, v in cache.items() if "hook_pattern" in k},
                                 model, has_batch_dim=False)
        before = {k: v.clone() for k, v in single.items()}
        for name, want in expected.items():
            got = detect_all(model, tokens[b], single, name, exclude_bos=exclude_bos,
                             exclude_current_token=exclude_current_token)
            torch.testing.assert_close(got.float(), want[b].float(), atol=1e-6, rtol=0, msg=name)
        # This version of detect_head clones before masking; older ones wrote into the cache.
        assert all(torch.equal(before[k], single[k]) for k in before)


# --- no mutation --------------------------------------------------------------------------------


def test_cache_not_mutated(native):
    _, cache, _ = native
    before = {k: v.clone() for k, v in cache.items()}
    out = S.all_head_scores(cache, N, include_norms=True, per_batch=True)
    stack = S.stack_patterns(cache)
    stack.zero_()  # the stack is a copy: writing to it leaves the cache alone
    for v in out.values():
        v.add_(1)
    assert set(before) == set(cache.keys())
    assert all(torch.equal(before[k], cache[k]) for k in before)


def test_dict_and_activation_cache_agree(native):
    _, cache, _ = native
    a = S.all_head_scores(cache, N, include_norms=True)
    b = S.all_head_scores(dict(cache.items()), N, include_norms=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


# --- norms --------------------------------------------------------------------------------------


def test_value_norms_gqa_mapping(native):
    model, cache, _ = native
    n_heads, n_kv = 4, 2
    v3 = cache["blocks.2.attn.hook_v"]
    assert v3.shape[2] == n_kv
    # The order is the model's: hook_z = pattern @ repeat_interleave(v) over heads.
    v_rep = v3.repeat_interleave(n_heads // n_kv, dim=2)
    z = torch.einsum("bhqk,bkhd->bqhd", cache["blocks.2.attn.hook_pattern"], v_rep)
    torch.testing.assert_close(z, cache["blocks.2.attn.hook_z"], atol=1e-5, rtol=1e-5)

    vn = S.value_norms(cache, per_batch=True)
    assert vn.shape == (3, 3, n_heads, L)  # [batch, layer, head, pos]
    for l in range(3):
        v = cache[f"blocks.{l}.attn.hook_v"]
        for h in range(n_heads):
            torch.testing.assert_close(vn[:, l, h], v[:, :, h // (n_heads // n_kv)].norm(dim=-1))
    torch.testing.assert_close(S.value_norms(cache), vn.mean(0))


def test_residual_norms(native):
    _, cache, _ = native
    rn = S.residual_norms(cache, per_batch=True)
    assert rn.shape == (3, 3, L)
    for l in range(3):
        torch.testing.assert_close(rn[:, l], cache[f"blocks.{l}.hook_resid_post"].norm(dim=-1))
    pre = S.residual_norms(cache, hook="resid_pre")
    torch.testing.assert_close(pre[0], cache["blocks.0.hook_resid_pre"].norm(dim=-1).mean(0))


# --- errors -------------------------------------------------------------------------------------


def test_errors():
    p = random_patterns(n=L)
    cache = as_cache(p)
    with pytest.raises(ScoreInputError, match="not prefix \\+ 2 \\* n_repeat"):
        S.induction_scores(cache, N + 1)
    with pytest.raises(ScoreInputError, match="not prefix"):
        S.duplicate_token_scores(cache, N, prefix=0)
    with pytest.raises(ScoreInputError, match="n_repeat >= 1"):
        S.induction_scores(cache, 0)
    with pytest.raises(ScoreInputError, match="must be an int"):
        S.induction_scores(cache, 8.0)
    with pytest.raises(ScoreInputError, match="offset must be in"):
        S.diagonal_score(p, L)
    with pytest.raises(ScoreInputError, match="offset must be in"):
        S.diagonal_score(p, -1)
    with pytest.raises(ScoreInputError, match="Query range"):
        S.diagonal_score(p, 3, q_start=2)
    with pytest.raises(ScoreInputError, match="Query range"):
        S.diagonal_score(p, 1, q_start=5, q_stop=5)
    with pytest.raises(ScoreInputError, match="blocks.1.attn.hook_pattern"):
        S.stack_patterns({k: v for k, v in cache.items() if not k.startswith("blocks.1.")})
    with pytest.raises(ScoreInputError, match="no blocks.<l>.attn.hook_pattern hooks"):
        S.first_token_scores({"blocks.0.hook_resid_post": torch.zeros(1, 3, 4)})
    with pytest.raises(ScoreInputError, match="square"):
        S.stack_patterns({"blocks.0.attn.hook_pattern": torch.zeros(1, 2, 3, 4)})
    with pytest.raises(ScoreInputError, match="expected \\[batch, head, q, k\\]"):
        S.stack_patterns({"blocks.0.attn.hook_pattern": torch.zeros(3, 3)})
    with pytest.raises(ScoreInputError, match="but layer 0 has"):
        S.stack_patterns({"blocks.0.attn.hook_pattern": torch.zeros(1, 2, 3, 3),
                          "blocks.1.attn.hook_pattern": torch.zeros(1, 2, 4, 4)})
    with pytest.raises(ScoreInputError, match="5 dims"):
        S.verticality(p[0])
    with pytest.raises(ScoreInputError, match="floating-point"):
        S.stack_patterns(p.long())
    with pytest.raises(ScoreInputError, match="ActivationCache, a dict"):
        S.stack_patterns([p])
    with pytest.raises(ScoreInputError, match="min_queries applies only"):
        S.verticality(p, causal=False, min_queries=3)
    with pytest.raises(ScoreInputError, match="min_queries must be in"):
        S.verticality(p, min_queries=L)
    with pytest.raises(ScoreInputError, match="needs the cache"):
        S.value_norms(p)
    with pytest.raises(ScoreInputError, match="hook_v"):
        S.value_norms(cache)
    with pytest.raises(ScoreInputError, match="hook must be one of"):
        S.residual_norms(cache, hook="resid")
    with pytest.raises(ScoreInputError, match="cannot share"):
        S.value_norms({"blocks.0.attn.hook_v": torch.zeros(1, L, 2, 4)}, n_heads=3)
    assert issubclass(ScoreInputError, ValueError)


def test_half_precision_is_upcast():
    p = random_patterns()
    got = S.all_head_scores(as_cache(p.half()), N)
    want = S.all_head_scores(as_cache(p.half().float()), N)
    for key in want:
        assert got[key].dtype == torch.float32
        torch.testing.assert_close(got[key], want[key], msg=key)


# --- the real model -----------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_induction_heads():
    """On SmolLM2-135M-Instruct (offline), N = 25 repeated random tokens: the known induction heads."""
    pytest.importorskip("sinklens.models")
    from sinklens.data import repeated_random_tokens
    from sinklens.models import load_model

    model = load_model("smollm2-135m")
    tokens = repeated_random_tokens(25, batch=4, vocab_size=model.cfg.d_vocab, bos_token_id=1, seed=0)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    out = S.all_head_scores(cache, 25, include_norms=True)
    ind = out["induction"]
    assert ind.shape == (30, 9)
    top = {divmod(int(i), 9) for i in ind.flatten().topk(4).indices}
    assert top == {(18, 6), (17, 4), (17, 5), (17, 3)}, top
    assert ind[18, 6] > 0.8
    assert out["value_norm"].shape == (30, 9, 51) and out["residual_norm"].shape == (30, 51)
    # Equal to detect_head on the first sequence, up to its normalisation (see above).
    assert len(set(tokens[0, 1:26].tolist())) == 25  # R distinct, so detect_head's pattern is ours
    single = ActivationCache({k: v[0] for k, v in cache.items() if "hook_pattern" in k}, model,
                             has_batch_dim=False)
    got = detect_all(model, tokens[0], single, "induction_head")
    want = S.induction_scores(cache, 25, per_batch=True)[0] * 25 / 51
    torch.testing.assert_close(got.float(), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("limit", [0, 2**40])
def test_layer_by_layer_and_stacked_paths_agree(native, monkeypatch, limit):
    """Small caches are stacked and reduced at once, large ones layer by layer: same numbers."""
    _, cache, _ = native
    ref = S.all_head_scores(S.stack_patterns(cache), N, per_batch=True)
    monkeypatch.setattr(S, "STACK_MAX_BYTES", limit)
    got = S.all_head_scores(cache, N, per_batch=True, include_norms=True)
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], msg=key)
    for l in range(3):
        torch.testing.assert_close(got["residual_norm"][:, l], cache[f"blocks.{l}.hook_resid_post"].norm(dim=-1))
        torch.testing.assert_close(got["value_norm"][:, l, 3], cache[f"blocks.{l}.attn.hook_v"][:, :, 1].norm(dim=-1))
    torch.testing.assert_close(S.verticality(cache, per_batch=True), ref["verticality"])


def test_head_output_norms_read_hook_z_per_layer_and_head():
    from sinklens.scores import ScoreInputError, head_output_norms

    z0, z1 = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4)  # [batch, pos, head, d_head]
    cache = {"blocks.0.attn.hook_z": z0, "blocks.1.attn.hook_z": z1}
    out = head_output_norms(cache, per_batch=True)
    assert out.shape == (2, 2, 3, 5)
    assert torch.allclose(out[:, 1], z1.norm(dim=-1).transpose(1, 2))
    assert torch.allclose(head_output_norms(cache), out.mean(0))
    with pytest.raises(ScoreInputError, match="hook_z"):
        head_output_norms(torch.zeros(1, 1, 1, 2, 2))
