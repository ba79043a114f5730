"""Every chapter source is clean, and every chapter executes with its CI parameters."""

from __future__ import annotations

import json

import nbformat
import pytest

from sinklens import book
from sinklens.provenance import VERDICTS

CHAPTERS = book.chapter_sources()


def test_there_are_chapters_and_no_committed_notebooks():
    assert CHAPTERS, "no notebooks/NN_*.py chapter sources found"
    assert not list(book.NOTEBOOKS.glob("*.ipynb")), "notebooks/ must hold Jupytext .py sources only"


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_sources_carry_no_outputs_and_have_parameters(source):
    import jupytext

    nb = jupytext.read(source)
    for cell in nb.cells:
        assert not cell.get("outputs"), f"{source.name} carries outputs"
    defaults = book.parameter_defaults(source)
    assert defaults, f"{source.name} has an empty parameters cell"
    for mode in book.MODES:
        book.check_parameters(source, book.mode_parameters(source.stem, mode))


def test_every_chapter_is_in_the_parameter_table_and_the_toc():
    table = json.loads((book.NOTEBOOKS / "parameters.json").read_text())
    toc = (book.ROOT / "_toc.yml").read_text()
    for source in CHAPTERS:
        assert source.stem in table, f"{source.stem} missing from notebooks/parameters.json"
        assert f"book/chapters/{source.stem}" in toc, f"{source.stem} missing from _toc.yml"


def test_wrong_parameter_type_and_unknown_parameter_are_rejected():
    source = CHAPTERS[0]
    name, default = next(iter(book.parameter_defaults(source).items()))
    wrong = 3 if isinstance(default, str) else "three"
    with pytest.raises(TypeError, match=f"{source.stem}: parameter '{name}' must be"):
        book.check_parameters(source, {name: wrong})
    with pytest.raises(KeyError, match="unknown parameter"):
        book.check_parameters(source, {"no_such_parameter": 1})


def test_a_failing_chapter_names_itself_and_the_cell(tmp_path):
    src = tmp_path / "99_broken.py"
    src.write_text(
        '# %% tags=["parameters"]\nx = 1\n\n# %%\ny = x + 1\n\n# %%\nraise ValueError("boom")\n'
    )
    with pytest.raises(book.ChapterExecutionError, match=r"Chapter 99_broken failed in cell \d+.*ValueError: boom"):
        book.execute_chapter(src, tmp_path / "out" / "99_broken.ipynb", {}, results_dir=tmp_path)


def test_chapters_execute_side_by_side_in_their_own_processes(tmp_path, monkeypatch):
    sources = {}
    for name in ("97_first", "98_second"):
        sources[name] = tmp_path / f"{name}.py"
        sources[name].write_text('# %% tags=["parameters"]\nx = 1\n\n# %%\nimport os\nprint("pid", os.getpid(), x)\n')
    monkeypatch.setattr(book, "chapter_path", lambda name: sources[name])
    outputs = book.execute_all("ci", ["97_first", "98_second"], out_dir=tmp_path / "out", results_dir=tmp_path, jobs=2)
    assert [p.name for p in outputs] == ["97_first.ipynb", "98_second.ipynb"]  # in chapter order
    printed = [json.dumps(nbformat.read(p, as_version=4).cells[-1].outputs) for p in outputs]
    assert all("pid" in text and " 1" in text for text in printed)
    sources["98_second"].write_text('# %% tags=["parameters"]\nx = 1\n\n# %%\nraise ValueError("boom")\n')
    with pytest.raises(book.ChapterExecutionError, match="Chapter 98_second failed"):
        book.execute_all("ci", ["97_first", "98_second"], out_dir=tmp_path / "out", results_dir=tmp_path, jobs=2)


