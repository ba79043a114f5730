"""Which model and data a chapter ran on, and the chapter's measured claims as a results JSON.

Each executed chapter shows :func:`provenance_markdown` near its top and ends with
:meth:`ChapterResults.save`, which writes ``$SINKLENS_RESULTS_DIR/<chapter>.json`` (default
``./results``). The scorecard page is generated from those files, never typed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERDICTS = ("reproduced", "partly", "not reproduced", "not tested here", "pass", "fail", "measured", "by construction")


def provenance_markdown(model_info: Any = None, data_description: str | None = None) -> str:
    """A short Markdown block: the model and data this page ran on, flagged when offline."""
    lines = []
    if model_info is not None:
        warn = "" if model_info.is_gpt2 or getattr(model_info, "trained_here", False) else (
            " **This is not GPT-2**: GPT-2 cannot be downloaded here, so this page runs offline on "
            "a different real pretrained model. Results carry over qualitatively, not head for head."
        )
        lines.append(f"- **Model:** {model_info.description} (source: {model_info.source}).{warn}")
    if data_description is not None:
        lines.append(f"- **Data:** {data_description}.")
    lines.append(f"- **Run with:** Python {platform.python_version()}, "
                 f"torch {_version('torch')}, transformer-lens {_version('transformer_lens')}.")
    return "\n".join(lines)


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module.replace("_", "-"))
    except Exception:
        return "unknown"


def _jsonable(x: Any) -> Any:
    """Plain JSON types from tensors, numpy numbers and nested containers."""
    if hasattr(x, "tolist"):
        x = x.tolist()
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    return x


@dataclass
class ChapterResults:
    """The measured claims of one chapter."""

    chapter: str
    model: dict | None = None
    data: str | None = None
    parameters: dict = field(default_factory=dict)
    claims: list[dict] = field(default_factory=list)

    def record(
        self,
        claim_id: str,
        claim: str,
        *,
        value: Any,
        verdict: Any,
        source: str = "",
        seeds: list[int] | None = None,
        details: str = "",
        model: str | None = None,
        why_not_tested: str = "",
    ) -> dict:
        """Add one claim with its measured value and the :class:`sinklens.claims.Verdict` a rule computed.

        ``verdict`` must be a ``Verdict`` (a verdict string with its rule), never a bare string: no
        chapter assigns a verdict itself. Its rule is stored as ``rule``, its 0.5x / 2x threshold
        verdicts as ``sensitivity``, its verdicts with each seed left out (if checked) as ``without_seed``
        and ``rests_on_one_seed``; ``details`` adds context.

        A verdict of "not tested here" must say why, in what was measured (which model lacks the
        head type, how far the best score got): ``why_not_tested``, or the reason given to
        :func:`sinklens.claims.not_tested`. It is stored as ``why_not_tested``, and only for such a
        verdict, so a chapter may pass it whatever the verdict turns out to be.
        """
        from sinklens.claims import Verdict  # here: sinklens.claims imports VERDICTS from this module

        if not isinstance(verdict, Verdict):  # a Verdict checks its own string against VERDICTS
            raise TypeError(f"claim {claim_id!r}: verdict must be a sinklens.claims.Verdict from a rule, got {verdict!r}.")
        if any(c["id"] == claim_id for c in self.claims):
            raise ValueError(f"claim {claim_id!r} recorded twice in chapter {self.chapter!r}.")
        why = (why_not_tested or verdict.reason).strip()
        if verdict.verdict == "not tested here" and not why:
            raise ValueError(
                f"claim {claim_id!r} is not tested here but says not why: pass why_not_tested, the measured reason "
                "(e.g. which models lack the head type and how far their best score got)."
            )
        entry = {
            "id": claim_id, "claim": claim, "source": source, "value": _jsonable(value),
            "verdict": verdict.verdict, "rule": verdict.rule, "sensitivity": dict(verdict.sensitivity),
            "seeds": seeds or [], "details": details,
        }
        if verdict.without_seed:  # the leave-one-seed-out check (sinklens.claims.leave_one_seed_out)
            entry["without_seed"] = {str(s): v for s, v in verdict.without_seed.items()}
            entry["rests_on_one_seed"] = verdict.rests_on_one_seed
        if verdict.verdict == "not tested here":
            entry["why_not_tested"] = why
        if model is not None:  # the claim is about another model than the chapter's (e.g. our trained zoo)
            entry["model"] = model
        self.claims.append(entry)
        return entry

    def to_dict(self) -> dict:
        return {
            "chapter": self.chapter,
            "run_mode": os.environ.get("SINKLENS_RUN_MODE", "custom"),
            "model": self.model,
            "data": self.data,
            "parameters": _jsonable(self.parameters),
            "claims": self.claims,
        }

    def save(self, directory: str | os.PathLike | None = None) -> Path:
        """Write ``<directory>/<chapter>.json`` atomically and return its path."""
        directory = Path(directory or os.environ.get("SINKLENS_RESULTS_DIR", "results"))
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.chapter}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
        return path
