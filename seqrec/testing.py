"""Helpers for testing seqrec and its plugins: fast workspaces with real stores and data.

Plugin authors can use these in their own test suites (see docs/plugins.md), with the model
contract kit (:mod:`seqrec.contract`, re-exported here): ``check_plugin(name)`` runs it all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from seqrec.config import Workspace, load_workspace, render_default_config
from seqrec.contract import (  # noqa: F401  the model contract kit, imported from here
    BATCH_TOLERANCE,
    TRACE_TOLERANCE,
    check_batch_independence,
    check_deterministic,
    check_left_padding,
    check_model_contract,
    check_padding_never_ranked,
    check_plugin,
    check_tasks,
    check_traceable,
    check_vocab_growth,
    random_batch,
    scores_close,
)

# Small, fast settings for every workspace a test makes.
FAST = """
[train]
epochs = 2
batch_size = 64
num_threads = 2
eval_batch_size = 256

[features]
max_len = 20
"""


def make_workspace(root: Path, extra: str = "", profile: str = "embedded", *more: str) -> Workspace:
    """A workspace in ``root`` with fast settings, then ``extra`` (and ``more``) TOML applied
    on top (each may repeat sections)."""
    root.mkdir(parents=True, exist_ok=True)
    text = render_default_config(profile)
    for over in (FAST, extra, *more):
        text = _merge(text, over)
    (root / "seqrec.toml").write_text(text)
    return load_workspace(root)


def make_pg_redis_workspace(
    root: Path, name: str, extra: str = "", profile: str = "postgres-redis"
) -> Workspace:
    """A postgres-redis (or spark-redis) workspace isolated under ``name``: its own PostgreSQL
    schema (events, features, Feast registry) and Feast project (the namespace of its Redis
    keys). Remove it with :func:`drop_pg_redis_workspace`."""
    isolate = f"""
[events]
pg_schema = "{name}"

[features]
project = "{name}"
"""
    ws = make_workspace(root, isolate, profile, extra)
    drop_pg_redis_workspace(ws)  # leftovers of an interrupted earlier run
    return ws


def drop_pg_redis_workspace(ws: Workspace) -> None:
    """Drop the workspace's PostgreSQL schema and its Redis keys."""
    from sqlalchemy import text

    from seqrec.data.engines import dispose_engines
    from seqrec.data.schema import quoted_identifier
    from seqrec.features.materialize import redis_online

    with ws.engine.begin() as conn:
        schema = quoted_identifier(ws.engine, ws.config.events.pg_schema)
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    dispose_engines(ws.root)
    redis_online(ws).drop()
    from seqrec.text.features import drop_item_online

    drop_item_online(ws)


def _merge(base: str, overrides: str) -> str:
    """Replace ``key = value`` lines of ``base`` with those in ``overrides`` (same section)."""
    import tomllib

    over = tomllib.loads(overrides)
    out, section = [], ""
    for line in base.splitlines():
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            section = s.strip("[]")
        elif "=" in s and (not s.startswith("#") or s.endswith("= ...")):
            key = s.lstrip("# ").split("=", 1)[0].strip()  # "# key = ...": unset, preset's
            if section in over and key in over[section]:
                val = over[section][key]
                line = f"{key} = {_toml_value(val)}"
        out.append(line)
    return "\n".join(out) + "\n"


def _toml_value(val: object) -> str:
    """``val`` as a TOML value (booleans lower-case, strings quoted)."""
    if isinstance(val, bool):
        return "true" if val else "false"
    if isinstance(val, str):
        return json.dumps(val)
    return repr(val)


PG_URL = os.environ.get("SEQREC_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SEQREC_REDIS_URL", "redis://127.0.0.1:6379/0")


def require_services() -> None:
    """PostgreSQL and Redis must answer: locally a missing one skips, in CI it fails."""
    problems = []
    try:
        import psycopg

        psycopg.connect(PG_URL.replace("+psycopg", ""), connect_timeout=3).close()
    except Exception as exc:
        problems.append(f"PostgreSQL at {PG_URL}: {exc}")
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        problems.append(f"Redis at {REDIS_URL}: {exc}")
    if problems:
        import pytest

        msg = "; ".join(problems)
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"required service down in CI: {msg}")
        pytest.skip(f"service not available: {msg}")


def unique_name(prefix: str, request: Any) -> str:
    """A short identifier unique to this test (and process) for schemas and key prefixes."""
    import hashlib

    digest = hashlib.sha1(f"{request.node.nodeid}:{os.getpid()}".encode()).hexdigest()[:10]
    return f"{prefix}_{digest}"


def load_synth(ws: Workspace, users: int, items: int, seed: int = 3) -> int:
    """Import a small synthetic log into ``ws``; returns the number of events added."""
    from seqrec.data.synth import import_synth

    engine = ws.engine
    return import_synth(engine, users, items, seed, mean_events_per_user=30).rows_added


def import_rows(ws: Workspace, rows: Any, source: str) -> int:
    """Import ``RawEvent`` rows as one import named ``source``; returns the rows added."""
    import hashlib

    from seqrec.data.importers import import_events

    engine = ws.engine
    sha = hashlib.sha256(source.encode()).hexdigest()
    rep = import_events(engine, enumerate(rows, 1), source=source, sha256=sha, fmt="test")
    return int(rep.rows_added)


# -- serving: a private Redis and a workspace that serves from it -------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` on a free port, without persistence (never the machine's
    shared one): ``stop()`` and ``start()`` again on the same port simulate an outage.
    ``password``: started with ``--requirepass`` (the URL carries it)."""

    def __init__(self, port: int | None = None, password: str | None = None):
        import shutil

        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.exe = exe
        self.port = port or free_port()
        self.password = password
        self.proc: Any = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20.0) -> RedisServer:
        import subprocess
        import tempfile
        import time

        import redis

        self.proc = subprocess.Popen(
            [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tempfile.gettempdir(),
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                client.close()
                return self
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serving_workspace(root: Path, redis_url: str, model_store: Path, project: str) -> Workspace:
    """A postgres-redis workspace that only serves: online features in Redis at ``redis_url``
    (Feast ``project`` namespace), models from ``model_store``. It never touches PostgreSQL."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "seqrec.toml").write_text(
        'profile = "postgres-redis"\n\n'
        "[features]\n"
        f'project = "{project}"\n'
        f'redis_url = "{redis_url}"\n\n'
        "[models]\n"
        f'store = "{model_store}"\n'
    )
    return load_workspace(root)


def latest_feature_rows(ws: Workspace) -> Any:
    """Each user's newest feature row, computed in SQL from ``ws``'s events (what
    materialization puts online)."""
    from seqrec.features.sql import compute_feature_rows

    engine = ws.engine
    rows = compute_feature_rows(engine, ws.config.features.max_len)
    rows = rows.sort_values(["user_id", "event_timestamp"], kind="stable")
    return rows.groupby("user_id", sort=False).tail(1).reset_index(drop=True)


def write_online(ws: Workspace, rows: Any) -> int:
    """Write feature rows into ``ws``'s Redis online store (Feast's layout)."""
    from seqrec.features.materialize import redis_online

    return int(redis_online(ws).write(rows))
