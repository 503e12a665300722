"""What a user sees from ``seqrec`` carries no library deprecation warnings: the known ones are
dropped at the command line's entry point only (``seqrec.cli.main``), so code calling the
libraries directly, tests included, still sees them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from seqrec import cli
from seqrec.plugins import PluginWarning

SEQREC = str(Path(sys.executable).parent / "seqrec")
WARNING_LINE = re.compile(r"\b\w*Warning\b")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQREC_")}
    env.pop("BENTOML_HOME", None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


@pytest.mark.slow
def test_pipeline_commands_print_no_warning_lines(tmp_path: Path) -> None:
    """init, synth, features (ibis and pathspec deprecations under Feast) and a training run."""
    ws = str(tmp_path / "ws")
    for args in (
        ["init", ws],
        ["events", "synth", "--users", "40", "--items", "20", "-p", ws],
        ["features", "apply", "-p", ws],
        ["features", "materialize", "-p", ws],
        ["train", "--model", "popularity", "-p", ws],
    ):
        done = subprocess.run(
            [SEQREC, *args], capture_output=True, text=True, env=_env(), timeout=900
        )
        assert done.returncode == 0, done.stderr[-3000:]
        noisy = [line for line in done.stderr.splitlines() if WARNING_LINE.search(line)]
        assert not noisy, f"seqrec {' '.join(args)}:\n" + "\n".join(noisy)


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``main``'s warning handling in front of a recorder standing for the usual output
    (undone after the test): what reaches the recorder is what a user would see."""
    seen: list[str] = []

    def record(message: Warning | str, category: type[Warning], *_: object) -> None:
        seen.append(f"{category.__name__}: {message}")

    monkeypatch.setattr(warnings, "showwarning", record)
    cli.quiet_library_warnings()
    return seen


def _emit(message: str, category: type[Warning]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(message, category, stacklevel=1)


def test_known_library_warnings_are_dropped(shown: list[str]) -> None:
    for category, message in cli.QUIET_WARNINGS:
        _emit(f"{message} (as the library words it)", category)
    assert shown == []


def test_other_warnings_are_still_shown(shown: list[str]) -> None:
    _emit("something else is deprecated", DeprecationWarning)
    _emit("fetch_arrow_table() is deprecated", UserWarning)  # same words, other category
    assert shown == [
        "DeprecationWarning: something else is deprecated",
        "UserWarning: fetch_arrow_table() is deprecated",
    ]


def test_seqrec_warnings_read_as_plain_lines(
    shown: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    _emit("seqrec plugin 'x' failed to load: boom", PluginWarning)
    assert shown == []
    assert capsys.readouterr().err == "warning: seqrec plugin 'x' failed to load: boom\n"


def test_library_code_still_sees_the_warnings() -> None:
    """Importing and building the command line installs nothing: only ``main`` does."""
    before = warnings.showwarning
    cli.build_cli()
    assert warnings.showwarning is before
