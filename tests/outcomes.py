"""The reliability table: what the fault-injection and bad-input suites tried, and what happened.

A pytest plugin shared by ``tests/reliability`` and ``tests/property`` (each conftest calls
:func:`install`; it registers once per session). A test asks for the ``outcome`` fixture and
records its row once, after its checks::

    def test_sigkill_during_import_loses_and_duplicates_nothing(outcome):
        ...
        outcome("SIGKILL during import", "process killed", cases=3,
                result="resumed; 0 duplicated, 0 lost", data_lost="none")

A property test counts its generated examples instead, one ``outcome.add(...)`` per example
and class of bad input it holds; rows of the same scenario from several tests are merged (cases
summed, passed only when every test passed).

A row whose scenario starts with "broken variant" is a check run against a deliberately
broken build: its verdict says the check caught it.

At the end of a session the rows of the tests that ran are written to
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
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPORT_JSON = ROOT / "bench" / "results" / "reliability.json"
REPORT_MD = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- reliability:begin -->", "<!-- reliability:end -->"
PLUGIN_NAME = "seqrec-outcomes"
BROKEN = "broken variant"


@dataclass
class Row:
    scenario: str  # e.g. "SIGKILL during materialization"
    #: "process killed", "store unreachable", "slow store", "corrupt file", "bad input"
    category: str
    cases: int  # how many distinct cases were run (kill points, payloads, generated examples...)
    result: str  # what happened, in a few words
    data_lost: str  # "none" or what was lost
    tests: list[str] = field(default_factory=list)
    passed: bool = False

    @property
    def verdict(self) -> str:
        if not self.passed:
            return "FAILED"
        if self.scenario.startswith(BROKEN):  # the check run against a broken build
            return "the check caught the broken build"
        return "survived, nothing lost" if self.data_lost == "none" else "FAILED"


#: (test node id, scenario) -> that test's row of the scenario
_ROWS: dict[tuple[str, str], Row] = {}
#: test node id -> whether it passed (call and teardown)
_PASSED: dict[str, bool] = {}


class Recorder:
    """The ``outcome`` fixture: records the rows of one test."""

    def __init__(self, nodeid: str):
        self.nodeid = nodeid

    def __call__(
        self, scenario: str, category: str, *, cases: int, result: str, data_lost: str
    ) -> None:
        """This test's row of ``scenario`` (a second call replaces the first)."""
        _ROWS[(self.nodeid, scenario)] = Row(
            scenario, category, cases, result, data_lost, tests=[self.nodeid]
        )

    def add(
        self, scenario: str, category: str, *, result: str, data_lost: str = "none", cases: int = 1
    ) -> None:
        """Count ``cases`` more for this test's row of ``scenario`` (a property test's
        examples, one call per example run)."""
        row = _ROWS.get((self.nodeid, scenario))
        if row is None:
            self(scenario, category, cases=cases, result=result, data_lost=data_lost)
        else:
            row.cases += cases


@pytest.fixture
def outcome(request: pytest.FixtureRequest) -> Iterator[Recorder]:
    """Record this test's row of the reliability table (after its checks)."""
    yield Recorder(request.node.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    if rep.when == "call":
        _PASSED[item.nodeid] = rep.passed
    elif rep.when == "teardown" and rep.failed:
        _PASSED[item.nodeid] = False
    return rep


def merged_rows() -> list[Row]:
    """One row per (category, scenario) of the tests that recorded one: cases summed, passed
    when every test passed, distinct results joined."""
    merged: dict[tuple[str, str], Row] = {}
    results: dict[tuple[str, str], dict[str, None]] = {}
    lost: dict[tuple[str, str], dict[str, None]] = {}
    for (nodeid, _), row in _ROWS.items():
        passed = _PASSED.get(nodeid, False)
        key = (row.category, row.scenario)
        have = merged.setdefault(key, Row(row.scenario, row.category, 0, "", "", [], True))
        have.cases += row.cases
        have.passed = have.passed and passed
        have.tests.append(nodeid)
        results.setdefault(key, {})[row.result] = None
        if row.data_lost != "none":
            lost.setdefault(key, {})[row.data_lost] = None
    for key, row in merged.items():
        row.result = "; ".join(results[key])
        row.data_lost = "; ".join(lost.get(key, {"none": None}))
    return sorted(
        merged.values(),
        key=lambda r: (r.category, r.scenario.startswith(BROKEN), r.scenario.lower()),
    )


def table(rows: list[Row], when: str, machine: str, python: str) -> str:
    """The Markdown table of ``rows`` with the line saying where it was written."""
    faults = [r for r in rows if r.category != "bad input" and not r.scenario.startswith(BROKEN)]
    classes = [r for r in rows if r.category == "bad input" and not r.scenario.startswith(BROKEN)]
    broken = [r for r in rows if r.scenario.startswith(BROKEN)]
    lines = [
        f"Written by `make reliability` on {when} ({machine}, Python {python}): "
        f"{len(faults)} fault scenarios, {len(classes)} bad-input classes and {len(broken)} "
        f"broken variants; {sum(r.cases for r in rows):,} cases.",
        "",
        "| category | scenario | cases | what happened | data lost | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r.category, r.scenario, f"{r.cases:,}", r.result, r.data_lost, r.verdict]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def write_report(rows: list[Row]) -> None:
    """``bench/results/reliability.json`` and the table in ``docs/reliability.md``."""
    when = datetime.now(UTC).isoformat(timespec="seconds")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"
    python = sys.version.split()[0]
    payload = {
        "when": when,
        "machine": machine,
        "python": python,
        "command": "make reliability",
        "rows": [{**asdict(r), "verdict": r.verdict} for r in rows],
    }
    REPORT_JSON.parent.mkdir(parents=True, exist_ok=True)
    REPORT_JSON.write_text(json.dumps(payload, indent=2) + "\n")
    text = REPORT_MD.read_text() if REPORT_MD.exists() else f"# Reliability\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    REPORT_MD.write_text(f"{head}{BEGIN}\n{table(rows, when, machine, python)}\n{END}{tail}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("SEQREC_RELIABILITY_REPORT") == "1" and _ROWS:
        write_report(merged_rows())


def install(config: pytest.Config) -> None:
    """Register this module as a plugin, once however many conftests ask."""
    if not config.pluginmanager.has_plugin(PLUGIN_NAME):
        config.pluginmanager.register(sys.modules[__name__], PLUGIN_NAME)
