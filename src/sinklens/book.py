"""Execute the book's chapters with papermill and build the Jupyter Book.

Chapters are Jupytext percent-format sources ``notebooks/NN_name.py``. Each has one cell tagged
``parameters``; ``notebooks/parameters.json`` holds the values for the two modes: ``book`` (the full
run behind the published pages) and ``ci`` (small, for the tests). Executed notebooks are build
output (``book/chapters/*.ipynb``, not committed); each chapter writes its results JSON to
``book/_build/results`` (``$SINKLENS_RESULTS_DIR``).

The claims scorecard (``book/scorecard.md``) is generated from the results JSON by
:func:`write_scorecard` at every build; the build fails when a chapter's results are missing.

CLI: ``python -m sinklens.book assets | execute [--mode book|ci] [CHAPTER ...] | build``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository (the package is installed editable)
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "book" / "chapters"
RESULTS = ROOT / "book" / "_build" / "results"
SCORECARD = "book/scorecard.md"  # relative to the book root; generated, not committed
MODES = ("book", "ci")
# What a book root needs besides the executed chapters (see stage_book_files; the tests stage
# a CI-parameter book in a temporary folder with it).
BOOK_FILES = ("_config.yml", "_toc.yml", "references.bib", "book/intro.md", "book/references.md",
              "_ext/dedupe_scripts.py")


class ChapterExecutionError(RuntimeError):
    """A chapter failed while executing; the message names the chapter and the failing cell."""


NOT_EVIDENCE = ("by construction", "pass", "fail")  # verdicts the scorecard lists apart from the evidence


class MissingResultsError(RuntimeError):
    """A chapter's results JSON is missing or unreadable, so the scorecard cannot be generated."""


def chapter_sources() -> list[Path]:
    """``notebooks/NN_*.py`` in book order."""
    return sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def chapter_path(name: str) -> Path:
    """The source of chapter ``name`` (``"01_attention"``, ``"01"`` or a path)."""
    candidates = [p for p in chapter_sources() if p.stem == name or p.stem.split("_")[0] == name]
    if Path(name).is_file():
        return Path(name)
    if len(candidates) != 1:
        known = ", ".join(p.stem for p in chapter_sources())
        raise ValueError(f"Unknown chapter {name!r}. Chapters: {known}.")
    return candidates[0]


def parameter_defaults(source: Path) -> dict[str, Any]:
    """The literal defaults of the cell tagged ``parameters`` in a Jupytext source."""
    import jupytext

    nb = jupytext.read(source)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{source.name} must have exactly one cell tagged 'parameters', found {len(cells)}.")
    defaults = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            defaults[node.targets[0].id] = ast.literal_eval(node.value)
    return defaults


