"""Exercises: check functions for the reader's own code, and the student version of the chapters.

Every chapter has exercises: a function the reader writes (attention, the head scores, the P0
ablation, Sinkhorn-Knopp, a Birkhoff-von Neumann mixture, the selectivity screen). Each is checked
against this package's own implementation, which is the ground truth, on small inputs built here
(random with a fixed generator, plus edge cases that catch the common mistakes). A check raises
:class:`ExerciseFailed` saying what is wrong and how to fix it, and prints one line on success.
No check needs the network or a trained model, and each takes well under 2 s on a CPU.

Conventions in the chapter sources (``notebooks/NN_*.py``, Jupytext percent format):

- An exercise is a code cell tagged ``exercise`` and ``hide-input``
  (``# %% tags=["exercise", "hide-input"]``; Jupyter Book hides the input behind a toggle). It is
  self-contained (it imports what it needs) and defines one function per exercise, whose
  signature and docstring are the exercise; its body, between a ``# BEGIN SOLUTION`` and an
  ``# END SOLUTION`` comment line, is the solution.
- The exercise function ``NAME`` is checked by ``check_NAME`` in this module (:data:`CHECKS`),
  called in the code cell that follows: ``exercises.check_sinkhorn_knopp(sinkhorn_knopp)``.
- The student version replaces every solution by ``raise NotImplementedError("Exercise: NAME")``
  (at the marker's indentation; ``NAME`` is the enclosing function) and drops the
  ``hide-input`` tag so the stub shows: ``python -m sinklens.exercises student OUT_DIR`` writes
  every chapter as ``.py`` and ``.ipynb``; :func:`strip_solutions` does one piece of code,
  :func:`student_source` one chapter source. Unbalanced or misplaced markers raise
  :class:`MarkerError`. The chapters themselves (and so CI) run the solutions.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

BEGIN = "# BEGIN SOLUTION"
END = "# END SOLUTION"
EXERCISE_TAG = "exercise"
HIDE_TAG = "hide-input"

__all__ = [
    "ExerciseFailed",
    "MarkerError",
    "CHECKS",
    "check_attention_pattern",
    "check_induction_scores",
    "check_duplicate_token_scores",
    "check_previous_token_scores",
    "check_first_token_scores",
    "check_p0_ablation",
    "check_sinkhorn_knopp",
    "check_bvn_mixture",
    "check_selectivity",
    "strip_solutions",
    "exercise_names",
    "student_source",
    "write_student_version",
]


class ExerciseFailed(AssertionError):
    """The reader's function is not right yet; the message says what is wrong and gives a hint."""


class MarkerError(ValueError):
    """``# BEGIN SOLUTION`` / ``# END SOLUTION`` markers are unbalanced or outside an exercise cell."""


# --- running the reader's function ----------------------------------------------------------------


