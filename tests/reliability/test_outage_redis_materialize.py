"""Redis unreachable during `seqrec features materialize`: a clear error, then a clean rerun.

A private redis-server that wants a password sits behind a TCP proxy run by this test; the
workspace's Redis URL carries the password. Two outages: the proxy refuses from the start, and
it drops every connection part-way through the stream of HSETs. Each run must exit non-zero
with an error naming the online store and its URL without the password (no traceback), and must
not move the online watermark. Once the proxy is back, `materialize --incremental` must finish
and every user's online row must equal the newest row of the SQL truth.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from invariants import online_problems
from proxies import TcpProxy

from seqrec.config import Workspace
from seqrec.features.materialize import redis_online
from seqrec.features.repo import apply
from seqrec.features.snapshots import events_state
from seqrec.redact import redact_url
from seqrec.testing import (
    RedisServer,
    drop_pg_redis_workspace,
    load_synth,
    make_pg_redis_workspace,
    require_services,
    unique_name,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed"),
]

PASSWORD = "s3cret-Pa55"
#: bytes sent to Redis before the proxy drops everything: part-way through the HSET stream
CUT_AFTER = 40_000


@pytest.fixture
def setup(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Workspace, TcpProxy]]:
    """A postgres-redis workspace with events and Feast objects applied, whose online store is
    a private password-protected Redis behind a proxy."""
    require_services()
    with RedisServer(password=PASSWORD) as server, TcpProxy(server.port) as proxy:
        url = f"redis://:{PASSWORD}@127.0.0.1:{proxy.port}/0"
        extra = f'[features]\nredis_url = "{url}"\n'
        ws = make_pg_redis_workspace(tmp_path / "ws", unique_name("om", request), extra)
        try:
            load_synth(ws, users=300, items=50)
            apply(ws)
            yield ws, proxy
        finally:
            if not proxy.is_open:
                proxy.start()
            drop_pg_redis_workspace(ws)


def materialize_cli(ws: Workspace, *more: str) -> Result:
    """`seqrec features materialize -p WS ...`, in this process (the real command line)."""
    from seqrec.cli import build_cli

    args = ["features", "materialize", "-p", str(ws.root), *more]
    env = {"SEQREC_PROJECT": None, "SEQREC_REDIS_URL": None, "SEQREC_LOAD_PLUGINS": ""}
    return CliRunner().invoke(build_cli(), args, env=env)


def failed_run_problems(result: Result, ws: Workspace, safe_url: str) -> list[str]:
    """A run Redis dropped out of: non-zero exit, a clear error naming the store and its URL
    without the password, no traceback, the watermark not moved."""
    problems = []
    text = result.output
    if result.exit_code == 0:
        problems.append("exit code 0 although Redis was unreachable")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        problems.append(f"a raw {type(result.exception).__name__} escaped: {result.exception}")
    if "Traceback" in text:
        problems.append("a traceback was printed")
    if PASSWORD in text:
        problems.append("the Redis password was printed")
    if "online store unreachable" not in text or safe_url not in text:
        problems.append(f"the error does not name the online store at {safe_url}: {text!r}")
    if redis_online(ws).read_state() is not None:
        problems.append("the online watermark moved although the run failed")
    return problems


def test_redis_unreachable_during_materialize_exits_non_zero_then_a_rerun_completes(
    setup: tuple[Workspace, TcpProxy], outcome: Callable[..., None]
) -> None:
    ws, proxy = setup
    safe_url = redact_url(ws.redis_url)
    assert PASSWORD not in safe_url and f"127.0.0.1:{proxy.port}" in safe_url
    problems = []
    for case in ("refused", "cut"):
        if case == "refused":
            proxy.close()
        else:
            proxy.cut_after = proxy.bytes_up + CUT_AFTER
        result = materialize_cli(ws)
        if case == "cut":
            assert not proxy.is_open, "the proxy never cut: every row went through"
        proxy.start()  # Redis is back
        problems += [f"{case}: {p}" for p in failed_run_problems(result, ws, safe_url)]
    assert problems == []
    result = materialize_cli(ws, "--incremental", "--json")
    assert result.exit_code == 0, result.output
    assert online_problems(ws) == []
    state = redis_online(ws).read_state()
    assert state is not None and state["max_event_id"] == events_state(ws.engine)[1]
    outcome(
        "Redis unreachable during materialization (refused; dropped mid-stream)",
        "store unreachable",
        cases=2,
        result="exit 1 naming the online store and its URL (password hidden), watermark "
        "not moved; rerun after restore: every online row equals the SQL truth",
        data_lost="none",
    )


def test_the_failed_run_check_catches_a_shown_password_and_a_watermark_moved_first(
    setup: tuple[Workspace, TcpProxy],
    monkeypatch: pytest.MonkeyPatch,
    outcome: Callable[..., None],
) -> None:
    """Two broken materializations: one whose error shows the Redis URL unmasked (Redis
    refused), one that writes the watermark before the rows (Redis dropped mid-stream)."""
    from seqrec.features import materialize, pg, redis_online

    def watermark_first(ws: Workspace, engine: Any, info: Any, *args: Any) -> Any:
        online = materialize.redis_online(ws)
        online.write_state({"max_event_id": info.max_event_id, "at": "before the rows"})
        online.write(pg.latest_rows(engine))

    ws, proxy = setup
    safe_url = redact_url(ws.redis_url)
    found = {}
    for case, attr, broken in (
        ("password shown", (redis_online, "_safe_url"), lambda url: url),
        ("watermark first", (materialize, "_materialize_redis"), watermark_first),
    ):
        with monkeypatch.context() as m:
            m.setattr(*attr, broken)
            if case == "password shown":
                proxy.close()
            else:
                proxy.cut_after = proxy.bytes_up + CUT_AFTER
            result = materialize_cli(ws)
            proxy.start()
        found[case] = failed_run_problems(result, ws, safe_url)
    assert "the Redis password was printed" in found["password shown"], found
    assert found["watermark first"] == ["the online watermark moved although the run failed"], found
    outcome(
        "broken variant: materialization showing the Redis password, or moving the "
        "watermark before the rows",
        "store unreachable",
        cases=2,
        result="the failed-run check reports both (password printed; watermark moved)",
        data_lost="none",
    )
