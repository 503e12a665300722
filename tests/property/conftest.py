"""Property tests (hypothesis) of generated bad input: the importers, the config loader, label
definitions, the API payloads, and SQL injection attempts. Run them alone with
``pytest -m property``; ``SEQREC_PROPERTY_EXAMPLES=500`` runs more examples per test, and
``--hypothesis-profile=no-shrink`` reports a failure without minimising it first.

Each test counts its examples per class of bad input in the reliability table
(:mod:`outcomes`, shared with tests/reliability; ``make reliability`` writes it)."""

import outcomes
import pytest
from hypothesis import Phase, settings

settings.register_profile("no-shrink", phases=[Phase.explicit, Phase.reuse, Phase.generate])


def pytest_configure(config: pytest.Config) -> None:
    outcomes.install(config)
