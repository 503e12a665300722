"""SIGKILL during materialization: after a rerun every user's online row equals the newest
offline row.

5,200 users, so materialization writes two batches (5,000 users each): the incremental run
after new events (appended and late-arriving) for every user is killed after the first batch,
when some users are online with their new rows and the rest still with their old ones.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from invariants import new_events, offline_problems, online_problems, seqrec, workspace

from seqrec.config import Workspace
from seqrec.testing import import_rows, unique_name

USERS = 5_200
PROFILES = ("embedded", "postgres-redis")


def _online_users(ws: Workspace, n_users: int) -> None:
    """``n_users`` users with two events each, features applied and materialized."""
    from seqrec.data.importers import RawEvent
    from seqrec.features.materialize import materialize
    from seqrec.features.repo import apply

    rows = [
        RawEvent(
            f"u{u:05d}",
            f"i{(u * 7 + k) % 50 + 1:05d}",
            1_735_689_600_000 + u * 10 + k,
            "view",
            None,
        )
        for u in range(n_users)
        for k in range(2)
    ]
    import_rows(ws, rows, "test:users")
    apply(ws)
    materialize(ws)


@pytest.mark.parametrize("profile", PROFILES)
def test_sigkill_during_materialization_then_rerun_puts_every_newest_row_online(
    profile: str, tmp_path: Path, request: pytest.FixtureRequest, outcome: Callable[..., None]
) -> None:
    with workspace(profile, tmp_path / "ws", unique_name("km", request)) as ws:
        _online_users(ws, USERS)
        new_events(ws, USERS, "more")
        args = ("features", "materialize", "--incremental", "-p", str(ws.root), "--json")
        seqrec(*args, kill_at="materialize.batch:1")
        [stale] = online_problems(ws)  # half done: the check sees it
        assert f"200 of {USERS} users' online rows differ" in stale
        seqrec(*args)
        assert online_problems(ws) == []
        assert offline_problems(ws) == []
    outcome(
        f"SIGKILL during materialization ({profile})",
        "process killed",
        cases=1,
        result=f"killed after 5,000 of {USERS:,} users (200 stale online); incremental rerun: "
        "every online row equals the newest offline row",
        data_lost="none",
    )


@pytest.mark.parametrize("profile", PROFILES)
def test_the_online_check_reports_a_materializer_that_writes_half(
    profile: str, tmp_path: Path, request: pytest.FixtureRequest, outcome: Callable[..., None]
) -> None:
    from seqrec.features.definitions import FEATURES, VIEW_NAME
    from seqrec.features.repo import apply, get_store
    from seqrec.testing import latest_feature_rows, load_synth, write_online

    with workspace(profile, tmp_path / "ws", unique_name("kh", request)) as ws:
        load_synth(ws, users=120, items=40)
        apply(ws)
        rows = latest_feature_rows(ws)
        half = rows.iloc[: len(rows) // 2][["user_id", "event_timestamp", "created", *FEATURES]]
        if ws.is_postgres_redis:
            write_online(ws, half)
        else:
            get_store(ws).write_to_online_store(VIEW_NAME, half)
        problems = online_problems(ws)
        assert problems == [f"60 of 120 users not online, e.g. {sorted(rows.user_id)[60:63]}"]
    outcome(
        f"broken variant: materializer writing half the users ({profile})",
        "process killed",
        cases=1,
        result="the online check catches it (60 of 120 users not online)",
        data_lost="none",
    )
