"""Repository-wide pytest setup (applies to tests/ and every plugin's tests/)."""

from __future__ import annotations

import os
import re
from collections.abc import Generator
from typing import Any

import pytest
import torch

# The test models are tiny: one thread is faster than two fighting over two cores.
torch.set_num_threads(1)

#: skip reasons that say a service, binary or package the suite needs is absent
MISSING_COMPONENT = re.compile(
    r"not installed|not available|unavailable|not running|not found|missing|"
    r"could not connect|cannot connect|connection refused|service down|no such file",
    re.IGNORECASE,
)


def in_ci() -> bool:
    """True when CI=true (or 1/yes): skips that hide missing components become failures."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, Any, None]:
    """Under CI=true a skipped `integration` test, or any skip whose reason names a missing
    service or binary, is reported as a failure: CI must not pass with parts untested."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not in_ci():
        return
    reason = _skip_reason(report)
    integration = item.get_closest_marker("integration") is not None
    if not (integration or MISSING_COMPONENT.search(reason)):
        return
    why = "an integration test" if integration else "a skip for a missing component"
    report.outcome = "failed"
    report.longrepr = (
        f"{item.nodeid}: {why} may not skip in CI (CI=true): {reason}\n"
        "Start the missing service or install the missing binary; locally, unset CI to skip."
    )
