"""The docs site in a real headless Chromium: pages render with their headings and the nav,
and nothing is fetched from anywhere but the local server.

Needs Debian's ``chromium`` at /usr/bin/chromium (``make browser`` installs it) and the
``playwright`` package (dev extra; its own browser download is not used). Without the browser
the test skips locally and fails in CI (CI=true).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import ARGS, CHROMIUM, require_browser, serve_directory

from seqrec import docsgen

ROOT = Path(__file__).resolve().parents[1]
#: docs page -> its URL path in the built site
PAGES = {"quickstart.md": "quickstart/", "plugins.md": "plugins/"}


def _title(page: str) -> str:
    """The page's first-level heading, as written in its markdown."""
    text = (ROOT / "docs" / page).read_text()
    return next(line[2:].strip() for line in text.splitlines() if line.startswith("# "))


@pytest.fixture
def site_url(tmp_path: Path) -> Iterator[str]:
    """The docs site, built strict into tmp_path and served on a free port of 127.0.0.1."""
    require_browser()
    site = tmp_path / "site"
    result = docsgen.build_site(site)
    assert result.returncode == 0, result.stderr[-4000:]
    with serve_directory(site) as url:
        yield url


# the h1 without the permalink anchor ("¶") that the toc extension appends
H1_TEXT = """() => { const h = document.querySelector('article h1').cloneNode(true);
  h.querySelectorAll('.headerlink').forEach(a => a.remove()); return h.textContent.trim(); }"""


def test_quickstart_and_plugin_guide_render_with_nav(site_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requested: list[str] = []
            failed: list[str] = []
            page.on("request", lambda r: requested.append(r.url))
            page.on("requestfailed", lambda r: failed.append(r.url))
            for doc, path in PAGES.items():
                response = page.goto(site_url + path, wait_until="load", timeout=60_000)
                assert response is not None and response.ok, path
                shot = tmp_path / f"{doc.removesuffix('.md')}.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000, shot
                assert page.evaluate(H1_TEXT) == _title(doc)
                nav = page.locator("nav.md-nav--primary")
                assert nav.count() == 1 and nav.is_visible(), f"{path}: no navigation"
                links = nav.locator("a.md-nav__link").evaluate_all(
                    "links => links.map(a => a.textContent.trim())"
                )
                assert {"Quickstart", "Concepts", "CLI", "Troubleshooting"} <= set(links), links
                active = page.locator("nav.md-nav--primary a.md-nav__link--active").first
                assert active.inner_text().strip(), f"{path}: the nav marks no current page"
            assert not failed, failed
            elsewhere = [u for u in requested if not u.startswith(site_url)]
            assert not elsewhere, f"requests that left the local site: {elsewhere}"
        finally:
            browser.close()
