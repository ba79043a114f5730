"""The built book in a real browser: every page opened in headless Chromium (sinklens.browser).

The book is built once per session with the tests' parameters by the ``ci_book_html`` fixture
(tests/conftest.py). Screenshots of every page are written beside it, in ``<build>/screenshots``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sinklens import browser
from sinklens.book import chapter_sources

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = [p.stem for p in chapter_sources()]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def chromium() -> str:
    try:
        return browser.find_chromium()
    except browser.ChromiumNotFound as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def html_dir(ci_book_html) -> Path:
    """The book built with the tests' parameters (``ci_book_html`` from conftest)."""
    return Path(ci_book_html)


@pytest.fixture(scope="module")
def reports(html_dir, chromium) -> dict[str, browser.PageReport]:
    shots = html_dir.parent / "screenshots"
    found = browser.check_book(html_dir, shots)
    print("\n" + browser.format_reports(found))
    return {r.path: r for r in found}


def _chapter_report(reports: dict[str, browser.PageReport], chapter: str) -> browser.PageReport:
    hits = [r for path, r in reports.items() if path.endswith(f"chapters/{chapter}.html")]
    assert hits, f"no page for chapter {chapter} among {sorted(reports)}"
    return hits[0]


def _lines(items: list[str]) -> str:
    return "\n  ".join(items)


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_page_has_figures_and_no_error_output(reports, chapter):
    page = _chapter_report(reports, chapter)
    assert page.figures >= 1, f"{page.path} shows no figure (<img> or <svg>) in its article"
    assert page.broken_images == 0, f"{page.path}: {page.broken_images} image(s) did not load"
    assert not page.error_outputs, f"{page.path} shows an error output:\n  {_lines(page.error_outputs)}"


@pytest.mark.slow
def test_no_page_shows_a_traceback(reports):
    bad = [f"{r.path}: {e}" for r in reports.values() for e in r.error_outputs]
    assert not bad, "error outputs / tracebacks:\n  " + _lines(bad)


@pytest.mark.slow
def test_no_console_errors_or_uncaught_exceptions(reports):
    bad = [f"{r.path}: console: {m}" for r in reports.values() for m in r.console_errors]
    bad += [f"{r.path}: uncaught: {m}" for r in reports.values() for m in r.page_errors]
    assert not bad, "the browser reported errors:\n  " + _lines(bad)


@pytest.mark.slow
def test_every_request_stays_local_and_succeeds(reports):
    # The book must work offline: nothing is loaded from another host, no local file is missing.
    bad = [f"{r.path}: other host: {u}" for r in reports.values() for u in r.blocked_requests]
    bad += [f"{r.path}: failed: {u}" for r in reports.values() for u in r.failed_requests]
    assert not bad, "requests:\n  " + _lines(bad)


@pytest.mark.slow
def test_interactive_views_render(reports):
    bad = [f"{r.path}: {r.views - r.views_rendered} of {r.views} views empty"
           for r in reports.values() if r.views_rendered < r.views]
    assert not bad, "interactive views that did not render:\n  " + _lines(bad)


@pytest.mark.slow
def test_scorecard_has_a_table(reports, html_dir):
    assert (html_dir / browser.SCORECARD).is_file(), f"{browser.SCORECARD} was not built"
    assert reports[browser.SCORECARD].tables >= 1, "the scorecard page has no <table>"


