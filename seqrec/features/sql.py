"""Sequence features computed in SQL with window functions.

One row per user per event: the last L item indices, event types and epoch-second timestamps up
to and including that event, plus scalar aggregates. Each row's ``order_us`` is the event's time
in microseconds plus its rank among the user's events with the same millisecond (import order),
so every user's rows have strictly increasing times and Feast's inclusive point-in-time join
(feature time <= entity time) can tell apart events that share a timestamp.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, text

from seqrec.data.schema import require_schema

#: More events than this for one user within one millisecond cannot be told apart.
MAX_TIES_PER_MS = 1000

_ORDERED = """
ordered AS (
    SELECT user_id, event_id, item_idx, type_idx, ts_ms,
           ts_ms * 1000 + (ROW_NUMBER() OVER (PARTITION BY user_id, ts_ms ORDER BY event_id) - 1)
               AS order_us,
           ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY ts_ms, event_id) AS pos,
           COUNT(*) OVER (PARTITION BY user_id) AS n
    FROM events {where}
)"""


def ordered_cte(where: str = "") -> str:
    """The ``ordered`` CTE: each event's ``order_us``, per-user position ``pos`` and count ``n``
    (``where``: a filter on ``events``)."""
    return _ORDERED.format(where=where)


def _agg(dialect: str, col: str) -> str:
    return f"json_group_array({col})" if dialect == "sqlite" else f"array_agg({col})"


def feature_rows_sql(
    dialect: str, max_len: int, users_filter: bool = False, ordered: bool = True
) -> str:
    """The feature query for ``dialect`` ('sqlite' or 'postgresql').

    With ``users_filter`` it reads only the users of a temporary table
    ``_users(user_id, from_us)`` and returns their rows with ``order_us >= from_us``; the
    (costly) array windows are then computed only for those rows and the ``max_len - 1`` rows
    before each user's first one, while positions and running counts still cover the whole
    history (PostgreSQL only)."""
    where = "WHERE user_id IN (SELECT user_id FROM _users)" if users_filter else ""
    scalars = """
scalars AS (
    SELECT o.*,
           SUM(CASE WHEN type_idx = :purchase_idx THEN 1 ELSE 0 END)
               OVER (PARTITION BY user_id ORDER BY order_us ROWS UNBOUNDED PRECEDING)
               AS n_purchases,
           COALESCE((ts_ms - LAG(ts_ms) OVER (PARTITION BY user_id ORDER BY order_us)) / 1000,
                    -1) AS last_gap_s
    FROM ordered o
)"""
    source = "scalars"
    if users_filter:
        scalars += f""",
marked AS (
    SELECT s.*, u.from_us,
           MIN(CASE WHEN s.order_us >= u.from_us THEN s.pos END)
               OVER (PARTITION BY s.user_id) AS first_pos
    FROM scalars s JOIN _users u ON u.user_id = s.user_id
),
context AS (
    SELECT * FROM marked WHERE pos >= first_pos - {max_len - 1}
)"""
        source = "context"
    keep = "WHERE order_us >= from_us" if users_filter else ""
    return f"""
WITH {_ORDERED.format(where=where)},
{scalars},
windows AS (
    SELECT user_id,
           order_us,
           pos AS n_events,
           {_agg(dialect, _int64(dialect, "item_idx"))} OVER w AS item_seq,
           {_agg(dialect, _int64(dialect, "type_idx"))} OVER w AS type_seq,
           {_agg(dialect, "ts_ms / 1000")} OVER w AS ts_seq,
           n_purchases,
           last_gap_s{", from_us" if users_filter else ""}
    FROM {source}
    WINDOW w AS (PARTITION BY user_id ORDER BY order_us
                 ROWS BETWEEN {max_len - 1} PRECEDING AND CURRENT ROW)
)
SELECT user_id, order_us, n_events, item_seq, type_seq, ts_seq, n_purchases, last_gap_s
FROM windows {keep}
{"ORDER BY user_id, order_us" if ordered else ""}
"""


def _int64(dialect: str, col: str) -> str:
    return col if dialect == "sqlite" else f"{col}::bigint"


def purchase_idx(engine: Engine) -> int:
    """The index of the ``purchase`` event type, or -1 when there is none."""
    with engine.connect() as conn:
        row = conn.execute(text("SELECT type_idx FROM event_types WHERE name = 'purchase'")).first()
    return int(row[0]) if row else -1


def compute_feature_rows(engine: Engine, max_len: int) -> pd.DataFrame:
    """All feature rows, as a DataFrame with list columns and a UTC ``event_timestamp``."""
    require_schema(engine)
    dialect = engine.dialect.name
    sql = feature_rows_sql(dialect, max_len)
    with engine.connect() as conn:
        df = pd.read_sql_query(text(sql), conn, params={"purchase_idx": purchase_idx(engine)})
    if dialect == "sqlite":
        for col in ("item_seq", "type_seq", "ts_seq"):
            df[col] = [json.loads(v) for v in df[col]]
    return finish_feature_frame(df)


def finish_feature_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Add timestamps and derived columns; fix dtypes."""
    df["seq_len"] = df["item_seq"].map(len).astype("int64")
    for col in ("n_events", "n_purchases", "last_gap_s", "order_us"):
        df[col] = df[col].astype("int64")
    df["event_timestamp"] = pd.to_datetime(df["order_us"], unit="us", utc=True)
    df["created"] = pd.Timestamp.now(tz="UTC").floor("us")
    return df


