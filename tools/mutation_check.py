"""Check that the reliability tests (#9) would fail if the behaviour they protect broke.

Each mutation below breaks one protected behaviour in a temporary copy of the repository; the
tests named beside it are then run against the mutated copy and must FAIL. Unmutated, the same
tests must pass (the baseline). Prints a table; exits 1 if a mutation survives.

    .venv/bin/python tools/mutation_check.py            # the fast ones (~5 min)
    .venv/bin/python tools/mutation_check.py --slow     # also determinism (executes the book twice)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    slow: bool = False


MUTATIONS = [
    Mutation("checkpoint checksum not verified", "src/sinklens/train.py",
             "if hashlib.sha256(body).hexdigest() != digest:", "if False:",
             ("tests/test_train.py::test_checkpoint_roundtrip_and_corruption_and_truncation_are_detected",
              "tests/test_bad_inputs.py")),
    Mutation("resume forgets the optimizer state", "src/sinklens/train.py",
             'opt.load_state_dict(state["optimizer"])', "pass",
             ("tests/test_train.py::test_resume_after_sigkill_gives_bitwise_the_same_run",)),
    Mutation("checkpoints written in place, not atomically", "src/sinklens/train.py",
             "        os.replace(tmp, path)\n    except BaseException:",
             "        path.write_bytes(Path(tmp).read_bytes()[: len(data) // 2])\n"
             "        path.write_bytes(data)\n        Path(tmp).unlink()\n    except BaseException:",
             ("tests/test_train.py::test_a_reader_never_sees_a_half_written_checkpoint",)),
    Mutation("another run's directory is reused", "src/sinklens/train.py",
             'if theirs.get("run_id") != mine["run_id"]:', "if False:",
             ("tests/test_train.py::test_a_finished_run_is_never_overwritten",
              "tests/test_train.py::test_a_directory_claimed_by_another_run_is_refused_before_any_checkpoint_exists")),
    Mutation("incomplete cache folder is used", "src/sinklens/cache.py",
             "    if is_complete(final):\n        return final\n    with file_lock",
             "    if final.exists():\n        return final\n    with file_lock",
             ("tests/test_cache.py",)),
    Mutation("no lock around cache builds", "src/sinklens/cache.py",
             "fcntl.flock(fh, fcntl.LOCK_EX)", "pass",
             ("tests/test_cache.py::test_concurrent_builds_build_once_and_never_see_half",)),
    Mutation("unwritable cache not reported", "src/sinklens/cache.py",
             "if not os.access(root, os.W_OK):", "if False:",
             ("tests/test_cache.py",)),
    Mutation("threshold outside [0, 1] accepted", "src/sinklens/probes.py",
             "or not 0.0 <= threshold <= 1.0:", ":",
             ("tests/test_bad_inputs.py",)),
    Mutation("papermill parameter types not checked", "src/sinklens/book.py",
             "        if not ok:\n            raise TypeError(", "        if False:\n            raise TypeError(",
             ("tests/test_notebooks.py::test_wrong_parameter_type_and_unknown_parameter_are_rejected",
              "tests/test_bad_inputs.py")),
    Mutation("failing chapter not named", "src/sinklens/book.py",
             'f"Chapter {source.stem} failed in cell {e.exec_count}', 'f"A chapter failed in cell {e.exec_count}',
             ("tests/test_notebooks.py::test_a_failing_chapter_names_itself_and_the_cell",)),
    Mutation("scorecard built with results missing", "src/sinklens/book.py",
             "    if missing:\n        raise MissingResultsError(", "    if False:\n        raise MissingResultsError(",
             ("tests/test_notebooks.py::test_scorecard_refuses_missing_results",)),
    Mutation("leave-one-seed-out check decides on every seed each time", "src/sinklens/claims.py",
             "without = {s: decide([x for x in seeds if x != s]) for s in seeds}", "without = {s: decide(seeds) for s in seeds}",
             ("tests/test_claims.py", "tests/test_protocol.py")),
    Mutation("source-protocol verdicts keep the left-out seed's measurements", "src/sinklens/protocol.py",
             "subset = {key: m for key, m in measurements.items() if key[1] in ss}", "subset = dict(measurements)",
             ("tests/test_protocol.py",)),
    Mutation("scorecard does not mark a verdict one seed decides", "src/sinklens/book.py",
             'fragile = evidence and bool(c.get("rests_on_one_seed"))', "fragile = False",
             ("tests/test_notebooks.py::test_scorecard_marks_and_counts_verdicts_that_one_seed_decides",)),
    Mutation("a claim not tested here is recorded without its reason", "src/sinklens/provenance.py",
             'if verdict.verdict == "not tested here" and not why:', "if False:",
             ("tests/test_claims.py::test_a_claim_not_tested_must_say_why_in_measured_terms",)),
    Mutation("the scorecard drops why a claim is not tested", "src/sinklens/book.py",
             'parts = [why, claim.get("rule") or "",', 'parts = [claim.get("rule") or "",',
             ("tests/test_notebooks.py::test_scorecard_counts_evidence_apart_from_guarantees_and_shows_rule_mode_and_model",)),
    Mutation("a BOS transition without induction before it is dropped as missing data", "src/sinklens/claims.py",
             "if induction is None or induction >= bos:", "if induction is not None and induction >= bos:",
             ("tests/test_claims.py::test_timing_rules",)),
    Mutation("the controls' line moves with the necessity line", "src/sinklens/claims.py",
             '"controls_hold": all(v >= control_keep * clean', '"controls_hold": all(v >= collapse * clean',
             ("tests/test_claims.py::test_recognition_lines_are_separate",)),
    Mutation("a model that never has the P0 signature counts against the claim", "src/sinklens/claims.py",
             "tested = [f for f in first if f is not None]", "tested = [99 if f is None else f for f in first]",
             ("tests/test_claims.py::test_emergence_rules",)),
    Mutation("an induction head confirmed without the variable-offset screen", "src/sinklens/formation.py",
             "return (score >= criteria.induction) & (screen_sel >= criteria.selectivity) & above",
             "return (score >= criteria.induction) & above",
             ("tests/test_formation.py",)),
    Mutation("a share's sensitivity line pushed past the share's range", "src/sinklens/claims.py",
             "    if ceiling is None:\n        return low + factor * (t - low)",
             "    if True:\n        return low + factor * (t - low)",
             ("tests/test_claims.py::test_sensitivity_of_a_share_stays_inside_its_range",)),
    Mutation("the composition test beats its mildest control instead of its strongest", "src/sinklens/claims.py",
             "drop_ctrl = float((1 - controls / clean_score).max())", "drop_ctrl = float((1 - controls / clean_score).min())",
             ("tests/test_claims.py::test_previous_token_heads_compose_takes_the_strongest_control",)),
    Mutation("a matched control set may hold the ablated heads", "src/sinklens/head_ablation.py",
             "excluded = {(int(l), int(h)) for l, h in exclude} | set(heads)",
             "excluded = set()",
             ("tests/test_head_ablation.py::test_matched_random_head_sets_match_layers_and_avoid_excluded_heads",)),
    Mutation("a composition control's draw depends on the order the heads come in", "src/sinklens/head_ablation.py",
             "for l, _ in sorted(heads):", "for l, _ in heads:",
             ("tests/test_head_ablation.py::test_matched_random_head_sets_match_layers_and_avoid_excluded_heads",)),
    Mutation("random tokens seeded from the clock (nondeterministic chapters)", "src/sinklens/data.py",
             "    gen = torch.Generator().manual_seed(seed)\n    idx",
             "    gen = torch.Generator().manual_seed(__import__('time').time_ns() % 2**31)\n    idx", ("tests/test_notebooks.py::test_executing_the_book_twice_gives_identical_results",),
             slow=True),
]


def copy_repo(dest: Path) -> None:
    ignore = shutil.ignore_patterns(".venv", ".git", "_build", "chapters", "__pycache__", ".pytest_cache", "*.ipynb")
    shutil.copytree(ROOT, dest, ignore=ignore, dirs_exist_ok=True)


def run_tests(repo: Path, tests: tuple[str, ...]) -> int:
    env = dict(os.environ, PYTHONPATH=str(repo / "src"), MPLBACKEND="Agg")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slow", action="store_true", help="also run mutations whose tests execute the book")
    parser.add_argument("-k", default="", help="only mutations whose name contains this")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if (args.slow or not m.slow) and args.k in m.name]
    survived = 0
    print(f"{'mutation':52} {'baseline':9} {'mutated':9} verdict")
    for m in chosen:
        with tempfile.TemporaryDirectory(prefix="sinklens-mutant-") as tmp:
            repo = Path(tmp)
            copy_repo(repo)
            start = time.time()
            base = run_tests(repo, m.tests)
            target = repo / m.file
            text = target.read_text()
            assert text.count(m.old) == 1, f"{m.name}: {m.old!r} found {text.count(m.old)} times in {m.file}"
            text = text.replace(m.old, m.new)
            target.write_text(text)
            mutated = run_tests(repo, m.tests)
        ok = base == 0 and mutated not in (0, 4, 5)  # 4: usage error, 5: no tests collected
        survived += not ok
        print(f"{m.name:52} {'pass' if base == 0 else f'FAIL {base}':9} {'fail' if mutated else 'pass':9} "
              f"{'caught' if ok else 'NOT CAUGHT'} ({time.time() - start:.0f} s)", flush=True)
    print(f"{len(chosen) - survived} of {len(chosen)} mutations caught.")
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main())
