"""Stores unreachable while `bentoml serve seqrec.service:SeqrecService` answers requests.

One served process for the module: a postgres-redis workspace whose online store is a private
redis-server and whose PostgreSQL (events, the promotion pointer) is reached through a TCP
proxy run by this test; the service follows ``stage=production``.

- Redis stopped under load, then started again and re-materialized: every answer is a 200,
  the popularity fallback while Redis is down, /status says so, the service returns to model
  answers by itself, and the online rows equal the SQL truth. The same check then catches a
  recommender without the fallback.
- PostgreSQL unreachable: what the service reads from SQL is the promotion pointer (on every
  reload poll). It keeps serving the production model (not the BentoML labels, which may be a
  stale mirror), /status says the database is unreachable, and a promotion made once the
  database is back is served.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_service
from invariants import online_problems
from proxies import TcpProxy
from test_service import Server, serve_env, serving

from seqrec.config import Workspace
from seqrec.testing import (
    PG_URL,
    RedisServer,
    drop_pg_redis_workspace,
    free_port,
    latest_feature_rows,
    load_synth,
    make_pg_redis_workspace,
    require_services,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed"),
]

WAIT_S = 120.0  # generous: the suite shares two cores with other work
READY_S = 300.0


def wait_for(predicate: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT_S
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting after {WAIT_S:.0f}s for {what}")
        time.sleep(0.1)


@contextmanager
def start_serving(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[Server]:
    """test_service's ``serving``, waiting up to READY_S for /readyz (shared cores are slow)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(test_service, "READY_TIMEOUT_S", max(test_service.READY_TIMEOUT_S, READY_S))
        with serving(cmd, env, log) as srv:
            yield srv


def metric(srv: Server, name: str) -> float:
    for line in srv.get("/metrics").text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


# -- load and the check on its answers ---------------------------------------------------------


@dataclass
class Answer:
    user: str
    start: float  # time.monotonic() when asked
    end: float  # ... and when answered
    status: int  # HTTP status (0: no HTTP answer at all)
    body: dict[str, Any] | None


@dataclass
class Load:
    """Threads asking ``ask(user)`` -> (status, body) for ``users`` in turn until stopped."""

    ask: Callable[[str], tuple[int, dict[str, Any] | None]]
    users: list[str]
    threads: int = 2
    answers: list[Answer] = field(default_factory=list)
    in_flight: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for n in range(self.threads):
            t = threading.Thread(target=self._run, args=(n,), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def _run(self, n: int) -> None:
        i = n
        while not self._stop.is_set():
            user = self.users[i % len(self.users)]
            i += self.threads
            with self._lock:
                self.in_flight += 1
            t0 = time.monotonic()
            status, body = self.ask(user)
            with self._lock:
                self.in_flight -= 1
                self.answers.append(Answer(user, t0, time.monotonic(), status, body))

    def since(self, t: float) -> int:
        with self._lock:
            return sum(1 for a in self.answers if a.start >= t)

    def stop(self) -> list[Answer]:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=60)
        return list(self.answers)


def http_ask(srv: Server, k: int = 5) -> Callable[[str], tuple[int, dict[str, Any] | None]]:
    def ask(user: str) -> tuple[int, dict[str, Any] | None]:
        try:
            resp = srv.post({"user_id": user, "k": k})
        except httpx.TransportError as exc:
            return 0, {"error": repr(exc)}
        body = (
            resp.json()
            if resp.headers.get("content-type", "").startswith("application/json")
            else None
        )
        return resp.status_code, body

    return ask


