"""One events database engine per (workspace, URL) per process: cached, disposed, fork-safe."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Connection, Engine, event, text

from seqrec.cli import build_cli
from seqrec.config import Workspace, load_workspace
from seqrec.data.engines import dispose_engines
from seqrec.features.materialize import materialize
from seqrec.features.repo import apply
from seqrec.testing import load_synth, make_workspace


@pytest.fixture
def engines_in_use() -> Iterator[dict[str, set[Engine]]]:
    """Every engine that opens a connection while the test runs, by URL (SQLAlchemy's
    ``engine_connect`` event on the Engine class: all engines, whoever built them)."""
    seen: dict[str, set[Engine]] = defaultdict(set)

    def record(conn: Connection) -> None:
        seen[conn.engine.url.render_as_string()].add(conn.engine)

    event.listen(Engine, "engine_connect", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "engine_connect", record)


@pytest.fixture
def _restore_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI writes SEQREC_PROJECT into os.environ: undo that."""
    monkeypatch.setenv("SEQREC_PROJECT", os.environ.get("SEQREC_PROJECT", ""))


@pytest.mark.slow
@pytest.mark.usefixtures("_restore_env")
def test_seqrec_train_uses_one_engine_per_database_url(
    ws: Workspace, engines_in_use: dict[str, set[Engine]]
) -> None:
    load_synth(ws, users=40, items=20)
    apply(ws)
    materialize(ws)
    dispose_engines()  # the run below starts without a cached engine
    engines_in_use.clear()
    args = ["train", "--model", "gpt2", "--epochs", "1", "--json", "--project", str(ws.root)]
    result = CliRunner().invoke(build_cli(), args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tag"].startswith("seqrec-gpt2:")
    counts = {url: len(engines) for url, engines in engines_in_use.items()}
    assert ws.events_url in counts
    assert counts == dict.fromkeys(counts, 1)


def test_workspace_engine_is_shared_per_workspace_and_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SEQREC_EVENTS_URL", raising=False)
    a = make_workspace(tmp_path / "a")
    b = make_workspace(tmp_path / "b")
    assert a.engine is a.engine
    assert load_workspace(a.root).engine is a.engine  # another Workspace object, same workspace
    assert b.engine is not a.engine
    monkeypatch.setenv("SEQREC_EVENTS_URL", f"sqlite:///{tmp_path}/other.db")
    other = a.engine
    assert other is not b.engine and str(other.url) == f"sqlite:///{tmp_path}/other.db"


def test_disposing_a_workspace_engines_gives_a_new_engine_next_time(ws: Workspace) -> None:
    first = ws.engine
    with first.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert dispose_engines(ws.root) == 1
    assert first.pool.checkedin() == 0  # its pooled connections are closed
    assert ws.engine is not first
    assert dispose_engines(ws.root) == 1 and dispose_engines(ws.root) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_a_forked_child_opens_its_own_connections_and_leaves_the_parents(
    profile_ws: Workspace,
) -> None:
    engine = profile_ws.engine
    with engine.connect() as conn:
        before = conn.connection.dbapi_connection
        conn.execute(text("SELECT 1"))
    assert engine.pool.checkedin() == 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's exit hooks
        try:
            child = profile_ws.engine
            inherited = child.pool.checkedin()
            with child.connect() as conn:
                fresh = conn.connection.dbapi_connection is not before
                value = conn.execute(text("SELECT 41 + 1")).scalar()
            os.write(write, json.dumps([child is engine, inherited, fresh, value]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        report = json.loads(f.read() or "null")
    os.waitpid(pid, 0)
    assert report == [True, 0, True, 42]  # same engine object, an empty pool, its own connection
    with engine.connect() as conn:  # the parent's pooled connection still works
        assert conn.connection.dbapi_connection is before
        assert conn.execute(text("SELECT 1")).scalar() == 1