@pytest.mark.slow
@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_executes_with_ci_parameters(source, ci_book):
    if source.stem in ci_book.failures:
        raise ci_book.failures[source.stem]
    nb = nbformat.read(ci_book.notebook(source.stem), as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = json.dumps(outputs)
    assert "**Model:**" in text, "the provenance block is missing"
    assert "image/png" in text, "the chapter shows no figure"
    results = json.loads((ci_book.results / f"{source.stem}.json").read_text())
    assert results["chapter"] == source.stem and results["model"]["name"]
    assert results["claims"], "the chapter recorded no claims"
    for claim in results["claims"]:
        assert claim["verdict"] in VERDICTS
        assert claim["verdict"] != "fail", claim
        assert claim.get("rule"), f"claim {claim['id']!r} has no decision rule (record it with a sinklens.claims rule)"


@pytest.mark.slow
def test_executing_the_book_twice_gives_identical_results(ci_book, tmp_path):
    """Determinism (#9): a second execution with the CI parameters writes the same results JSON,
    number for number. Both runs use one torch thread (book.execute_chapter), explicit seeds and
    no wall-clock values in the results."""
    assert not ci_book.failures, f"chapters failed in the first run: {sorted(ci_book.failures)}"
    book.execute_all("ci", out_dir=tmp_path / "chapters", results_dir=tmp_path / "results")
    for source in CHAPTERS:
        first = json.loads((ci_book.results / f"{source.stem}.json").read_text())
        second = json.loads((tmp_path / "results" / f"{source.stem}.json").read_text())
        for a, b in zip(first["claims"], second["claims"]):
            assert a == b, f"{source.stem}: claim {a['id']!r} differs between two executions"
        assert first == second, f"{source.stem}: results differ between two executions"


@pytest.mark.slow
def test_scorecard_is_generated_from_every_claim(ci_book, ci_book_html):
    page = (ci_book.root / book.SCORECARD).read_text()
    n_claims = 0
    for source in CHAPTERS:
        for claim in json.loads((ci_book.results / f"{source.stem}.json").read_text())["claims"]:
            n_claims += 1
            assert book._cell(claim["claim"]) in page, f"claim {claim['id']!r} missing from the scorecard"
    assert page.count("\n| [") == n_claims
    assert (ci_book_html / "book" / "scorecard.html").exists()


def test_scorecard_refuses_missing_results(tmp_path):
    (tmp_path / "01_attention.json").write_text(json.dumps({"chapter": "01_attention", "claims": []}))
    (tmp_path / "02_induction_heads.json").write_text("{not json")
    with pytest.raises(book.MissingResultsError, match=r"02_induction_heads .*03_dormant_heads.*make chapters"):
        book.write_scorecard(tmp_path, tmp_path / "scorecard.md")
    assert not (tmp_path / "scorecard.md").exists()


def test_scorecard_rows_escape_pipes_and_summarise_values(tmp_path):
    claims = [{"id": "a", "claim": "x | y", "source": "s", "value": {"ratio": 0.123456, "heads": [1, 2, 3, 4, 5],
                                                                   "nested": {"k": 1}},
               "verdict": "partly", "seeds": [0, 1], "details": ""}]
    (tmp_path / "01_x.json").write_text(json.dumps({"chapter": "01_x", "model": {"name": "m"}, "data": "d",
                                                    "claims": claims}))
    text = book.write_scorecard(tmp_path, tmp_path / "sc.md", chapters=["01_x"]).read_text()
    row = [line for line in text.splitlines() if line.startswith("| [01](chapters/01_x.ipynb)")][0]
    assert "x \\| y" in row and "ratio: 0.123" in row and "heads: [1, 2, 3, 4, …]" in row
    assert "(+1 more in the JSON)" in row and "**partly**" in row and "| custom | m | 0, 1 | s |" in row
    assert "- **01_x** (custom run): model: m; data: d." in text


def test_scorecard_counts_evidence_apart_from_guarantees_and_shows_rule_mode_and_model(tmp_path):
    claim = lambda i, verdict, **kw: {"id": i, "claim": f"claim {i}", "source": "", "value": 1.0,  # noqa: E731
                                      "verdict": verdict, "seeds": [], "details": f"rule {i}", **kw}
    claims = [claim("a", "reproduced"), claim("b", "by construction"), claim("c", "pass"),
              claim("d", "not tested here", model="sinklens-zoo-small")]
    (tmp_path / "01_x.json").write_text(json.dumps({"chapter": "01_x", "run_mode": "book", "model": {"name": "m"},
                                                    "data": "d", "claims": claims}))
    text = book.write_scorecard(tmp_path, tmp_path / "sc.md", chapters=["01_x"]).read_text()
    assert "**2 claims tested as evidence, from 1 chapters:** 1 reproduced, 1 not tested here." in text
    assert "Listed apart: 1 by construction, 1 pass." in text
    assert "Not the book's run" not in text
    row_d = [line for line in text.splitlines() if "claim d" in line][0]
    assert "| rule d | book | sinklens-zoo-small |" in row_d
    claims[3]["why_not_tested"] = "no sink head in any model (best 0.21 < 0.5)"
    (tmp_path / "01_x.json").write_text(json.dumps({"chapter": "01_x", "run_mode": "book", "claims": claims}))
    row_d = [line for line in book.write_scorecard(tmp_path, tmp_path / "sc.md", chapters=["01_x"]).read_text()
             .splitlines() if "claim d" in line][0]
    assert "| Why not tested: no sink head in any model (best 0.21 < 0.5). rule d | book |" in row_d
    (tmp_path / "01_x.json").write_text(json.dumps({"chapter": "01_x", "run_mode": "ci", "claims": claims}))
    assert "Not the book's run" in book.write_scorecard(tmp_path, tmp_path / "sc.md", chapters=["01_x"]).read_text()


def test_scorecard_marks_and_counts_verdicts_that_one_seed_decides(tmp_path):
    claim = lambda i, verdict, **kw: {"id": i, "claim": f"claim {i}", "source": "", "value": 1.0,  # noqa: E731
                                      "verdict": verdict, "seeds": [0, 1, 2], "details": "", **kw}
    claims = [claim("a", "partly", without_seed={"0": "partly", "1": "reproduced", "2": "partly"}, rests_on_one_seed=True),
              claim("b", "reproduced", without_seed={"0": "reproduced", "1": "reproduced", "2": "reproduced"},
                    rests_on_one_seed=False),
              claim("c", "by construction", without_seed={"0": "not reproduced", "1": "by construction",
                                                          "2": "by construction"}, rests_on_one_seed=True),
              claim("d", "measured")]
    (tmp_path / "01_x.json").write_text(json.dumps({"chapter": "01_x", "run_mode": "book", "claims": claims}))
    text = book.write_scorecard(tmp_path, tmp_path / "sc.md", chapters=["01_x"]).read_text()
    assert "1 of 2 verdicts so checked change" in text and ": `a`." in text
    rows = {c: [line for line in text.splitlines() if f"claim {c} |" in line][0] for c in "abcd"}
    assert "**partly** (rests on one seed)" in rows["a"] and "without seed 1 it is reproduced, so one model decides it" in rows["a"]
    assert "**by construction** |" in rows["c"]  # a guarantee is neither marked nor counted
    assert "(rests on one seed)" not in rows["b"] and "the same without any one of seeds 0, 1, 2" in rows["b"]
    assert "Leaving out one seed" not in rows["d"]
    (tmp_path / "01_x.json").write_text(json.dumps({"chapter": "01_x", "run_mode": "book", "claims": [claims[3]]}))
    assert "so checked" not in book.write_scorecard(tmp_path, tmp_path / "sc.md", chapters=["01_x"]).read_text()