def serving_problems(
    answers: list[Answer],
    known: set[str],
    down: tuple[float, float],
    recovered: float | None = None,
    k: int = 5,
) -> list[str]:
    """Every answer is a well-formed 200; answers asked and answered within ``down`` (the
    store unreachable) are the popularity fallback; answers to known users asked after
    ``recovered`` come from the model again."""
    problems = []
    errors = [a for a in answers if a.status != 200]
    if errors:
        first = errors[0]
        problems.append(
            f"{len(errors)} of {len(answers)} answers were errors, e.g. {first.status} "
            f"{first.body}"[:300]
        )
    ok = [a for a in answers if a.status == 200]
    bad = [
        a
        for a in ok
        if not (
            isinstance(a.body, dict)
            and len(a.body.get("items") or []) == k
            and isinstance(a.body.get("fallback"), bool)
            and str(a.body.get("model", "")).startswith("seqrec-")
        )
    ]
    if bad:
        problems.append(f"{len(bad)} answers malformed, e.g. {bad[0].body}"[:300])
    during = [a for a in ok if a.start >= down[0] and a.end <= down[1] and a not in bad]
    if not during:
        problems.append("no answer fell inside the outage: the check saw nothing")
    wrong = [a for a in during if a.body and a.body["fallback"] is not True]
    if wrong:
        problems.append(f"{len(wrong)} answers during the outage were not the fallback")
    if recovered is not None:
        after = [a for a in ok if a.start >= recovered and a.user in known and a not in bad]
        if not after:
            problems.append("no answer to a known user after recovery")
        stale = [a for a in after if a.body and a.body["fallback"] is not False]
        if stale:
            problems.append(f"{len(stale)} answers to known users after recovery were fallbacks")
    return problems


# -- the served workspace ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pg() -> Iterator[TcpProxy]:
    require_services()
    with TcpProxy(5432) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def sws(
    trained_ws: Workspace,
    redis: RedisServer,
    pg: TcpProxy,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Workspace]:
    """The served workspace: the trained workspace's events imported into its own PostgreSQL
    schema (through the proxy), materialized to the private Redis; a copy of its models, the
    gpt2 one promoted to stage=production."""
    from seqrec.features.materialize import materialize
    from seqrec.features.repo import apply
    from seqrec.promotion import promote

    root = tmp_path_factory.mktemp("outage-serving")
    store = root / "models"
    shutil.copytree(trained_ws.model_store, store)
    url = PG_URL.replace("127.0.0.1:5432", f"127.0.0.1:{pg.port}")
    extra = (
        f'[events]\nurl = "{url}"\n[features]\nredis_url = "{redis.url}"\n'
        f'[models]\nstore = "{store}"\n[serve]\nreload_poll_s = 0.5\nstore_retry_s = 0.5\n'
    )
    ws = make_pg_redis_workspace(root / "ws", f"os_{uuid.uuid4().hex[:10]}", extra)
    try:
        load_synth(ws, users=120, items=60)  # the trained workspace's events (same seed)
        apply(ws)
        materialize(ws)
        promote(ws, "gpt2", reason="test")
        yield ws
    finally:
        if not pg.is_open:
            pg.start()
        drop_pg_redis_workspace(ws)


