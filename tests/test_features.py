"""Sequence features through Feast: SQL windows, point-in-time joins, leave-one-out, online."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import insert

from seqrec.config import Workspace
from seqrec.data.schema import create_schema, event_types, events, items, make_engine
from seqrec.features import readers
from seqrec.features.materialize import materialize
from seqrec.features.repo import apply, get_store
from seqrec.features.snapshots import ensure_snapshot
from seqrec.features.sql import compute_feature_rows, event_positions, left_pad
from seqrec.testing import load_synth
from seqrec.training.data import build_next_item_data, leave_one_out_entities

T0 = 1_700_000_000_000  # ms


def _load(ws: Workspace, rows: list[tuple[str, int, int, str]]) -> None:
    """rows: (user, item_idx, ts_ms, type name), inserted in this (import) order."""
    engine = make_engine(ws.events_url)
    create_schema(engine)
    names = sorted({r[3] for r in rows})
    n_items = max(r[1] for r in rows)
    with engine.begin() as c:
        c.execute(
            insert(items), [{"item_idx": i, "item_id": f"i{i}"} for i in range(1, n_items + 1)]
        )
        c.execute(
            insert(event_types), [{"type_idx": i + 1, "name": n} for i, n in enumerate(names)]
        )
        c.execute(
            insert(events),
            [
                {
                    "user_id": u,
                    "item_idx": i,
                    "type_idx": names.index(t) + 1,
                    "ts_ms": ts,
                    "value": None,
                }
                for u, i, ts, t in rows
            ],
        )


def _add(ws: Workspace, rows: list[tuple[str, int, int]]) -> None:
    engine = make_engine(ws.events_url)
    with engine.begin() as c:
        c.execute(
            insert(events),
            [
                {"user_id": u, "item_idx": i, "type_idx": 1, "ts_ms": ts, "value": None}
                for u, i, ts in rows
            ],
        )


def test_feature_rows_are_ordered_windows_with_strictly_increasing_times(
    profile_ws: Workspace,
) -> None:
    ws = profile_ws
    L = ws.config.features.max_len
    rows = [("a", (k % 7) + 1, T0 + (k // 3) * 1000, "view") for k in range(L + 5)]
    rows += [("b", 3, T0, "view"), ("b", 4, T0, "purchase")]
    _load(ws, rows)
    df = compute_feature_rows(make_engine(ws.events_url), L)
    a = df[df.user_id == "a"].reset_index(drop=True)
    assert len(a) == L + 5
    assert a["order_us"].is_monotonic_increasing and a["order_us"].is_unique
    seq_items = [r[1] for r in rows if r[0] == "a"]
    for k in range(len(a)):
        assert a.loc[k, "item_seq"] == seq_items[max(0, k + 1 - L) : k + 1]
        assert a.loc[k, "seq_len"] == min(k + 1, L)
        assert a.loc[k, "n_events"] == k + 1
    b = df[df.user_id == "b"].reset_index(drop=True)
    # same millisecond: import order decides, and the purchase counter only counts purchases
    assert b.loc[1, "item_seq"] == [3, 4]
    assert list(b["n_purchases"]) == [0, 1]
    assert b.loc[1, "order_us"] == b.loc[0, "order_us"] + 1


def test_point_in_time_with_equal_timestamps(profile_ws: Workspace) -> None:
    ws = profile_ws
    # user u: A and B share a timestamp (A imported first), then C, D, E later.
    rows = [
        ("u", 1, T0, "view"),
        ("u", 2, T0, "view"),
        ("u", 3, T0 + 5000, "view"),
        ("u", 4, T0 + 5000, "view"),
        ("u", 5, T0 + 9000, "view"),
        ("v", 6, T0 + 1, "view"),
        ("v", 7, T0 + 2, "view"),
        ("v", 8, T0 + 3, "view"),
    ]
    _load(ws, rows)
    apply(ws)
    data = build_next_item_data(ws)

    def history(s, user):
        i = list(s.user_ids).index(user)
        return [x for x in s.items[i] if x], int(s.labels[i])

    # test: last event E with everything before it; valid: D with A, B, C (D ties with C)
    assert history(data.test, "u") == ([1, 2, 3, 4], 5)
    assert history(data.valid, "u") == ([1, 2, 3], 4)
    assert history(data.test, "v") == ([6, 7], 8)
    # train: targets B (pos 2) and C (pos 3) for u; B's history is A only although they tie
    train_u = [i for i, u in enumerate(data.train.user_ids) if u == "u"]
    assert len(train_u) == 1
    t = data.train.next_item_targets()[train_u[0]]
    x = data.train.items[train_u[0]]
    assert [v for v in x if v] == [1, 2]
    assert [v for v in t if v] == [2, 3]  # A->B, B->C: no label leaks into its own history


@pytest.mark.parametrize("stride", [None, 7])
def test_leave_one_out_covers_every_training_target_once(
    profile_ws: Workspace, stride: int | None
) -> None:
    ws = profile_ws
    load_synth(ws, users=40, items=30)
    apply(ws)
    L = ws.config.features.max_len
    engine = make_engine(ws.events_url)
    pos = event_positions(engine)
    data = build_next_item_data(ws, engine, stride=stride)
    targets = data.train.next_item_targets()
    if stride:  # overlapping windows: more context per target, still one loss term each
        assert (data.train.items > 0).sum(axis=1).mean() > 0.6 * L
    for user, g in pos.groupby("user_id"):
        g = g.sort_values("pos")
        seq = g["item_idx"].tolist()
        n = len(seq)
        rows = np.flatnonzero(data.train.user_ids == user)
        got = Counter(int(v) for r in rows for v in targets[r] if v)
        assert got == Counter(seq[1 : n - 2]), user  # positions 2..n-2 (1-based)
        vi = list(data.valid.user_ids).index(user)
        ti = list(data.test.user_ids).index(user)
        assert data.valid.labels[vi] == seq[n - 2] and data.test.labels[ti] == seq[n - 1]
        assert [v for v in data.test.items[ti] if v] == seq[max(0, n - 1 - L) : n - 1]
    assert data.summary()["test_users"] == pos["user_id"].nunique()


@pytest.mark.parametrize("stride", [1, 3, 7, 50])
def test_the_database_keeps_exactly_the_events_that_end_a_leave_one_out_example(
    profile_ws: Workspace, stride: int
) -> None:
    """The SQL-side cut (``event_positions(engine, stride)``) gives the same entities as
    every event's position cut in pandas, with far fewer rows at a large stride."""
    ws = profile_ws
    load_synth(ws, users=30, items=20)
    engine = make_engine(ws.events_url)
    full = event_positions(engine)
    cut = event_positions(engine, stride)
    L = 50

    def key(ent: pd.DataFrame) -> list[tuple[Any, ...]]:
        cols = ["user_id", "event_timestamp", "label", "split", "loss_from"]
        return sorted(map(tuple, ent[cols].astype(str).to_numpy().tolist()))

    assert key(leave_one_out_entities(cut, L, stride)) == key(
        leave_one_out_entities(full, L, stride)
    )
    if stride == 50:  # about 3 rows a user (train, valid, test) against 20 events a user
        assert 4 * len(cut) < len(full)
    with pytest.raises(ValueError, match="stride"):
        event_positions(engine, 0)


