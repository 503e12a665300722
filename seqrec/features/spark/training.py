"""What the training sets are built from, in Spark SQL over the exported events: each event's
per-user position (leave-one-out) and the classification labels at time cutoffs. The same
definitions as :func:`seqrec.features.sql.event_positions` and :mod:`seqrec.training.labels`;
the features themselves come through Feast's spark offline store."""

from __future__ import annotations

import pandas as pd

from seqrec.config import Workspace
from seqrec.errors import SeqrecError
from seqrec.features.spark.features import events_view
from seqrec.features.spark.session import get_session, to_pandas
from seqrec.features.sql import (
    EVENT_POSITIONS_SQL,
    leave_one_out_positions_sql,
    positions_frame,
)
from seqrec.training.labels import LabelDef, by_user, split_cutoffs


def event_positions(ws: Workspace, stride: int | None = None) -> pd.DataFrame:
    """Every event with its per-user position: user_id, item_idx, order_us, pos, n; with
    ``stride``, only those that end a leave-one-out example (the same SQL as
    :func:`seqrec.features.sql.event_positions`)."""
    spark = get_session(ws)
    events_view(spark, ws.snapshot_dir)
    sql = EVENT_POSITIONS_SQL if stride is None else leave_one_out_positions_sql(stride)
    return positions_frame(to_pandas(spark.sql(sql)))


def labels_at(ws: Workspace, label: LabelDef, cutoff_ms: int, purchase: int) -> pd.DataFrame:
    """user_id, label for every user active in the horizon before ``cutoff_ms`` (see
    :func:`seqrec.training.labels.labels_at`)."""
    spark = get_session(ws)
    t, h = int(cutoff_ms), label.horizon_s * 1000
    t_start, t_end = t - h, t + h
    if label.binary:
        sql = f"""
            SELECT user_id,
                   MAX(CASE WHEN ts_ms >= {t} AND ts_ms < {t_end} AND type_idx = {int(purchase)}
                       THEN 1 ELSE 0 END) AS bought,
                   MAX(CASE WHEN ts_ms >= {t} AND ts_ms < {t_end} THEN 1 ELSE 0 END) AS active
            FROM events
            GROUP BY user_id
            HAVING MAX(CASE WHEN ts_ms >= {t_start} AND ts_ms < {t} THEN 1 ELSE 0 END) = 1
        """
        df = to_pandas(spark.sql(sql))
        df["label"] = df["bought"] if label.kind == "purchase-within" else 1 - df["active"]
        return by_user(df[["user_id", "label"]].astype({"label": "int64"}))
    sql = f"""
        WITH after AS (
            SELECT user_id, type_idx,
                   ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY ts_ms, event_id) AS rn
            FROM events WHERE ts_ms >= {t} AND ts_ms < {t_end}
        ), before AS (
            SELECT DISTINCT user_id FROM events WHERE ts_ms >= {t_start} AND ts_ms < {t}
        )
        SELECT a.user_id, a.type_idx - 1 AS label
        FROM after a JOIN before b ON a.user_id = b.user_id
        WHERE a.rn = 1
    """
    return by_user(to_pandas(spark.sql(sql)).astype({"label": "int64"}))


def entity_frame(
    ws: Workspace, label: LabelDef, purchase: int, train_cutoffs: int = 4
) -> pd.DataFrame:
    """Entity rows (user_id, event_timestamp = T - 1us, label, split, row_id) for all cutoffs,
    as :func:`seqrec.training.labels.entity_frame` makes them."""
    spark = get_session(ws)
    events_view(spark, ws.snapshot_dir)
    row = spark.sql("SELECT count(*), min(ts_ms), max(ts_ms) FROM events").first()
    n, lo, hi = (0, 0, 0) if row is None else row
    if not n:
        raise SeqrecError("the events table is empty", hint="import events first")
    offset = int(0.9 * max(0, int(n) - 1))
    q90 = spark.sql(f"SELECT ts_ms FROM events ORDER BY ts_ms LIMIT 1 OFFSET {offset}").first()
    splits = split_cutoffs(label, int(lo), int(hi), int(q90[0]) if q90 else 0, train_cutoffs)
    parts = []
    for split, ts in splits.items():
        for t in ts:
            df = labels_at(ws, label, t, purchase)
            df["split"] = split
            df["event_timestamp"] = pd.to_datetime(t * 1000 - 1, unit="us", utc=True)
            parts.append(df)
    ent = pd.concat(parts, ignore_index=True)
    ent["row_id"] = range(len(ent))
    return ent
