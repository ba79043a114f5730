"""scripts/scale_study.py: scores every checkpoint of a zoo size without touching the checkpoints."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from sinklens import selectivity as S
from sinklens import zoo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scale_study():
    spec = importlib.util.spec_from_file_location("scale_study", ROOT / "scripts" / "scale_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.ckpt"))}


def test_analyse_scores_every_checkpoint_and_leaves_them_unchanged(scale_study, tmp_path, capsys):
    zoo.get("residual", "tiny", 0, progress=False)  # trained by `make zoo-tiny` before the tests
    folder = zoo.run_dir(zoo.config("residual", "tiny", 0))
    before = _digests(folder)
    path = scale_study.analyse("tiny", [0], ["residual"], tmp_path, n_seqs=4, n_probe=16)
    assert _digests(folder) == before  # an earlier version wrote its output over the last snapshot
    with gzip.open(path, "rt") as f:
        result = json.load(f)
    run = result["runs"]["residual/0"]
    steps = [c["step"] for c in run["checkpoints"]]
    assert len(steps) == len(list(folder.glob("step_*.ckpt"))) and steps == sorted(steps)
    cfg = zoo.config("residual", "tiny", 0).model
    for entry in run["checkpoints"]:
        for key in ("rr_induction", "rr_duplicate_token", "text_previous_token", "text_first_token", "text_verticality"):
            assert len(entry[key]) == cfg.n_layers and len(entry[key][0]) == cfg.n_heads, key
            assert all(0.0 <= v <= 1.0 for row in entry[key] for v in row) or key == "text_verticality"
        assert len(entry["selectivity"]) == len(S.CLASSES) and len(entry["labels"]) == cfg.n_layers
    assert len(run["ablation"]) == cfg.n_layers
    scale_study.summarise(path)
    assert "residual/0" in capsys.readouterr().out
