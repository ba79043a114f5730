"""Shared fixtures. Models are loaded once per test session (they are read-only in tests)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tiny_model():
    from sinklens.models import load_model

    return load_model("tiny")


@pytest.fixture(scope="session")
def smollm2():
    from sinklens.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


class CIBook:
    """Every chapter executed once per session with its CI parameters, in a temporary book root."""

    def __init__(self, root):
        from sinklens import book

        self.root = root
        self.results = root / "book" / "_build" / "results"
        self.failures: dict[str, Exception] = {}
        book.stage_book_files(root)
        for source in book.chapter_sources():
            try:
                book.execute_chapter(source, self.notebook(source.stem), book.mode_parameters(source.stem, "ci"),
                                     results_dir=self.results, run_mode="ci")
            except Exception as e:  # reported by the chapter's own test; the other chapters still run
                self.failures[source.stem] = e
        self._html = None

    def notebook(self, chapter: str):
        return self.root / "book" / "chapters" / f"{chapter}.ipynb"

    def html(self):
        """The built HTML folder (built on first use); fails naming the chapters that did not execute."""
        from sinklens import book

        if self.failures:
            pytest.fail("cannot build the book, chapters failed: " + "; ".join(map(str, self.failures.values())))
        if self._html is None:
            self._html = book.build_html(self.root, self.results).parent
        return self._html


@pytest.fixture(scope="session")
def ci_book(tmp_path_factory) -> CIBook:
    """The whole book executed with CI parameters (once per test session)."""
    return CIBook(tmp_path_factory.mktemp("ci_book"))


@pytest.fixture(scope="session")
def ci_book_html(ci_book):
    """The CI book built to HTML: a Path to its ``book/_build/html`` folder."""
    return ci_book.html()