#: the query behind :func:`event_positions` over a table or view ``events`` (portable SQL:
#: SQLite, PostgreSQL and Spark run it as it is)
EVENT_POSITIONS_SQL = (
    f"WITH {ordered_cte()} SELECT user_id, item_idx, order_us, pos, n FROM ordered"
)


def leave_one_out_positions_sql(stride: int) -> str:
    """:data:`EVENT_POSITIONS_SQL` cut to the events that end a leave-one-out example (the
    rows :func:`seqrec.training.data.leave_one_out_entities` keeps): each user's last two
    (test, valid; users with 3 or more events) and every ``stride``-th before them, from the
    third event on. The database filters, so the client holds about ``events / stride + 2 *
    users`` rows, not one per event."""
    stride = int(stride)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    last_train = "(CASE WHEN n >= 3 THEN n - 2 ELSE n END)"
    return (
        f"{EVENT_POSITIONS_SQL} WHERE (n >= 3 AND pos >= n - 1) OR "
        f"(pos >= 2 AND {last_train} >= pos AND ({last_train} - pos) % {stride} = 0)"
    )


def event_positions(engine: Engine, stride: int | None = None) -> pd.DataFrame:
    """Every event with its per-user position: user_id, item_idx, order_us, pos, n. With
    ``stride``, only the events that end a leave-one-out example
    (:func:`leave_one_out_positions_sql`)."""
    require_schema(engine)
    sql = EVENT_POSITIONS_SQL if stride is None else leave_one_out_positions_sql(stride)
    with engine.connect() as conn:
        return positions_frame(pd.read_sql_query(text(sql), conn))


def positions_frame(df: pd.DataFrame) -> pd.DataFrame:
    """:data:`EVENT_POSITIONS_SQL`'s result with its integer columns as int64."""
    for col in ("item_idx", "order_us", "pos", "n"):
        df[col] = df[col].astype("int64")
    return df


def left_pad(seqs: Any, length: int) -> np.ndarray:
    """Lists of ints -> [N, length] int64 array, left-padded with 0 (newest last)."""
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for i, s in enumerate(seqs):
        if s is None or isinstance(s, float):  # missing (None / NaN)
            continue
        s = list(s)[-length:]
        if s:
            out[i, length - len(s) :] = s
    return out


def drop_unknown(
    items: np.ndarray, types: np.ndarray, times: np.ndarray, n_items: int, n_types: int
) -> np.ndarray:
    """Fit left-padded [N, L] sequences to a model of ``n_items`` items and ``n_types`` event
    types, in place: events whose item the model does not know (newer than it) are dropped and
    the rest shifted right, types and times alongside, so rows stay left-padded with column -1
    the newest known event; unknown event types become 0. Serving, evaluation and retraining
    all prepare inputs with this. Returns [N] bool: whether a row has any event left."""
    unknown = items >= n_items
    rows = np.flatnonzero(unknown.any(axis=1))
    if len(rows):
        keep = (items[rows] > 0) & ~unknown[rows]  # [R, L]
        order = np.argsort(keep, axis=1, kind="stable")  # dropped first, kept in their order
        kept = np.take_along_axis(keep, order, axis=1)
        for a in (items, types, times):
            a[rows] = np.where(kept, np.take_along_axis(a[rows], order, axis=1), 0)
    types[types >= n_types] = 0
    return np.asarray(items[:, -1] > 0)
