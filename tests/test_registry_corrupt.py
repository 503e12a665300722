"""A damaged Feast registry file (embedded profile): every command that opens the feature store
says which file and what to do, without a protobuf traceback, and the advised repair works."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from seqrec.cli import build_cli
from seqrec.config import Workspace
from seqrec.errors import SeqrecError
from seqrec.features.definitions import VIEW_NAME
from seqrec.features.repo import apply, get_store
from seqrec.testing import load_synth, make_workspace


@pytest.fixture
def damaged(tmp_path: Path) -> tuple[Workspace, Path]:
    ws = make_workspace(tmp_path / "ws")
    load_synth(ws, users=30, items=15)
    apply(ws)
    registry = ws.path(ws.config.features.registry_path)
    assert registry.stat().st_size > 0
    registry.write_bytes(b"\xff\xfe not a registry \x00\x01" * 8)
    return ws, registry


def test_get_store_names_the_damaged_registry_and_the_repair(
    damaged: tuple[Workspace, Path],
) -> None:
    ws, registry = damaged
    with pytest.raises(SeqrecError) as err:
        get_store(ws)
    assert str(registry) in str(err.value)
    assert "registry is unreadable" in str(err.value)
    assert "seqrec features apply" in (err.value.hint or "")


@pytest.mark.parametrize("command", [("features", "materialize"), ("features", "apply")])
def test_commands_on_a_damaged_registry_print_one_error_not_a_traceback(
    damaged: tuple[Workspace, Path], command: tuple[str, ...]
) -> None:
    ws, registry = damaged
    result = CliRunner().invoke(build_cli(), [*command, "--project", str(ws.root)])
    assert result.exit_code == 1
    assert f"error: {registry}: the Feast registry is unreadable" in result.output
    assert "Traceback" not in result.output and "DecodeError" not in result.output


def test_moving_the_registry_aside_and_applying_again_restores_the_store(
    damaged: tuple[Workspace, Path],
) -> None:
    ws, registry = damaged
    registry.rename(registry.with_suffix(".damaged"))
    assert f"view {VIEW_NAME}" in apply(ws)
    assert get_store(ws).get_feature_view(VIEW_NAME).name == VIEW_NAME