def mode_parameters(chapter: str, mode: str) -> dict[str, Any]:
    """The parameters of ``chapter`` (its stem) for ``mode`` from ``notebooks/parameters.json``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    table = json.loads((NOTEBOOKS / "parameters.json").read_text())
    return dict(table.get(chapter, {}).get(mode, {}))


def check_parameters(source: Path, parameters: dict[str, Any]) -> None:
    """Raise ``TypeError``/``KeyError`` when a parameter is unknown or of the wrong type."""
    defaults = parameter_defaults(source)
    for key, value in parameters.items():
        if key not in defaults:
            raise KeyError(f"{source.stem}: unknown parameter {key!r}; it has {sorted(defaults)}.")
        want = type(defaults[key])
        ok = isinstance(value, want) and not (isinstance(value, bool) and want is not bool)
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if defaults[key] is None:
            ok = True
        if not ok:
            raise TypeError(
                f"{source.stem}: parameter {key!r} must be {want.__name__} (default "
                f"{defaults[key]!r}), got {type(value).__name__} {value!r}."
            )


def execute_chapter(
    source: Path,
    output: Path,
    parameters: dict[str, Any] | None = None,
    *,
    results_dir: Path | None = None,
    kernel_threads: int = 1,
    run_mode: str = "custom",
) -> Path:
    """Execute one chapter with papermill into ``output`` (an ``.ipynb``); return ``output``.

    The kernel runs with ``OMP_NUM_THREADS=kernel_threads`` (default 1, see below).
    ``run_mode`` (``"book"``, ``"ci"`` or ``"custom"``) is recorded in the results JSON and shown
    on the scorecard (``$SINKLENS_RUN_MODE`` in the kernel).
    """
    import jupytext
    import papermill as pm

    parameters = parameters or {}
    check_parameters(source, parameters)
    output.parent.mkdir(parents=True, exist_ok=True)
    staged = output.with_suffix(".src.ipynb")
    jupytext.write(jupytext.read(source), staged)
    saved = {k: os.environ.get(k) for k in ("SINKLENS_RESULTS_DIR", "MPLBACKEND", "OMP_NUM_THREADS", "SINKLENS_RUN_MODE")}
    os.environ["SINKLENS_RESULTS_DIR"] = str(results_dir or RESULTS)
    os.environ["SINKLENS_RUN_MODE"] = run_mode
    os.environ.pop("MPLBACKEND", None)  # the kernel must use the inline backend to embed figures
    # One torch thread in the kernel: results then do not depend on the core count, and on this
    # 2-core machine kind a 2-thread kernel ran SmolLM2's forward pass ~10x slower than 1 thread.
    os.environ["OMP_NUM_THREADS"] = str(kernel_threads)
    try:
        pm.execute_notebook(
            str(staged), str(output), parameters=parameters, kernel_name="python3",
            cwd=str(output.parent), progress_bar=sys.stderr.isatty(),
        )
    except pm.PapermillExecutionError as e:
        raise ChapterExecutionError(
            f"Chapter {source.stem} failed in cell {e.exec_count} (cell index {e.cell_index}): "
            f"{e.ename}: {e.evalue}. The executed notebook with the traceback is {output}."
        ) from None
    finally:
        staged.unlink(missing_ok=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return output


def _execute_timed(src: Path, out_dir: Path, mode: str, results_dir: Path) -> Path:
    start = time.time()
    print(f"[sinklens] executing {src.stem} ({mode} parameters)...", flush=True)
    out = execute_chapter(src, Path(out_dir) / f"{src.stem}.ipynb", mode_parameters(src.stem, mode),
                          results_dir=Path(results_dir), run_mode=mode)
    print(f"[sinklens] {src.stem} done in {time.time() - start:.0f} s", flush=True)
    return out


def execute_all(
    mode: str = "book", chapters: list[str] | None = None, *, out_dir: Path = EXECUTED,
    results_dir: Path = RESULTS, jobs: int = 1,
) -> list[Path]:
    """Execute ``chapters`` (default: all) in ``mode`` into ``out_dir`` (default ``book/chapters``).

    ``jobs > 1`` executes that many chapters at once, each in its own process (and kernel, with
    one torch thread, so the numbers are the same as one at a time). They start from the last
    chapter: the later chapters, on the trained models, take longest.
    """
    sources = [chapter_path(c) for c in chapters] if chapters else chapter_sources()
    if jobs <= 1 or len(sources) <= 1:
        return [_execute_timed(src, out_dir, mode, results_dir) for src in sources]
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {src: pool.submit(_execute_timed, src, out_dir, mode, results_dir) for src in reversed(sources)}
        try:
            return [futures[src].result() for src in sources]
        except BaseException:
            for future in futures.values():
                future.cancel()
            raise


def fetch_assets() -> None:
    """Build everything the chapters need offline: tokenizer, offline model and corpus."""
    from sinklens import data, models

    data.gpt2_tokenizer_dir()
    print("[sinklens] GPT-2 tokenizer ready", flush=True)
    data.offline_documents()
    print("[sinklens] offline corpus ready", flush=True)
    if models._hub_cached("gpt2") or models.huggingface_reachable():
        print("[sinklens] GPT-2 can be loaded; SmolLM2 is built too for offline readers", flush=True)
    print(f"[sinklens] SmolLM2-135M ready at {models.smollm2_dir()}", flush=True)


def _summarise(value: Any, limit: int = 6) -> str:
    """A short human-readable rendering of a claim's measured value for the scorecard."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool) or v is None:
            return str(v)
        if isinstance(v, float):
            return f"{v:.3g}"
        if isinstance(v, (int, str)):
            return str(v)
        if isinstance(v, list):
            inner = ", ".join(fmt(x) for x in v[:4]) + (", …" if len(v) > 4 else "")
            return f"[{inner}]"
        if isinstance(v, dict):
            return "{…}"
        return str(v)

    if isinstance(value, dict):
        items = [f"{k}: {fmt(v)}" for k, v in value.items() if not isinstance(v, dict)]
        more = len(value) - len(items[:limit])
        return "; ".join(items[:limit]) + (f"; (+{more} more in the JSON)" if more > 0 else "")
    return fmt(value)


