"""PostgreSQL unreachable during `seqrec features materialize`: a clear error, then a clean rerun.

A postgres-redis workspace reaches PostgreSQL through a TCP proxy run by this test (never the
machine's server itself), with a password in its URL (the local server trusts the connection,
so the password only has to stay hidden). Its events are materialized once; then more events
arrive and the feature table is refreshed, so an incremental materialization has work: it reads
those users' newest offline rows from PostgreSQL and writes them to Redis. Two outages hit that
run: the proxy refuses from the start (the database is down), and it drops every connection
part-way through the reply that carries the offline rows. Each run must exit 1 with one error
line naming the events database at its URL without the password (no traceback), and leave the
online watermark and every online row as they were. Once the proxy is back,
`materialize --incremental` must finish, every user's online row must equal the newest row of
the SQL truth, and the watermark must be at the last event.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from invariants import new_events, online_problems
from proxies import TcpProxy
from sqlalchemy.engine import make_url

from seqrec.config import Workspace
from seqrec.features.materialize import materialize, redis_online
from seqrec.features.repo import apply
from seqrec.features.snapshots import ensure_snapshot, events_state
from seqrec.testing import (
    PG_URL,
    REDIS_URL,
    drop_pg_redis_workspace,
    load_synth,
    make_pg_redis_workspace,
    require_services,
    unique_name,
)

pytestmark = pytest.mark.integration

#: the password in the workspace's events URL (or the one SEQREC_PG_URL already carries)
PASSWORD = make_url(PG_URL).password or "s3cret-Pa55"
#: a column name in the reply to the read of the users' newest offline rows
#: (:func:`seqrec.features.pg.latest_rows`), and how much of that reply passes before the cut
READ_MARKER = b"array_to_string"
CUT_AFTER = 16_000
#: users with new events: the reply carrying their rows is several times CUT_AFTER
NEW_USERS = 300

Online = dict[bytes, dict[bytes, bytes]]


class ReplyCutProxy(TcpProxy):
    """A :class:`TcpProxy` that can also drop everything part-way through one reply of the
    store: :meth:`cut_reply` arms it; once ``marker`` came back from the store and ``after``
    more bytes passed, it closes (``delay_s`` is not applied to replies)."""

    def __init__(self, upstream_port: int):
        super().__init__(upstream_port)
        self._marker: bytes | None = None
        self._tail = b""
        self._after = 0
        self._left: int | None = None  # bytes of the reply still to pass (None: not counting)
        #: bytes of the armed reply that passed before the cut
        self.reply_bytes = 0

    def cut_reply(self, marker: bytes, after: int) -> None:
        """Close once ``marker`` and then ``after`` more bytes came back from the store."""
        with self._lock:
            self._marker, self._tail, self._left, self.reply_bytes = marker, b"", None, 0
            self._after = after

    def _down(self, data: bytes) -> tuple[bytes, bool]:
        """What of ``data`` (from the store) to pass on, and whether to close after it."""
        with self._lock:
            start = 0
            if self._marker is not None:
                window = self._tail + data
                at = window.find(self._marker)
                if at < 0:
                    self._tail = window[-len(self._marker) :]
                    return data, False
                start = max(0, at + len(self._marker) - len(self._tail))
                self._marker, self._left = None, self._after
            if self._left is None:
                return data, False
            if len(data) - start < self._left:
                self._left -= len(data) - start
                self.reply_bytes += len(data) - start
                return data, False
            passed, self._left = self._left, None
            self.reply_bytes += passed
            return data[: start + passed], True

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        if up:
            super()._pump(src, dst, up)
            return
        try:
            while True:
                data = src.recv(65_536)
                if not data:
                    break
                data, cut = self._down(data)
                dst.sendall(data)
                if cut:
                    self.close()
                    return
        except OSError:
            pass
        self._end_pair(src, dst)


@pytest.fixture
def setup(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Workspace, ReplyCutProxy]]:
    """A postgres-redis workspace reaching PostgreSQL through a proxy, its events materialized
    once, then more events for ``NEW_USERS`` users and a refresh of the feature table."""
    require_services()
    for var in ("SEQREC_EVENTS_URL", "SEQREC_PG_URL", "SEQREC_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)  # the workspace's URLs, not the environment's
    pg = ReplyCutProxy(5432)
    with pg:
        url = make_url(PG_URL)
        assert (url.host, url.port or 5432) == ("127.0.0.1", 5432), f"{PG_URL} is not local"
        url = url.set(port=pg.port, password=PASSWORD).render_as_string(hide_password=False)
        extra = f'[events]\nurl = "{url}"\n\n[features]\nredis_url = "{REDIS_URL}"\n'
        ws = make_pg_redis_workspace(tmp_path / "ws", unique_name("opm", request), extra)
        assert f":{pg.port}/" in ws.events_url
        try:
            load_synth(ws, users=NEW_USERS, items=50)
            apply(ws)
            materialize(ws)
            new_events(ws, NEW_USERS, "more")
            ensure_snapshot(ws)  # the feature refresh: the rows the next run puts online
            yield ws, pg
        finally:
            if not pg.is_open:
                pg.start()
            drop_pg_redis_workspace(ws)


def materialize_cli(ws: Workspace, *more: str) -> Result:
    """`seqrec features materialize -p WS --incremental ...` in this process, starting like a
    new process would: without pooled connections."""
    from seqrec.cli import build_cli
    from seqrec.data.engines import dispose_engines

    dispose_engines(ws.root)
    args = ["features", "materialize", "-p", str(ws.root), "--incremental", *more]
    env = {
        "SEQREC_PROJECT": None,
        "SEQREC_EVENTS_URL": None,
        "SEQREC_PG_URL": None,
        "SEQREC_REDIS_URL": None,
        "SEQREC_LOAD_PLUGINS": "",
    }
    return CliRunner().invoke(build_cli(), args, env=env)


def online_hashes(ws: Workspace) -> Online:
    """Every online row of the workspace, as stored (key -> Redis hash)."""
    online = redis_online(ws)
    match = b"*" + ws.config.features.project.encode()
    keys = [k for k in online.client.scan_iter(match=match, count=10_000) if online.owns(k)]
    with online.client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        return dict(zip(keys, pipe.execute(), strict=True))


def failed_run_problems(
    result: Result,
    ws: Workspace,
    where: str,
    before: tuple[Any, Online],
    logged: list[logging.LogRecord],
) -> list[str]:
    """A run PostgreSQL dropped out of: exit 1 with one error line naming the events database
    at ``where`` (its host:port), no password, no traceback printed or ``logged``; the online
    watermark and rows as they were (``before``)."""
    problems = []
    text = result.output
    if result.exit_code != 1:
        problems.append(f"exit code {result.exit_code}, not 1, although PostgreSQL was down")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        problems.append(f"a raw {type(result.exception).__name__} escaped: {result.exception}")
    if "Traceback" in text:
        problems.append("a traceback was printed")
    problems += [
        f"{r.name} logged a traceback: {r.getMessage()}".splitlines()[0]
        for r in logged
        if r.exc_info
    ]
    if PASSWORD in text:
        problems.append("the PostgreSQL password was printed")
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    if len(errors) != 1 or "events database" not in errors[0] or where not in errors[0]:
        problems.append(f"not one error line naming the events database at {where}: {text!r}")
    state, rows = before
    if redis_online(ws).read_state() != state:
        problems.append("the online watermark moved although the run failed")
    after = online_hashes(ws)
    changed = sum(after.get(k) != v for k, v in rows.items()) + len(after.keys() - rows.keys())
    if changed:
        problems.append(f"{changed} online rows changed although the run failed")
    return problems


def _fail(
    ws: Workspace, pg: ReplyCutProxy, case: str, caplog: pytest.LogCaptureFixture
) -> list[str]:
    """One materialization with PostgreSQL ``refused`` or ``cut`` mid-read, checked."""
    before = (redis_online(ws).read_state(), online_hashes(ws))
    assert before[0] is not None and before[1], "nothing online before the outage"
    if case == "refused":
        pg.close()
    else:
        pg.cut_reply(READ_MARKER, CUT_AFTER)
    caplog.clear()
    result = materialize_cli(ws)
    if case == "cut":
        assert not pg.is_open, "the proxy never cut: the offline rows went through whole"
        assert pg.reply_bytes == CUT_AFTER
    pg.start()  # the database is back
    where = f"127.0.0.1:{pg.port}"
    problems = failed_run_problems(result, ws, where, before, caplog.records)
    return [f"{case}: {p}" for p in problems]


def test_postgres_unreachable_during_materialize_exits_1_moves_nothing_then_a_rerun_completes(
    setup: tuple[Workspace, ReplyCutProxy],
    outcome: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ws, pg = setup
    problems = _fail(ws, pg, "refused", caplog) + _fail(ws, pg, "cut", caplog)
    assert problems == []
    [stale] = online_problems(ws)  # the new events' rows are still to go online
    assert f"{NEW_USERS} of {NEW_USERS} users' online rows differ" in stale
    result = materialize_cli(ws, "--json")
    assert result.exit_code == 0, result.output
    assert online_problems(ws) == []
    state = redis_online(ws).read_state()
    assert state is not None and state["max_event_id"] == events_state(ws.engine)[1]
    outcome(
        "PostgreSQL unreachable during materialization (refused; dropped mid-read)",
        "store unreachable",
        cases=2,
        result="exit 1 naming the events database and its URL (password hidden), watermark "
        "and online rows unchanged; rerun after restore: every online row equals the SQL "
        "truth, watermark at the last event",
        data_lost="none",
    )


def test_the_failed_run_check_catches_a_raw_database_error_and_a_watermark_moved_first(
    setup: tuple[Workspace, ReplyCutProxy],
    monkeypatch: pytest.MonkeyPatch,
    outcome: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two broken materializations, each cut mid-read: one that lets the driver's error out
    raw (no translation to a clear error), one that writes the watermark before the rows."""
    from seqrec.features import materialize, pg

    def watermark_first(ws: Workspace, engine: Any, info: Any, *args: Any) -> Any:
        online = materialize.redis_online(ws)
        online.write_state({"max_event_id": info.max_event_id, "at": "before the rows"})
        online.write(pg.latest_rows(engine))

    ws, proxy = setup
    found = {}
    for case, attr, broken in (
        ("raw error", (pg, "_unreachable"), lambda engine, exc: exc),
        ("watermark first", (materialize, "_materialize_redis"), watermark_first),
    ):
        with monkeypatch.context() as m:
            m.setattr(*attr, broken)
            found[case] = _fail(ws, proxy, "cut", caplog)
    raw = found["raw error"]
    assert raw and raw[0].startswith("cut: a raw OperationalError escaped"), found
    assert found["watermark first"] == [
        "cut: the online watermark moved although the run failed"
    ], found
    outcome(
        "broken variant: materialization letting the database error out raw, or moving the "
        "watermark before the rows, PostgreSQL dropped mid-read",
        "store unreachable",
        cases=2,
        result="the failed-run check reports both (raw OperationalError; watermark moved)",
        data_lost="none",
    )