def _toc_files() -> list[str]:
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            for part in entry.get("parts", []):
                walk(part.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return files


@pytest.mark.slow
def test_every_page_of_the_toc_was_built_and_opened(reports, html_dir):
    missing = [f for f in _toc_files() if not (html_dir / f"{f}.html").is_file()]
    assert not missing, f"pages in _toc.yml that the build lacks: {missing}"
    unopened = [f for f in _toc_files() if f"{f}.html" not in reports]
    assert not unopened, f"pages in _toc.yml that the checker did not open: {unopened}"


@pytest.mark.slow
def test_every_page_was_found_and_screenshotted(reports, html_dir):
    assert "index.html" in reports
    for chapter in CHAPTERS:
        _chapter_report(reports, chapter)
    for r in reports.values():
        if r.redirect:
            continue
        assert r.screenshot is not None and r.screenshot.is_file(), f"no screenshot of {r.path}"
        head = r.screenshot.read_bytes()[:8]
        assert head == PNG_MAGIC and r.screenshot.stat().st_size > 1000, f"{r.screenshot} is not a PNG"
        assert r.screenshot.parent == html_dir.parent / "screenshots"


# ---------------------------------------------------------------------------------------------
# The checker itself, on a hand-written two-page site: one clean page, one broken chapter.

CLEAN = """<!doctype html><html><head><title>Clean</title></head><body>
<main><article class="bd-article">
  <h1>Clean</h1>
  <p><a href="chapters/01_bad.html">chapter 1</a> <a href="genindex.html">index</a>
     <a href="https://example.org/elsewhere.html">elsewhere</a> <a href="#top">top</a></p>
  <svg width="120" height="80"><rect width="120" height="80" fill="teal"/></svg>
  <button><svg width="20" height="20"><rect width="20" height="20"/></svg></button>
  <table><tr><td>claim</td><td>reproduced</td></tr></table>
  <div id="sinklens-cv-ok"></div>
  <script>
    setTimeout(() => { document.getElementById('sinklens-cv-ok').innerHTML = '<p>drawn</p>'; }, 50);
  </script>
</article></main></body></html>
"""

BAD = """<!doctype html><html><head><title>Bad</title>
<script src="https://example.invalid/cdn.js"></script></head><body>
<main><article class="bd-article">
  <h1>Bad</h1>
  <div class="cell_output docutils container">
    <div class="output traceback highlight-ipythontb notranslate"><pre>---------------------------------
ValueError                                Traceback (most recent call last)
ValueError: the model is missing</pre></div>
  </div>
  <div class="output stderr"><pre>Loading weights: 100%</pre></div>
  <img src="missing.png" alt="lost figure">
  <div id="sinklens-cv-empty" style="margin: 15px 0;"/>
    <script>console.error('boom: the view could not start');</script>
  </div>
  <script>throw new Error('kaput');</script>
</article></main></body></html>
"""


@pytest.fixture
def tiny_site(tmp_path) -> Path:
    site = tmp_path / "html"
    (site / "chapters").mkdir(parents=True)
    (site / "index.html").write_text(CLEAN)
    (site / "genindex.html").write_text("<html><body>general index</body></html>")
    (site / "chapters" / "01_bad.html").write_text(BAD)
    (site / "chapters" / "orphan.html").write_text("<html><body>not linked, not a chapter</body></html>")
    return site


def test_find_pages_follows_links_and_skips_utility_pages(tiny_site):
    assert browser.find_pages(tiny_site) == ["index.html", "chapters/01_bad.html"]


def test_find_pages_needs_an_index(tmp_path):
    with pytest.raises(FileNotFoundError, match="make book"):
        browser.find_pages(tmp_path)


def test_missing_chromium_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.delenv("SINKLENS_CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(browser.ChromiumNotFound, match="make chromium"):
        browser.find_chromium()
    monkeypatch.setenv("SINKLENS_CHROMIUM", str(tmp_path / "nope"))
    with pytest.raises(browser.ChromiumNotFound, match="does not exist"):
        browser.find_chromium()


def test_checker_catches_a_broken_page_and_passes_a_clean_one(tiny_site, tmp_path, chromium, capsys):
    shots = tmp_path / "shots"
    reports = {r.path: r for r in browser.check_book(tiny_site, shots, view_timeout_s=2)}
    assert list(reports) == ["index.html", "chapters/01_bad.html"]

    clean = reports["index.html"]
    assert clean.ok, clean.problems
    assert (clean.images, clean.svgs, clean.tables) == (0, 1, 1)  # the button's icon is not a figure
    assert (clean.views, clean.views_rendered) == (1, 1)
    assert clean.title == "Clean"

    bad = reports["chapters/01_bad.html"]
    assert bad.is_chapter and not bad.ok
    assert any("boom" in m for m in bad.console_errors), bad.console_errors
    assert any("kaput" in m for m in bad.page_errors), bad.page_errors
    assert any("Traceback (most recent call last)" in e for e in bad.error_outputs), bad.error_outputs
    assert bad.stderr_outputs == ["Loading weights: 100%"]
    assert (bad.views, bad.views_rendered) == (1, 0)  # only a <script> inside: not drawn
    assert bad.broken_images == 1
    assert any(u.endswith("/chapters/missing.png (HTTP 404)") for u in bad.failed_requests), bad.failed_requests
    assert bad.blocked_requests == ["https://example.invalid/cdn.js"]
    text = "\n".join(bad.problems)
    for needle in ("boom", "kaput", "Traceback", "views did not render", "did not load", "another host"):
        assert needle in text

    for name in ("index.png", "01_bad.png"):
        data = (shots / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert clean.screenshot == shots / "index.png"

    table = browser.format_reports(list(reports.values()))
    assert "chapters/01_bad.html: uncaught exception: kaput" in table
    assert browser.main([str(tiny_site), "--view-timeout", "1"]) == 1
    assert "chapters/01_bad.html" in capsys.readouterr().out


def test_cli_exits_0_on_a_clean_site(tmp_path, chromium):
    (tmp_path / "index.html").write_text(CLEAN.replace('<a href="chapters/01_bad.html">chapter 1</a>', ""))
    assert browser.main([str(tmp_path), "--screenshots", str(tmp_path / "shots")]) == 0
    assert (tmp_path / "shots" / "index.png").is_file()


def test_chromium_flags_keep_it_offline_and_rootable():
    for flag in ("--headless", "--no-sandbox", "--disable-background-networking", "--disable-component-update"):
        assert flag in browser.CHROMIUM_ARGS


def test_a_page_that_cannot_load_is_reported_not_raised(tmp_path, chromium):
    (tmp_path / "index.html").write_text('<meta http-equiv="Refresh" content="0; url=gone.html" />')
    [report] = browser.check_book(tmp_path, None, timeout_s=5, view_timeout_s=1)
    assert report.redirect == "gone.html" and not report.ok
    assert any("not a page of the book" in p for p in report.problems), report.problems


@pytest.mark.parametrize(
    "page, problem",
    [
        (browser.PageReport("book/chapters/03_x.html"), "chapter has no figure"),
        (browser.PageReport("book/scorecard.html", images=1), "scorecard page has no <table>"),
        (browser.PageReport("book/references.html"), "references page lists no reference"),
        (browser.PageReport("book/intro.html", views=2, views_rendered=1), "1 of 2 interactive views"),
        (browser.PageReport("book/intro.html", load_error="TimeoutError: 60 s"), "could not check the page"),
    ],
)
def test_page_problems(page, problem):
    assert any(problem in p for p in page.problems), page.problems


def test_a_clean_page_has_no_problems():
    assert browser.PageReport("book/chapters/01_x.html", images=2, tables=1).ok
    assert browser.PageReport("book/references.html", citations=3).ok
    assert browser.PageReport("index.html", redirect="book/intro.html").ok
