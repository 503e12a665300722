"""SIGKILL during a feature build and during an incremental refresh: after a rerun the offline
features equal a from-scratch SQL computation, and the online rows the newest offline ones.

Embedded: the build writes a Parquet snapshot, then ``snapshot.json`` (killed in between).
postgres-redis: the build and the incremental refresh rewrite the PostgreSQL feature table in
one transaction (killed inside it, rows rebuilt, watermark not yet written).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from invariants import (
    new_events,
    offline_problems,
    offline_rows,
    online_problems,
    seqrec,
    workspace,
)

from seqrec.testing import load_synth, unique_name

POINT = {"embedded": "features.snapshot", "postgres-redis": "features.refresh"}


@pytest.mark.parametrize("profile", POINT)
def test_sigkill_during_feature_build_then_rerun_gives_the_sql_features(
    profile: str, tmp_path: Path, request: pytest.FixtureRequest, outcome: Callable[..., None]
) -> None:
    from seqrec.features.snapshots import build_snapshot

    with workspace(profile, tmp_path / "ws", unique_name("kf", request)) as ws:
        load_synth(ws, users=120, items=40)
        build_snapshot(ws)
        new_events(ws, 40, "more")
        before = offline_rows(ws)
        build = ("features", "build", "-p", str(ws.root), "--json")
        seqrec(*build, kill_at=POINT[profile])
        if ws.is_postgres_redis:  # killed inside the transaction: nothing of it stays
            assert offline_rows(ws) == before
        seqrec(*build)
        assert offline_problems(ws) == []
    outcome(
        f"SIGKILL during feature build ({profile})",
        "process killed",
        cases=1,
        result=f"killed at {POINT[profile]}; rerun: offline rows equal the SQL truth",
        data_lost="none",
    )


def test_sigkill_during_incremental_refresh_then_rerun_gives_the_sql_features(
    tmp_path: Path, request: pytest.FixtureRequest, outcome: Callable[..., None]
) -> None:
    """postgres-redis only: the embedded profile has no incremental refresh (it rebuilds the
    snapshot, the build above)."""
    from seqrec.features.materialize import materialize
    from seqrec.features.repo import apply

    with workspace("postgres-redis", tmp_path / "ws", unique_name("kr", request)) as ws:
        load_synth(ws, users=120, items=40)
        apply(ws)
        materialize(ws)
        new_events(ws, 40, "more")  # appended and late-arriving events
        before = offline_rows(ws)
        refresh = ("features", "materialize", "--incremental", "-p", str(ws.root), "--json")
        seqrec(*refresh, kill_at="features.refresh")
        assert offline_rows(ws) == before  # the refresh's transaction was rolled back
        seqrec(*refresh)
        assert offline_problems(ws) == []
        assert online_problems(ws) == []
    outcome(
        "SIGKILL during incremental feature refresh (postgres-redis)",
        "process killed",
        cases=1,
        result="killed inside the refresh transaction: rolled back; rerun: offline rows "
        "equal the SQL truth, online rows the newest offline ones",
        data_lost="none",
    )


@pytest.mark.parametrize("profile", POINT)
def test_the_offline_check_catches_a_feature_build_writing_part_of_the_rows(
    profile: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    outcome: Callable[..., None],
) -> None:
    """The build with every other row left out: of the Parquet snapshot (embedded), of the
    PostgreSQL feature table's INSERT (postgres-redis)."""
    from seqrec.features import pg, snapshots
    from seqrec.features.snapshots import build_snapshot

    if profile == "embedded":
        rows = snapshots.compute_feature_rows
        monkeypatch.setattr(
            snapshots, "compute_feature_rows", lambda engine, max_len: rows(engine, max_len)[::2]
        )
    else:
        insert = pg._insert_sql
        monkeypatch.setattr(
            pg,
            "_insert_sql",
            lambda max_len, users: f"{insert(max_len, users)} WHERE q.n_events % 2 = 1",
        )
    with workspace(profile, tmp_path / "ws", unique_name("kb", request)) as ws:
        load_synth(ws, users=120, items=40)
        build_snapshot(ws)  # what `seqrec features build` runs
        problems = offline_problems(ws)
    assert len(problems) == 1 and "rows missing or wrong" in problems[0], problems
    outcome(
        f"broken variant: feature build writing every other row ({profile})",
        "process killed",
        cases=1,
        result=f"the offline check catches it ({problems[0].split(', e.g.')[0]})",
        data_lost="none",
    )


def test_the_offline_check_catches_a_refresh_that_commits_its_watermark_before_the_rows(
    tmp_path: Path, request: pytest.FixtureRequest, outcome: Callable[..., None]
) -> None:
    """A refresh that moves the watermark in a transaction of its own, then is killed before
    the rows: the rerun finds nothing new to do, and the new events never get features."""
    from sqlalchemy import text

    from seqrec.features import pg
    from seqrec.features.materialize import materialize
    from seqrec.features.repo import apply

    with workspace("postgres-redis", tmp_path / "ws", unique_name("kw", request)) as ws:
        load_synth(ws, users=120, items=40)
        apply(ws)
        materialize(ws)
        new_events(ws, 40, "more")
        with ws.engine.begin() as conn:  # the broken refresh, up to its kill
            state = pg.read_state(conn, pg.FEATURES_STATE) or {}
            max_id = conn.execute(text("SELECT MAX(event_id) FROM events")).scalar_one()
            pg.write_state(conn, pg.FEATURES_STATE, {**state, "event_id": int(max_id)})
        materialize(ws, incremental=True)  # the rerun
        problems = offline_problems(ws)
    assert any("rows missing or wrong" in p for p in problems), problems
    outcome(
        "broken variant: incremental refresh committing its watermark before the rows, "
        "killed between",
        "process killed",
        cases=1,
        result=f"the offline check catches it after the rerun ({problems[0].split(', e.g.')[0]})",
        data_lost="none",
    )