@pytest.fixture(scope="module")
def server(sws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    exe = str(Path(sys.executable).parent / "bentoml")
    cmd = [exe, "serve", "seqrec.service:SeqrecService", "--host", "127.0.0.1"]
    env = serve_env(
        SEQREC_PROJECT=str(sws.root),
        SEQREC_MODEL="stage=production",
        BENTOML_HOME=str(sws.model_store),
        SEQREC_LOAD_PLUGINS="gpt2",
    )
    for key in ("SEQREC_PG_URL", "SEQREC_EVENTS_URL", "SEQREC_REDIS_URL"):
        env.pop(key, None)
    log = tmp_path_factory.mktemp("outage-serving-log") / "bentoml.log"
    with start_serving([*cmd, "--port", str(free_port())], env, log) as srv:
        yield srv


@pytest.fixture(scope="module")
def users(sws: Workspace) -> tuple[list[str], set[str]]:
    """(users to ask: known ones and two nobody knows, the known ones)."""
    known = sorted(str(u) for u in latest_feature_rows(sws)["user_id"])[:8]
    return [*known, "nobody-1", "nobody-2"], set(known)


# -- Redis ---------------------------------------------------------------------------------------


def test_redis_stopped_under_load_degrades_to_fallback_and_recovers_by_itself(
    server: Server,
    redis: RedisServer,
    sws: Workspace,
    users: tuple[list[str], set[str]],
    outcome: Callable[..., None],
) -> None:
    from seqrec.features.materialize import materialize

    asked, known = users
    assert server.get("/status").json()["online_store"] == "ok"
    load = Load(http_ask(server), asked).start()
    try:
        wait_for(lambda: load.since(0) >= 10, "answers before the outage")
        redis.stop()  # -- outage ------------------------------------------------------------
        down = time.monotonic()
        status = wait_for(
            lambda: (s := server.get("/status").json())["degraded"] and s, "/status degraded"
        )
        assert status["online_store"] == "unavailable"
        assert "unreachable" in status["last_error"]
        wait_for(lambda: load.since(down) >= 20, "answers during the outage")
        assert server.get("/readyz").status_code == 200
        assert metric(server, "seqrec_online_store_up") == 0.0
        assert metric(server, 'seqrec_fallbacks_total{reason="store_unavailable"}') >= 1
        up = time.monotonic()
        redis.start()  # -- back, empty (no persistence): re-materialized ------------------------
        materialize(sws, incremental=True)  # the watermark went with the data: a full run
        wait_for(lambda: server.get("/status").json()["online_store"] == "ok", "recovery")
        recovered = time.monotonic()
        wait_for(lambda: load.since(recovered) >= 10, "answers after recovery")
    finally:
        answers = load.stop()
    assert serving_problems(answers, known, (down, up), recovered) == []
    assert metric(server, "seqrec_online_store_up") == 1.0
    assert online_problems(sws) == []
    outcome(
        "Redis stopped while serving under load, then restarted",
        "store unreachable",
        cases=len(answers),
        result="every answer 200; popularity fallback while down, /status degraded; model "
        "answers again by itself; online rows equal the SQL truth after re-materializing",
        data_lost="none",
    )


def test_the_serving_check_catches_a_recommender_without_the_fallback(
    sws: Workspace,
    redis: RedisServer,
    users: tuple[list[str], set[str]],
    outcome: Callable[..., None],
) -> None:
    """The same check, on a recommender that lets the store error out instead of falling
    back (in this process, on the same workspace and Redis)."""
    from seqrec.errors import StoreUnavailable
    from seqrec.features.materialize import materialize
    from seqrec.recommend import Recommender

    class NoFallback(Recommender):
        def features(self, user_ids: list[str]) -> dict[str, list[Any]] | None:
            return self.lookup(user_ids)

    rec = NoFallback(sws, "gpt2", device="cpu")

    def ask(user: str) -> tuple[int, dict[str, Any] | None]:
        try:
            return 200, rec.recommend(user, k=5)
        except StoreUnavailable as exc:
            return 500, {"error": str(exc)}

    asked, known = users
    load = Load(ask, asked, threads=1).start()
    try:
        wait_for(lambda: load.since(0) >= 5, "answers before the outage")
        redis.stop()
        down = time.monotonic()
        wait_for(lambda: load.since(down) >= 5, "answers during the outage")
        up = time.monotonic()
    finally:
        answers = load.stop()
        redis.start()
        materialize(sws, incremental=True)
    problems = serving_problems(answers, known, (down, up))
    assert any("answers were errors" in p for p in problems), problems
    outcome(
        "broken variant: a recommender without the store fallback, Redis stopped",
        "store unreachable",
        cases=len(answers),
        result=f"the serving check reports it ({problems[0].split(',')[0]})",
        data_lost="none",
    )


# -- PostgreSQL ----------------------------------------------------------------------------------


def pointer_outage_problems(status: dict[str, Any], answered_by: str, pointer: str) -> list[str]:
    """While the database is unreachable: the model the pointer named last serves (in the
    reloader's status and in answers), and the status says why it cannot follow it."""
    problems = []
    if status["model"] != pointer or answered_by != pointer:
        problems.append(f"serves {status['model']} while the pointer names {pointer}")
    if "events database unreachable" not in str(status["last_error"]):
        problems.append(f"/status does not say the database is unreachable: {status}")
    return problems


def test_postgres_unreachable_keeps_the_production_model_says_so_and_follows_promotions_after(
    server: Server,
    pg: TcpProxy,
    sws: Workspace,
    users: tuple[list[str], set[str]],
    outcome: Callable[..., None],
) -> None:
    """The BentoML labels are made stale first (the state a crash between moving the pointer
    and mirroring the labels leaves): popularity carries stage=production, the pointer names
    gpt2. Reading the labels while the database is down would swap the wrong model in."""
    from seqrec import model_store
    from seqrec.data.engines import dispose_engines
    from seqrec.labels import set_labels
    from seqrec.promotion import promote

    gpt2 = model_store.locate("gpt2", sws.model_store)[0]
    pop = model_store.locate("popularity", sws.model_store)[0]
    user = sorted(users[1])[0]

    def reload_status() -> dict[str, Any]:
        return dict(server.get("/status").json()["reload"])

    assert wait_for(lambda: reload_status()["model"] == gpt2, "gpt2 served")
    wait_for(  # the online store answers (an earlier test stopped Redis)
        lambda: server.post({"user_id": user, "k": 5}).json()["fallback"] is False,
        "model answers",
    )
    set_labels(sws, pop, {"stage": "production"})
    set_labels(sws, gpt2, {"stage": "archived"})
    polls = reload_status()["polls"]
    wait_for(lambda: reload_status()["polls"] >= polls + 2, "polls with stale labels")
    assert reload_status()["model"] == gpt2  # the pointer wins while it can be read

    pg.close()  # -- outage ----------------------------------------------------------------------
    polls = reload_status()["polls"]
    wait_for(lambda: reload_status()["polls"] >= polls + 3, "polls during the outage")
    during = reload_status()
    answer = server.post({"user_id": user, "k": 5})
    assert answer.status_code == 200 and answer.json()["fallback"] is False
    assert pointer_outage_problems(during, answer.json()["model"], gpt2) == []

    pg.start()  # -- back ------------------------------------------------------------------------
    wait_for(lambda: reload_status()["last_error"] is None, "/status clear again")
    dispose_engines(sws.root)  # this process's pooled connections died with the proxy
    promote(sws, pop, reason="test")
    wait_for(lambda: reload_status()["model"] == pop, "the promoted model served")
    assert server.post({"user_id": user, "k": 5}).json()["model"] == pop
    outcome(
        "PostgreSQL unreachable while serving (the promotion pointer)",
        "store unreachable",
        cases=1,
        result="kept serving the production model (not the stale BentoML labels); /status "
        "names the unreachable database; a promotion after restore is served",
        data_lost="none",
    )


def test_the_pointer_check_catches_a_reload_that_reads_the_labels_when_the_database_is_down(
    sws: Workspace,
    pg: TcpProxy,
    users: tuple[list[str], set[str]],
    monkeypatch: pytest.MonkeyPatch,
    outcome: Callable[..., None],
) -> None:
    """The reloader (in this process, on the same workspace) with a pointer lookup that
    answers "no pointer" when the database does not answer, as seqrec once did: it follows
    the stale BentoML labels to another model."""
    from types import SimpleNamespace

    from seqrec import model_store, promotion
    from seqrec.data.engines import dispose_engines
    from seqrec.errors import StoreUnavailable
    from seqrec.labels import set_labels
    from seqrec.recommend import ModelReloader, Recommender, resolve_model_ref

    real_pointer = promotion.pointer

    def labels_when_down(ws: Workspace, selector: str) -> Any:
        try:
            return real_pointer(ws, selector)
        except StoreUnavailable:
            return promotion._MISSING  # "no pointer": the labels decide

    gpt2 = model_store.locate("gpt2", sws.model_store)[0]
    pop = model_store.locate("popularity", sws.model_store)[0]
    promotion.promote(sws, gpt2, reason="test")
    set_labels(sws, pop, {"stage": "production"})  # the mirror a crash left stale
    set_labels(sws, gpt2, {"stage": "archived"})
    models = {tag: Recommender(sws, tag, device="cpu") for tag in (gpt2, pop)}
    holder = SimpleNamespace(recommender=models[gpt2])
    reloader = ModelReloader(
        holder,
        threading.Lock(),
        lambda tag, serving: models[tag],
        lambda want: resolve_model_ref(want, sws.model_store, sws),
        "stage=production",
    )
    user = sorted(users[1])[0]
    monkeypatch.setattr(promotion, "pointer", labels_when_down)
    pg.close()
    try:
        reloader.poll()
        answer = holder.recommender.recommend(user, k=5)
        problems = pointer_outage_problems(reloader.status(), answer["model"], gpt2)
    finally:
        pg.start()
        dispose_engines(sws.root)
    assert problems[0] == f"serves {pop} while the pointer names {gpt2}", problems
    outcome(
        "broken variant: a reload that reads the BentoML labels while PostgreSQL is down",
        "store unreachable",
        cases=1,
        result="the pointer check catches it (the stale label's model served)",
        data_lost="none",
    )
