"""The PostgreSQL feature table of the postgres-redis profile, refreshed incrementally.

``user_sequence_features`` holds one row per user per event (the same rows the embedded profile
writes to its Parquet snapshot, from the same SQL), and is the table Feast's ``PostgreSQLSource``
reads for point-in-time training sets; ``user_sequence_latest`` holds each user's newest row, the
one materialization copies online. A refresh is driven by an ingestion watermark (the largest
``event_id`` already in the table, kept in ``seqrec_state``): for each user with events past it,
the rows from that user's earliest new event on are recomputed (deleted and rebuilt in one
transaction). Appended events add rows; a late-arriving event (an old timestamp imported now)
rebuilds that user's rows from its time on. A change of ``max_len`` (or of the
purchase event type) rebuilds everything. While a refresh runs it holds a SHARE lock on
``events``: imports wait for it, so no event can commit behind the watermark.

Both tables are UNLOGGED: they are derived from ``events`` and skip the write-ahead log (a full
build writes several times the events' volume). After a server crash PostgreSQL empties them,
the watermark goes with the rows, and the next refresh is a full rebuild.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from seqrec.data.schema import ensure_pg_schema, require_schema
from seqrec.errors import StoreUnavailable
from seqrec.faults import kill_point
from seqrec.features.online_rows import OnlineRows
from seqrec.features.sql import feature_rows_sql, purchase_idx

TABLE = "user_sequence_features"
LATEST_TABLE = "user_sequence_latest"
STATE_TABLE = "seqrec_state"
FEATURES_STATE = "features"

_DDL = f"""
CREATE UNLOGGED TABLE IF NOT EXISTS {TABLE} (
    user_id varchar(256) COLLATE "C" NOT NULL,
    order_us bigint NOT NULL,
    event_timestamp timestamptz NOT NULL,
    created timestamptz NOT NULL,
    item_seq bigint[] COMPRESSION lz4 NOT NULL,
    type_seq bigint[] COMPRESSION lz4 NOT NULL,
    ts_seq bigint[] COMPRESSION lz4 NOT NULL,
    seq_len bigint NOT NULL,
    n_events bigint NOT NULL,
    n_purchases bigint NOT NULL,
    last_gap_s bigint NOT NULL,
    CONSTRAINT {TABLE}_pkey PRIMARY KEY (user_id, order_us)
);
CREATE UNLOGGED TABLE IF NOT EXISTS {LATEST_TABLE} (
    LIKE {TABLE} INCLUDING DEFAULTS,
    PRIMARY KEY (user_id)
);
CREATE UNLOGGED TABLE IF NOT EXISTS {STATE_TABLE} (
    name varchar(64) PRIMARY KEY,
    value text NOT NULL
);
"""

_COLUMNS = (
    "user_id, order_us, event_timestamp, created, item_seq, type_seq, ts_seq, seq_len, "
    "n_events, n_purchases, last_gap_s"
)


def _extend_sql(max_len: int) -> str:
    """Rows from each ``_users`` user's ``from_us`` on, built from the user's last row before
    it (arrays, counts) plus the events from there on: only those events are read. Works for
    appended and late-arriving events alike (a late one makes the tail longer)."""
    L = max_len

    def trim(col: str) -> str:
        return f"{col}_a[greatest(1, cardinality({col}_a) - {L - 1}):] AS {col}"

    return f"""
WITH tail AS (
    SELECT e.user_id, e.event_id, e.item_idx, e.type_idx, e.ts_ms
    FROM events e JOIN _users u ON u.user_id = e.user_id
    WHERE e.ts_ms >= u.from_us / 1000
),
ordered AS (
    SELECT t.*,
           t.ts_ms * 1000
               + (ROW_NUMBER() OVER (PARTITION BY t.user_id, t.ts_ms ORDER BY t.event_id) - 1)
               AS order_us,
           ROW_NUMBER() OVER (PARTITION BY t.user_id ORDER BY t.ts_ms, t.event_id) AS k
    FROM tail t
),
prev AS (
    SELECT u.user_id, p.item_seq AS p_item_seq, p.type_seq AS p_type_seq,
           p.ts_seq AS p_ts_seq, p.n_events AS p_n_events, p.n_purchases AS p_n_purchases,
           p.order_us / 1000 AS p_ts_ms
    FROM _users u
    LEFT JOIN LATERAL (
        SELECT f.* FROM {TABLE} f
        WHERE f.user_id = u.user_id AND f.order_us < u.from_us
        ORDER BY f.order_us DESC LIMIT 1
    ) p ON true
),
win AS (
    SELECT o.user_id, o.order_us,
           COALESCE(pr.p_n_events, 0) + o.k AS n_events,
           COALESCE(pr.p_item_seq, '{{}}'::bigint[]) || array_agg(o.item_idx::bigint) OVER w
               AS item_seq_a,
           COALESCE(pr.p_type_seq, '{{}}'::bigint[]) || array_agg(o.type_idx::bigint) OVER w
               AS type_seq_a,
           COALESCE(pr.p_ts_seq, '{{}}'::bigint[]) || array_agg(o.ts_ms / 1000) OVER w
               AS ts_seq_a,
           COALESCE(pr.p_n_purchases, 0)
               + SUM(CASE WHEN o.type_idx = :purchase_idx THEN 1 ELSE 0 END)
                   OVER (PARTITION BY o.user_id ORDER BY o.order_us ROWS UNBOUNDED PRECEDING)
               AS n_purchases,
           COALESCE((o.ts_ms - LAG(o.ts_ms) OVER (PARTITION BY o.user_id ORDER BY o.order_us))
                        / 1000,
                    (o.ts_ms - pr.p_ts_ms) / 1000, -1) AS last_gap_s
    FROM ordered o JOIN prev pr ON pr.user_id = o.user_id
    WINDOW w AS (PARTITION BY o.user_id ORDER BY o.order_us
                 ROWS BETWEEN {L - 1} PRECEDING AND CURRENT ROW)
)
SELECT user_id, order_us, n_events, {trim("item_seq")}, {trim("type_seq")}, {trim("ts_seq")},
       n_purchases, last_gap_s
