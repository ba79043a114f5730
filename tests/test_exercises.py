"""The chapters' exercises: solutions pass their checks, stubs fail them, and the checks catch
plausible wrong answers; the student-version generator replaces exactly the solutions."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys

import jupytext
import pytest
import torch

from sinklens import book, exercises
from sinklens.exercises import ExerciseFailed, MarkerError, strip_solutions, student_source

CHAPTERS = book.chapter_sources()


def exercise_cells(source):
    """``(exercise cell, the code cell after it)`` for every cell tagged ``exercise``."""
    cells = jupytext.read(source).cells
    out = []
    for i, cell in enumerate(cells):
        if exercises.EXERCISE_TAG in cell.metadata.get("tags", []):
            following = next((c for c in cells[i + 1 :] if c.cell_type == "code"), None)
            out.append((cell, following))
    return out


ALL_EXERCISES = [
    pytest.param(cell, following, name, id=f"{src.stem}:{name}")
    for src in CHAPTERS
    for cell, following in exercise_cells(src)
    for name in exercises.exercise_names(cell.source)
]


def run_cell(code: str) -> dict:
    namespace: dict = {"__name__": "exercise_cell"}
    exec(compile(code, "<exercise cell>", "exec"), namespace)
    return namespace


def test_every_chapter_has_exercises_and_every_check_is_used():
    used = {name for _, _, name in (p.values for p in ALL_EXERCISES)}
    for src in CHAPTERS:
        assert exercise_cells(src), f"{src.name} has no exercise cell"
    assert used == set(exercises.CHECKS), f"checks without an exercise: {set(exercises.CHECKS) - used}"


@pytest.mark.parametrize("cell, following, name", ALL_EXERCISES)
def test_exercise_cell_is_well_formed(cell, following, name):
    assert cell.cell_type == "code"
    assert exercises.HIDE_TAG in cell.metadata["tags"], "the solution must be hidden behind a toggle"
    assert following is not None and f"check_{name}({name})" in following.source, (
        f"the cell after the exercise must call exercises.check_{name}({name})"
    )


@pytest.mark.parametrize("cell, following, name", ALL_EXERCISES)
def test_solution_passes_and_stub_fails(cell, following, name, capsys):
    check = exercises.CHECKS[name]
    check(run_cell(cell.source)[name])
    assert f"✓ {name} passes" in capsys.readouterr().out
    stub = run_cell(strip_solutions(cell.source))[name]
    with pytest.raises(ExerciseFailed, match="not implemented yet"):
        check(stub)


# --- the checks are not vacuous: each catches plausible wrong answers ------------------------------


def _mask(n):
    return torch.triu(torch.ones(n, n, dtype=torch.bool), 1)


def attention_without_mask(q, k):
    return (torch.einsum("bqhe,bkhe->bhqk", q, k) / q.shape[-1] ** 0.5).softmax(-1)


def attention_without_scale(q, k):
    return torch.einsum("bqhe,bkhe->bhqk", q, k).masked_fill(_mask(q.shape[1]), float("-inf")).softmax(-1)


def attention_masking_the_diagonal(q, k):
    n = q.shape[1]
    s = torch.einsum("bqhe,bkhe->bhqk", q, k) / q.shape[-1] ** 0.5
    return s.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 0), float("-inf")).softmax(-1)


def attention_softmax_over_queries(q, k):
    s = torch.einsum("bqhe,bkhe->bhqk", q, k) / q.shape[-1] ** 0.5
    return s.masked_fill(_mask(q.shape[1]), float("-inf")).softmax(-2).nan_to_num()


def attention_heads_last(q, k):
    return torch.einsum("bqhe,bkhe->bqkh", q, k).softmax(-2)


def induction_off_by_one(p, n):  # the blog's text: the duplicate-token key
    q = torch.arange(n + 1, 2 * n + 1)
    return p[..., q, q - n].mean(-1)


def induction_blog_code(p, n):  # every query on the diagonal, first copy included
    return torch.diagonal(p, -(n - 1), -2, -1).mean(-1)


def induction_forgetting_bos(p, n):
    q = torch.arange(n, 2 * n)
    return p[..., q, q - n + 1].mean(-1)


def duplicate_off_by_one(p, n):
    q = torch.arange(n + 1, 2 * n + 1)
    return p[..., q, q - n + 1].mean(-1)


def previous_over_length(p):
    return torch.diagonal(p, -1, -2, -1).sum(-1) / p.shape[-1]


def previous_wrong_sign(p):
    return torch.diagonal(p, 1, -2, -1).mean(-1)


def first_including_query_0(p):
    return p[..., :, 0].mean(-1)


def first_row_not_column(p):
    return p[..., 0, :].mean(-1)


def p0_ablation_variant(*, everywhere=False, mean_with_p0=False, keep_hook=False):
    def ablate(model, tokens, hook_name, mode="zero"):
        value = 0.0
        if mode == "mean":
            _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == hook_name)
            value = cache[hook_name].mean((0, 1)) if mean_with_p0 else cache[hook_name][:, 1:].mean((0, 1))

        def hook(act, hook):
            act = act.clone()
            if everywhere:
                act[:] = value
            else:
                act[:, 0] = value
            return act

        if keep_hook:
            model.add_hook(hook_name, hook)
            return model(tokens)
        return model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook)])

    return ablate


def sinkhorn_variant(*, fixed_iters=None, columns_first=False, naive=False):
    def sinkhorn(logits, n_iters=20):
        n_iters = fixed_iters or n_iters
        if naive:
            m = logits.exp()
            for _ in range(n_iters):
                m = m / m.sum(-1, keepdim=True)
                m = m / m.sum(-2, keepdim=True)
            return m
        first, second = (-2, -1) if columns_first else (-1, -2)
        for _ in range(n_iters):
            logits = logits.log_softmax(first).log_softmax(second)
        return logits.exp()

    return sinkhorn


def bvn_variant(*, transposed=False, raw_weights=False):
    def bvn(logits, n):
        eye = torch.eye(n)
        perms = torch.stack([eye[:, list(p)] if transposed else eye[list(p)] for p in itertools.permutations(range(n))])
        weights = logits if raw_weights else logits.softmax(-1)
        return torch.einsum("...k,kij->...ij", weights, perms)

    return bvn


def selectivity_variant(*, mean_of_ratios=False, no_floor=False, local_sum=False):
    from sinklens.selectivity import CLASSES

    def sel(attn, probe, eps=1e-12):
        n_layers, n_seqs, n_heads, _ = attn.shape

        def at(keys, reduce):
            index = keys[None, :, None, :].expand(n_layers, n_seqs, n_heads, keys.shape[1])
            return reduce(attn.gather(-1, index))

        base = at(probe.random, lambda x: x.mean(-1))
        out = []
        for c in CLASSES:
            target = at(probe.targets()[c], (lambda x: x.sum(-1)) if local_sum and c == "local" else (lambda x: x.mean(-1)))
            if mean_of_ratios:
                out.append((target / base.clamp_min(eps)).mean(1))
            else:
                b = base.mean(1)
                out.append(target.mean(1) / (b if no_floor else b.clamp_min(eps)))
        return torch.stack(out)

    return sel


WRONG = [
    ("attention_pattern", attention_without_mask, "attend to later keys"),
    ("attention_pattern", attention_without_scale, "without the 1/sqrt"),
    ("attention_pattern", attention_masking_the_diagonal, "NaN"),
    ("attention_pattern", attention_softmax_over_queries, "rows do not sum to 1"),
    ("attention_pattern", attention_heads_last, "wrong shape"),
    ("induction_scores", induction_off_by_one, "one position too far back"),
    ("induction_scores", induction_blog_code, "includes queries of the first copy"),
    ("induction_scores", induction_forgetting_bos, "the BOS at position 0"),
    ("duplicate_token_scores", duplicate_off_by_one, "one position too near"),
    ("previous_token_scores", previous_over_length, "divided by the sequence length"),
    ("previous_token_scores", previous_wrong_sign, "zero everywhere"),
    ("first_token_scores", first_including_query_0, "query 0 included"),
    ("first_token_scores", first_row_not_column, "row 0"),
    ("p0_ablation", p0_ablation_variant(everywhere=True), "every position"),
    ("p0_ablation", p0_ablation_variant(mean_with_p0=True), "position 0 included"),
    ("p0_ablation", p0_ablation_variant(keep_hook=True), "still carries your hook"),
    ("sinkhorn_knopp", sinkhorn_variant(fixed_iters=1), "a single iteration"),
    ("sinkhorn_knopp", sinkhorn_variant(columns_first=True), "columns normalised first"),
    ("sinkhorn_knopp", sinkhorn_variant(naive=True), "log space"),
    ("bvn_mixture", bvn_variant(transposed=True), "transpose"),
    ("bvn_mixture", bvn_variant(raw_weights=True), "raw logits"),
    ("selectivity", selectivity_variant(mean_of_ratios=True), "per-sequence ratios"),
    ("selectivity", selectivity_variant(no_floor=True), "floor the baseline"),
    ("selectivity", selectivity_variant(local_sum=True), "'local' is the \\*mean\\*"),
]


@pytest.mark.parametrize("name, wrong, message", WRONG, ids=[f"{n}:{w.__name__}" for n, w, _ in WRONG])
def test_checks_catch_wrong_implementations(name, wrong, message):
    with pytest.raises(ExerciseFailed, match=message):
        exercises.CHECKS[name](wrong)


def test_a_check_reports_an_exception_and_in_place_changes():
    def broken(q, k):
        raise IndexError("oops")

    with pytest.raises(ExerciseFailed, match="raised IndexError on .*oops"):
        exercises.check_attention_pattern(broken)

    def in_place(pattern):
        pattern[..., 0] = 0.0
        return pattern[..., 1:, 0].mean(-1)

    with pytest.raises(ExerciseFailed, match="changed its input tensor in place"):
        exercises.check_first_token_scores(in_place)
    with pytest.raises(ExerciseFailed, match="needs your function"):
        exercises.check_first_token_scores(None)


def test_checks_restore_the_thread_count():
    threads = torch.get_num_threads()
    exercises.check_first_token_scores(lambda p: p[..., 1:, 0].mean(-1))
    assert torch.get_num_threads() == threads


# --- the student version ---------------------------------------------------------------------------

SAMPLE = '''\
def outer(x):
    """Docstring stays."""
    # BEGIN SOLUTION
    y = x + 1
    return y
    # END SOLUTION


class Box:
    def method(self):
        # BEGIN SOLUTION
        return 1
        # END SOLUTION
'''


def test_strip_solutions_keeps_signature_docstring_and_indentation():
    out = strip_solutions(SAMPLE)
    assert out == (
        'def outer(x):\n    """Docstring stays."""\n    raise NotImplementedError("Exercise: outer")\n\n\n'
        'class Box:\n    def method(self):\n        raise NotImplementedError("Exercise: method")\n'
    )
    assert exercises.exercise_names(SAMPLE) == ["outer", "method"]
    compile(out, "<student>", "exec")


@pytest.mark.parametrize(
    "code, message",
    [
        ("def f():\n    # BEGIN SOLUTION\n    return 1\n", "never closed"),
        ("def f():\n    return 1\n    # END SOLUTION\n", "without a"),
        ("def f():\n    # BEGIN SOLUTION\n    # BEGIN SOLUTION\n    # END SOLUTION\n", "do not nest"),
        ("def f():\n    # BEGIN SOLUTION\n    return 1\n# END SOLUTION\n", "indented differently"),
    ],
)
def test_unbalanced_markers_raise(code, message):
    with pytest.raises(MarkerError, match=message):
        strip_solutions(code)


def test_student_source_touches_only_exercise_cells():
    text = (
        '# %% [markdown]\n# Intro\n\n'
        '# %% tags=["exercise", "hide-input"]\ndef f(x):\n    """Doc."""\n    # BEGIN SOLUTION\n    return x\n'
        '    # END SOLUTION\n\n\n# %%\nprint(f(1))\n'
    )
    out = student_source(text)
    assert '# %% tags=["exercise"]\n' in out, "the student sees the stub: hide-input is dropped"
    assert 'raise NotImplementedError("Exercise: f")' in out and "BEGIN SOLUTION" not in out
    assert out.startswith("# %% [markdown]\n# Intro\n\n") and out.endswith("# %%\nprint(f(1))\n")
    untagged = text.replace('tags=["exercise", "hide-input"]', "")
    with pytest.raises(MarkerError, match="not tagged 'exercise'"):
        student_source(untagged)
    with pytest.raises(MarkerError, match="has no"):
        student_source('# %% tags=["exercise"]\ndef f():\n    return 1\n')


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_student_chapter_differs_only_in_solutions(source):
    text = source.read_text()
    student = student_source(text)
    assert "BEGIN SOLUTION" not in student and "END SOLUTION" not in student
    assert "hide-input" not in "".join(re.findall(r"^# %%.*exercise.*$", student, flags=re.M))
    original, stubbed = jupytext.reads(text, fmt="py:percent").cells, jupytext.reads(student, fmt="py:percent").cells
    assert len(original) == len(stubbed)
    for a, b in zip(original, stubbed):
        if exercises.EXERCISE_TAG in a.metadata.get("tags", []):
            assert b.source == strip_solutions(a.source)
        else:
            assert a.source == b.source and a.metadata == b.metadata


def test_cli_writes_the_student_version(tmp_path):
    out = tmp_path / "student"
    proc = subprocess.run([sys.executable, "-m", "sinklens.exercises", "student", str(out)],
                          capture_output=True, text=True, check=True)
    assert f"student version of {len(CHAPTERS)} chapters" in proc.stdout
    for source in CHAPTERS:
        py, ipynb = out / source.name, out / f"{source.stem}.ipynb"
        assert py.read_text() == student_source(source.read_text())
        nb = json.loads(ipynb.read_text())
        code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        assert "BEGIN SOLUTION" not in code and 'raise NotImplementedError("Exercise: ' in code
    assert json.loads((out / "parameters.json").read_text()) == json.loads((book.NOTEBOOKS / "parameters.json").read_text())


def test_cli_reports_marker_errors(tmp_path, monkeypatch):
    bad = tmp_path / "99_bad.py"
    bad.write_text('# %% tags=["exercise"]\ndef f():\n    # BEGIN SOLUTION\n    return 1\n')
    with pytest.raises(MarkerError, match="99_bad.py: .*never closed"):
        exercises.write_student_version(tmp_path / "out", [bad])
    monkeypatch.setattr(book, "chapter_sources", lambda: [bad])
    assert exercises.main(["student", str(tmp_path / "out2")]) == 1
