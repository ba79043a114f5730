"""Open every page of the built book in headless Chromium and report what a reader would see.

``check_book(html_dir, screenshots)`` serves ``html_dir`` on localhost (``http.server`` in a thread,
on a free port), finds the book's pages (the root page, every page reachable through its links, the
chapter pages ``book/chapters/NN_*.html`` and ``book/scorecard.html``), opens each in Debian's
``chromium`` driven by Playwright (its wheel carries the driver; no browser is downloaded), waits
for the scripts to run, and records per page: console errors and uncaught exceptions, failed
requests, figures (``<img>`` and ``<svg>`` in the article), tables, notebook error outputs and
tracebacks, stderr outputs, the interactive attention views (``id="sinklens-cv-..."``, and
circuitsvis's ``id="circuits-vis-..."``) and whether they rendered, and a full-page screenshot.

Requests that leave localhost are aborted: the book has to work offline, and the network is closed.

CLI: ``python -m sinklens.browser book/_build/html --screenshots book/_build/screenshots`` prints a
table and exits 1 when a page has a problem.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import shutil
import sys
import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urljoin, urlsplit

ROOT = Path(__file__).resolve().parents[2]

# Flags Chromium always gets. As root it needs --no-sandbox; the network is closed, so nothing may
# phone home (background networking, component updates).
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-gpu",
    "--disable-dev-shm-usage",
)
VIEWPORT = {"width": 1280, "height": 900}
MAX_WINDOW_HEIGHT = 32_000  # taller pages fall back to Playwright's full-page capture
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Interactive attention views: the book's own (id "sinklens-cv-...") and circuitsvis's default
# containers (id "circuits-vis-..."), which render only when circuitsvis's script loads.
VIEW_PREFIXES = ("sinklens-cv-", "circuits-vis-")
# Utility pages of Sphinx and build folders that are not pages of the book.
SKIP_PAGES = {"genindex.html", "search.html", "py-modindex.html"}
SKIP_DIRS = {"_static", "_sources", "_images", "_downloads"}
CHAPTER_RE = re.compile(r"(^|/)chapters/\d\d_[^/]*\.html$")
SCORECARD = "book/scorecard.html"
# A Python exception line ("ValueError: ...", "torch.OutOfMemoryError: ...") in a stderr output.
# Warnings ("TqdmWarning: ...") do not match.
ERROR_LINE_RE = re.compile(r"^\s*(Traceback \(most recent call last\)|[\w.]*(Error|Exception)\b:?)", re.M)


class ChromiumNotFound(RuntimeError):
    """Debian's chromium is not installed."""


@dataclass
class PageReport:
    """What one page showed in the browser."""

    path: str  # relative to the html folder, e.g. "book/chapters/01_attention.html"
    url: str = ""
    final_url: str = ""
    title: str = ""
    redirect: str | None = None  # the target of a <meta http-equiv="refresh"> page
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)  # uncaught exceptions
    failed_requests: list[str] = field(default_factory=list)  # localhost requests that failed or got >= 400
    blocked_requests: list[str] = field(default_factory=list)  # requests to other hosts (aborted)
    images: int = 0  # <img> in the article
    broken_images: int = 0  # <img> that loaded no picture
    svgs: int = 0  # <svg> figures in the article (icons and buttons excluded)
    tables: int = 0  # <table> in the article
    citations: int = 0  # bibliography entries (sphinxcontrib-bibtex's .citation) in the article
    error_outputs: list[str] = field(default_factory=list)  # notebook error outputs, tracebacks
    stderr_outputs: list[str] = field(default_factory=list)  # every stderr output (warnings, progress bars)
    views: int = 0  # interactive views (id "sinklens-cv-..." or "circuits-vis-...")
    views_rendered: int = 0  # of those, the ones that have rendered, visible content
    screenshot: Path | None = None
    load_error: str | None = None  # the page could not be opened or measured at all

    @property
    def figures(self) -> int:
        return self.images + self.svgs

    @property
    def is_chapter(self) -> bool:
        return bool(CHAPTER_RE.search(self.path))

    @property
    def is_scorecard(self) -> bool:
        return self.path == SCORECARD or self.path.endswith("/scorecard.html")

    @property
    def is_references(self) -> bool:
        return self.path.endswith("references.html")

    @property
    def problems(self) -> list[str]:
        """Everything that makes this page broken for a reader (empty: the page is fine)."""
        out = [f"could not check the page: {self.load_error}"] if self.load_error else []
        out += [f"console error: {m}" for m in self.console_errors]
        out += [f"uncaught exception: {m}" for m in self.page_errors]
        out += [f"failed request: {m}" for m in self.failed_requests]
        out += [f"request to another host: {m}" for m in self.blocked_requests]
        out += [f"error output: {m}" for m in self.error_outputs]
        if self.broken_images:
            out.append(f"{self.broken_images} image(s) did not load")
        if self.views_rendered < self.views:
            out.append(f"{self.views - self.views_rendered} of {self.views} interactive views did not render")
        if self.redirect is None and self.is_chapter and self.figures == 0:
            out.append("chapter has no figure (no <img> or <svg> in the article)")
        if self.is_scorecard and self.tables == 0:
            out.append("scorecard page has no <table>")
        if self.redirect is None and self.is_references and self.citations == 0:
            out.append("references page lists no reference (no chapter's {cite} reached the bibliography)")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems


