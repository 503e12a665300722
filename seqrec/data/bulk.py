"""Bulk import into PostgreSQL: COPY into a staging table, then one set-based INSERT.

Same rules and results as the row importer (:func:`seqrec.data.importers.import_events`): one
transaction per source (a failed import leaves every table as it was), vocabulary indices in
order of first appearance, the first of several rows with the same natural key kept, event ids
in file order. What differs is the path:

1. rows are validated (by the row readers, or vectorised by :func:`csv_frames` for clean CSV
   files), mapped to vocabulary indices in Python and streamed with ``COPY`` (psycopg 3) into
   a temporary staging table, with explicit event ids ``max(event_id) + line order``;
2. one ``INSERT ... SELECT`` moves them into ``events``, sorted by the natural key so index
   maintenance walks the B-trees in order and duplicates resolve to the earliest row. Into an
   empty table (a first load) the rows are copied directly and the two secondary indexes are
   built at the end, inside the same transaction, several times faster than maintaining them;
   duplicate keys within the file are then removed (keeping the earliest) before the unique
   index is built.

Imports serialise on a ``SHARE ROW EXCLUSIVE`` lock of ``events`` (readers are not blocked).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError

from seqrec.data.schema import MAX_ID_LEN

MAX_TYPE_LEN = 64
_ADD_UNIQUE = "ALTER TABLE events ADD CONSTRAINT uq_events_natural UNIQUE (user_id, item_idx, type_idx, ts_ms)"
STAGE_COLUMNS = ("event_id", "user_id", "item_idx", "type_idx", "ts_ms", "value")
_INT_RE = r"^[0-9]{1,15}$"
_VALUE_RE = r"^-?[0-9]{1,15}(\.[0-9]{1,15})?$"


class NotFast(Exception):
    """The vectorised CSV path cannot vouch for this input: use the row path."""


# --------------------------------------------------------------------------------------------
# Vectorised CSV reading (clean files only; anything unusual goes to the row reader)


def csv_frames(
    path: Path,
    header_width: int,
    layout: tuple[int, int, int, int | None, int | None],
    *,
    time_unit: str,
    delimiter: str,
    default_event_type: str,
    max_ms: int,
    block_size: int = 1 << 24,
) -> Iterator[pd.DataFrame]:
    """Validated frames (user_id, item_id, event_type, ts_ms, value) of a CSV file.

    Accepts only what the row reader would accept identically: integer timestamps
    (``auto``/``s``/``ms``), plain decimal values, ids without surrounding whitespace. Raises
    :class:`NotFast` at the first thing it cannot vouch for (the caller then re-reads the file
    with the row reader, which gives exact per-line errors).
    """
    if time_unit == "iso":
        raise NotFast("ISO timestamps")
    i_user, i_item, i_ts, i_type, i_value = layout
    names = [f"c{i}" for i in range(header_width)]
    wanted = {i for i in (i_user, i_item, i_ts, i_type, i_value) if i is not None}
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(
                skip_rows=1, column_names=names, block_size=block_size, encoding="utf8"
            ),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(
                column_types={names[i]: pa.string() for i in wanted},
                include_columns=[names[i] for i in sorted(wanted)],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise NotFast(str(exc)) from None
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise NotFast(str(exc)) from None
        yield _validate(batch, names, layout, time_unit, default_event_type, max_ms)


def _all(mask: Any) -> bool:
    return bool(pc.all(mask).as_py()) if len(mask) else True


def _no_nul(col: pa.Array) -> None:
    """PostgreSQL text cannot hold NUL: the row reader names the line that has one."""
    if len(col) and pc.any(pc.match_substring(col, "\x00")).as_py():
        raise NotFast("a NUL character")


def _ids(col: pa.Array, limit: int) -> pa.Array:
    _no_nul(col)
    if not _all(pc.equal(pc.utf8_trim_whitespace(col), col)):
        raise NotFast("ids with surrounding whitespace")
    n = pc.utf8_length(col)
    if not _all(pc.and_(pc.greater(n, 0), pc.less_equal(n, limit))):
        raise NotFast("empty or long ids")
    return col


def _validate(
    batch: pa.RecordBatch,
    names: list[str],
    layout: tuple[int, int, int, int | None, int | None],
    time_unit: str,
    default_event_type: str,
    max_ms: int,
) -> pd.DataFrame:
    i_user, i_item, i_ts, i_type, i_value = layout
    col = batch.column
    user = _ids(col(names[i_user]), MAX_ID_LEN)
    item = _ids(col(names[i_item]), MAX_ID_LEN)
    if i_type is not None:
        etype = pc.utf8_trim_whitespace(col(names[i_type]))
        etype = pc.if_else(pc.equal(pc.utf8_length(etype), 0), default_event_type, etype)
        if not _all(pc.less_equal(pc.utf8_length(etype), MAX_TYPE_LEN)):
            raise NotFast("long event types")
        _no_nul(etype)
    else:
        etype = pa.array([default_event_type] * batch.num_rows, pa.string())
    ts_text = col(names[i_ts])
    if not _all(pc.match_substring_regex(ts_text, _INT_RE)):
        raise NotFast("non-integer timestamps")
    ts = pc.cast(ts_text, pa.int64()).to_numpy()
    if time_unit == "s":
        ts = ts * 1000
    elif time_unit == "auto":
        ts = np.where(ts >= 100_000_000_000, ts, ts * 1000)
    if len(ts) and int(ts.max()) > max_ms:
        raise NotFast("timestamps in the future")
    if i_value is not None:
        vtext = col(names[i_value])
        empty = pc.equal(pc.utf8_length(vtext), 0)
        if not _all(pc.or_(empty, pc.match_substring_regex(vtext, _VALUE_RE))):
            raise NotFast("values that are not plain decimals")
        value = pc.cast(pc.if_else(empty, None, vtext), pa.float64()).to_numpy(zero_copy_only=False)
    else:
        value = np.full(batch.num_rows, np.nan)
    return pd.DataFrame(
        {
            "user_id": user.to_numpy(zero_copy_only=False),
            "item_id": item.to_numpy(zero_copy_only=False),
            "event_type": etype.to_numpy(zero_copy_only=False),
            "ts_ms": ts,
            "value": value,
        }
    )


# --------------------------------------------------------------------------------------------
# The staging load


class PgBulkLoad:
    """One import's staging table, vocabularies and final insert, inside ``conn``'s
    transaction."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.raw: Any = cast(Any, conn.connection.driver_connection)  # psycopg.Connection
        conn.execute(text("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE"))
        self.before = int(conn.execute(text("SELECT COUNT(*) FROM events")).scalar_one())
        self.next_id = (
            int(conn.execute(text("SELECT COALESCE(MAX(event_id), 0) FROM events")).scalar_one())
            + 1
        )
        self.items: dict[str, int] = {
            str(k): int(i) for k, i in conn.execute(text("SELECT item_id, item_idx FROM items"))
        }
        self.types: dict[str, int] = {
            str(k): int(i) for k, i in conn.execute(text("SELECT name, type_idx FROM event_types"))
        }
        self.staged = 0
        # An empty table is loaded directly (COPY into events, secondary indexes built at the
        # end); otherwise rows are staged and merged against what is there.
        self.direct = self.before == 0
        if self.direct:
            self.pkey = str(
                conn.execute(
                    text(
                        "SELECT conname FROM pg_constraint "
                        "WHERE conrelid = 'events'::regclass AND contype = 'p'"
                    )
                ).scalar_one()
            )
            # a name from the catalogue: quoted by the dialect, whatever it holds
            self.pkey = conn.dialect.identifier_preparer.quote_identifier(self.pkey)
            conn.execute(text(f"ALTER TABLE events DROP CONSTRAINT {self.pkey}"))
            conn.execute(text("ALTER TABLE events DROP CONSTRAINT uq_events_natural"))
            conn.execute(text("DROP INDEX ix_events_user_order"))
            self.target = "events"
        else:
            conn.execute(
                text(
                    "CREATE TEMP TABLE _staging (event_id bigint, user_id text, "
                    "item_idx integer, type_idx integer, ts_ms bigint, value double precision) "
                    "ON COMMIT DROP"
                )
            )
            self.target = "_staging"
        self._new_vocab: dict[str, list[tuple[int, str]]] = {"items": [], "event_types": []}
        # One COPY stream for the whole load: the server parses rows while Python prepares the
        # next batch. Vocabulary rows are written after it (no COPY may interleave).
        self._copy_cm: Any = self.raw.cursor().copy(
            f"COPY {self.target} ({', '.join(STAGE_COLUMNS)}) FROM STDIN WITH (FORMAT csv)"
        )
        self._copy: Any = self._copy_cm.__enter__()

    def __enter__(self) -> PgBulkLoad:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._end_copy(*exc)

    def _end_copy(self, *exc: Any) -> None:
        if self._copy is None:
            return
        self._copy = None
        if not exc or exc[0] is None:
            self._copy_cm.__exit__(None, None, None)
            return
        # A load that failed (often: the connection dropped) ends its COPY too. psycopg then
        # logs "error ignored terminating Copy" to stderr below seqrec's own error message,
        # about the same failure: keep its logger quiet for that one call.
        psycopg_log = logging.getLogger("psycopg")
        level = psycopg_log.level
        psycopg_log.setLevel(logging.ERROR)
        try:
            self._copy_cm.__exit__(*exc)
        finally:
            psycopg_log.setLevel(level)

    def _vocab(self, values: np.ndarray, vocab: dict[str, int], table: str) -> np.ndarray:
        codes, uniques = pd.factorize(values, sort=False)  # order of first appearance
        idx = np.empty(len(uniques), dtype=np.int64)
        new: list[tuple[int, str]] = []
        nxt = max(vocab.values(), default=0) + 1
        for j, name in enumerate(uniques):
            i = vocab.get(name)
            if i is None:
                i = vocab[name] = nxt
                nxt += 1
                new.append((i, name))
            idx[j] = i
        self._new_vocab[table] += new
        return idx[codes]

    def add_frame(self, df: pd.DataFrame) -> None:
        """Stage validated rows (user_id, item_id, event_type, ts_ms, value)."""
        n = len(df)
        if n == 0:
            return
        item_idx = self._vocab(df["item_id"].to_numpy(dtype=object), self.items, "items")
        type_idx = self._vocab(df["event_type"].to_numpy(dtype=object), self.types, "event_types")
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.next_id += n
        table = pa.table(
            {
                "event_id": ids,
                "user_id": pa.array(df["user_id"].to_numpy(dtype=object), pa.string()),
                "item_idx": item_idx,
                "type_idx": type_idx,
                "ts_ms": df["ts_ms"].to_numpy(dtype=np.int64),
                "value": pa.array(df["value"].to_numpy(dtype=np.float64), from_pandas=True),
            }
        )
        buf = io.BytesIO()
        pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False))
        self._copy.write(buf.getvalue())
        self.staged += n

    def finish(self) -> int:
        """Move the staged rows into ``events``; returns the number of rows added."""
        self._end_copy()
        for table, rows in self._new_vocab.items():
            if rows:
                cols = "(item_idx, item_id)" if table == "items" else "(type_idx, name)"
                with self.raw.cursor().copy(f"COPY {table} {cols} FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
        conn = self.conn
        conn.execute(text("SET LOCAL work_mem = '256MB'"))
        conn.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
        cols = ", ".join(STAGE_COLUMNS)
        key = "user_id, item_idx, type_idx, ts_ms"
        if self.direct:
            added = self.staged
            conn.execute(
                text(f"ALTER TABLE events ADD CONSTRAINT {self.pkey} PRIMARY KEY (event_id)")
            )
            try:  # usually a file has no duplicate keys
                with conn.begin_nested():
                    conn.execute(text(_ADD_UNIQUE))
            except IntegrityError:  # duplicates within the file: the first of each wins
                added -= conn.execute(
                    text(
                        "DELETE FROM events a USING events b WHERE a.user_id = b.user_id "
                        "AND a.item_idx = b.item_idx AND a.type_idx = b.type_idx "
                        "AND a.ts_ms = b.ts_ms AND a.event_id > b.event_id"
                    )
                ).rowcount
                conn.execute(text(_ADD_UNIQUE))
            conn.execute(
                text("CREATE INDEX ix_events_user_order ON events (user_id, ts_ms, event_id)")
            )
        elif self.staged:
            added = conn.execute(
                text(
                    f"INSERT INTO events ({cols}) SELECT {cols} FROM _staging "
                    f"ORDER BY {key}, event_id ON CONFLICT ({key}) DO NOTHING"
                )
            ).rowcount
            conn.execute(text("DROP TABLE _staging"))
        else:
            added = 0
        if added:
            conn.execute(
                text(
                    "SELECT setval(pg_get_serial_sequence('events', 'event_id'), "
                    "(SELECT MAX(event_id) FROM events))"
                )
            )
        return int(added)


def stage_rows_frame(rows: list[tuple[str, str, str, int, float | None]]) -> pd.DataFrame:
    """Row-reader events (user, item, type, ts_ms, value) as a frame for :meth:`add_frame`."""
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "ts_ms", "value"])
    df["value"] = df["value"].astype("float64")
    return df


__all__ = ["NotFast", "PgBulkLoad", "csv_frames", "stage_rows_frame"]
