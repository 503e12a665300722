"""The offline features, computed in SQL: Feast's offline source.

Embedded profile: a Parquet snapshot (plus ``snapshot.json``, what it was built from) that
Feast's DuckDB offline store reads. postgres-redis profile: a PostgreSQL table refreshed
incrementally (:mod:`seqrec.features.pg`) that Feast's postgres offline store reads.
spark-redis profile: a Parquet directory computed by Spark SQL (:mod:`seqrec.features.spark`)
that Feast's spark offline store reads.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Engine, func, select

from seqrec.config import Workspace
from seqrec.data.schema import events, require_schema
from seqrec.errors import SeqrecError
from seqrec.faults import kill_point
from seqrec.features.definitions import FEATURES, SNAPSHOT_FILE
from seqrec.features.sql import compute_feature_rows

META_FILE = "snapshot.json"

log = logging.getLogger("seqrec.features")

_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("event_timestamp", pa.timestamp("us", tz="UTC")),
        ("created", pa.timestamp("us", tz="UTC")),
        ("item_seq", pa.list_(pa.int64())),
        ("type_seq", pa.list_(pa.int64())),
        ("ts_seq", pa.list_(pa.int64())),
        ("seq_len", pa.int64()),
        ("n_events", pa.int64()),
        ("n_purchases", pa.int64()),
        ("last_gap_s", pa.int64()),
    ]
)


@dataclass
class SnapshotInfo:
    """What a feature snapshot was built from."""

    rows: int
    users: int
    max_event_id: int
    events: int
    max_len: int
    built_at: str
    seconds: float
    mode: str = "full"
    users_refreshed: int | None = None


def events_state(engine: Engine) -> tuple[int, int]:
    """The number of events and the largest event id (0, 0 when empty)."""
    with engine.connect() as conn:
        n, max_id = conn.execute(select(func.count(), func.max(events.c.event_id))).one()
    return int(n or 0), int(max_id or 0)


def read_snapshot_info(ws: Workspace) -> SnapshotInfo | None:
    """What the embedded snapshot was built from; None before the first build."""
    path = ws.snapshot_dir / META_FILE
    if not path.is_file():
        return None
    return SnapshotInfo(**json.loads(path.read_text()))


def _pg_info(ws: Workspace, engine: Engine, full: bool) -> SnapshotInfo:
    from seqrec.features import pg

    rep = pg.refresh(engine, ws.config.features.max_len, full=full)
    return SnapshotInfo(
        rows=rep.total_rows,
        users=rep.total_users,
        max_event_id=rep.max_event_id,
        events=rep.total_rows,  # one feature row per event
        max_len=ws.config.features.max_len,
        built_at=datetime.now(UTC).isoformat(),
        seconds=rep.seconds,
        mode=rep.mode,
        users_refreshed=rep.users,
    )


def build_snapshot(ws: Workspace, engine: Engine | None = None) -> SnapshotInfo:
    """Compute the offline features in SQL from scratch.

    Embedded: the Parquet snapshot, written atomically. postgres-redis: the feature table,
    rebuilt in one transaction. spark-redis: the Parquet directory Spark writes.
    """
    engine = engine or ws.engine
    require_schema(engine)
    if ws.is_postgres_redis:
        return _pg_info(ws, engine, full=True)
    if ws.is_spark:
        return _spark_info(ws, engine)
    t0 = time.perf_counter()
    n_events, max_id = events_state(engine)
    if n_events == 0:
        raise SeqrecError("the events table is empty", hint="import events first")
    max_len = ws.config.features.max_len
    df = compute_feature_rows(engine, max_len)
    table = pa.Table.from_pandas(
        df[["user_id", "event_timestamp", "created", *FEATURES]],
        schema=_SCHEMA,
        preserve_index=False,
    )
    out_dir = ws.snapshot_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    with _replacing(out_dir / SNAPSHOT_FILE) as tmp:
        pq.write_table(table, tmp)
    kill_point("features.snapshot")
    info = SnapshotInfo(
        rows=len(df),
        users=int(df["user_id"].nunique()),
        max_event_id=max_id,
        events=n_events,
        max_len=max_len,
        built_at=datetime.now(UTC).isoformat(),
        seconds=round(time.perf_counter() - t0, 3),
    )
    _write_info(ws, info)
    return info


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write, renamed onto ``path`` (atomic)
    when it ends, removed when it fails. The name is this writer's own (process id and a
    random part): processes rebuilding one snapshot at once (the ranks of a node under DDP,
    nodes sharing a directory) never write into each other's file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_info(ws: Workspace, info: SnapshotInfo) -> None:
    # atomically: a half-written snapshot.json would stop every later command
    with _replacing(ws.snapshot_dir / META_FILE) as tmp:
        tmp.write_text(json.dumps(asdict(info), indent=2))


def _spark_info(ws: Workspace, engine: Engine) -> SnapshotInfo:
    """spark-redis: the events exported to Parquet, the features computed by Spark."""
    from seqrec.features.spark.features import build_features

    _, max_id = events_state(engine)
    rows, users, n_events, secs = build_features(ws, engine)
    info = SnapshotInfo(
        rows=rows,
        users=users,
        max_event_id=max_id,
        events=n_events,
        max_len=ws.config.features.max_len,
        built_at=datetime.now(UTC).isoformat(),
        seconds=round(secs, 3),
        mode="spark",
    )
    _write_info(ws, info)
    return info


def ensure_snapshot(ws: Workspace, engine: Engine | None = None) -> SnapshotInfo:
    """Bring the offline features up to date with the events.

    Embedded: rebuild the snapshot when events or the sequence length changed since it was
    built. postgres-redis: refresh the feature table incrementally (only users with new events).
    spark-redis: append the new events to their Parquet copy and recompute the features in
    Spark when they changed.
    """
    engine = engine or ws.engine
    require_schema(engine)
    if ws.is_postgres_redis:
        return _pg_info(ws, engine, full=False)
    info = read_snapshot_info(ws)
    n_events, max_id = events_state(engine)
    fresh = (
        info is not None
        and info.events == n_events
        and info.max_event_id == max_id
        and info.max_len == ws.config.features.max_len
    )
    if ws.is_spark:
        from seqrec.features.spark.features import FEATURES_DIR

        if fresh and info is not None and (ws.snapshot_dir / FEATURES_DIR).is_dir():
            return info
        return _spark_info(ws, engine)
    fresh = fresh and (ws.snapshot_dir / SNAPSHOT_FILE).is_file()
    if fresh and info is not None:
        problem = snapshot_problem(ws.snapshot_dir / SNAPSHOT_FILE, info.rows)
        if problem is None:
            return info
        log.warning("%s; rebuilding it from the events", problem)  # derived data: rebuild it
    return build_snapshot(ws, engine)


def snapshot_problem(path: Path, rows: int | None = None) -> SeqrecError | None:
    """Why the Parquet snapshot at ``path`` cannot be read as one (cut short, overwritten,
    another schema, not ``rows`` rows), or None. Reads the footer only, not the data."""
    try:
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
    except FileNotFoundError:
        return _damaged(path, "the file is missing")
    except Exception as exc:  # ArrowInvalid: no footer, bad magic bytes, garbage
        return _damaged(path, f"not a readable Parquet file ({_first_line(exc)})")
    if not schema.equals(_SCHEMA):
        return _damaged(path, f"its columns are not the snapshot's ({', '.join(schema.names)})")
    if rows is not None and meta.num_rows != rows:
        return _damaged(path, f"{meta.num_rows} rows where snapshot.json says {rows}")
    return None


def _damaged(path: Path, reason: str) -> SeqrecError:
    return SeqrecError(
        f"damaged feature snapshot: {reason}",
        where=str(path),
        hint="`seqrec features build` rebuilds it from the events",
    )


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


def read_snapshot(ws: Workspace) -> pd.DataFrame:
    """The embedded feature snapshot; a damaged file is a SeqrecError naming it."""
    path = ws.snapshot_dir / SNAPSHOT_FILE
    problem = snapshot_problem(path)
    if problem is not None:
        raise problem
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # a page damaged behind an intact footer
        raise _damaged(path, f"not a readable Parquet file ({_first_line(exc)})") from None


def latest_rows(ws: Workspace, users: set[str] | None = None) -> pd.DataFrame:
    """The newest feature row of each user (optionally only ``users``) from the snapshot."""
    df = read_snapshot(ws)
    if users is not None:
        df = df[df["user_id"].isin(users)]
    return df.sort_values("event_timestamp").groupby("user_id", sort=False).tail(1)
