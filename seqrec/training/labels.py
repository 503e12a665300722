"""Sequence-classification labels, computed in SQL at time cutoffs, features strictly before.

Label definitions (``--label``):

- ``purchase-within:7d``: 1 if the user has a purchase event in [T, T + 7 days), else 0.
- ``churn:30d``: 1 if the user has no event at all in [T, T + 30 days), else 0.
- ``next-event-type`` (optionally ``next-event-type:7d``): the type of the user's first event in
  [T, T + horizon) (default 7 days); users with none are left out. Classes are event types.

At each cutoff T the examples are the *active* users: those with at least one event in the
horizon before T ([T - horizon, T)). Their features come from Feast at T - 1us, so only events
strictly before T are in them. Splits are by time, never at random: the test cutoff is placed
where 90% of all events lie before it (and its horizon is inside the data), validation one
horizon earlier, training at ``train_cutoffs`` cutoffs before that, each a horizon apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sqlalchemy import Engine, func, select, text

from seqrec.data.schema import event_types, events
from seqrec.errors import SeqrecError

_UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400}
#: the longest horizon a label may have (10 years; cutoffs stay well inside 64-bit integers)
MAX_HORIZON_S = 3650 * 86400


@dataclass(frozen=True)
class LabelDef:
    """A parsed ``--label`` definition."""

    kind: str  # purchase-within | churn | next-event-type
    horizon_s: int
    text: str
    class_names: tuple[str, ...] = field(default_factory=tuple)

    @property
    def binary(self) -> bool:
        return self.kind in ("purchase-within", "churn")


def parse_label(raw: str) -> LabelDef:
    """Parse ``purchase-within:7d``, ``churn:30d``, ``next-event-type[:7d]``: a horizon is a
    positive whole number of hours, days or weeks (ASCII digits), at most 10 years."""
    kind, _, span = raw.strip().partition(":")
    label = repr(raw) if len(raw) <= 60 else f"{raw[:60]!r}... ({len(raw):,} characters)"
    if kind not in ("purchase-within", "churn", "next-event-type"):
        raise SeqrecError(
            f"unknown label {label}",
            hint="use purchase-within:7d, churn:30d or next-event-type",
        )
    if not span:
        if kind != "next-event-type":
            raise SeqrecError(f"label {label} needs a horizon, e.g. {kind}:7d")
        span = "7d"
    m = re.fullmatch(r"([0-9]{1,12})([hdw])", span)
    if not m or int(m.group(1)) == 0:
        raise SeqrecError(f"bad horizon in label {label}", hint="e.g. 12h, 7d, 2w")
    horizon_s = int(m.group(1)) * _UNITS[m.group(2)]
    if horizon_s > MAX_HORIZON_S:
        raise SeqrecError(
            f"horizon of label {label} is longer than 10 years", hint="e.g. 12h, 7d, 2w"
        )
    return LabelDef(kind, horizon_s, raw)


def _type_idx(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        idx = conn.execute(
            select(event_types.c.type_idx).where(event_types.c.name == name)
        ).scalar()
    return int(idx) if idx is not None else -1


def event_type_names(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(event_types.c.type_idx, event_types.c.name).order_by(event_types.c.type_idx)
        ).all()
    return [r[1] for r in rows]


def labels_at(engine: Engine, label: LabelDef, cutoff_ms: int) -> pd.DataFrame:
    """user_id, label for every user active in the horizon before ``cutoff_ms``."""
    end_ms = cutoff_ms + label.horizon_s * 1000
    start_ms = cutoff_ms - label.horizon_s * 1000
    params = {
        "t_start": start_ms,
        "t": cutoff_ms,
        "t_end": end_ms,
        "purchase": _type_idx(engine, "purchase"),
    }
    if label.binary:
        sql = text(
            """
            SELECT user_id,
                   MAX(CASE WHEN ts_ms >= :t AND ts_ms < :t_end AND type_idx = :purchase
                       THEN 1 ELSE 0 END) AS bought,
                   MAX(CASE WHEN ts_ms >= :t AND ts_ms < :t_end THEN 1 ELSE 0 END) AS active
            FROM events
            GROUP BY user_id
            HAVING MAX(CASE WHEN ts_ms >= :t_start AND ts_ms < :t THEN 1 ELSE 0 END) = 1
            """
        )
        with engine.connect() as conn:
            df = pd.read_sql_query(sql, conn, params=params)
        df["label"] = df["bought"] if label.kind == "purchase-within" else 1 - df["active"]
        return by_user(df[["user_id", "label"]].astype({"label": "int64"}))
    sql = text(
        """
        WITH after AS (
            SELECT user_id, type_idx,
                   ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY ts_ms, event_id) AS rn
            FROM events WHERE ts_ms >= :t AND ts_ms < :t_end
        ), before AS (
            SELECT DISTINCT user_id FROM events WHERE ts_ms >= :t_start AND ts_ms < :t
        )
        SELECT a.user_id, a.type_idx - 1 AS label
        FROM after a JOIN before b ON a.user_id = b.user_id
        WHERE a.rn = 1
        """
    )
    with engine.connect() as conn:
        df = pd.read_sql_query(sql, conn, params=params)
    return by_user(df.astype({"label": "int64"}))


def by_user(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in code-point order of user_id: the same on every database and collation."""
    return df.sort_values("user_id", kind="stable").reset_index(drop=True)


