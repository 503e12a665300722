"""``seqrec plugin new``: what it writes, what it refuses, and that the model it writes passes
the contract kit (installed for real in tests/test_plugin_author_path.py)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from seqrec.cli import build_cli
from seqrec.errors import SeqrecError
from seqrec.plugins import get_plugin_manager
from seqrec.scaffold import new_plugin, render
from seqrec.testing import check_plugin

RUFF = Path(sys.executable).parent / "ruff"


def invoke(*args: object) -> Result:
    return CliRunner().invoke(build_cli(), [str(a) for a in args])


def test_new_writes_the_plugin_layout(tmp_path: Path) -> None:
    target = new_plugin("shop_model", tmp_path)
    assert target == tmp_path / "seqrec-shop_model"
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "pyproject.toml",
        "seqrec_shop_model/__init__.py",
        "seqrec_shop_model/model.py",
        "tests/test_shop_model.py",
    ]
    project = tomllib.loads((target / "pyproject.toml").read_text())
    assert project["project"]["name"] == "seqrec-shop_model"
    assert project["project"]["entry-points"]["seqrec"] == {"shop_model": "seqrec_shop_model"}
    assert "class ShopModelModel(SeqModel)" in (target / "seqrec_shop_model/model.py").read_text()
    assert 'check_plugin("shop_model")' in (target / "tests/test_shop_model.py").read_text()


@pytest.mark.parametrize("name", ["x", "shop_model", "a" * 24])
def test_generated_code_is_lint_and_format_clean(tmp_path: Path, name: str) -> None:
    target = new_plugin(name, tmp_path)
    rules = "E,F,W,I,B,UP,SIM,RUF"
    for cmd in ([RUFF, "check", "--select", rules, "."], [RUFF, "format", "--check", "."]):
        done = subprocess.run(cmd, cwd=target, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("name", "example"),
    [("My-Model", "my_model"), ("2fast", None), ("", None), ("a" * 25, None), ("with space", None)],
)
def test_bad_name_is_a_clear_error(tmp_path: Path, name: str, example: str | None) -> None:
    with pytest.raises(SeqrecError, match="cannot name a plugin") as exc:
        new_plugin(name, tmp_path)
    assert exc.value.hint is not None and "lowercase letters" in exc.value.hint
    if example:
        assert f"e.g. '{example}'" in exc.value.hint
    assert list(tmp_path.iterdir()) == []


def test_taken_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SeqrecError, match="the name 'gpt2' is taken") as exc:
        new_plugin("gpt2", tmp_path)
    assert "plugin 'gpt2'" in str(exc.value)


def test_existing_directory_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "seqrec-mine").mkdir()
    (tmp_path / "seqrec-mine" / "notes.txt").write_text("mine")
    result = invoke("plugin", "new", "mine", "--dir", tmp_path)
    assert result.exit_code == 1
    assert "already exists" in result.output and "Traceback" not in result.output
    assert [p.name for p in (tmp_path / "seqrec-mine").iterdir()] == ["notes.txt"]


def test_cli_new_says_what_to_do_next(tmp_path: Path) -> None:
    result = invoke("plugin", "new", "fresh", "--dir", tmp_path)
    assert result.exit_code == 0, result.output
    assert f"created {tmp_path / 'seqrec-fresh'}" in result.output
    assert "pip install -e ." in result.output


@pytest.fixture
def generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The generated package importable and registered on a fresh manager, as its entry
    point would register it."""
    target = new_plugin("genmodel", tmp_path)
    monkeypatch.syspath_prepend(str(target))
    monkeypatch.setenv("SEQREC_LOAD_PLUGINS", "")
    get_plugin_manager().register(importlib.import_module("seqrec_genmodel"), name="genmodel")
    yield "genmodel"
    for mod in ("seqrec_genmodel", "seqrec_genmodel.model"):
        sys.modules.pop(mod, None)


def test_generated_model_passes_the_contract_kit(generated: str) -> None:
    check_plugin(generated)
    check_plugin(generated, {"d_model": 16, "repeat_bias": False})


def test_render_fills_every_placeholder() -> None:
    for rel, text in render("genmodel").items():
        assert "${" not in text and "$name" not in text, rel
