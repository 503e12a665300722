"""The postgres-redis profile against the machine's real PostgreSQL and Redis.

Each test has its own PostgreSQL schema and Redis key namespace (Feast project), dropped after.
Consistency with the embedded profile: same events -> same training sets, same online vectors.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import insert, text

from seqrec.config import Workspace
from seqrec.data.schema import events, make_engine
from seqrec.errors import SeqrecError, StoreUnavailable
from seqrec.features import readers
from seqrec.features.definitions import FEATURES
from seqrec.features.materialize import materialize, redis_online
from seqrec.features.readers import historical, online_reader
from seqrec.features.repo import apply, get_store, write_repo
from seqrec.features.snapshots import build_snapshot, ensure_snapshot
from seqrec.features.status import status
from seqrec.testing import (
    drop_pg_redis_workspace,
    load_synth,
    make_pg_redis_workspace,
    make_workspace,
    require_services,
    unique_name,
)
from seqrec.training.data import build_classification_data, build_next_item_data

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_ws(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Workspace]:
    require_services()
    w = make_pg_redis_workspace(tmp_path / "pg", unique_name("t", request))
    try:
        yield w
    finally:
        drop_pg_redis_workspace(w)


def _setup(w: Workspace, users: int = 40, items: int = 30) -> None:
    load_synth(w, users=users, items=items)
    apply(w)
    materialize(w)


def _online_all(w: Workspace, users: list[str]) -> dict[str, list]:
    return online_reader(w).read(users)


def test_feature_store_yaml_is_the_production_stack(pg_ws: Workspace) -> None:
    write_repo(pg_ws)
    yaml = (pg_ws.feature_repo / "feature_store.yaml").read_text()
    for needle in (
        "registry_type: sql",
        "serve_features_while_materializing: true",
        "type: postgres",
        f"db_schema: {pg_ws.config.events.pg_schema}",
        "sslmode: prefer",
        "type: redis",
        "pull_latest_features: true",
        f"project: {pg_ws.config.features.project}",
    ):
        assert needle in yaml, needle
    store = get_store(pg_ws)  # Feast parses it
    assert store.config.online_store.type == "redis"


def test_profiles_give_identical_training_sets_and_online_vectors(
    pg_ws: Workspace, tmp_path: Path
) -> None:
    emb = make_workspace(tmp_path / "emb")
    for w in (emb, pg_ws):
        _setup(w)
    a, b = build_next_item_data(emb), build_next_item_data(pg_ws)
    for part in ("train", "valid", "test"):
        x, y = getattr(a, part), getattr(b, part)
        assert len(x) == len(y) > 0
        for col in ("user_ids", "items", "types", "times", "labels"):
            np.testing.assert_array_equal(getattr(x, col), getattr(y, col), err_msg=part + col)
    ca = build_classification_data(emb, "purchase-within:7d")
    cb = build_classification_data(pg_ws, "purchase-within:7d")
    np.testing.assert_array_equal(ca.train.items, cb.train.items)
    np.testing.assert_array_equal(ca.test.labels, cb.test.labels)

    users = [*sorted(set(a.test.user_ids)), "nobody"]
    oa, ob = _online_all(emb, users), _online_all(pg_ws, users)
    for name in FEATURES:
        assert oa[name] == ob[name], name
    assert ob["item_seq"][-1] is None
    # Feast's own reader sees exactly what seqrec wrote to Redis
    store = get_store(pg_ws)
    service = store.get_feature_service(pg_ws.config.features.feature_service)
    via_feast = readers.online(store, service, users)
    for name in FEATURES:
        assert via_feast[name] == ob[name], name


def test_online_vector_equals_offline_features_as_of_now(pg_ws: Workspace) -> None:
    """No training/serving skew: the point-in-time offline row at 'now' is the online row."""
    _setup(pg_ws, users=15)
    with make_engine(pg_ws.events_url).connect() as c:
        users = sorted(c.execute(text("SELECT DISTINCT user_id FROM events")).scalars())
    entity = pd.DataFrame({"user_id": users, "event_timestamp": pd.Timestamp.now(tz="UTC")})
    offline = historical(pg_ws, entity).set_index("user_id")
    online = _online_all(pg_ws, users)
    for i, u in enumerate(users):
        for name in FEATURES:
            want = offline.loc[u, name]
            want = [int(v) for v in want] if name.endswith("_seq") else int(want)
            assert online[name][i] == want, (u, name)


def _add(w: Workspace, rows: list[tuple[str, int, int]]) -> None:
    with make_engine(w.events_url).begin() as c:
        c.execute(
            insert(events),
            [
                {"user_id": u, "item_idx": i, "type_idx": 1, "ts_ms": ts, "value": None}
                for u, i, ts in rows
            ],
        )


def _table(w: Workspace) -> pd.DataFrame:
    with make_engine(w.events_url).connect() as c:
        df = pd.read_sql_query(
            text(
                "SELECT user_id, order_us, item_seq, type_seq, ts_seq, n_events, n_purchases, "
                "last_gap_s FROM user_sequence_features ORDER BY user_id, order_us"
            ),
            c,
        )
    for col in ("item_seq", "type_seq", "ts_seq"):
        df[col] = df[col].map(list)
    return df


def test_incremental_refresh_only_recomputes_changed_users_and_handles_late_events(
    pg_ws: Workspace,
) -> None:
    _setup(pg_ws, users=20)
    again = materialize(pg_ws, incremental=True)
    assert again.mode == "incremental" and again.users_written == 0  # idempotent
    with make_engine(pg_ws.events_url).connect() as c:
        first_ts = c.execute(
            text("SELECT user_id, MIN(ts_ms) FROM events GROUP BY user_id ORDER BY user_id")
        ).all()
    (u, t_min), (v, _), (w, w_min) = first_ts[0], first_ts[1], first_ts[2]
    late = t_min - 3_600_000  # older than everything u had: it goes first in u's history
    now = int(datetime.now(UTC).timestamp() * 1000)
    _add(
        pg_ws,
        [
            (u, 7, late),
            (v, 9, now),
            (w, 3, w_min + 1),  # late, in the middle of w's history
            (w, 4, now - 5_000),  # and appended ones, two in the same millisecond
            (w, 5, now - 5_000),
            ("newcomer", 2, now - 1_000),
            ("newcomer", 6, now),
        ],
    )
    with make_engine(pg_ws.events_url).begin() as c:  # a purchase among the new events
        c.execute(
            text("UPDATE events SET type_idx = 2 WHERE user_id = 'newcomer' AND item_idx = 6")
        )
    info = ensure_snapshot(pg_ws)
    assert info.mode == "incremental" and info.users_refreshed == 4
    report = materialize(pg_ws, incremental=True)
    assert report.mode == "incremental" and report.users_written == 4
    online = _online_all(pg_ws, [u, v, w, "newcomer"])
    assert online["item_seq"][1][-1] == 9
    assert online["item_seq"][2][-2:] == [4, 5] and online["item_seq"][3] == [2, 6]
    incremental_table = _table(pg_ws)
    build_snapshot(pg_ws)  # a full rebuild gives the same table
    pd.testing.assert_frame_equal(incremental_table, _table(pg_ws))
    u_rows = incremental_table[incremental_table.user_id == u]
    assert u_rows.iloc[0]["item_seq"] == [7]  # the late event is u's first
    materialize(pg_ws)  # full
    assert _online_all(pg_ws, [u, v, w, "newcomer"]) == online
    twice = materialize(pg_ws, incremental=True)
    assert twice.users_written == 0 and _online_all(pg_ws, [u, v, w, "newcomer"]) == online


def test_status_reports_watermarks_and_staleness(pg_ws: Workspace) -> None:
    _setup(pg_ws, users=10)
    st = status(pg_ws)
    assert st["online_reachable"] is True and st["applied"] is True
    assert st["online_users"] == 10 and st["events_not_online"] == 0
    assert st["features_stale"] is False and st["online_max_event_id"] == st["events"]
    _add(pg_ws, [("u000001", 1, 1_800_000_000_000)])
    st = status(pg_ws)
    assert st["features_stale"] is True and st["events_not_online"] == 1
    assert st["online_staleness_s"] >= 0


def test_redis_down_is_a_clear_error_and_redis_loss_means_a_full_run(
    pg_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    _setup(pg_ws, users=8)
    reader = online_reader(pg_ws)
    redis_online(pg_ws).drop()  # Redis lost its data (it keeps nothing on disk here)
    assert reader.read(["u000001"])["item_seq"] == [None]
    assert materialize(pg_ws, incremental=True).mode == "full"
    assert reader.read(["u000001"])["item_seq"][0]

    monkeypatch.setenv("SEQREC_REDIS_URL", "redis://127.0.0.1:9/0")  # nothing listens there
    with pytest.raises(StoreUnavailable, match=r"online store unreachable"):
        online_reader(pg_ws).read(["u000001"])
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:9"):
        materialize(pg_ws, incremental=True)
    assert status(pg_ws)["online_reachable"] is False


def test_redis_namespaces_do_not_touch_each_other(pg_ws: Workspace) -> None:
    """Dropping project 'x' leaves a project whose name ends in 'x' alone."""
    from seqrec.features.redis_online import RedisOnline

    name = pg_ws.config.features.project
    a = RedisOnline(pg_ws.redis_url, name, "user_sequence", ["seq_len"])
    b = RedisOnline(pg_ws.redis_url, "z" + name, "user_sequence", ["seq_len"])
    df = pd.DataFrame(
        {"user_id": ["p", "q"], "event_timestamp": pd.Timestamp.now(tz="UTC"), "seq_len": [3, 4]}
    )
    try:
        a.write(df)
        b.write(df)
        assert a.drop() == 2
        assert b.read(["p", "q"])["seq_len"] == [3, 4] and a.read(["p"])["seq_len"] == [None]
    finally:
        b.drop()


def test_bad_profile_settings_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SeqrecError, match="pg_schema"):
        make_workspace(tmp_path / "a", '[events]\npg_schema = "x; DROP TABLE events"\n')
    w = make_workspace(tmp_path / "b", profile="postgres-redis")
    monkeypatch.setenv("SEQREC_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:9/test")
    with pytest.raises(SeqrecError, match="unreachable"):
        ensure_snapshot(w)


def test_foreign_events_table_with_wrong_types_is_named(pg_ws: Workspace) -> None:
    engine = make_engine(pg_ws.events_url)
    load_synth(pg_ws, users=3, items=5)
    with engine.begin() as c:
        c.execute(text("ALTER TABLE events ALTER COLUMN ts_ms TYPE text"))
    with pytest.raises(SeqrecError, match="table events: column 'ts_ms' has type"):
        ensure_snapshot(pg_ws)


@pytest.mark.parametrize("user", ["u1", "", "ünïcödé-用户", "x" * 256])
def test_redis_keys_are_feasts_keys(user: str) -> None:
    from seqrec.features.redis_online import RedisOnline

    r = RedisOnline("redis://127.0.0.1:6379/0", "proj_a", "user_sequence", ["seq_len"])
    assert r.key(user) == r.feast_key(user)
    assert r.owns(r.key(user))
    assert not RedisOnline("redis://127.0.0.1:6379/0", "a", "v", ["seq_len"]).owns(r.key(user))
