"""A slow Redis (every reply held 200 ms by a proxy) under a served model.

The service waits at most ``[serve] store_timeout_ms`` (default 100 ms) for the online store:
while Redis is slower than that, every request must still be answered (the popularity
fallback), /status must say the store is too slow, /livez and /status must answer while the
clients keep requests in flight, and once Redis is quick again the service must return to
model answers by itself.
"""

from __future__ import annotations

import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from proxies import TcpProxy
from test_outage_serving import Load, http_ask, metric, serving_problems, start_serving, wait_for
from test_service import Server, serve_env

from seqrec.config import Workspace, load_workspace
from seqrec.testing import (
    RedisServer,
    free_port,
    latest_feature_rows,
    serving_workspace,
    write_online,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed"),
]

DELAY_S = 0.2  # each reply of the slow Redis, held this long


@pytest.fixture(scope="module")
def slow(
    trained_ws: Workspace, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, TcpProxy, list[str], Path]]:
    """(the served model, the proxy in front of its Redis, known users, the workspace's
    root). The workspace keeps
    the default store_timeout_ms; it retries the store every 0.2 s (not 1 s), so slow lookups
    keep happening while the test watches."""
    root = tmp_path_factory.mktemp("slow-redis") / "ws"
    with RedisServer() as redis, TcpProxy(redis.port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        serving_workspace(root, url, trained_ws.model_store, f"t{uuid.uuid4().hex[:10]}")
        toml = root / "seqrec.toml"
        toml.write_text(toml.read_text() + "\n[serve]\nstore_retry_s = 0.2\n")
        ws = load_workspace(root)
        rows = latest_feature_rows(trained_ws)
        write_online(ws, rows)
        exe = str(Path(sys.executable).parent / "bentoml")
        cmd = [exe, "serve", "seqrec.service:SeqrecService", "--host", "127.0.0.1"]
        env = serve_env(SEQREC_PROJECT=str(root), SEQREC_MODEL="gpt2", SEQREC_LOAD_PLUGINS="gpt2")
        env.pop("SEQREC_REDIS_URL", None)
        log = root.parent / "bentoml.log"
        with start_serving([*cmd, "--port", str(free_port())], env, log) as srv:
            yield srv, proxy, sorted(str(u) for u in rows["user_id"])[:8], root


def test_a_slow_redis_gets_fallback_answers_within_the_timeout_and_the_service_stays_live(
    slow: tuple[Server, TcpProxy, list[str], Path], outcome: Callable[..., None]
) -> None:
    server, proxy, known, _ = slow
    wait_for(
        lambda: server.post({"user_id": known[0], "k": 5}).json()["fallback"] is False,
        "model answers from the quick store",
    )
    proxy.delay_s = DELAY_S  # -- slow ---------------------------------------------------------
    slow_from = time.monotonic()
    load = Load(http_ask(server), [*known, "nobody"], threads=3).start()
    probes: list[tuple[str, int, bool]] = []  # (path, status, requests in flight meanwhile)
    try:
        status: dict[str, Any] = wait_for(
            lambda: (s := server.get("/status").json())["degraded"] and s, "/status degraded"
        )
        while load.since(slow_from) < 40:
            for path in ("/livez", "/status"):
                code = server.get(path).status_code
                probes.append((path, code, load.in_flight > 0))
        held = proxy.delayed
        slow_to = time.monotonic()
        proxy.delay_s = 0.0  # -- quick again ------------------------------------------------
        wait_for(lambda: server.get("/status").json()["online_store"] == "ok", "recovery")
        recovered = time.monotonic()
        wait_for(lambda: load.since(recovered) >= 10, "answers after recovery")
    finally:
        answers = load.stop()
    assert serving_problems(answers, set(known), (slow_from, slow_to), recovered) == []
    assert "too slow: no answer within 100 ms" in status["last_error"], status
    assert held > 0  # lookups did reach the slow store
    assert [p for p in probes if p[1] != 200] == []
    assert any(busy for _, _, busy in probes), "no probe answered while requests were in flight"
    assert metric(server, 'seqrec_fallbacks_total{reason="store_unavailable"}') >= 1
    outcome(
        "Redis answering every reply after 200 ms while serving",
        "slow store",
        cases=len(answers),
        result="every answer 200: the popularity fallback once store_timeout_ms (100 ms) "
        "expired, /status 'too slow'; /livez and /status answered meanwhile; model answers "
        "again once Redis was quick",
        data_lost="none",
    )


def test_the_serving_check_catches_a_recommender_that_waits_for_a_slow_store(
    slow: tuple[Server, TcpProxy, list[str], Path], outcome: Callable[..., None]
) -> None:
    """The same check, on a recommender (in this process, same workspace and proxy) whose
    store_timeout_ms bound is taken out: it waits for every slow reply."""
    from seqrec.errors import SeqrecError
    from seqrec.recommend import Recommender

    class Patient(Recommender):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.reader.set_timeout(30.0)  # instead of store_timeout_ms

    _, proxy, known, root = slow
    rec = Patient(load_workspace(root), "gpt2", device="cpu")

    def ask(user: str) -> tuple[int, dict[str, Any] | None]:
        try:
            return 200, rec.recommend(user, k=5)
        except SeqrecError as exc:
            return 500, {"error": str(exc)}

    load = Load(ask, known, threads=1).start()
    try:
        wait_for(lambda: load.since(0) >= 3, "answers from the quick store")
        proxy.delay_s = DELAY_S
        slow_from = time.monotonic()
        wait_for(lambda: load.since(slow_from) >= 5, "answers from the slow store")
        slow_to = time.monotonic()
    finally:
        proxy.delay_s = 0.0
        answers = load.stop()
    problems = serving_problems(answers, set(known), (slow_from, slow_to))
    assert any("were not the fallback" in p for p in problems), problems
    outcome(
        "broken variant: a recommender without the store timeout, Redis slow",
        "slow store",
        cases=len(answers),
        result=f"the serving check catches it ({problems[0]})",
        data_lost="none",
    )
