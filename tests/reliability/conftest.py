"""The fault-injection suite: every scenario records what was tried and what happened.

Each test asks for the ``outcome`` fixture (:mod:`outcomes`, shared with the property tests)
and calls it once with its scenario's row; ``make reliability`` writes the table. Every test
here is marked ``reliability``.
"""

from __future__ import annotations

from pathlib import Path

import outcomes
import pytest


def pytest_configure(config: pytest.Config) -> None:
    outcomes.install(config)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.reliability)
