"""The events table as Parquet, the input of the Spark feature pipeline.

Events are appended by ingestion watermark: each export writes the events past the largest
``event_id`` already exported as one more Parquet part (``events/part-<first>-<last>.parquet``).
When the table no longer matches what was exported (rows removed, the database rebuilt) the
directory is written again from scratch. Spark reads the directory as one table.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Connection, Engine, func, select

from seqrec.data.schema import events

EVENTS_DIR = "events"
STATE_FILE = "_export.json"

SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),
        ("user_id", pa.string()),
        ("item_idx", pa.int64()),
        ("type_idx", pa.int64()),
        ("ts_ms", pa.int64()),
    ]
)


@dataclass
class ExportState:
    """What the Parquet copy holds: ``events`` rows, ``max_event_id`` the newest."""

    events: int
    max_event_id: int
    parts: int


def read_state(root: Path) -> ExportState | None:
    path = root / EVENTS_DIR / STATE_FILE
    return ExportState(**json.loads(path.read_text())) if path.is_file() else None


def export_events(engine: Engine, root: Path, *, batch_rows: int = 200_000) -> ExportState:
    """Bring ``root/events/`` up to date with the events table; returns what it holds."""
    out = root / EVENTS_DIR
    with engine.connect() as conn:
        n, max_id = conn.execute(select(func.count(), func.max(events.c.event_id))).one()
        n, max_id = int(n or 0), int(max_id or 0)
        state = read_state(root)
        if state is not None:
            newer = conn.execute(
                select(func.count()).where(events.c.event_id > state.max_event_id)
            ).scalar()
            if state.events + int(newer or 0) != n:
                state = None  # rows removed or rewritten: export everything again
        if state is None:
            shutil.rmtree(out, ignore_errors=True)
            state = ExportState(0, 0, 0)
        if max_id > state.max_event_id:
            added = _write_part(conn, out, state.max_event_id, max_id, batch_rows)
            state = ExportState(state.events + added, max_id, state.parts + 1)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(state)))
    os.replace(tmp, out / STATE_FILE)
    return state


def _write_part(conn: Connection, out: Path, after_id: int, last_id: int, batch_rows: int) -> int:
    """Events with ``after_id < event_id <= last_id`` as one Parquet file, streamed."""
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"part-{after_id + 1:012d}-{last_id:012d}.parquet"
    tmp = out / f".{final.name}.tmp"
    query = (
        select(
            events.c.event_id,
            events.c.user_id,
            events.c.item_idx,
            events.c.type_idx,
            events.c.ts_ms,
        )
        .where(events.c.event_id > after_id, events.c.event_id <= last_id)
        .order_by(events.c.event_id)
    )
    rows = 0
    with pq.ParquetWriter(tmp, SCHEMA) as writer:
        result = conn.execution_options(stream_results=True).execute(query)
        for chunk in result.partitions(batch_rows):
            cols = list(zip(*chunk, strict=True))
            table = pa.Table.from_arrays(
                [pa.array(c, type=f.type) for c, f in zip(cols, SCHEMA, strict=True)],
                schema=SCHEMA,
            )
            writer.write_table(table)
            rows += len(chunk)
    os.replace(tmp, final)
    return rows
