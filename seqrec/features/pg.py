"""The PostgreSQL feature table of the postgres-redis profile, refreshed incrementally.

``user_sequence_features`` holds one row per user per event (the same rows the embedded profile
writes to its Parquet snapshot, from the same SQL), and is the table Feast's ``PostgreSQLSource``
reads for point-in-time training sets. A refresh is driven by an ingestion watermark (the largest
``event_id`` already in the table, kept in ``seqrec_state``): only users with events past it are
recomputed (their rows deleted and rebuilt in one transaction), so a late-arriving event (an old
timestamp imported now) rebuilds that user's rows correctly. A change of ``max_len`` (or of the
purchase event type) rebuilds everything. While a refresh runs it holds a SHARE lock on
``events``: imports wait for it, so no event can commit behind the watermark.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, text

from seqrec.data.schema import ensure_pg_schema, require_schema
from seqrec.features.sql import feature_rows_sql, purchase_idx

TABLE = "user_sequence_features"
STATE_TABLE = "seqrec_state"
FEATURES_STATE = "features"

_DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    user_id varchar(256) NOT NULL,
    order_us bigint NOT NULL,
    event_timestamp timestamptz NOT NULL,
    created timestamptz NOT NULL,
    item_seq bigint[] NOT NULL,
    type_seq bigint[] NOT NULL,
    ts_seq bigint[] NOT NULL,
    seq_len bigint NOT NULL,
    n_events bigint NOT NULL,
    n_purchases bigint NOT NULL,
    last_gap_s bigint NOT NULL,
    PRIMARY KEY (user_id, order_us)
);
CREATE TABLE IF NOT EXISTS {STATE_TABLE} (
    name varchar(64) PRIMARY KEY,
    value text NOT NULL
);
"""

_COLUMNS = (
    "user_id, order_us, event_timestamp, created, item_seq, type_seq, ts_seq, seq_len, "
    "n_events, n_purchases, last_gap_s"
)


def _insert_sql(max_len: int, users_filter: bool) -> str:
    query = feature_rows_sql("postgresql", max_len, users_filter=users_filter, ordered=False)
    return f"""
INSERT INTO {TABLE} ({_COLUMNS})
SELECT user_id, order_us, TIMESTAMPTZ 'epoch' + order_us * INTERVAL '1 microsecond', now(),
       item_seq, type_seq, ts_seq, cardinality(item_seq), n_events, n_purchases, last_gap_s
FROM ({query}) AS q
"""


@dataclass
class RefreshReport:
    """What one refresh of the feature table did."""

    mode: str  # "full", "incremental" or "none"
    users: int
    rows: int
    max_event_id: int
    seconds: float


def create_tables(engine: Engine) -> None:
    ensure_pg_schema(engine)
    with engine.begin() as conn:
        conn.execute(text(_DDL))


def read_state(conn: Connection, name: str, *, lock: bool = False) -> dict[str, Any] | None:
    sql = f"SELECT value FROM {STATE_TABLE} WHERE name = :name" + (" FOR UPDATE" if lock else "")
    row = conn.execute(text(sql), {"name": name}).first()
    return json.loads(row[0]) if row else None


def write_state(conn: Connection, name: str, value: dict[str, Any]) -> None:
    conn.execute(
        text(
            f"INSERT INTO {STATE_TABLE} (name, value) VALUES (:name, :value) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
        ),
        {"name": name, "value": json.dumps(value)},
    )


def refresh(engine: Engine, max_len: int, *, full: bool = False) -> RefreshReport:
    """Bring the feature table up to date with the events table (see the module doc)."""
    require_schema(engine)
    create_tables(engine)
    t0 = time.perf_counter()
    p_idx = purchase_idx(engine)
    with engine.begin() as conn:
        conn.execute(text("LOCK TABLE events IN SHARE MODE"))
        state = read_state(conn, FEATURES_STATE, lock=True)
        max_id = int(
            conn.execute(text("SELECT COALESCE(MAX(event_id), 0) FROM events")).scalar_one()
        )
        params = {"purchase_idx": p_idx}
        stale = (
            full
            or state is None
            or state.get("max_len") != max_len
            or state.get("purchase_idx") != p_idx
        )
        if stale:
            conn.execute(text(f"TRUNCATE {TABLE}"))
            rows = conn.execute(text(_insert_sql(max_len, False)), params).rowcount
            users = int(
                conn.execute(text("SELECT COUNT(DISTINCT user_id) FROM events")).scalar_one()
            )
            mode = "full"
        elif state is not None and max_id > int(state["event_id"]):
            conn.execute(
                text(
                    "CREATE TEMP TABLE _users ON COMMIT DROP AS "
                    "SELECT DISTINCT user_id FROM events WHERE event_id > :wm"
                ),
                {"wm": int(state["event_id"])},
            )
            users = int(conn.execute(text("SELECT COUNT(*) FROM _users")).scalar_one())
            conn.execute(text(f"DELETE FROM {TABLE} WHERE user_id IN (SELECT user_id FROM _users)"))
            rows = conn.execute(text(_insert_sql(max_len, True)), params).rowcount
            mode = "incremental"
        else:
            return RefreshReport("none", 0, 0, max_id, round(time.perf_counter() - t0, 3))
        write_state(
            conn,
            FEATURES_STATE,
            {"event_id": max_id, "max_len": max_len, "purchase_idx": p_idx},
        )
    if stale:
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text(f"ANALYZE {TABLE}"))
    return RefreshReport(mode, users, int(rows), max_id, round(time.perf_counter() - t0, 3))


def feature_state(engine: Engine) -> dict[str, Any] | None:
    """The feature table's watermark state, or None before the first refresh."""
    with engine.connect() as conn:
        exists = conn.execute(text("SELECT to_regclass(:t)"), {"t": STATE_TABLE}).scalar()
        return read_state(conn, FEATURES_STATE) if exists else None


def table_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        exists = conn.execute(text("SELECT to_regclass(:t)"), {"t": TABLE}).scalar()
        if not exists:
            return 0
        return int(conn.execute(text(f"SELECT COUNT(*) FROM {TABLE}")).scalar_one())


_LATEST = f"""
SELECT DISTINCT ON (user_id) user_id, event_timestamp, created, item_seq, type_seq, ts_seq,
       seq_len, n_events, n_purchases, last_gap_s
FROM {TABLE} {{where}}
ORDER BY user_id, order_us DESC
"""


def latest_rows(engine: Engine, since_event_id: int | None = None) -> pd.DataFrame:
    """The newest feature row of each user; with ``since_event_id``, only users with events
    past that ingestion watermark."""
    where = ""
    params: dict[str, Any] = {}
    if since_event_id is not None:
        where = "WHERE user_id IN (SELECT DISTINCT user_id FROM events WHERE event_id > :wm)"
        params["wm"] = int(since_event_id)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(_LATEST.format(where=where).replace(":wm", "%(wm)s"), params)
        cols = [d[0] for d in cur.description]
        df = pd.DataFrame(cur.fetchall(), columns=cols)
    finally:
        raw.close()
    if not df.empty:
        df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    return df