def test_leave_one_out_entities_short_users() -> None:
    pos = pd.DataFrame(
        {
            "user_id": ["a", "a", "b", "b", "b"],
            "item_idx": [1, 2, 3, 4, 5],
            "order_us": [10, 20, 10, 20, 30],
            "pos": [1, 2, 1, 2, 3],
            "n": [2, 2, 3, 3, 3],
        }
    )
    ent = leave_one_out_entities(pos, max_len=50)
    # a has 2 events: no valid/test, one training target; b: valid=4, test=5, no train target
    assert sorted(zip(ent.user_id, ent.split, ent.label, strict=True)) == [
        ("a", "train", 2),
        ("b", "test", 5),
        ("b", "valid", 4),
    ]
    us = ent.event_timestamp.map(lambda t: t.value // 1000).tolist()
    assert sorted(us) == [19, 19, 29]  # one microsecond before each target event


def test_online_features_match_latest_offline_row_and_refresh_incrementally(
    profile_ws: Workspace,
) -> None:
    ws = profile_ws
    load_synth(ws, users=25, items=20)
    apply(ws)
    materialize(ws)
    engine = make_engine(ws.events_url)
    offline = compute_feature_rows(engine, ws.config.features.max_len)
    latest = offline.sort_values("order_us").groupby("user_id").tail(1).set_index("user_id")
    store = get_store(ws)
    service = store.get_feature_service(ws.config.features.feature_service)
    users = sorted(latest.index)
    online = readers.online(store, service, [*users, "nobody"])
    for i, u in enumerate(users):  # no training/serving skew
        for col in ("item_seq", "type_seq", "ts_seq", "seq_len", "n_events", "n_purchases"):
            assert online[col][i] == (
                list(latest.loc[u, col]) if col.endswith("seq") else latest.loc[u, col]
            )
    assert online["item_seq"][-1] is None

    # new events become visible online after the next incremental run
    u = users[0]
    last_ts = int(latest.loc[u, "ts_seq"][-1]) * 1000
    _add(ws, [(u, 1, last_ts + 60_000), (u, 2, last_ts + 120_000)])
    report = materialize(ws, incremental=True)
    assert report.mode == "incremental" and report.users_written == 1
    after = readers.online(store, service, [u])
    assert after["item_seq"][0][-2:] == [1, 2]
    assert after["n_events"][0] == latest.loc[u, "n_events"] + 2


def test_snapshot_rebuilds_only_when_events_change(ws: Workspace) -> None:
    load_synth(ws, users=5, items=10)
    first = ensure_snapshot(ws)
    again = ensure_snapshot(ws)
    assert again.built_at == first.built_at
    _add(ws, [("u000001", 3, 1_900_000_000_000)])
    third = ensure_snapshot(ws)
    assert third.events == first.events + 1 and third.built_at != first.built_at


def _rebuild_at_once(ws: Workspace, writers: int) -> list[BaseException]:
    """``writers`` threads call build_snapshot together; the errors they raised."""
    import threading

    from seqrec.features.snapshots import build_snapshot

    start = threading.Barrier(writers)
    errors: list[BaseException] = []

    def rebuild() -> None:
        start.wait()
        try:
            build_snapshot(ws)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=rebuild) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_processes_rebuilding_a_stale_snapshot_at_once_all_succeed_and_leave_it_whole(
    ws: Workspace,
) -> None:
    """Several writers of one snapshot directory at once (the processes of a node under DDP):
    each writes its own temporary file and renames it into place, so none fails, the snapshot
    is one of theirs, whole, and no temporary file is left."""
    import pyarrow.parquet as pq

    from seqrec.features.definitions import SNAPSHOT_FILE
    from seqrec.features.snapshots import read_snapshot_info

    load_synth(ws, users=30, items=20)
    for _ in range(2):
        assert _rebuild_at_once(ws, 4) == []
    info = read_snapshot_info(ws)
    assert info is not None
    assert pq.read_metadata(ws.snapshot_dir / SNAPSHOT_FILE).num_rows == info.rows
    assert [p.name for p in ws.snapshot_dir.iterdir() if ".tmp" in p.name] == []


def test_left_pad() -> None:
    out = left_pad([[1, 2, 3], [], None, [4, 5, 6, 7, 8]], 4)
    assert out.tolist() == [[0, 1, 2, 3], [0, 0, 0, 0], [0, 0, 0, 0], [5, 6, 7, 8]]


def test_training_needs_events(profile_ws: Workspace) -> None:
    ws = profile_ws
    from seqrec.errors import SeqrecError

    with pytest.raises(SeqrecError, match="import events"):
        build_next_item_data(ws)