# ---------------------------------------------------------------------------------------------
# Finding the pages


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.refresh: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])
        if tag == "meta" and (a.get("http-equiv") or "").lower() == "refresh" and a.get("content"):
            m = re.search(r"url\s*=\s*['\"]?([^'\"\s;]+)", a["content"], re.I)
            if m:
                self.refresh = m.group(1)


def _parse(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8", errors="replace"))
    return parser


def _local_page(html_dir: Path, base: str, href: str) -> str | None:
    """``href`` (seen on page ``base``) as a page path relative to ``html_dir``, or None."""
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or not parts.path:
        return None  # another site, mailto:, or a fragment on the same page
    rel = urlsplit(urljoin("http://book/" + base, unquote(parts.path))).path.lstrip("/")
    if rel == "" or rel.endswith("/"):
        rel += "index.html"
    if not rel.endswith(".html") or rel in SKIP_PAGES or rel.split("/")[0] in SKIP_DIRS:
        return None
    return rel if (html_dir / rel).is_file() else None


def find_pages(html_dir: Path) -> list[str]:
    """The book's pages, relative to ``html_dir``, in reading order.

    The root ``index.html`` first, then every page reachable from it through links (the book's
    navigation lists every page), then chapter pages and the scorecard if no link reached them.
    """
    html_dir = Path(html_dir)
    if not (html_dir / "index.html").is_file():
        raise FileNotFoundError(f"{html_dir / 'index.html'} does not exist: build the book first (make book).")
    seen = ["index.html"]
    queue = deque(seen)
    while queue:
        page = queue.popleft()
        links = _parse(html_dir / page)
        for href in ([links.refresh] if links.refresh else []) + links.hrefs:
            rel = _local_page(html_dir, page, href)
            if rel and rel not in seen:
                seen.append(rel)
                queue.append(rel)
    extra = sorted(p.relative_to(html_dir).as_posix() for p in html_dir.glob("**/chapters/[0-9][0-9]_*.html"))
    if (html_dir / SCORECARD).is_file():
        extra.append(SCORECARD)
    seen += [p for p in extra if p not in seen]
    return seen


def screenshot_names(pages: list[str]) -> dict[str, str]:
    """A file name per page: its stem (``01_attention.png``), or its path where stems collide."""
    stems = [Path(p).stem for p in pages]
    return {
        p: (s if stems.count(s) == 1 else p.removesuffix(".html").replace("/", "__")) + ".png"
        for p, s in zip(pages, stems)
    }


# ---------------------------------------------------------------------------------------------
# Serving and browsing


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass


@contextmanager
def serve(html_dir: Path) -> Iterator[str]:
    """Serve ``html_dir`` on 127.0.0.1 on a free port in a thread; yield the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(html_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="sinklens-book-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def find_chromium() -> str:
    """The Chromium executable: ``$SINKLENS_CHROMIUM``, else ``chromium`` on PATH."""
    explicit = os.environ.get("SINKLENS_CHROMIUM")
    if explicit:
        if not Path(explicit).is_file():
            raise ChromiumNotFound(f"SINKLENS_CHROMIUM={explicit} does not exist.")
        return explicit
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise ChromiumNotFound(
        "Chromium is not installed: run `make chromium` or `apt-get install -y chromium` "
        "(or point SINKLENS_CHROMIUM at a Chromium/Chrome executable)."
    )


# A view has drawn something when it holds an element other than a script or style (circuitsvis's
# container "<div .../>" is not self-closing in HTML, so its <script> lands inside it).
_DRAWN_JS = r"""const drawn = v => [...v.children, ...(v.shadowRoot ? v.shadowRoot.children : [])]
      .some(c => !['SCRIPT', 'STYLE', 'NOSCRIPT', 'TEMPLATE'].includes(c.tagName));"""

# Runs in the page: counts what the article holds. Figures are <img> and <svg> that are not icons
# (Font Awesome's svg-inline--fa, the copy buttons' icons) and not nested in another <svg>.
_MEASURE_JS = r"""
(prefixes) => {
  const root = document.querySelector('article.bd-article') || document.querySelector('article')
            || document.querySelector('main') || document.body;
  const big = el => { const r = el.getBoundingClientRect(); return r.width >= 16 && r.height >= 16; };
  const imgs = [...root.querySelectorAll('img')];
  const svgs = [...root.querySelectorAll('svg')].filter(s =>
      !(s.parentElement && s.parentElement.closest('svg')) && !s.closest('button')
      && !s.classList.contains('svg-inline--fa') && big(s));
  const text = el => {
    const parts = [];
    const walk = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    while (walk.nextNode()) {
      const p = walk.currentNode.parentElement;
      if (p && !p.closest('script, style')) parts.push(walk.currentNode.data);
    }
    return parts.join('');
  };
  const clip = s => s.trim().replace(/\s+/g, ' ').slice(0, 300);
  const errors = [...document.querySelectorAll(
      '.output.traceback, .output.error, #papermill-error-cell, .cell_output .traceback')].map(e => clip(text(e)));
  const body = text(root);
  for (const phrase of ['Traceback (most recent call last)', 'An Exception was encountered at']) {
    if (body.includes(phrase) && !errors.some(e => e.includes(phrase))) {
      const i = body.indexOf(phrase);
      errors.push(clip(body.slice(i, i + 300)));
    }
  }
  const sel = prefixes.map(p => `[id^="${p}"]`).join(', ');
  const views = [...document.querySelectorAll(sel)]
      .filter(v => !(v.parentElement && v.parentElement.closest(sel)));
  __DRAWN__
  const rendered = v => drawn(v) && v.getBoundingClientRect().height > 0;
  return {
    title: document.title,
    images: imgs.length,
    broken_images: imgs.filter(i => i.complete && i.naturalWidth === 0).length,
    svgs: svgs.length,
    tables: root.querySelectorAll('table').length,
    citations: root.querySelectorAll('.citation').length,
    error_outputs: errors,
    stderr_outputs: [...root.querySelectorAll('.output.stderr')].map(e => clip(text(e))),
    views: views.length,
    views_rendered: views.filter(rendered).length,
  };
}
""".replace("__DRAWN__", _DRAWN_JS)

_VIEWS_READY_JS = r"""
(prefixes) => {
  __DRAWN__
  return [...document.querySelectorAll(prefixes.map(p => `[id^="${p}"]`).join(', '))].every(drawn);
}
""".replace("__DRAWN__", _DRAWN_JS)


def _screenshot(page, shot: Path, timeout_ms: int) -> None:
    """The whole page as one PNG, taken with a window as tall as the page.

    Playwright's ``full_page=True`` captures beyond the viewport, and during that capture
    circuitsvis's zoomed attention chart (Chart.js, resizing with its container) collapsed to an
    empty box; in a window that is simply tall enough the views draw as a reader sees them.
    """
    shot.parent.mkdir(parents=True, exist_ok=True)
    height_js = "() => Math.ceil(document.documentElement.scrollHeight)"
    height = 0
    for _ in range(3):  # the height can change once the window is resized
        new = page.evaluate(height_js)
        if new == height:
            break
        height = new
        if height > MAX_WINDOW_HEIGHT:
            break
        page.set_viewport_size({"width": VIEWPORT["width"], "height": max(height, VIEWPORT["height"])})
        page.wait_for_timeout(500)
    page.screenshot(path=str(shot), full_page=height > MAX_WINDOW_HEIGHT, timeout=timeout_ms)
    page.set_viewport_size(VIEWPORT)


def _check_page(browser, base_url: str, rel: str, html_dir: Path, shot: Path | None,
                timeout_ms: int, view_timeout_ms: int) -> PageReport:
    report = PageReport(path=rel, url=urljoin(base_url, rel))
    origin = base_url.rstrip("/")
    # A fresh context per page: every page is checked as a first visit (empty localStorage, cache).
    context = browser.new_context(viewport=VIEWPORT, service_workers="block")
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and report.console_errors.append(
        f"{m.text} ({m.location.get('url', '')}:{m.location.get('lineNumber', '')})"))
    page.on("pageerror", lambda e: report.page_errors.append(str(e)))

    def on_request_failed(request) -> None:
        if request.url.startswith(origin):
            report.failed_requests.append(f"{request.url} ({request.failure})")

    def on_response(response) -> None:
        if response.status >= 400 and response.url.startswith(origin):
            report.failed_requests.append(f"{response.url} (HTTP {response.status})")

    page.on("requestfailed", on_request_failed)
    page.on("response", on_response)

    def route(r) -> None:
        url = r.request.url
        if url.startswith(origin) or url.startswith(("data:", "blob:", "about:")):
            r.continue_()
        else:
            report.blocked_requests.append(url)
            r.abort("blockedbyclient")

    page.route("**/*", route)
    try:
        redirect = _parse(html_dir / rel).refresh
        if redirect:
            report.redirect = redirect
            target = _local_page(html_dir, rel, redirect)
            if target is None:
                report.error_outputs.append(f"redirects to {redirect}, which is not a page of the book")
        page.goto(report.url, wait_until="load", timeout=timeout_ms)
        if redirect:
            page.wait_for_url(lambda u: not u.endswith(rel), timeout=timeout_ms)
            page.wait_for_load_state("load", timeout=timeout_ms)
        try:
            page.wait_for_load_state("networkidle", timeout=min(timeout_ms, 15_000))
        except Exception:  # a page that keeps polling is still checked; its requests show up above
            pass
        try:  # interactive views render after load; give them a few seconds
            page.wait_for_function(_VIEWS_READY_JS, arg=list(VIEW_PREFIXES), timeout=view_timeout_ms)
        except Exception:
            pass  # counted below as views that did not render
        page.wait_for_timeout(300)  # late console messages (timers, deferred scripts)
        report.final_url = page.url
        if redirect:  # the target page is checked (and screenshotted) on its own
            report.title = page.title()
            return report
        for key, value in page.evaluate(_MEASURE_JS, list(VIEW_PREFIXES)).items():
            setattr(report, key, value)
        if shot is not None:
            _screenshot(page, shot, timeout_ms)
            report.screenshot = shot
    except Exception as e:  # noqa: BLE001 - a page that cannot load is a finding, not a crash
        report.load_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        context.close()
    return report


def check_book(html_dir: Path, screenshots: Path | None = None, *, pages: list[str] | None = None,
               timeout_s: float = 60.0, view_timeout_s: float = 10.0) -> list[PageReport]:
    """Open every page of the book built in ``html_dir`` in headless Chromium; one report per page.

    ``screenshots``: a folder for a full-page PNG per page (``<page stem>.png``), or None.
    ``pages``: paths relative to ``html_dir`` (default: ``find_pages(html_dir)``).
    ``timeout_s``: limit for loading one page; ``view_timeout_s``: how long interactive views may
    take to draw after the page has loaded.
    """
    html_dir = Path(html_dir).resolve()
    pages = pages if pages is not None else find_pages(html_dir)
    executable = find_chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        raise ImportError("playwright is missing: `make setup` (or pip install -r requirements.lock).") from e
    names = screenshot_names(pages)
    reports = []
    with serve(html_dir) as base_url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=list(CHROMIUM_ARGS),
                                     timeout=timeout_s * 1000)
        try:
            for rel in pages:
                shot = Path(screenshots) / names[rel] if screenshots is not None else None
                reports.append(_check_page(browser, base_url, rel, html_dir, shot, int(timeout_s * 1000),
                                           int(view_timeout_s * 1000)))
        finally:
            browser.close()
    return reports


def format_reports(reports: list[PageReport]) -> str:
    """A table: one row per page, then each problem on its own line."""
    head = ("page", "figures (img+svg)", "tables", "views", "errors", "console", "stderr", "status")
    rows = []
    for r in reports:
        status = "ok" if r.ok else f"{len(r.problems)} problem(s)"
        if r.redirect:
            rows.append((r.path, "-", "-", "-", str(len(r.error_outputs)), str(len(r.console_errors) + len(r.page_errors)),
                         "-", f"redirect -> {r.redirect}; {status}"))
            continue
        rows.append((
            r.path, f"{r.figures} ({r.images}+{r.svgs})", str(r.tables), f"{r.views_rendered}/{r.views}",
            str(len(r.error_outputs)), str(len(r.console_errors) + len(r.page_errors)),
            str(len(r.stderr_outputs)), status,
        ))
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in reports:
        for p in r.problems:
            lines.append(f"{r.path}: {p}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sinklens.browser", description=__doc__.split("\n")[0])
    parser.add_argument("html_dir", nargs="?", type=Path, default=ROOT / "book" / "_build" / "html")
    parser.add_argument("--screenshots", type=Path, default=None, help="folder for one full-page PNG per page")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per page load (default 60)")
    parser.add_argument("--view-timeout", type=float, default=10.0,
                        help="seconds the interactive views may take to draw (default 10)")
    args = parser.parse_args(argv)
    try:
        reports = check_book(args.html_dir, args.screenshots, timeout_s=args.timeout,
                             view_timeout_s=args.view_timeout)
    except (ChromiumNotFound, FileNotFoundError, ImportError) as e:
        print(f"[sinklens] {e}", file=sys.stderr)
        return 2
    print(format_reports(reports))
    if args.screenshots is not None:
        print(f"screenshots: {args.screenshots}")
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