def time_range_ms(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        lo, hi = conn.execute(select(func.min(events.c.ts_ms), func.max(events.c.ts_ms))).one()
    if lo is None:
        raise SeqrecError("the events table is empty", hint="import events first")
    return int(lo), int(hi)


def _time_quantile(engine: Engine, q: float) -> int:
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(events)).scalar() or 0
        row = conn.execute(
            select(events.c.ts_ms).order_by(events.c.ts_ms).offset(int(q * max(0, n - 1))).limit(1)
        ).scalar()
    return int(row or 0)


def cutoffs(engine: Engine, label: LabelDef, train_cutoffs: int = 4) -> dict[str, list[int]]:
    """Split cutoffs (epoch ms) by time: test newest, valid before it, train before that."""
    lo, hi = time_range_ms(engine)
    return split_cutoffs(label, lo, hi, _time_quantile(engine, 0.9), train_cutoffs)


def split_cutoffs(
    label: LabelDef, lo: int, hi: int, q90: int, train_cutoffs: int = 4
) -> dict[str, list[int]]:
    """:func:`cutoffs` from the events' time range ``lo``..``hi`` (epoch ms) and ``q90``, the
    time 90% of the events lie before (the event at offset ``int(0.9 * (n - 1))``)."""
    h = label.horizon_s * 1000
    test = min(hi + 1 - h, q90)
    out = {
        "test": [test],
        "valid": [test - h],
        "train": [test - h * (k + 2) for k in range(train_cutoffs)],
    }
    out["train"] = [t for t in out["train"] if t - h >= lo]
    if out["valid"][0] - h < lo or not out["train"]:
        span_days = (hi - lo) / 86_400_000
        raise SeqrecError(
            f"the events span {span_days:.1f} days: too short for label '{label.text}' "
            "(need at least 3 horizons: train, valid and test)",
            hint="use a shorter horizon",
        )
    return out


def entity_frame(engine: Engine, label: LabelDef, train_cutoffs: int = 4) -> pd.DataFrame:
    """Entity rows (user_id, event_timestamp = T - 1us, label, split, row_id) for all cutoffs."""
    parts = []
    for split, ts in cutoffs(engine, label, train_cutoffs).items():
        for t in ts:
            df = labels_at(engine, label, t)
            df["split"] = split
            df["event_timestamp"] = pd.to_datetime(t * 1000 - 1, unit="us", utc=True)
            parts.append(df)
    ent = pd.concat(parts, ignore_index=True)
    ent["row_id"] = np.arange(len(ent))
    return ent
