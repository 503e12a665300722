"""The run report in a real headless Chromium: every plot loads and the decision is shown.

Needs Debian's ``chromium`` at /usr/bin/chromium (``make browser`` installs it) and the
``playwright`` package (dev extra; its own browser download is not used). Without the browser
the test skips locally and fails in CI (CI=true).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import ARGS, CHROMIUM, require_browser, serve_directory

from seqrec.config import Workspace


@pytest.fixture
def served(trained_ws: Workspace, tmp_path: Path) -> Iterator[tuple[str, dict[str, object]]]:
    """(URL of a report served on 127.0.0.1, the run it reports)."""
    from seqrec import model_store, runs
    from seqrec.monitoring.report import build_report

    require_browser()
    tag = next(
        r["tag"] for r in model_store.list_models(trained_ws.model_store) if "gpt2" in r["tag"]
    )
    rid = runs.start_run(trained_ws, "train", model="gpt2", task="next-item")
    runs.finish_run(
        trained_ws, rid, "succeeded", candidate_tag=tag, decision="promoted", reason="a <b> & c"
    )
    index = build_report(trained_ws, rid, tmp_path / "report")
    with serve_directory(index.parent) as url:
        yield f"{url}{index.name}", runs.get_run(trained_ws, rid)


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
