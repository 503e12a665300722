"""Docs generated from code stay in sync with it."""

from __future__ import annotations

from pathlib import Path

from seqrec.config import render_reference

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_is_current() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert text == render_reference(), "run: seqrec config --reference > docs/configuration.md"


def test_readme_shows_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
