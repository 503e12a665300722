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
