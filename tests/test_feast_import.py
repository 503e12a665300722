"""Feast is imported without typeguard's import-time instrumentation (the larger half of
``import feast``), unless SEQREC_FEAST_TYPECHECKS=1 asks for the checks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import seqrec.features, feast\n"
    "from feast.feature_view import FeatureView\n"
    "print('typeguard' in FeatureView.__init__.__code__.co_names)\n"
)


def _instrumented(env_value: str | None) -> bool:
    env = {k: v for k, v in os.environ.items() if k != "SEQREC_FEAST_TYPECHECKS"}
    if env_value is not None:
        env["SEQREC_FEAST_TYPECHECKS"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1] == "True"


def test_feast_classes_are_not_instrumented_when_seqrec_features_imports_feast() -> None:
    assert _instrumented(None) is False


@pytest.mark.parametrize("value", ["1", "true"])
def test_seqrec_feast_typechecks_keeps_feasts_runtime_checks(value: str) -> None:
    assert _instrumented(value) is True


def test_the_passthrough_returns_what_it_decorates_in_both_decorator_forms() -> None:
    from seqrec.compat.feast_import import _passthrough

    def f(x: int) -> int:
        return x

    assert _passthrough(f) is f
    assert _passthrough(forward_ref_policy=None)(f) is f
