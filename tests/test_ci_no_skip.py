"""The top-level conftest's CI rule: under CI=true a skipped integration test, or a skip whose
reason names a missing service or binary, fails; locally the same tests skip."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

SKIPPING_TESTS = """
import shutil
import pytest

@pytest.mark.integration
def test_integration_skips_in_body():
    pytest.skip("a server this test wants")

@pytest.mark.integration
@pytest.mark.skipif(True, reason="redis-server not installed")
def test_integration_skipif():
    pass

@pytest.mark.skipif(shutil.which("no-such-binary-xyz") is None, reason="no-such-binary-xyz not installed")
def test_unmarked_missing_binary():
    pass

def test_unmarked_other_reason():
    pytest.skip("only meaningful on Windows")

@pytest.mark.xfail(reason="known bug", strict=False)
def test_xfail_stays_xfail():
    raise AssertionError("still broken")

def test_passes():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(ROOT_CONFTEST.read_text())
    pytester.makeini("[pytest]\nmarkers =\n    integration: uses a real external service\n")
    pytester.makepyfile(test_skipping=SKIPPING_TESTS)
    return pytester


def test_ci_true_turns_missing_component_skips_into_failures(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    result = suite.runpytest_inprocess("-rA")
    # a skip raised while setting up (skipif) is reported as an error, one in the body as a failure
    result.assert_outcomes(failed=1, errors=2, skipped=1, xfailed=1, passed=1)
    assert result.ret != 0
    result.stdout.fnmatch_lines(
        [
            "*test_integration_skips_in_body*an integration test may not skip in CI*",
        ]
    )
    out = result.stdout.str()
    assert "redis-server not installed" in out
    assert "no-such-binary-xyz not installed" in out
    result.stdout.fnmatch_lines(["SKIPPED*only meaningful on Windows"])


def test_without_ci_the_same_tests_skip(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = suite.runpytest_inprocess()
    result.assert_outcomes(skipped=4, xfailed=1, passed=1)
    assert result.ret == 0


def test_ci_false_is_not_ci(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "false")
    result = suite.runpytest_inprocess()
    result.assert_outcomes(skipped=4, xfailed=1, passed=1)
    assert result.ret == 0
