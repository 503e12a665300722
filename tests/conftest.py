"""Shared fixtures: workspaces with real SQLite/DuckDB/Feast stores, and a trained one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from seqrec.config import Workspace
from seqrec.plugins import reset_plugin_manager
from seqrec.testing import load_synth, make_workspace, require_services, unique_name

# BentoML reads BENTOML_HOME once per process: give the whole session one model store.
_STORE = Path(tempfile.mkdtemp(prefix="seqrec-test-models-"))
os.environ["BENTOML_HOME"] = str(_STORE)


@pytest.fixture(params=["embedded", "postgres-redis"])
def profile_ws(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Workspace]:
    """An empty workspace in each profile; postgres-redis ones get their own PostgreSQL schema
    and Redis key namespace, dropped afterwards."""
    if request.param == "embedded":
        yield make_workspace(tmp_path / "ws")
        return
    require_services()
    from seqrec.testing import drop_pg_redis_workspace, make_pg_redis_workspace

    w = make_pg_redis_workspace(tmp_path / "ws", unique_name("t", request))
    try:
        yield w
    finally:
        drop_pg_redis_workspace(w)


@pytest.fixture
def pg_events_ws(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Workspace]:
    """A postgres-redis workspace in its own PostgreSQL schema, the events tables created;
    dropped afterwards."""
    require_services()
    from seqrec.data.schema import create_schema
    from seqrec.testing import drop_pg_redis_workspace, make_pg_redis_workspace

    ws = make_pg_redis_workspace(tmp_path / "ws", unique_name("ev", request))
    create_schema(ws.engine)
    try:
        yield ws
    finally:
        drop_pg_redis_workspace(ws)


@pytest.fixture(autouse=True)
def _fresh_plugins() -> Iterator[None]:
    """A fresh plugin manager per test."""
    reset_plugin_manager()
    yield
    reset_plugin_manager()


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """An empty workspace with fast settings; BentoML's store inside it."""
    return make_workspace(tmp_path / "ws")


@pytest.fixture(scope="session")
def trained_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace with synthetic events, features online, and gpt2 + popularity trained."""
    from seqrec.features.materialize import materialize
    from seqrec.features.repo import apply
    from seqrec.pipeline import train_model

    root = tmp_path_factory.mktemp("trained") / "ws"
    w = make_workspace(root)
    load_synth(w, users=120, items=60)
    apply(w)
    materialize(w)
    reset_plugin_manager()
    train_model(w, "popularity", progress=False)
    train_model(w, "gpt2", epochs=2, progress=False)
    return w
