"""The fault-injection suite: every scenario records what was tried and what happened.

Each test asks for the ``outcome`` fixture and calls it once with its scenario's row::

    def test_sigkill_during_import_loses_and_duplicates_nothing(outcome):
        ...
        outcome("SIGKILL during import", "process killed", cases=3,
                result="resumed; 0 duplicated, 0 lost", data_lost="none")

A row whose scenario starts with "broken variant" is a check run against a deliberately
broken build: its verdict says the check caught it.

At the end of a session the rows of passed tests are written to
``bench/results/reliability.json`` and the table in ``docs/reliability.md`` (between its
``<!-- reliability:begin -->`` / ``<!-- reliability:end -->`` markers) when
``SEQREC_RELIABILITY_REPORT=1`` (``make reliability`` sets it); a failed test's row is never
written as survived.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REPORT_JSON = ROOT / "bench" / "results" / "reliability.json"
REPORT_MD = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- reliability:begin -->", "<!-- reliability:end -->"


@dataclass
class Row:
    scenario: str  # e.g. "SIGKILL during materialization"
    category: (
        str  # "process killed", "store unreachable", "slow store", "corrupt file", "bad input"
    )
    cases: int  # how many distinct cases the test ran (kill points, payloads, files...)
    result: str  # what happened, in a few words
    data_lost: str  # "none" or what was lost
    test: str = ""
    passed: bool = False


_ROWS: dict[str, Row] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def outcome(request: pytest.FixtureRequest) -> Iterator[Callable[..., None]]:
    """Record this test's row of the reliability table (call it once, after the checks)."""

    def record(scenario: str, category: str, *, cases: int, result: str, data_lost: str) -> None:
        _ROWS[request.node.nodeid] = Row(
            scenario, category, cases, result, data_lost, test=request.node.nodeid
        )

    yield record


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome_ = yield
    rep = outcome_.get_result()
    if rep.when == "call" and item.nodeid in _ROWS:
        _ROWS[item.nodeid].passed = rep.passed


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("SEQREC_RELIABILITY_REPORT") != "1" or not _ROWS:
        return
    rows = sorted(_ROWS.values(), key=lambda r: (r.category, r.scenario))
    payload = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": sys.version.split()[0],
        "command": "make reliability",
        "rows": [asdict(r) for r in rows],
    }
    REPORT_JSON.parent.mkdir(parents=True, exist_ok=True)
    REPORT_JSON.write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        f"Written by `make reliability` on {payload['when']} ({payload['machine']}, "
        f"Python {payload['python']}); {len(rows)} scenarios, "
        f"{sum(r.cases for r in rows)} cases.",
        "",
        "| category | scenario | cases | what happened | data lost | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r.passed:
            verdict = "FAILED"
        elif r.scenario.startswith("broken variant"):  # the check run against a broken build
            verdict = "the check caught the broken build"
        else:
            verdict = "survived, nothing lost" if r.data_lost == "none" else "FAILED"
        lines.append(
            f"| {r.category} | {r.scenario} | {r.cases} | {r.result} | {r.data_lost} | {verdict} |"
        )
    table = "\n".join(lines)
    text = REPORT_MD.read_text() if REPORT_MD.exists() else f"# Reliability\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    REPORT_MD.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
