"""Serving from the Redis online store (postgres-redis profile), through an outage.

A private ``redis-server`` on a free port (never the machine's shared one) holds the online
features; the test stops it while ``seqrec serve`` runs, sees the service degrade to the
popularity fallback (status, metrics, still ready), starts Redis again, re-materializes, and sees
the service recover by itself.
"""

from __future__ import annotations

import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_service import Server, free_port, serve_env, serving

from seqrec.config import Workspace
from seqrec.testing import RedisServer, latest_feature_rows, serving_workspace, write_online

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed"),
]

WAIT_S = 60.0


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def rows(trained_ws: Workspace) -> Any:
    return latest_feature_rows(trained_ws)


@pytest.fixture(scope="module")
def redis_ws(
    trained_ws: Workspace, redis: RedisServer, rows: Any, tmp_path_factory: pytest.TempPathFactory
) -> Workspace:
    root = tmp_path_factory.mktemp("redis-serve") / "ws"
    project = f"t{uuid.uuid4().hex[:10]}"
    ws = serving_workspace(root, redis.url, trained_ws.model_store, project)
    assert write_online(ws, rows) == len(rows)
    return ws


@pytest.fixture(scope="module")
def server(redis_ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    exe = str(Path(sys.executable).parent / "seqrec")
    cmd = [exe, "serve", "--project", str(redis_ws.root), "--port", str(free_port())]
    log = tmp_path_factory.mktemp("redis-serve-log") / "seqrec-serve.log"
    with serving(cmd, serve_env(), log) as srv:
        yield srv


def _metric(srv: Server, name: str) -> float:
    for line in srv.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def _wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting after {WAIT_S:.0f}s for {what}")
        time.sleep(0.2)


def test_outage_degrades_and_recovers(
    server: Server, redis: RedisServer, redis_ws: Workspace, rows: Any
) -> None:
    user = str(rows["user_id"].iloc[0])
    before = server.post({"user_id": user, "k": 5}).json()
    assert before["fallback"] is False and before["feature_age_s"] is not None
    assert server.get("/status").json()["online_store"] == "ok"
    assert _metric(server, "seqrec_online_store_up") == 1.0
    batch = server.post({"user_ids": [user, "nobody"], "k": 3}, "/recommend_batch").json()
    assert [r["fallback"] for r in batch["results"]] == [False, True]

    redis.stop()  # -- outage --------------------------------------------------------------------
    during = server.post({"user_id": user, "k": 5})
    assert during.status_code == 200, during.text
    assert during.json()["fallback"] is True and during.json()["feature_age_s"] is None
    status = server.get("/status").json()
    assert status["degraded"] is True and status["online_store"] == "unavailable"
    assert "unreachable" in status["last_error"]
    assert _metric(server, "seqrec_online_store_up") == 0.0
    assert _metric(server, "seqrec_store_errors_total") >= 1
    assert _metric(server, 'seqrec_fallbacks_total{reason="store_unavailable"}') >= 1
    assert server.get("/readyz").status_code == 200  # degraded but still answering
    batch = server.post({"user_ids": [user, "nobody"], "k": 3}, "/recommend_batch").json()
    assert [r["fallback"] for r in batch["results"]] == [True, True]
    for _ in range(20):  # many requests while down: every one answered, none an error
        assert server.post({"user_id": user, "k": 2}).status_code == 200

    redis.start()  # -- back (empty: no persistence), re-materialized -----------------------------
    write_online(redis_ws, rows)
    # no traffic needed: the service probes the store in the background while degraded
    _wait_for(lambda: server.get("/status").json()["online_store"] == "ok", "recovery")
    assert _metric(server, "seqrec_online_store_up") == 1.0
    after = server.post({"user_id": user, "k": 5}).json()
    assert after["fallback"] is False
    assert [r["item_id"] for r in after["items"]] == [r["item_id"] for r in before["items"]]