class _Checker:
    """Calls the reader's function on one case after another and explains the first mismatch."""

    def __init__(self, name: str, fn: Callable):
        if not callable(fn):
            raise ExerciseFailed(f"check_{name} needs your function itself, got {type(fn).__name__} {fn!r}.")
        self.name, self.fn, self.n_cases = name, fn, 0

    def fail(self, case: str, what: str, hint: str = "") -> None:
        msg = f"{self.name} is not right yet, on {case}: {what}"
        raise ExerciseFailed(msg + (f"\nHint: {hint}" if hint else ""))

    def call(self, case: str, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``; a stub, an exception or an input changed in place fail the check."""
        self.n_cases += 1
        before = [a.clone() for a in args if isinstance(a, Tensor)]
        try:
            out = self.fn(*args, **kwargs)
        except NotImplementedError as e:
            raise ExerciseFailed(
                f"{self.name}: not implemented yet ({e or 'NotImplementedError'}). Replace the "
                "`raise NotImplementedError(...)` line with your code and run this check again."
            ) from None
        except ExerciseFailed:
            raise
        except Exception as e:
            raise ExerciseFailed(
                f"{self.name} raised {type(e).__name__} on {case}: {e} (the traceback above shows where)."
            ) from e
        after = [a for a in args if isinstance(a, Tensor)]
        if any(b.shape != a.shape or not torch.equal(b, a) for b, a in zip(before, after)):
            self.fail(case, "it changed its input tensor in place.", "work on a copy (`x = x.clone()`) or build new tensors.")
        return out

    def tensor(self, case: str, got: Any, shape: Sequence[int], shape_hint: str = "") -> Tensor:
        """``got`` must be a finite floating-point tensor of ``shape``."""
        if isinstance(got, tuple):
            self.fail(case, f"it returned a tuple of {len(got)} items.", f"return one tensor of shape {tuple(shape)}.")
        if not isinstance(got, Tensor):
            self.fail(case, f"it returned a {type(got).__name__}, not a torch.Tensor.", f"return a tensor of shape {tuple(shape)}.")
        if tuple(got.shape) != tuple(shape):
            self.fail(case, f"wrong shape: expected {tuple(shape)}, got {tuple(got.shape)}.", shape_hint)
        if not got.is_floating_point():
            self.fail(case, f"it returned dtype {got.dtype}, not floating point.", "scores and patterns are float tensors.")
        return got.detach()

    def finite(self, case: str, got: Tensor, hint: str) -> None:
        if not torch.isfinite(got).all():
            bad = "NaN" if torch.isnan(got).any() else "inf"
            idx = tuple(int(i) for i in (~torch.isfinite(got)).nonzero()[0])
            self.fail(case, f"the result holds {bad} (first at index {idx}).", hint)

    def compare(
        self,
        case: str,
        got: Tensor,
        want: Tensor,
        *,
        hint: str,
        diagnoses: Sequence[tuple[str, Callable[[], Tensor]]] = (),
        atol: float = 1e-5,
        rtol: float = 1e-4,
    ) -> None:
        """``got`` must equal ``want``; on a mismatch, name the known mistake it matches, if any."""
        got, want = got.double(), want.detach().double()
        if torch.allclose(got, want, atol=atol, rtol=rtol):
            return
        for what, make_alt in diagnoses:
            alt = make_alt().detach().double()
            if alt.shape == want.shape and not torch.allclose(alt, want, atol=atol, rtol=rtol) and torch.allclose(
                got, alt, atol=atol, rtol=rtol
            ):
                self.fail(case, f"your result equals {what}.", hint)
        err = (got - want).abs()
        idx = tuple(int(i) for i in torch.nonzero(err == err.max())[0])
        self.fail(
            case,
            f"values differ from the reference by up to {float(err.max()):.3g} (at index {idx}: yours "
            f"{float(got[idx]):.6g}, expected {float(want[idx]):.6g}).",
            hint,
        )

    def passed(self) -> None:
        print(f"✓ {self.name} passes ({self.n_cases} cases)")


def _one_thread(check: Callable[[Callable], None]) -> Callable[[Callable], None]:
    """Run a check with one torch thread: its tensors are tiny, and on a busy machine a thread pool
    made each small operation wait ~10 ms (a 2 s check became 7 s)."""

    @functools.wraps(check)
    def wrapper(fn: Callable) -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            check(fn)
        finally:
            torch.set_num_threads(threads)

    return wrapper


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _causal_patterns(lead: Sequence[int], length: int, gen: torch.Generator, scale: float = 2.0) -> Tensor:
    """Random attention patterns ``[*lead, q, k]``: causal, rows sum to 1."""
    logits = torch.randn(*lead, length, length, generator=gen) * scale
    future = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
    return logits.masked_fill(future, float("-inf")).softmax(-1)


def _one_hot_pattern(length: int, key_of: Callable[[int], int]) -> Tensor:
    """A ``[1, q, k]`` pattern where query ``q`` puts all its attention on key ``key_of(q)``."""
    p = torch.zeros(1, length, length)
    for q in range(length):
        p[0, q, key_of(q)] = 1.0
    return p


# --- chapter 1: attention ----------------------------------------------------------------------------


@_one_thread
def check_attention_pattern(fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    """Check ``fn(q, k) -> pattern``.

    ``q``, ``k``: ``[batch, pos, head, d_head]``; ``pattern``: ``[batch, head, q_pos, k_pos]``, the
    softmax over keys of ``q·k / sqrt(d_head)`` with every key after the query masked. Reference:
    :func:`sinklens.attention.causal_attention_pattern`.
    """
    from sinklens.attention import causal_attention_pattern

    c = _Checker("attention_pattern", fn)
    gen = _generator(1)
    cases = [
        ("random q, k (batch 2, 5 positions, 3 heads, d_head 8)", (2, 5, 3, 8), 1.0),
        ("a single token, which can only attend to itself (batch 1, 1 position, 2 heads, d_head 4)", (1, 1, 2, 4), 1.0),
        ("large scores (batch 1, 7 positions, 2 heads, d_head 16, entries of std 3)", (1, 7, 2, 16), 3.0),
    ]
    for case, (b, n, h, d), std in cases:
        q = torch.randn(b, n, h, d, generator=gen) * std
        k = torch.randn(b, n, h, d, generator=gen) * std
        got = c.tensor(
            case, c.call(case, q, k), (b, h, n, n),
            "the pattern is [batch, head, query, key]: e.g. torch.einsum('bqhe,bkhe->bhqk', q, k).",
        )
        c.finite(case, got, "a row with every key masked gives NaN after the softmax. A token must see itself: "
                            "mask only the keys *after* the query, torch.triu(ones(n, n), diagonal=1).")
        future = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
        if (got[..., future].abs() > 1e-6).any():
            c.fail(case, "queries attend to later keys (the pattern is not zero above the diagonal).",
                   "apply the causal mask before the softmax: set scores[..., i, j] = -inf for every key j > i.")
        rows = got.sum(-1)
        if not torch.allclose(rows, torch.ones_like(rows), atol=1e-5):
            c.fail(case, f"rows do not sum to 1 (row sums between {float(rows.min()):.3f} and {float(rows.max()):.3f}).",
                   "each query's attention is a softmax over the keys: .softmax(dim=-1), after masking.")
        want = causal_attention_pattern(q, k)[1]
        raw = torch.einsum("bqhe,bkhe->bhqk", q, k).masked_fill(future, float("-inf"))
        c.compare(
            case, got, want,
            hint="scores = q·k / sqrt(d_head), with d_head = q.shape[-1]; then the causal mask, then the softmax.",
            diagnoses=[
                ("a softmax of q·k without the 1/sqrt(d_head) scale", lambda: raw.softmax(-1)),
                ("a softmax of q·k / d_head: scale by the square root of d_head", lambda: (raw / d).softmax(-1)),
                ("a softmax of q·k * sqrt(d_head): divide, do not multiply", lambda: (raw * d**0.5).softmax(-1)),
            ],
        )
    c.passed()


# --- chapters 2 and 3: head scores ------------------------------------------------------------------


def _reference_score(score: Callable[..., Tensor], pattern: Tensor, *args: Any) -> Tensor:
    """A :mod:`sinklens.scores` function on a ``[..., q, k]`` pattern, returned with the leading shape."""
    lead, length = pattern.shape[:-2], pattern.shape[-1]
    stacked = pattern.reshape(1, -1, 1, length, length)  # [layer=1, batch, head=1, q, k]
    return score(stacked, *args, per_batch=True).reshape(lead)


def _score_cases(n_repeat_cases: Sequence[int], gen: torch.Generator) -> list[tuple[str, Tensor, int]]:
    """Random causal patterns on BOS + R + R for each N, with leading dims of different ranks."""
    out = []
    leads = [(3, 4), (2,), (2, 1, 3)]
    for i, n in enumerate(n_repeat_cases):
        lead = leads[i % len(leads)]
        out.append((f"random causal patterns {tuple(lead) + (1 + 2 * n, 1 + 2 * n)} (BOS + R + R, N = {n})",
                    _causal_patterns(lead, 1 + 2 * n, gen), n))
    return out


def _check_repeat_score(
    name: str,
    fn: Callable[[Tensor, int], Tensor],
    offset_of: Callable[[int], int],
    reference: Callable[..., Tensor],
    perfect: Callable[[int], Tensor],
    perfect_name: str,
    hint: str,
) -> None:
    from sinklens import scores as S

    c = _Checker(name, fn)
    gen = _generator(2)
    cases = _score_cases([6, 3, 2], gen) + [(f"a perfect {perfect_name} (N = 5)", perfect(5), 5)]
    for case, p, n in cases:
        got = c.tensor(case, c.call(case, p, n), p.shape[:-2],
                       "one score per pattern: reduce the last two dims [q, k] and keep the leading ones.")
        c.finite(case, got, "the mean is over an empty set of queries? The second copy's queries are N + 1 .. 2N.")
        want = _reference_score(reference, p, n)
        c.compare(
            case, got, want, hint=hint,
            diagnoses=[
                (f"A[q, q - {offset_of(n)}] averaged over queries {n} .. {2 * n - 1}: the BOS at position 0 "
                 f"shifts both copies by one, so the second copy is at N + 1 .. 2N",
                 lambda: S.diagonal_score(p, offset_of(n), n, 2 * n)),
                (f"the mean of the whole diagonal pattern.diagonal(-{offset_of(n)}): it includes queries of the "
                 "first copy, keep only the second copy's queries",
                 lambda: torch.diagonal(p, offset=-offset_of(n), dim1=-2, dim2=-1).mean(-1)),
                ("zero everywhere: a positive diagonal offset reads keys after the query, which are masked "
                 "(use a negative offset, or index A[q, q - offset])", lambda: torch.zeros(p.shape[:-2])),
                ("the score of the wrong diagonal, "
                 + ("one position too far back (the earlier copy of the token itself, the duplicate-token key)"
                    if offset_of(n) == n - 1 else "one position too near (the token after the earlier copy, the "
                    "induction key)"),
                 lambda: S.diagonal_score(p, n if offset_of(n) == n - 1 else n - 1, n + 1, 2 * n + 1)),
            ],
        )
    c.passed()


@_one_thread
def check_induction_scores(fn: Callable[[Tensor, int], Tensor]) -> None:
    """Check ``fn(pattern, n_repeat) -> scores``.

    ``pattern``: ``[..., q, k]`` (any leading dims) on BOS + R + R with ``len(R) = n_repeat = N``,
    so length ``2N + 1``; ``scores``: ``[...]``, the mean over the second copy's queries
    ``q = N + 1 .. 2N`` of ``A[q, q - N + 1]``. Reference: :func:`sinklens.scores.induction_scores`.
    """
    from sinklens import scores as S

    def perfect(n: int) -> Tensor:  # second copy on the induction key, everything else on the BOS
        return _one_hot_pattern(1 + 2 * n, lambda q: q - n + 1 if q > n else 0)

    _check_repeat_score(
        "induction_scores", fn, lambda n: n - 1, S.induction_scores, perfect, "induction head",
        "the induction key of query q is q - N + 1 (the token after the earlier copy of the current token); "
        "average A[q, q - N + 1] over the N queries of the second copy, q = N + 1 .. 2N.",
    )


@_one_thread
def check_duplicate_token_scores(fn: Callable[[Tensor, int], Tensor]) -> None:
    """Check ``fn(pattern, n_repeat) -> scores``.

    As :func:`check_induction_scores`, one key further back: the mean over ``q = N + 1 .. 2N`` of
    ``A[q, q - N]``, the earlier copy of the current token. Reference:
    :func:`sinklens.scores.duplicate_token_scores`.
    """
    from sinklens import scores as S

    def perfect(n: int) -> Tensor:
        return _one_hot_pattern(1 + 2 * n, lambda q: q - n if q > n else 0)

    _check_repeat_score(
        "duplicate_token_scores", fn, lambda n: n, S.duplicate_token_scores, perfect, "duplicate-token head",
        "the earlier copy of the token at query q sits at q - N; average A[q, q - N] over the N queries of "
        "the second copy, q = N + 1 .. 2N.",
    )


def _check_single_score(
    name: str,
    fn: Callable[[Tensor], Tensor],
    reference: Callable[[Tensor], Tensor],
    perfect: Tensor,
    perfect_name: str,
    diagnoses: Callable[[Tensor], list[tuple[str, Callable[[], Tensor]]]],
    hint: str,
) -> None:
    c = _Checker(name, fn)
    gen = _generator(3)
    cases = [
        ("random causal patterns (3, 4, 9, 9)", _causal_patterns((3, 4), 9, gen)),
        ("random causal patterns (2, 6, 6)", _causal_patterns((2,), 6, gen)),
        ("two positions only (2, 2, 2, 2)", _causal_patterns((2, 2), 2, gen)),
        (f"a perfect {perfect_name} {tuple(perfect.shape)}", perfect),
    ]
    for case, p in cases:
        got = c.tensor(case, c.call(case, p), p.shape[:-2],
                       "one score per pattern: reduce the last two dims [q, k] and keep the leading ones.")
        c.finite(case, got, "the mean is over an empty set? Use the queries q >= 1.")
        c.compare(case, got, _reference_score(reference, p), hint=hint, diagnoses=diagnoses(p))
    c.passed()


@_one_thread
def check_previous_token_scores(fn: Callable[[Tensor], Tensor]) -> None:
    """Check ``fn(pattern) -> scores``: ``[..., q, k] -> [...]``, the mean over queries ``q >= 1`` of
    ``A[q, q - 1]``. Reference: :func:`sinklens.scores.previous_token_scores`."""
    from sinklens import scores as S

    _check_single_score(
        "previous_token_scores", fn, S.previous_token_scores,
        _one_hot_pattern(8, lambda q: max(q - 1, 0)), "previous-token head",
        lambda p: [
            ("the sum of A[q, q - 1] divided by the sequence length L: the mean is over the L - 1 queries "
             "that have a previous token", lambda: torch.diagonal(p, -1, -2, -1).sum(-1) / p.shape[-1]),
            ("zero everywhere: diagonal(+1) reads the key after the query, which is masked; use offset=-1",
             lambda: torch.zeros(p.shape[:-2])),
            ("the attention to self, A[q, q]: the previous token is one key back", lambda: torch.diagonal(p, 0, -2, -1).mean(-1)),
        ],
        "the previous-token score is the mean of A[q, q - 1] over q = 1 .. L - 1, i.e. "
        "torch.diagonal(pattern, offset=-1, dim1=-2, dim2=-1).mean(-1).",
    )


@_one_thread
def check_first_token_scores(fn: Callable[[Tensor], Tensor]) -> None:
    """Check ``fn(pattern) -> scores``: ``[..., q, k] -> [...]``, the mean over queries ``q >= 1`` of
    ``A[q, 0]`` (query 0 has no choice). Reference: :func:`sinklens.scores.first_token_scores`."""
    from sinklens import scores as S

    _check_single_score(
        "first_token_scores", fn, S.first_token_scores,
        _one_hot_pattern(8, lambda q: 0), "sink head (everything on position 0)",
        lambda p: [
            ("the mean of A[q, 0] over every query, query 0 included: query 0 can only attend to itself "
             "(A[0, 0] = 1 always), so it says nothing about the head; leave it out",
             lambda: p[..., :, 0].mean(-1)),
            ("the mean of row 0, A[0, k], over the keys: the sink is a *column*, key 0, read from the queries "
             "q >= 1", lambda: p[..., 0, :].mean(-1)),
            ("the attention of the last query only, A[L - 1, 0]: average over all queries q >= 1",
             lambda: p[..., -1, 0]),
        ],
        "mean over the queries q = 1 .. L - 1 of A[q, 0]: pattern[..., 1:, 0].mean(-1).",
    )


# --- chapter 4: the P0 ablation ----------------------------------------------------------------------


@_one_thread
def check_p0_ablation(fn: Callable[..., Tensor]) -> None:
    """Check ``fn(model, tokens, hook_name, mode) -> logits``.

    ``model``: a model with TransformerLens hooks; ``tokens``: ``[batch, pos]``; the output at hook
    ``hook_name`` (``[batch, pos, ...]``) is replaced **at position 0 only**, by 0 (``mode="zero"``)
    or by its mean over the positions ``> 0`` of every sequence of ``tokens`` (``mode="mean"``);
    returns the logits ``[batch, pos, d_vocab]`` and leaves no hook on the model. Runs on a small
    randomly initialised :class:`sinklens.model.GPT`. Reference:
    :func:`sinklens.circuits.ablate_at_position`.
    """
    from sinklens import circuits
    from sinklens.model import GPT, GPTConfig

    c = _Checker("p0_ablation", fn)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = GPT(GPTConfig(n_layers=2, d_model=32, n_heads=4, n_ctx=16, d_vocab=64, init_std=0.2)).eval()
    tokens = torch.randint(0, 64, (3, 10), generator=_generator(4))
    with torch.no_grad():
        clean = model(tokens)
    cases = [
        ("blocks.0.hook_attn_out", "zero"),
        ("blocks.0.hook_mlp_out", "zero"),
        ("blocks.0.hook_attn_out", "mean"),
        ("blocks.1.hook_mlp_out", "mean"),
        ("hook_embed", "mean"),
    ]
    for hook_name, mode in cases:
        case = f"a random 2-layer GPT, tokens [3, 10], hook {hook_name!r}, mode={mode!r}"
        with torch.no_grad():
            got = c.tensor(case, c.call(case, model, tokens, hook_name, mode), clean.shape,
                           "return the logits [batch, pos, d_vocab] of the ablated run, not the cache.")
            want = circuits.ablate_at_position(model, tokens, [hook_name], position=0, mode=mode)[0]
            after = model(tokens)
        if not torch.allclose(after, clean, atol=1e-5):
            c.fail(case, "the model still carries your hook after the call (a plain forward pass has changed).",
                   "use model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook)]), or the model.hooks(...) context "
                   "manager, so the hook is removed afterwards.")
        if torch.allclose(got, clean, atol=1e-6):
            c.fail(case, "the logits equal the clean run's: nothing was ablated.",
                   "the hook must *return* the modified activation, and be attached to hook_name.")

        def ablated(replace: Callable[[Tensor], Tensor]) -> Callable[[], Tensor]:
            def run() -> Tensor:
                def hook(act: Tensor, hook: Any) -> Tensor:
                    return replace(act.clone())

                with torch.no_grad():
                    return model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook)])

            return run

        with torch.no_grad():
            _, ref_cache = model.run_with_cache(tokens, names_filter=lambda n: n == hook_name)
        act = ref_cache[hook_name]

        def set_at(values: Tensor, everywhere: bool = False) -> Callable[[Tensor], Tensor]:
            def replace(a: Tensor) -> Tensor:
                if everywhere:
                    a[:] = values
                else:
                    a[:, 0] = values
                return a

            return replace

        c.compare(
            case, got, want,
            hint=("replace the activation at position 0 only, act[:, 0]; for mode='mean' the replacement is "
                  "act[:, 1:].mean((0, 1)) of a clean run on the same tokens (one vector, over every sequence "
                  "and every position after the first)."),
            diagnoses=[
                ("ablating every position, not position 0 only: set act[:, 0] only",
                 ablated(set_at(torch.zeros(()) if mode == "zero" else act[:, 1:].mean((0, 1)), everywhere=True))),
                ("zero-ablating although mode='mean' asks for the mean", ablated(set_at(torch.zeros(())))),
                ("mean-ablating with the mean over all positions, position 0 included: the mean is over the "
                 "ordinary positions 1.., what a position other than P0 writes",
                 ablated(set_at(act.mean((0, 1))))),
                ("mean-ablating with each sequence's own mean (act[:, 1:].mean(1)): take one mean over the batch "
                 "and the positions, act[:, 1:].mean((0, 1))", ablated(set_at(act[:, 1:].mean(1)))),
                ("mean-ablating with the mean of position 0 over the batch: the replacement is what the *other* "
                 "positions write", ablated(set_at(act[:, 0].mean(0)))),
            ],
            atol=1e-4,
        )
    c.passed()


# --- chapter 5: doubly stochastic matrices -----------------------------------------------------------


@_one_thread
def check_sinkhorn_knopp(fn: Callable[..., Tensor]) -> None:
    """Check ``fn(logits, n_iters=20) -> matrix``.

    ``logits``: ``[..., n, n]``; the result is ``exp(logits)`` normalised ``n_iters`` times, each time
    first over rows (each row sums to 1) and then over columns, so the columns of the result sum to
    1 exactly. Reference: :func:`sinklens.hyperconnections.sinkhorn_knopp` (log space).
    """
    from sinklens.hyperconnections import sinkhorn_knopp

    def rows_then_cols(logits: Tensor, n_iters: int, first: int, second: int) -> Tensor:
        m = logits.double()
        for _ in range(n_iters):
            m = torch.log_softmax(m, dim=first)
            m = torch.log_softmax(m, dim=second)
        return m.exp()

    def half_steps(logits: Tensor, k: int) -> Tensor:  # k alternating normalisations, rows first
        m = logits.double()
        for i in range(k):
            m = torch.log_softmax(m, dim=-1 if i % 2 == 0 else -2)
        return m.exp()

    c = _Checker("sinkhorn_knopp", fn)
    gen = _generator(5)
    cases = [
        ("a random 4 x 4 matrix of logits, n_iters=20", torch.randn(4, 4, generator=gen), 20),
        ("a batch [3, 2, 4, 4] of logits with std 2, n_iters=1 (one row and one column normalisation)",
         torch.randn(3, 2, 4, 4, generator=gen) * 2, 1),
        ("a batch [5, 3, 3] of logits with std 2, n_iters=3", torch.randn(5, 3, 3, generator=gen) * 2, 3),
        ("a 1 x 1 matrix, n_iters=2", torch.randn(1, 1, generator=gen), 2),
        ("large logits (a batch [2, 4, 4], 100 on the diagonal: exp overflows float32), n_iters=20",
         torch.randn(2, 4, 4, generator=gen) * 3 + 100 * torch.eye(4), 20),
        ("the default n_iters (20), a batch [2, 4, 4]", torch.randn(2, 4, 4, generator=gen), None),
    ]
    for case, logits, n_iters in cases:
        args = (logits,) if n_iters is None else (logits, n_iters)
        got = c.tensor(case, c.call(case, *args), logits.shape, "the result has the shape of the logits, [..., n, n].")
        c.finite(case, got, "exp of large logits overflows (or 0 / 0 after underflow): work in log space, "
                            "alternating torch.log_softmax over dim=-1 (rows) and dim=-2 (columns), and exp at the end.")
        if (got < -1e-7).any():
            c.fail(case, "it has negative entries.", "start from exp(logits), not the logits themselves.")
        n = n_iters or 20
        want = sinkhorn_knopp(logits, n)
        c.compare(
            case, got, want,
            hint=("each iteration normalises the rows of exp(logits) (divide each row by its sum), then the "
                  "columns; n_iters iterations, so the last step is a column normalisation."),
            diagnoses=[
                ("the columns normalised first and the rows last: each iteration is rows, then columns",
                 lambda: rows_then_cols(logits, n, -2, -1)),
                ("a single iteration: loop n_iters times", lambda: rows_then_cols(logits, 1, -1, -2)),
                ("n_iters half-steps (rows, columns, rows, ...) in all: one iteration normalises both rows and columns",
                 lambda: half_steps(logits, n)),
                ("n_iters + 1 iterations: loop exactly n_iters times", lambda: rows_then_cols(logits, n + 1, -1, -2)),
                ("one softmax over the rows only, without column normalisation", lambda: logits.softmax(-1)),
            ],
        )
        cols = got.sum(-2)
        if not torch.allclose(cols, torch.ones_like(cols), atol=1e-5):
            c.fail(case, "the columns do not sum to 1.", "end each iteration with a column normalisation.")
    c.passed()


@_one_thread
def check_bvn_mixture(fn: Callable[[Tensor, int], Tensor]) -> None:
    """Check ``fn(logits, n) -> matrix``.

    ``logits``: ``[..., n!]``, one per permutation of ``range(n)`` in ``itertools.permutations``
    order (index 0 is the identity); the result ``[..., n, n]`` is ``sum_k softmax(logits)_k P_k``
    with ``P_k = eye(n)[list(perm_k)]`` (row ``i`` of ``P_k`` is the unit vector ``e_{perm_k[i]}``).
    Reference: :func:`sinklens.hyperconnections.birkhoff_mixture`.
    """
    from sinklens.hyperconnections import birkhoff_mixture, permutation_matrices

    c = _Checker("bvn_mixture", fn)
    gen = _generator(6)
    spike = torch.full((24,), -30.0)
    spike[7] = 30.0
    cases = [
        ("random logits for n = 3 (6 permutations)", torch.randn(6, generator=gen), 3),
        ("a batch [2, 5] of logits for n = 4 (24 permutations)", torch.randn(2, 5, 24, generator=gen) * 2, 4),
        ("all weight on one permutation (n = 4, permutation index 7)", spike, 4),
        ("n = 2, a batch of 3", torch.randn(3, 2, generator=gen), 2),
        ("n = 1 (one permutation, the identity)", torch.randn(4, 1, generator=gen), 1),
    ]
    for case, logits, n in cases:
        got = c.tensor(case, c.call(case, logits, n), logits.shape[:-1] + (n, n),
                       "the result is one n x n matrix per set of logits: [..., n!] -> [..., n, n].")
        c.finite(case, got, "use torch.softmax over the last dim for the weights (it is stable for large logits).")
        perms = permutation_matrices(n)
        want = birkhoff_mixture(logits, perms)
        flat = perms.reshape(perms.shape[0], n * n)
        c.compare(
            case, got, want,
            hint=("weights = softmax(logits) over the last dim; permutations in itertools.permutations(range(n)) "
                  "order; P_k = torch.eye(n)[list(perm_k)]; result = sum_k weights_k P_k."),
            diagnoses=[
                ("the transpose of the mixture: build P_k from rows, torch.eye(n)[list(perm)], not columns",
                 lambda: want.transpose(-1, -2)),
                ("a mixture weighted by the raw logits: the weights are softmax(logits)",
                 lambda: (logits @ flat).unflatten(-1, (n, n))),
                ("a mixture weighted by logits / logits.sum(): the weights are softmax(logits), positive and "
                 "summing to 1", lambda: ((logits / logits.sum(-1, keepdim=True)) @ flat).unflatten(-1, (n, n))),
            ],
        )
        err = max(float((got.sum(-1) - 1).abs().max()), float((got.sum(-2) - 1).abs().max()))
        if err > 1e-5:
            c.fail(case, f"it is not doubly stochastic (a row or column sum is off by {err:.2g}).",
                   "a convex combination of permutation matrices has every row and column summing to 1.")
    c.passed()


# --- chapter 6: the selectivity screen --------------------------------------------------------------


@_one_thread
def check_selectivity(fn: Callable[..., Tensor]) -> None:
    """Check ``fn(attn, probe, eps=1e-12) -> selectivity``.

    ``attn``: ``[layer, n_seqs, head, key]``, the query row of every head on the probe;
    ``probe``: a :class:`sinklens.selectivity.Probe` (``probe.targets()`` maps each class to its target
    keys ``[n_seqs, m]``, ``probe.random`` holds the baseline keys ``[n_seqs, n_random]``). The result
    ``[class, layer, head]`` (classes in :data:`sinklens.selectivity.CLASSES` order) is, per head, the
    mean over sequences of the mean attention to the class's target keys divided by the mean over
    sequences of the mean attention to the baseline keys, floored at ``eps``. Reference:
    :func:`sinklens.selectivity.selectivity`.
    """
    from sinklens import selectivity as S

    c = _Checker("selectivity", fn)
    gen = _generator(7)
    probe = S.probe_batch(12, 40, (2, 200), seed=0, bos_id=0, n_random=20)
    n_seqs, length = probe.n_seqs, probe.seq_len

    def random_rows(layers: int, heads: int, scale: float) -> Tensor:
        return (torch.randn(layers, n_seqs, heads, length, generator=gen) * scale).softmax(-1)

    focused = random_rows(1, 3, 1.0)
    focused[0, :, 0] = 0.0
    focused[0, torch.arange(n_seqs), 0, probe.b] = 1.0  # head 0: a perfect induction head, baseline 0
    focused[0, :, 1] = 1.0 / length  # head 1: uniform attention, selectivity 1 for every class
    cases = [
        ("random attention rows [2 layers, 12 sequences, 3 heads, 40 keys]", random_rows(2, 3, 2.0)),
        ("peaked random attention rows [1 layer, 12 sequences, 4 heads, 40 keys]", random_rows(1, 4, 4.0)),
        ("a perfect induction head (no attention on the baseline keys), a uniform head and a random one", focused),
    ]
    for case, attn in cases:
        got = c.tensor(case, c.call(case, attn, probe), (len(S.CLASSES), attn.shape[0], attn.shape[2]),
                       f"one value per class, layer and head: [{len(S.CLASSES)} classes {S.CLASSES}, layer, head].")
        c.finite(case, got, "floor the baseline at eps before dividing (baseline.clamp_min(eps)): a head can put "
                            "no attention at all on the baseline keys.")
        want = S.selectivity(attn, probe)
        per_class = (got.double() - want.double()).abs() > 1e-4 * (1 + want.double().abs())
        wrong = [cls for i, cls in enumerate(S.CLASSES) if per_class[i].any()]
        targets = probe.targets()

        def gather(positions: Tensor) -> Tensor:  # [layer, n_seqs, head, m]
            index = positions[None, :, None, :].expand(attn.shape[0], n_seqs, attn.shape[2], positions.shape[1])
            return attn.gather(-1, index)

        def mean_of_ratios() -> Tensor:
            base = gather(probe.random).mean(-1)
            return torch.stack([(gather(targets[k]).mean(-1) / base.clamp_min(1e-12)).mean(1) for k in S.CLASSES])

        def no_division() -> Tensor:
            return torch.stack([gather(targets[k]).mean(-1).mean(1) for k in S.CLASSES])

        hint = ("for each class: target = attn gathered at the target keys, averaged over those keys and then over "
                "the sequences -> [layer, head]; baseline = the same for probe.random; selectivity = target / "
                "baseline.clamp_min(eps).")
        if wrong and len(wrong) < len(S.CLASSES):
            hint = (f"the classes {wrong} are wrong, the others right. "
                    + ("'local' is the *mean* of the attention to the four keys T-2 .. T-5. " if "local" in wrong else "")
                    + "Look at probe.targets()[cls] for those classes. In general, " + hint)
        c.compare(
            case, got, want, hint=hint,
            diagnoses=[
                ("the mean over sequences of per-sequence ratios: divide the two means over sequences instead "
                 "(the ratio of means)", mean_of_ratios),
                ("the attention to the targets, not divided by the baseline", no_division),
            ],
        )
    c.passed()


CHECKS: dict[str, Callable[[Callable], None]] = {
    name[len("check_"):]: obj for name, obj in list(globals().items()) if name.startswith("check_") and callable(obj)
}
"""Exercise name -> its check: the exercise function ``NAME`` is checked by ``check_NAME``."""


# --- the student version ----------------------------------------------------------------------------

_DEF = re.compile(r"^(\s*)(?:async\s+)?def\s+(\w+)\s*\(")
_CELL = re.compile(r"^# %%(.*)$")
_TAGS = re.compile(r"tags=(\[[^\]]*\])")


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _enclosing_function(lines: Sequence[str], indent: str) -> str:
    """The name of the innermost ``def`` above, indented less than ``indent``; "solution" if none."""
    for line in reversed(lines):
        m = _DEF.match(line)
        if m and len(m.group(1)) < len(indent):
            return m.group(2)
    return "solution"


def _solutions(code: str) -> list[tuple[int, int, str, str]]:
    """``(begin line, end line, indentation, exercise name)`` of every marked solution (0-based lines)."""
    lines = code.splitlines()
    found, open_at = [], None
    for i, line in enumerate(lines):
        s = line.strip()
        if s == BEGIN:
            if open_at is not None:
                raise MarkerError(f"line {i + 1}: {BEGIN!r} inside the solution opened at line {open_at + 1}; "
                                  f"close that one with {END!r} first (solutions do not nest).")
            open_at = i
        elif s == END:
            if open_at is None:
                raise MarkerError(f"line {i + 1}: {END!r} without a {BEGIN!r} before it.")
            indent = _indent(lines[open_at])
            if _indent(line) != indent:
                raise MarkerError(f"line {i + 1}: {END!r} is indented differently from its {BEGIN!r} at line "
                                  f"{open_at + 1}; put both at the indentation of the code they enclose.")
            found.append((open_at, i, indent, _enclosing_function(lines[:open_at], indent)))
            open_at = None
    if open_at is not None:
        raise MarkerError(f"line {open_at + 1}: {BEGIN!r} is never closed with {END!r}.")
    return found


def exercise_names(code: str) -> list[str]:
    """The exercise names (enclosing functions) of the marked solutions in ``code``, in order."""
    return [name for *_, name in _solutions(code)]


def strip_solutions(code: str) -> str:
    """``code`` with every ``# BEGIN SOLUTION`` .. ``# END SOLUTION`` block (markers included)
    replaced by ``raise NotImplementedError("Exercise: NAME")`` at the markers' indentation.

    ``NAME`` is the function the block sits in. Raises :class:`MarkerError` on unbalanced,
    nested or misaligned markers.
    """
    lines = code.splitlines(keepends=True)
    out, last = [], 0
    for begin, end, indent, name in _solutions(code):
        out += lines[last:begin]
        newline = "\n" if lines[end].endswith("\n") else ""  # the END line's ending is kept
        out.append(f'{indent}raise NotImplementedError("Exercise: {name}"){newline}')
        last = end + 1
    out += lines[last:]
    return "".join(out)


def _cell_tags(header: str) -> list[str] | None:
    m = _TAGS.search(header)
    return json.loads(m.group(1)) if m else None


def student_source(text: str) -> str:
    """A chapter source (Jupytext percent format) with every exercise cell's solutions stubbed.

    Cells are split at ``# %%`` lines. In a cell tagged ``exercise`` the solutions are replaced
    (:func:`strip_solutions`) and the ``hide-input`` tag is dropped, so the student sees the stub;
    everything else is kept byte for byte. A marker outside an exercise cell raises
    :class:`MarkerError`, as do unbalanced markers.
    """
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if _CELL.match(line)]
    pieces = ["".join(lines[: starts[0] if starts else len(lines)])]
    if not starts and any(line.strip() in (BEGIN, END) for line in lines):
        raise MarkerError("solution markers outside any '# %%' cell: tag the cell ['exercise', 'hide-input'].")
    for k, start in enumerate(starts):
        stop = starts[k + 1] if k + 1 < len(starts) else len(lines)
        header, body = lines[start], "".join(lines[start + 1 : stop])
        tags = _cell_tags(header) or []
        has_markers = any(line.strip() in (BEGIN, END) for line in lines[start + 1 : stop])
        where = f"the cell starting at line {start + 1}"
        if EXERCISE_TAG in tags:
            if "[markdown]" in header:
                raise MarkerError(f"{where} is a markdown cell tagged {EXERCISE_TAG!r}; tag its code cell instead.")
            if not has_markers:
                raise MarkerError(f"{where} is tagged {EXERCISE_TAG!r} but has no {BEGIN!r} .. {END!r} solution.")
            try:
                body = strip_solutions(body)
            except MarkerError as e:
                raise MarkerError(f"{where}: {e}") from None
            if HIDE_TAG in tags:
                kept = [t for t in tags if t != HIDE_TAG]
                header = _TAGS.sub(lambda m: "tags=" + json.dumps(kept), header, count=1)
        elif has_markers:
            raise MarkerError(f"{where} has solution markers but is not tagged {EXERCISE_TAG!r}: "
                              f'use "# %% tags=["{EXERCISE_TAG}", "{HIDE_TAG}"]".')
        pieces += [header, body]
    return "".join(pieces)


def write_student_version(out_dir: Path, sources: Sequence[Path] | None = None) -> list[Path]:
    """Write the student version of every chapter (``NN_name.py`` and ``NN_name.ipynb``) into
    ``out_dir``, with ``parameters.json`` beside them; return the files written."""
    import jupytext

    from sinklens import book

    sources = list(sources) if sources is not None else book.chapter_sources()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sources:
        try:
            text = student_source(src.read_text())
        except MarkerError as e:
            raise MarkerError(f"{src.name}: {e}") from None
        py = out_dir / src.name
        py.write_text(text)
        ipynb = py.with_suffix(".ipynb")
        jupytext.write(jupytext.reads(text, fmt="py:percent"), ipynb)
        written += [py, ipynb]
    params = book.NOTEBOOKS / "parameters.json"
    if params.exists():
        shutil.copyfile(params, out_dir / params.name)
        written.append(out_dir / params.name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sinklens.exercises", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("student", help="write the chapters with every solution replaced by its stub")
    st.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        written = write_student_version(args.out_dir)
    except MarkerError as e:
        print(f"[sinklens] {e}", file=sys.stderr)
        return 1
    n_chapters = sum(p.suffix == ".py" for p in written)
    print(f"[sinklens] student version of {n_chapters} chapters written to {args.out_dir} (.py and .ipynb)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