FROM win
"""


def _insert_sql(max_len: int, users_filter: bool) -> str:
    query = (
        _extend_sql(max_len)
        if users_filter
        else feature_rows_sql("postgresql", max_len, ordered=False)
    )
    return f"""
INSERT INTO {TABLE} ({_COLUMNS})
SELECT q.user_id, q.order_us, TIMESTAMPTZ 'epoch' + q.order_us * INTERVAL '1 microsecond',
       now(), q.item_seq, q.type_seq, q.ts_seq, cardinality(q.item_seq), q.n_events,
       q.n_purchases, q.last_gap_s
FROM ({query}) AS q
"""


def _latest_sql(users_filter: bool) -> str:
    where = "WHERE user_id IN (SELECT user_id FROM _users)" if users_filter else ""
    return f"""
INSERT INTO {LATEST_TABLE}
SELECT f.* FROM {TABLE} f
JOIN (SELECT user_id, MAX(order_us) AS last_us FROM {TABLE} {where} GROUP BY user_id) l
  ON f.user_id = l.user_id AND f.order_us = l.last_us
"""


@dataclass
class RefreshReport:
    """What one refresh of the feature table did."""

    mode: str  # "full", "incremental" or "none"
    users: int  # users whose rows were (re)computed
    rows: int  # rows written
    max_event_id: int
    seconds: float
    total_rows: int = 0  # rows in the feature table afterwards (= events)
    total_users: int = 0  # users with features afterwards


def create_tables(engine: Engine) -> None:
    """Create the feature tables (arrays compressed with lz4 where the server has it: much
    cheaper than the default pglz on these wide rows)."""
    from sqlalchemy.exc import DBAPIError

    ensure_pg_schema(engine)
    try:
        with engine.begin() as conn:
            conn.execute(text(_DDL))
    except DBAPIError as exc:
        if "lz4" not in str(exc.orig):
            raise
        with engine.begin() as conn:
            conn.execute(text(_DDL.replace(" COMPRESSION lz4", "")))


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
        conn.execute(text("SET LOCAL work_mem = '256MB'"))
        if stale:  # rebuild: load without the primary key, then build it in one pass
            conn.execute(text(f"TRUNCATE {TABLE}"))
            conn.execute(text(f"ALTER TABLE {TABLE} DROP CONSTRAINT {TABLE}_pkey"))
            rows = conn.execute(text(_insert_sql(max_len, False)), params).rowcount
            conn.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
            conn.execute(
                text(
                    f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY (user_id, order_us)"
                )
            )
            conn.execute(text(f"TRUNCATE {LATEST_TABLE}"))
            users = total_users = conn.execute(text(_latest_sql(False))).rowcount
            total_rows = rows
            mode = "full"
        elif state is not None and max_id > int(state["event_id"]):
            conn.execute(
                text(
                    "CREATE TEMP TABLE _users ON COMMIT DROP AS "
                    "SELECT user_id, MIN(ts_ms) * 1000 AS from_us FROM events "
                    "WHERE event_id > :wm GROUP BY user_id"
                ),
                {"wm": int(state["event_id"])},
            )
            users = int(conn.execute(text("SELECT COUNT(*) FROM _users")).scalar_one())
            # rows before a user's earliest new event keep their windows: only the rows from
            # there on (all of them for a late-arriving event) are recomputed
            conn.execute(text("ANALYZE _users"))
            # per-user index range scans, not a scan of the whole table
            conn.execute(text("SET LOCAL enable_hashjoin = off"))
            conn.execute(text("SET LOCAL enable_mergejoin = off"))
            deleted = conn.execute(
                text(
                    f"DELETE FROM {TABLE} f USING _users u "
                    "WHERE f.user_id = u.user_id AND f.order_us >= u.from_us"
                )
            ).rowcount
            gone = conn.execute(
                text(f"DELETE FROM {LATEST_TABLE} WHERE user_id IN (SELECT user_id FROM _users)")
            ).rowcount
            conn.execute(text("SET LOCAL enable_hashjoin = on"))
            conn.execute(text("SET LOCAL enable_mergejoin = on"))
            # each changed user's newest row is among the rows just computed
            rows, back = conn.execute(
                text(
                    f"WITH ins AS ({_insert_sql(max_len, True)} RETURNING *), "
                    f"lat AS (INSERT INTO {LATEST_TABLE} SELECT DISTINCT ON (user_id) * "
                    "FROM ins ORDER BY user_id, order_us DESC RETURNING 1) "
                    "SELECT (SELECT COUNT(*) FROM ins), (SELECT COUNT(*) FROM lat)"
                ),
                params,
            ).one()
            total_rows = int(state.get("rows", 0)) - deleted + rows
            total_users = int(state.get("users", 0)) - gone + back
            mode = "incremental"
        else:
            assert state is not None
            return RefreshReport(
                "none",
                0,
                0,
                max_id,
                round(time.perf_counter() - t0, 3),
                int(state.get("rows", 0)),
                int(state.get("users", 0)),
            )
        kill_point("features.refresh")
        write_state(
            conn,
            FEATURES_STATE,
            {
                "event_id": max_id,
                "max_len": max_len,
                "purchase_idx": p_idx,
                "rows": total_rows,
                "users": total_users,
            },
        )
    if stale:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(text(f"VACUUM ANALYZE {TABLE}"))
            conn.execute(text(f"ANALYZE {LATEST_TABLE}"))
    secs = round(time.perf_counter() - t0, 3)
    return RefreshReport(mode, users, int(rows), max_id, secs, total_rows, total_users)


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


def latest_rows(engine: Engine, since_event_id: int | None = None) -> OnlineRows:
    """The newest feature row of each user, from ``user_sequence_latest``; with
    ``since_event_id``, only users with events past that ingestion watermark. Arrays come back
    as text and are parsed by numpy in one pass (no Python int per element)."""
    sql = (
        "SELECT user_id, order_us, array_to_string(item_seq, ' '), "
        "array_to_string(type_seq, ' '), array_to_string(ts_seq, ' '), seq_len, n_events, "
        f"n_purchases, last_gap_s FROM {LATEST_TABLE}"
    )
    params: tuple[Any, ...] = ()
    if since_event_id is not None:
        sql += " WHERE user_id IN (SELECT DISTINCT user_id FROM events WHERE event_id > %s)"
        params = (int(since_event_id),)
    try:
        raw = engine.raw_connection()
    except DBAPIError as exc:
        raise _unreachable(engine, exc.orig or exc) from None
    try:
        cur = raw.cursor()
        cur.execute(sql, params)
        rows = cur.fetchall()
    except engine.dialect.loaded_dbapi.OperationalError as exc:  # the connection was lost
        raw.invalidate(exc)  # never back into the pool
        raise _unreachable(engine, exc) from None
    finally:
        raw.close()
    cols: list[tuple[Any, ...]] = list(zip(*rows, strict=True)) if rows else [()] * 9
    lengths = np.asarray(cols[5], dtype=np.int64)
    return OnlineRows(
        user_ids=[str(u) for u in cols[0]],
        ts_us=np.asarray(cols[1], dtype=np.int64),
        lists={
            name: (_parse_ints(cols[k]), lengths)
            for k, name in ((2, "item_seq"), (3, "type_seq"), (4, "ts_seq"))
        },
        scalars={
            name: np.asarray(cols[k], dtype=np.int64)
            for k, name in ((5, "seq_len"), (6, "n_events"), (7, "n_purchases"), (8, "last_gap_s"))
        },
    )


def _unreachable(engine: Engine, exc: BaseException) -> StoreUnavailable:
    """The error of a read of the offline rows the database dropped out of (password hidden)."""
    first = (str(exc).splitlines() or [type(exc).__name__])[0]
    return StoreUnavailable(
        f"events database unreachable while reading the offline features: {first}",
        where=engine.url.render_as_string(),
        hint="is PostgreSQL running? nothing was written online; rerun once it is back",
    )


def _parse_ints(texts: tuple[Any, ...]) -> np.ndarray:
    if not texts:
        return np.zeros(0, dtype=np.int64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return np.fromstring(" ".join(texts), dtype=np.int64, sep=" ")