def _rule(claim: dict) -> str:
    """Why the claim is not tested (if so), its decision rule, its 0.5x / 2x threshold verdicts and
    any details, for the scorecard."""
    from sinklens.claims import seed_stability_words, why_not_tested_words

    sens = claim.get("sensitivity") or {}
    stability = seed_stability_words(claim.get("without_seed") or {}, claim["verdict"])
    why = f"Why not tested: {stated}." if (stated := why_not_tested_words(claim)) else ""
    parts = [why, claim.get("rule") or "", f"(0.5x: {sens['0.5x']}; 2x: {sens['2x']})" if sens else "",
             f"Leaving out one seed: {stability}." if stability else "", claim.get("details") or ""]
    return " ".join(p for p in parts if p) or "–"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip() or "–"


def write_scorecard(results_dir: Path, output: Path, chapters: list[str] | None = None) -> Path:
    """Generate the claims scorecard page from the chapters' results JSON; return ``output``.

    One row per claim: chapter, verdict, claim, what we measured, source, model, seeds (verdict
    early, so it stays in view on a narrow screen); each chapter's model and data above the table.
    Raises :class:`MissingResultsError` naming every chapter whose results are missing.
    """
    chapters = chapters or [p.stem for p in chapter_sources()]
    missing, loaded = [], []
    for ch in chapters:
        path = Path(results_dir) / f"{ch}.json"
        try:
            loaded.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            missing.append(f"{ch} ({path}: {type(e).__name__})")
    if missing:
        raise MissingResultsError(
            "Cannot generate the scorecard: results missing for " + ", ".join(missing)
            + ". Execute the chapters first (`make chapters`, or `python -m sinklens.book execute`)."
        )
    counts: dict[str, int] = {}
    apart: dict[str, int] = {}
    checked, on_one_seed = 0, []  # evidence verdicts with a leave-one-seed-out check, and those one seed decides
    rows, legend, modes = [], [], set()
    for res in loaded:
        model = res.get("model") or {}
        mode = res.get("run_mode", "custom")
        modes.add(mode)
        legend.append(f"- **{res['chapter']}** ({mode} run): model: {model.get('description') or model.get('name', '–')}; "
                      f"data: {(res.get('data') or '–').rstrip('.')}.")
        for c in res["claims"]:
            evidence = c["verdict"] not in NOT_EVIDENCE
            tally = counts if evidence else apart
            tally[c["verdict"]] = tally.get(c["verdict"], 0) + 1
            fragile = evidence and bool(c.get("rests_on_one_seed"))  # guarantees and self-checks are not marked
            if c.get("without_seed") and evidence:
                checked += 1
                if fragile:
                    on_one_seed.append(f"`{c['id']}`")
            seeds = ", ".join(str(s) for s in c.get("seeds", [])) or "–"
            claim_model = c.get("model") or model.get("name", "")
            rows.append("| " + " | ".join(_cell(x) for x in (
                f"[{res['chapter'][:2]}](chapters/{res['chapter']}.ipynb)",
                f"**{c['verdict']}**" + (" (rests on one seed)" if fragile else ""), c["claim"],
                _summarise(c["value"]), _rule(c), mode, claim_model, seeds, c.get("source", ""),
            )) + " |")
    fmt = lambda d: ", ".join(f"{n} {v}" for v, n in sorted(d.items(), key=lambda kv: -kv[1])) or "none"  # noqa: E731
    banner = []
    if modes != {"book"}:
        banner = [f"> **Not the book's run:** chapters here ran in {', '.join(sorted(modes))} mode "
                  "(the CI run uses small parameters and the small CI models), so these verdicts are not the "
                  "published ones.", ""]
    text = "\n".join([
        "# Claims scorecard",
        "",
        *banner,
        "Every claim the book tests, with what we measured, the rule that decided it and the verdict the "
        "chapter's code computed. This page is generated from the chapters' results JSON "
        "(`book/_build/results/*.json`) at every build by `sinklens.book.write_scorecard`; nothing on it is "
        "typed by hand, and the build fails if a chapter's results are missing. Verdicts: *reproduced*, "
        "*partly*, *not reproduced*, *not tested here* (the phenomenon is absent in our models or data, so "
        "the claim cannot be tested), *measured* (a number we report without a published value to compare). "
        "Not evidence, and counted apart: *by construction* (a guarantee of the method, true whatever the "
        "models do) and *pass*/*fail* (a check of our own code).",
        "",
        f"**{sum(counts.values())} claims tested as evidence, from {len(loaded)} chapters:** {fmt(counts)}. "
        f"Listed apart: {fmt(apart)}.",
        "",
        *([f"**Leaving out one seed** (`sinklens.claims.leave_one_seed_out`; each claim decided again without "
           f"each seed in turn): {len(on_one_seed)} of {checked} verdicts so checked change, so one model decides "
           "them and a retraining that moved it could too"
           + (f": {', '.join(on_one_seed)}." if on_one_seed else ".")
           + " Passing this check does not make a verdict stable: under a rule that asks for every seed, "
             "leaving one out cannot overturn reproduced or not reproduced, nor see every seed sitting close to a "
             "threshold (the README measures how often verdicts changed between retrainings).", ""]
          if checked else []),
        "Model and data of each chapter's run:",
        "",
        *legend,
        "",
        "| Ch. | Verdict | Claim | What we measured | Rule | Run | Model | Seeds | Source |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    return output


def build_html(root: Path = ROOT, results_dir: Path | None = None) -> Path:
    """Generate the scorecard, then run ``jupyter-book build`` on ``root``; return the index page.

    ``root`` holds ``_config.yml``, ``_toc.yml`` and the executed chapters in ``book/chapters``.
    Raises :class:`MissingResultsError` (before building) when a chapter's results are missing.
    """
    from sinklens.plotting import CIRCUITSVIS_STATIC, circuitsvis_bundle

    root = Path(root)
    write_scorecard(Path(results_dir or root / "book" / "_build" / "results"), root / SCORECARD)
    static = root / CIRCUITSVIS_STATIC  # the interactive views load it from here, offline
    static.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(circuitsvis_bundle(), static)
    cmd = [sys.executable, "-m", "jupyter_book", "build", str(root), "--path-output", str(root / "book")]
    jb = Path(sys.executable).with_name("jupyter-book")
    if jb.exists():
        cmd = [str(jb), "build", str(root), "--path-output", str(root / "book")]
    subprocess.run(cmd, check=True, cwd=root)
    index = root / "book" / "_build" / "html" / "index.html"
    if not index.exists():
        raise RuntimeError(f"jupyter-book finished but {index} is missing.")
    return index


def stage_book_files(workdir: Path) -> Path:
    """Copy what a book root needs besides the executed chapters (:data:`BOOK_FILES`) into ``workdir``."""
    workdir = Path(workdir)
    for name in BOOK_FILES:  # files only; a folder's files are listed one by one
        target = workdir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, target)
    return workdir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sinklens.book", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("assets", help="fetch and build the offline model, tokenizer and corpus")
    ex = sub.add_parser("execute", help="execute chapters with papermill")
    ex.add_argument("--mode", choices=MODES, default="book")
    ex.add_argument("--jobs", type=int, default=1, help="chapters executed at once (one process each)")
    ex.add_argument("chapters", nargs="*")
    sub.add_parser("build", help="build the HTML book from the executed chapters")
    args = parser.parse_args(argv)
    try:
        if args.command == "assets":
            fetch_assets()
        elif args.command == "execute":
            execute_all(args.mode, args.chapters or None, jobs=args.jobs)
        else:
            print(build_html())
    except (ChapterExecutionError, MissingResultsError) as e:
        print(f"[sinklens] {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
