"""Materialization: each user's newest sequence into the online store.

Embedded profile: rows of the Parquet snapshot written to the SQLite online store through
Feast; the watermark is ``online_state.json`` beside the snapshot. postgres-redis profile: rows
of the PostgreSQL feature table written straight into Redis in Feast's layout
(:mod:`seqrec.features.redis_online`); the watermark is a key in the same Redis. spark-redis:
the same, from each user's newest row of the Spark features.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select

from seqrec.config import Workspace
from seqrec.data.schema import events
from seqrec.faults import kill_point
from seqrec.features.definitions import FEATURES, VIEW_NAME
from seqrec.features.repo import get_store, require_applied
from seqrec.features.snapshots import SnapshotInfo, ensure_snapshot, latest_rows

if TYPE_CHECKING:
    from seqrec.features.redis_online import RedisOnline

ONLINE_STATE = "online_state.json"


@dataclass
class MaterializeReport:
    mode: str
    users_written: int
    max_event_id: int
    seconds: float
    rows_per_s: float
    watermark: str
    #: item text embeddings written online (None: the workspace has none)
    items_written: int | None = None


def read_online_state(ws: Workspace) -> dict[str, Any] | None:
    """The embedded online store's watermark (largest event id online, when); None before the
    first materialization."""
    path = ws.snapshot_dir / ONLINE_STATE
    return json.loads(path.read_text()) if path.is_file() else None


def redis_online(ws: Workspace) -> RedisOnline:
    """The workspace's Redis online rows (postgres-redis and spark-redis profiles)."""
    from seqrec.features.redis_online import RedisOnline

    return RedisOnline(ws.redis_url, ws.config.features.project, VIEW_NAME, list(FEATURES))


def materialize(
    ws: Workspace,
    incremental: bool = False,
    engine: Engine | None = None,
    *,
    batch_size: int = 5_000,
    progress: bool = False,
) -> MaterializeReport:
    """Write each user's newest sequence to the online store, then the item text embeddings
    when there are any (:func:`seqrec.text.features.materialize_items`)."""
    from seqrec.text.features import materialize_items

    engine = engine or ws.engine
    report = _materialize_users(ws, incremental, engine, batch_size=batch_size, progress=progress)
    items_report = materialize_items(ws, get_store(ws), engine, incremental=incremental)
    if items_report is not None:
        report.items_written = items_report.items_written
    return report


def _materialize_users(
    ws: Workspace,
    incremental: bool,
    engine: Engine,
    *,
    batch_size: int,
    progress: bool,
) -> MaterializeReport:
    """Write each user's newest sequence to the online store.

    Incremental runs are driven by an ingestion watermark (the largest ``event_id`` already
    online), not by event time, so late-arriving events (old timestamps, imported now) are
    picked up. Writes are upserts of the latest row per user: rerunning, or rerunning after a
    crash, gives the same online state; the watermark advances only after all writes succeed.
    """
    info = ensure_snapshot(ws, engine)
    store = get_store(ws)
    require_applied(store)
    if ws.uses_redis:
        return _materialize_redis(ws, engine, info, incremental, progress)
    state = read_online_state(ws) if incremental else None
    t0 = time.perf_counter()
    users: set[str] | None = None
    if state is not None:
        with engine.connect() as conn:
            users = set(
                conn.execute(
                    select(events.c.user_id)
                    .distinct()
                    .where(events.c.event_id > int(state["max_event_id"]))
                ).scalars()
            )
    rows = latest_rows(ws, users)
    cols = ["user_id", "event_timestamp", "created", *FEATURES]
    from tqdm.auto import tqdm

    with contextlib.redirect_stdout(sys.stderr):  # Feast may print progress on stdout
        for start in tqdm(
            range(0, len(rows), batch_size), desc="materialize", disable=not progress, unit="batch"
        ):
            store.write_to_online_store(VIEW_NAME, rows.iloc[start : start + batch_size][cols])
            kill_point("materialize.batch")
    secs = time.perf_counter() - t0
    now = datetime.now(UTC).isoformat()
    new_state = {"max_event_id": info.max_event_id, "at": now}
    tmp = ws.snapshot_dir / (ONLINE_STATE + ".tmp")
    tmp.write_text(json.dumps(new_state))
    os.replace(tmp, ws.snapshot_dir / ONLINE_STATE)
    return _report(state is not None, len(rows), info.max_event_id, secs, now)


def _report(incremental: bool, n: int, max_id: int, secs: float, now: str) -> MaterializeReport:
    return MaterializeReport(
        mode="incremental" if incremental else "full",
        users_written=n,
        max_event_id=max_id,
        seconds=round(secs, 3),
        rows_per_s=round(n / secs, 1) if secs > 0 else 0.0,
        watermark=now,
    )


def _materialize_redis(
    ws: Workspace, engine: Engine, info: SnapshotInfo, incremental: bool, progress: bool
) -> MaterializeReport:
    from tqdm.auto import tqdm

    from seqrec.features import pg

    online_rows = redis_online(ws)
    state = online_rows.read_state() if incremental else None
    t0 = time.perf_counter()
    since = int(state["max_event_id"]) if state is not None else None
    rows: Any
    if ws.is_spark:
        from seqrec.features.spark.features import latest_rows as spark_latest_rows

        rows = spark_latest_rows(ws, since_event_id=since)
    else:
        rows = pg.latest_rows(engine, since_event_id=since)
    with tqdm(total=len(rows), desc="materialize", disable=not progress, unit="user") as bar:
        online_rows.write(rows, progress=bar.update)
    secs = time.perf_counter() - t0
    now = datetime.now(UTC).isoformat()
    online_rows.write_state({"max_event_id": info.max_event_id, "at": now})
    return _report(state is not None, len(rows), info.max_event_id, secs, now)
