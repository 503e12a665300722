"""The run report in a real headless Chromium: every plot loads and the decision is shown.

Needs Debian's ``chromium`` at /usr/bin/chromium (``make browser`` installs it) and the
``playwright`` package (dev extra; its own browser download is not used). Without the browser
the test skips locally and fails in CI (CI=true).
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from seqrec.config import Workspace

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _require_browser() -> None:
    problem = None
    if not os.access(CHROMIUM, os.X_OK):
        problem = f"{CHROMIUM} not installed (make browser: apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is not installed (pip install -e '.[dev]')"
    if problem is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"browser test cannot run in CI: {problem}")
    pytest.skip(problem)


@pytest.fixture
def served(trained_ws: Workspace, tmp_path: Path) -> Iterator[tuple[str, dict[str, object]]]:
    """(URL of a report served on 127.0.0.1, the run it reports)."""
    from seqrec import model_store, runs
    from seqrec.monitoring.report import build_report

    _require_browser()
    tag = next(
        r["tag"] for r in model_store.list_models(trained_ws.model_store) if "gpt2" in r["tag"]
    )
    rid = runs.start_run(trained_ws, "train", model="gpt2", task="next-item")
    runs.finish_run(
        trained_ws, rid, "succeeded", candidate_tag=tag, decision="promoted", reason="a <b> & c"
    )
    index = build_report(trained_ws, rid, tmp_path / "report")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(index.parent))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield (
            f"http://127.0.0.1:{server.server_address[1]}/index.html",
            runs.get_run(trained_ws, rid),
        )
    finally:
        server.shutdown()
        server.server_close()


def test_report_renders_in_chromium(served: tuple[str, dict[str, object]]) -> None:
    from playwright.sync_api import sync_playwright

    url, run = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, timeout=60_000)
        try:
            page = browser.new_page()
            failed: list[str] = []
            page.on("requestfailed", lambda r: failed.append(r.url))
            response = page.goto(url, wait_until="load", timeout=60_000)
            assert response is not None and response.ok
            images = page.evaluate(
                "() => Array.from(document.images).map(i => "
                "({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0}))"
            )
            assert len(images) >= 2, images
            assert all(i["ok"] for i in images), images
            assert not failed, failed
            decision = page.locator("#decision")
            assert decision.is_visible()
            assert decision.inner_text().strip() == run["decision"] == "promoted"
            assert page.locator("#reason").inner_text().strip() == "a <b> & c"
        finally:
            browser.close()
