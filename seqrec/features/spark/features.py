"""The sequence features in Spark SQL, written as Parquet for Feast's spark offline store.

The same rows as :mod:`seqrec.features.sql`: one per user per event, the last L item indices,
event types and epoch-second times up to and including it, ``order_us`` (the event's time in
microseconds plus its rank among the user's events of the same millisecond, by event id), and
the scalar aggregates. ``event_timestamp`` is ``order_us`` as a UTC timestamp, so Feast's
inclusive point-in-time join (feature time <= entity time) returns exactly the events before an
entity row at ``t - 1us``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from seqrec.config import Workspace
from seqrec.errors import SeqrecError
from seqrec.features.spark.lake import EVENTS_DIR, export_events
from seqrec.features.spark.session import get_session, to_pandas
from seqrec.features.sql import ordered_cte, purchase_idx

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

#: the Spark output directory of the feature rows (inside the workspace's snapshot_dir)
FEATURES_DIR = "user_sequence"

#: per-user event order: the CTE of :mod:`seqrec.features.sql`, which Spark SQL runs as it is
ORDERED = ordered_cte()


def feature_rows_sql(max_len: int, purchase: int) -> str:
    """The Spark SQL feature query over a view ``events``. ``/`` of the other dialects is
    integer division truncating toward zero: Spark's ``DIV``."""
    return f"""
WITH {ORDERED},
scalars AS (
    SELECT o.*,
           SUM(CASE WHEN type_idx = {int(purchase)} THEN 1 ELSE 0 END)
               OVER (PARTITION BY user_id ORDER BY order_us ROWS UNBOUNDED PRECEDING)
               AS n_purchases,
           COALESCE((ts_ms - LAG(ts_ms) OVER (PARTITION BY user_id ORDER BY order_us)) DIV 1000,
                    -1) AS last_gap_s
    FROM ordered o
),
windows AS (
    SELECT user_id, order_us, event_id,
           pos AS n_events,
           collect_list(item_idx) OVER w AS item_seq,
           collect_list(type_idx) OVER w AS type_seq,
           collect_list(ts_ms DIV 1000) OVER w AS ts_seq,
           n_purchases, last_gap_s
    FROM scalars
    WINDOW w AS (PARTITION BY user_id ORDER BY order_us
                 ROWS BETWEEN {max_len - 1} PRECEDING AND CURRENT ROW)
)
SELECT user_id,
       timestamp_micros(order_us) AS event_timestamp,
       current_timestamp() AS created,
       item_seq, type_seq, ts_seq,
       CAST(size(item_seq) AS BIGINT) AS seq_len,
       CAST(n_events AS BIGINT) AS n_events,
       CAST(n_purchases AS BIGINT) AS n_purchases,
       CAST(last_gap_s AS BIGINT) AS last_gap_s,
       order_us, event_id
FROM windows
"""


def events_view(spark: SparkSession, snapshot_dir: Path) -> DataFrame:
    """The exported events as the temporary view ``events``."""
    df = spark.read.parquet(str(snapshot_dir / EVENTS_DIR))
    df.createOrReplaceTempView("events")
    return df


def build_features(ws: Workspace, engine: Engine) -> tuple[int, int, int, float]:
    """Export the new events, compute every feature row in Spark and replace the Parquet
    directory the Feast source reads; returns (rows, users, events, seconds)."""
    t0 = time.perf_counter()
    root = ws.snapshot_dir
    state = export_events(engine, root)
    if state.events == 0:
        raise SeqrecError("the events table is empty", hint="import events first")
    spark = get_session(ws)
    events_view(spark, root)
    rows = spark.sql(feature_rows_sql(ws.config.features.max_len, purchase_idx(engine)))
    target = root / FEATURES_DIR
    tmp = root / f".{FEATURES_DIR}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    rows.write.parquet(str(tmp))
    written = spark.read.parquet(str(tmp))
    n_rows, n_users = written.selectExpr("count(*)", "count(DISTINCT user_id)").first() or (0, 0)
    old = root / f".{FEATURES_DIR}.{os.getpid()}.old"
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return int(n_rows), int(n_users), state.events, time.perf_counter() - t0


def latest_rows(ws: Workspace, since_event_id: int | None = None) -> pd.DataFrame:
    """Each user's newest feature row (with ``since_event_id``: only users with events past
    that ingestion watermark), as pandas with list columns, for the online store."""
    spark = get_session(ws)
    spark.read.parquet(str(ws.snapshot_dir / FEATURES_DIR)).createOrReplaceTempView("features")
    where = ""
    if since_event_id is not None:
        events_view(spark, ws.snapshot_dir)
        where = (
            "WHERE user_id IN (SELECT DISTINCT user_id FROM events "
            f"WHERE event_id > {int(since_event_id)})"
        )
    query = spark.sql(
        f"""
        SELECT * FROM (
            SELECT f.*, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY order_us DESC) AS rn
            FROM features f {where}
        ) WHERE rn = 1
        """
    )
    df = to_pandas(query)
    import pandas as pd

    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    return df.drop(columns=["rn"]).reset_index(drop=True)
