"""Import behaviour events from files into the SQL events table.

Three readers turn a file into ``(line_number, RawEvent | reason)`` pairs, streaming it:

* :func:`read_csv`: a CSV file with a header (column names configurable, see :class:`CsvColumns`);
* :func:`read_movielens`: MovieLens ``u.data`` (``user item rating timestamp``, tab-separated,
  no header; ``::``-separated ``ratings.dat`` lines are accepted too);
* :func:`read_recbole`: a RecBole atomic ``.inter`` file with a typed header
  (``user_id:token\\titem_id:token\\trating:float\\ttimestamp:float``).

:func:`import_events` writes such pairs to the database in ONE transaction per source: with
``on_error="fail"`` the first bad row aborts the import and nothing of the source is written
(vocabulary entries included); with ``on_error="skip"`` bad rows are counted and left out.
Rows whose natural key ``(user_id, item_idx, type_idx, ts_ms)`` already exists are ignored, so
importing the same file twice adds nothing.

Timestamp rules (CSV ``time_unit``):

* ``"s"``: epoch seconds (may have a fraction); ``"ms"``: epoch milliseconds;
* ``"iso"``: ISO-8601 as read by :meth:`datetime.fromisoformat` (a trailing ``Z`` is UTC);
  a datetime WITHOUT an offset is taken as UTC;
* ``"auto"`` (default): a numeric value >= 1e11 is milliseconds, a smaller one seconds, and a
  non-numeric one ISO-8601.

``event_type_from`` names each event by its value (a rating) instead: ``"rating"`` gives
``r1`` .. ``r5`` (``r<value>``), ``"liked"`` gives ``liked`` for a value of at least
:data:`LIKED_FROM` and ``disliked`` below it (so ``next-event-type`` labels become rating
classes); a row without a value is then a bad row.

Timestamps before 1970-01-01 or more than one day in the future are rejected; fractions of a
millisecond are rounded exactly (half to even), from the text, not through a float. Identifiers
and event types are stripped of surrounding whitespace; empty ones, ones longer than 256 (event
types: 64) characters and ones holding a NUL character are rejected. CSV fields may be up to
:data:`MAX_FIELD_CHARS` long (a longer one fails the import naming its line).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation, localcontext
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection, Engine, func, insert, select
from sqlalchemy.exc import OperationalError

from seqrec.data.schema import MAX_ID_LEN, create_schema, event_types, events, imports, items
from seqrec.errors import SeqrecError
from seqrec.faults import kill_point

MAX_TYPE_LEN = 64
MAX_ERRORS_KEPT = 10
FUTURE_SLACK_MS = 86_400_000  # timestamps may be at most one day in the future
MS_THRESHOLD = 1e11  # auto time unit: numbers >= this are milliseconds
#: the longest CSV field read (Python's csv module stops at 128 KiB by default; the PostgreSQL
#: vectorised reader reads 16 MiB blocks): longer ids are then bad rows, not a broken file
MAX_FIELD_CHARS = 1 << 24
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_MS_CLAMP = Decimal(10**20)

Format = Literal["csv", "movielens", "recbole"]
OnError = Literal["fail", "skip"]
TimeUnit = Literal["auto", "s", "ms", "iso"]
EventTypeFrom = Literal["rating", "liked"]
Row = tuple[int, "RawEvent | str"]

DEFAULT_EVENT_TYPE: dict[str, str] = {"csv": "view", "movielens": "rating", "recbole": "rating"}
#: ``event_type_from="liked"``: values (ratings) from this one up are ``liked``
LIKED_FROM = 4.0


@dataclass
class RawEvent:
    """One behaviour event before vocabulary mapping."""

    user_id: str
    item_id: str
    ts_ms: int
    event_type: str
    value: float | None


@dataclass
class CsvColumns:
    """CSV column names. ``event_type`` and ``value`` are optional: when the header lacks them,
    every row gets the default event type and no value (unless a name other than the default
    was asked for, which must then exist). Set them to ``None`` to ignore such columns."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    event_type: str | None = "event_type"
    value: str | None = "value"


@dataclass
class ImportReport:
    """What one import did."""

    source: str
    sha256: str
    format: str
    rows_read: int
    rows_added: int
    rows_duplicate: int
    rows_skipped: int
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: how rows were written: "insert" (SQLite), "copy" (PostgreSQL, row reader) or
    #: "copy-vectorized" (PostgreSQL, clean CSV read and validated in column batches)
    method: str = "insert"

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows_per_second"] = round(self.rows_per_second, 1)
        return d


# --------------------------------------------------------------------------------------------
# Field parsing


def _now_limit_ms() -> int:
    return int(time.time() * 1000) + FUTURE_SLACK_MS


def shown(text: str, limit: int = 40) -> str:
    """``text`` quoted for an error message, cut short when long."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def _parse_number(text: str) -> float | None:
    try:
        x = float(text)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _parse_iso(text: str) -> int | str:
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return f"bad timestamp {shown(text)} (not a number nor ISO-8601)"
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    us = (dt - _EPOCH) // _US  # exact: no float on the way
    if us < 0:
        return -1  # before 1970 however little: not rounded up to the epoch
    q, r = divmod(us, 1000)
    return q + int(r > 500 or (r == 500 and q % 2 == 1))  # half to even


def _epoch_ms(text: str, scale: int) -> int | None:
    """The decimal number ``text`` times ``scale`` (1000 for seconds, 1 for milliseconds) in
    whole milliseconds, rounded half to even from the exact decimal; None unless finite. A
    negative number gives a negative result (-0.5 ms is before 1970, not rounded to it)."""
    if text.isascii() and text.isdigit() and len(text) <= 18:  # the common case: no Decimal
        return int(text) * scale
    try:
        x = Decimal(text)
    except InvalidOperation:
        return None
    if not x.is_finite():
        return None
    if x < 0:
        return -1
    x = max(min(x, _MS_CLAMP), -_MS_CLAMP)  # far outside the valid range either way
    with localcontext(prec=len(text) + 30):  # enough digits: the product is exact
        return int((x * scale).to_integral_value())  # ROUND_HALF_EVEN, the context's default


def parse_timestamp(text: str, unit: TimeUnit = "auto", *, max_ms: int | None = None) -> int | str:
    """Epoch milliseconds for ``text``, or a reason why it is not a valid timestamp."""
    text = text.strip()
    if not text:
        return "empty timestamp"
    ms: int | str | None
    if unit == "iso":
        ms = _parse_iso(text)
    else:
        x = _parse_number(text)
        if x is None:
            if unit == "auto":
                ms = _parse_iso(text)
            else:
                unit_name = "seconds" if unit == "s" else "milliseconds"
                return f"bad timestamp {shown(text)} (expected epoch {unit_name})"
        elif unit == "ms" or (unit == "auto" and abs(x) >= MS_THRESHOLD):
            ms = _epoch_ms(text, 1)
        else:
            ms = _epoch_ms(text, 1000)
        if ms is None:
            return f"bad timestamp {shown(text)} (not a finite number)"
    if isinstance(ms, str):
        return ms
    if ms < 0:
        return f"timestamp {shown(text)} is before 1970"
    limit = _now_limit_ms() if max_ms is None else max_ms
    if ms > limit:
        return f"timestamp {shown(text)} is more than a day in the future"
    return ms


def _make_event(
    user: str,
    item: str,
    ts_text: str,
    event_type: str,
    value_text: str | None,
    unit: TimeUnit,
    max_ms: int,
) -> RawEvent | str:
    user = user.strip()
    item = item.strip()
    if not user:
        return "empty user id"
    if not item:
        return "empty item id"
    if len(user) > MAX_ID_LEN:
        return f"user id longer than {MAX_ID_LEN} characters"
    if len(item) > MAX_ID_LEN:
        return f"item id longer than {MAX_ID_LEN} characters"
    event_type = event_type.strip()
    if len(event_type) > MAX_TYPE_LEN:
        return f"event type longer than {MAX_TYPE_LEN} characters"
    nul = _nul_in(user, item, event_type)
    if nul:
        return nul
    ts = parse_timestamp(ts_text, unit, max_ms=max_ms)
    if isinstance(ts, str):
        return ts
    value: float | None = None
    if value_text is not None and value_text.strip():
        value = _parse_number(value_text)
        if value is None:
            return f"bad value {shown(value_text.strip())} (not a finite number)"
    return RawEvent(user, item, ts, event_type, value)


def _nul_in(user: str, item: str, event_type: str) -> str | None:
    """Why a NUL character rules these out (PostgreSQL text cannot hold one), or None."""
    for what, text in (("user id", user), ("item id", item), ("event type", event_type)):
        at = text.find("\x00")
        if at >= 0:
            return f"{what} holds a NUL character (at character {at + 1})"
    return None


def _check_event(ev: RawEvent, max_ms: int) -> str | None:
    """Cheap checks on events that did not come through a reader (e.g. built in code)."""
    if not ev.user_id or not ev.item_id:
        return "empty user id" if not ev.user_id else "empty item id"
    if len(ev.user_id) > MAX_ID_LEN or len(ev.item_id) > MAX_ID_LEN:
        return f"id longer than {MAX_ID_LEN} characters"
    if not ev.event_type or len(ev.event_type) > MAX_TYPE_LEN:
        return f"event type empty or longer than {MAX_TYPE_LEN} characters"
    nul = _nul_in(ev.user_id, ev.item_id, ev.event_type)
    if nul:
        return nul
    if not 0 <= ev.ts_ms <= max_ms:
        return f"timestamp {ev.ts_ms} ms out of range"
    return None


# --------------------------------------------------------------------------------------------
# Readers


def allow_long_fields() -> None:
    """Let Python's csv module read fields up to :data:`MAX_FIELD_CHARS` (a process-wide
    setting; it only ever grows here)."""
    if csv.field_size_limit() < MAX_FIELD_CHARS:
        csv.field_size_limit(MAX_FIELD_CHARS)


def _open_text(path: Path) -> Any:
    try:
        return open(path, encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise SeqrecError("no such file", where=str(path)) from None
    except IsADirectoryError:
        raise SeqrecError("is a directory, not a file", where=str(path)) from None
    except OSError as exc:
        raise SeqrecError(f"cannot read file: {exc.strerror or exc}", where=str(path)) from None


def _lines(
    path: Path, reader: Iterator[Any], line: Callable[[], int] | None = None
) -> Iterator[Any]:
    """``reader``'s items, turning decoding and CSV errors into SeqrecError naming ``path`` (and
    the line, which ``line`` tells: a csv reader's ``line_num``)."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError as exc:
            raise SeqrecError(f"not valid UTF-8 text ({exc.reason})", where=str(path)) from None
        except csv.Error as exc:
            at = f"line {line()}: " if line is not None else ""
            raise SeqrecError(f"{at}malformed CSV: {exc}", where=str(path)) from None


def csv_layout(
    header: list[str], cols: CsvColumns, path: Path
) -> tuple[int, int, int, int | None, int | None]:
    """Column positions (user, item, timestamp, event type or None, value or None) in a CSV
    header; a required column that is missing raises :class:`SeqrecError`."""
    defaults = CsvColumns()
    pos = {name: i for i, name in reversed(list(enumerate(header)))}

    def need(name: str, what: str) -> int:
        if name not in pos:
            raise SeqrecError(
                f"missing {what} column '{name}' (header: {', '.join(header)})",
                where=str(path),
                hint="name the columns with --user-col/--item-col/--time-col/--type-col/"
                "--value-col, or check --delimiter",
            )
        return pos[name]

    i_user = need(cols.user, "user")
    i_item = need(cols.item, "item")
    i_ts = need(cols.timestamp, "timestamp")
    i_type: int | None = None
    if cols.event_type is not None and (
        cols.event_type in pos or cols.event_type != defaults.event_type
    ):
        i_type = need(cols.event_type, "event type")
    i_value: int | None = None
    if cols.value is not None and (cols.value in pos or cols.value != defaults.value):
        i_value = need(cols.value, "value")
    return i_user, i_item, i_ts, i_type, i_value


def read_csv(
    path: str | Path,
    *,
    columns: CsvColumns | None = None,
    time_unit: TimeUnit = "auto",
    delimiter: str = ",",
    default_event_type: str = "view",
) -> Iterator[Row]:
    """Stream a CSV file with a header row as ``(line_number, RawEvent | reason)``.

    Timestamps follow ``time_unit`` (see the module docstring; naive ISO datetimes are UTC).
    A required column missing from the header raises :class:`SeqrecError`.
    """
    path = Path(path)
    cols = columns or CsvColumns()
    if time_unit not in ("auto", "s", "ms", "iso"):
        raise SeqrecError(f"unknown time unit {time_unit!r}", hint="use auto, s, ms or iso")
    if len(delimiter) != 1:
        raise SeqrecError(f"delimiter must be one character, got {shown(delimiter)}")
    max_ms = _now_limit_ms()
    allow_long_fields()
    with _open_text(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        rows = _lines(path, reader, lambda: reader.line_num)
        header = next(rows, None)
        if header is None:
            raise SeqrecError("empty file: expected a header row", where=str(path))
        header = [h.strip() for h in header]
        i_user, i_item, i_ts, i_type, i_value = csv_layout(header, cols, path)
        width = len(header)

        for row in rows:
            n = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) != width:
                yield n, f"expected {width} fields, found {len(row)}"
                continue
            etype = row[i_type] if i_type is not None else ""
            yield (
                n,
                _make_event(
                    row[i_user],
                    row[i_item],
                    row[i_ts],
                    etype.strip() or default_event_type,
                    row[i_value] if i_value is not None else None,
                    time_unit,
                    max_ms,
                ),
            )


def read_movielens(path: str | Path, *, default_event_type: str = "rating") -> Iterator[Row]:
    """Stream MovieLens ratings: ``user item rating timestamp`` (epoch seconds), no header.

    Fields are tab-separated (``u.data``) or ``::``-separated (``ratings.dat``).
    """
    path = Path(path)
    max_ms = _now_limit_ms()
    with _open_text(path) as fh:
        for n, line in enumerate(_lines(path, iter(fh)), 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("::") if "::" in line else line.split("\t")
            if len(parts) != 4:
                yield n, f"expected 4 fields (user item rating timestamp), found {len(parts)}"
                continue
            user, item, rating, ts = parts
            if _parse_number(rating) is None:
                yield n, f"bad rating {shown(rating.strip())}"
                continue
            yield n, _make_event(user, item, ts, default_event_type, rating, "s", max_ms)


def read_recbole(path: str | Path, *, default_event_type: str = "rating") -> Iterator[Row]:
    """Stream a RecBole atomic ``.inter`` file (tab-separated, typed header ``name:type``).

    Uses ``user_id``, ``item_id``, ``timestamp`` (epoch seconds, may be fractional), and the
    optional ``rating`` (the event value) and ``event_type`` columns.
    """
    path = Path(path)
    max_ms = _now_limit_ms()
    with _open_text(path) as fh:
        lines = _lines(path, iter(fh))
        first = next(lines, None)
        if first is None:
            raise SeqrecError("empty file: expected a typed header row", where=str(path))
        header = first.rstrip("\r\n").split("\t")
        names = [h.strip().rsplit(":", 1)[0] if ":" in h else h.strip() for h in header]
        pos = {name: i for i, name in reversed(list(enumerate(names)))}
        for required in ("user_id", "item_id", "timestamp"):
            if required not in pos:
                raise SeqrecError(
                    f"missing column '{required}' in RecBole header (header: {', '.join(header)})",
                    where=str(path),
                    hint="a .inter header looks like user_id:token<TAB>item_id:token<TAB>"
                    "rating:float<TAB>timestamp:float",
                )
        i_user, i_item, i_ts = pos["user_id"], pos["item_id"], pos["timestamp"]
        i_rating = pos.get("rating")
        i_type = pos.get("event_type")
        width = len(header)
        for n, line in enumerate(lines, 2):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != width:
                yield n, f"expected {width} fields, found {len(parts)}"
                continue
            etype = parts[i_type].strip() if i_type is not None else ""
            yield (
                n,
                _make_event(
                    parts[i_user],
                    parts[i_item],
                    parts[i_ts],
                    etype or default_event_type,
                    parts[i_rating] if i_rating is not None else None,
                    "s",
                    max_ms,
                ),
            )


# --------------------------------------------------------------------------------------------
# Writing


def _dialect_insert(engine: Engine) -> Any:
    """INSERT INTO events ... ON CONFLICT (natural key) DO NOTHING, for this engine's dialect."""
    name = engine.dialect.name
    dml: Any
    if name == "sqlite":
        from sqlalchemy.dialects import sqlite as dml
    elif name == "postgresql":
        from sqlalchemy.dialects import postgresql as dml
    else:
        raise SeqrecError(f"unsupported events database '{name}'", hint="use SQLite or PostgreSQL")
    return dml.insert(events).on_conflict_do_nothing(
        index_elements=["user_id", "item_idx", "type_idx", "ts_ms"]
    )


def _count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(events)).scalar_one())


class _Vocab:
    """An append-only string -> index map backed by a table; new entries wait for ``flush``."""

    def __init__(self, conn: Connection, table: Any, key: str, idx: str):
        self.table, self.key, self.idx = table, key, idx
        rows = conn.execute(select(table.c[key], table.c[idx])).all()
        self.map: dict[str, int] = {k: int(i) for k, i in rows}
        self.next = max(self.map.values(), default=0) + 1
        self.pending: list[dict[str, Any]] = []

    def get(self, name: str) -> int:
        i = self.map.get(name)
        if i is None:
            i = self.map[name] = self.next
            self.next += 1
            self.pending.append({self.idx: i, self.key: name})
        return i

    def flush(self, conn: Connection) -> None:
        if self.pending:
            conn.execute(insert(self.table), self.pending)
            self.pending = []


def import_events(
    engine: Engine,
    rows: Iterable[Row],
    *,
    source: str,
    sha256: str,
    fmt: str,
    on_error: OnError = "fail",
    batch_size: int = 10_000,
    progress: bool = False,
) -> ImportReport:
    """Write ``(line_number, RawEvent | reason)`` rows in one transaction; see the module doc.

    Item ids and event type names get stable indices from 1 in order of first appearance.
    Returns an :class:`ImportReport`; a bad row with ``on_error="fail"`` raises
    :class:`SeqrecError` (``"<source>: line N: reason"``) and leaves the database unchanged.
    """
    if on_error not in ("fail", "skip"):
        raise SeqrecError(f"unknown on_error {on_error!r}", hint="use fail or skip")
    batch_size = max(1, int(batch_size))
    started = time.perf_counter()
    create_schema(engine)
    stmt = _dialect_insert(engine)
    max_ms = _now_limit_ms()
    rows_read = rows_skipped = 0
    errors: list[str] = []
    it: Iterable[Row] = rows
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(rows, file=sys.stderr, unit=" rows", desc=source[-40:], mininterval=0.5)
        it = bar
    pg = engine.dialect.name == "postgresql"
    try:
        with engine.begin() as conn, contextlib.ExitStack() as stack:
            batch: list[dict[str, Any]] = []
            staged: list[tuple[str, str, str, int, float | None]] = []
            if pg:  # COPY into a staging table, one set-based insert (seqrec.data.bulk)
                from seqrec.data.bulk import PgBulkLoad, stage_rows_frame

                load = stack.enter_context(PgBulkLoad(conn))
                before = load.before
            else:
                before = _count(conn)
                item_vocab = _Vocab(conn, items, "item_id", "item_idx")
                type_vocab = _Vocab(conn, event_types, "name", "type_idx")

            def flush() -> None:
                if pg:
                    if staged:
                        load.add_frame(stage_rows_frame(staged))
                        staged.clear()
                        kill_point("import.batch")
                    return
                item_vocab.flush(conn)
                type_vocab.flush(conn)
                if batch:
                    conn.execute(stmt, batch)
                    batch.clear()
                    kill_point("import.batch")

            for n, ev in it:
                rows_read += 1
                if isinstance(ev, RawEvent):
                    reason = _check_event(ev, max_ms)
                    if reason is not None:
                        ev = reason
                if isinstance(ev, str):
                    if on_error == "fail":
                        raise SeqrecError(f"line {n}: {ev}", where=source)
                    rows_skipped += 1
                    if len(errors) < MAX_ERRORS_KEPT:
                        errors.append(f"line {n}: {ev}")
                    continue
                if pg:
                    staged.append((ev.user_id, ev.item_id, ev.event_type, ev.ts_ms, ev.value))
                    if len(staged) >= batch_size:
                        flush()
                    continue
                batch.append(
                    {
                        "user_id": ev.user_id,
                        "item_idx": item_vocab.get(ev.item_id),
                        "type_idx": type_vocab.get(ev.event_type),
                        "ts_ms": ev.ts_ms,
                        "value": ev.value,
                    }
                )
                if len(batch) >= batch_size:
                    flush()
            flush()
            added = load.finish() if pg else _count(conn) - before
            _log_import(conn, source, sha256, fmt, rows_read, added, rows_skipped)
            kill_point("import.commit")
    except OperationalError as exc:
        raise SeqrecError(
            f"events database error, nothing imported: {exc.orig}", where=source
        ) from None
    finally:
        if bar is not None:
            bar.close()
    return ImportReport(
        source=source,
        sha256=sha256,
        format=fmt,
        rows_read=rows_read,
        rows_added=added,
        rows_duplicate=rows_read - rows_skipped - added,
        rows_skipped=rows_skipped,
        errors=errors,
        seconds=time.perf_counter() - started,
        method="copy" if pg else "insert",
    )


def _log_import(
    conn: Connection, source: str, sha256: str, fmt: str, read: int, added: int, skipped: int
) -> None:
    conn.execute(
        insert(imports).values(
            source=source[:1024],
            sha256=sha256,
            format=fmt,
            rows_read=read,
            rows_added=added,
            rows_skipped=skipped,
            imported_at=datetime.now(UTC),
        )
    )


def _import_csv_fast(
    engine: Engine,
    path: Path,
    *,
    sha256: str,
    columns: CsvColumns,
    time_unit: TimeUnit,
    delimiter: str,
    default_event_type: str,
    progress: bool,
) -> ImportReport:
    """The vectorised CSV -> PostgreSQL path; raises NotFast (nothing written) when the file
    needs the row reader."""
    from seqrec.data.bulk import NotFast, PgBulkLoad, csv_frames

    started = time.perf_counter()
    allow_long_fields()
    with _open_text(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = next(_lines(path, reader, lambda: reader.line_num), None)
        header_lines = reader.line_num
    if header is None:
        raise SeqrecError("empty file: expected a header row", where=str(path))
    if header_lines != 1:  # the vectorised reader skips one physical line as the header
        raise NotFast("a header over several lines")
    header = [h.strip() for h in header]
    layout = csv_layout(header, columns, path)
    create_schema(engine)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(file=sys.stderr, unit=" rows", desc=str(path)[-40:], mininterval=0.5)
    rows_read = 0
    try:
        with engine.begin() as conn, contextlib.ExitStack() as stack:
            load = stack.enter_context(PgBulkLoad(conn))
            for frame in csv_frames(
                path,
                len(header),
                layout,
                time_unit=time_unit,
                delimiter=delimiter,
                default_event_type=default_event_type,
                max_ms=_now_limit_ms(),
            ):
                load.add_frame(frame)
                kill_point("import.batch")
                rows_read += len(frame)
                if bar is not None:
                    bar.update(len(frame))
            added = load.finish()
            _log_import(conn, str(path), sha256, "csv", rows_read, added, 0)
            kill_point("import.commit")
    except OperationalError as exc:
        raise SeqrecError(
            f"events database error, nothing imported: {exc.orig}", where=str(path)
        ) from None
    finally:
        if bar is not None:
            bar.close()
    return ImportReport(
        source=str(path),
        sha256=sha256,
        format="csv",
        rows_read=rows_read,
        rows_added=added,
        rows_duplicate=rows_read - added,
        rows_skipped=0,
        seconds=time.perf_counter() - started,
        method="copy-vectorized",
    )


def file_sha256(path: str | Path) -> str:
    """The file's SHA-256 (streamed); also checks it is UTF-8 text, else a SeqrecError naming
    the line and column of the first bad byte."""
    path = Path(path)
    h = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    line, line_start = 1, 0  # the current line and the offset it starts at
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    data = exc.object  # the chunk after a partial character held back
                    base = offset - (len(data) - len(chunk))
                    bad = base + exc.start
                    head = data[: exc.start]
                    line += head.count(b"\n")
                    if b"\n" in head:
                        line_start = base + head.rindex(b"\n") + 1
                    raise SeqrecError(
                        f"line {line}: not UTF-8 text (bad byte 0x{data[exc.start]:02x} at "
                        f"column {bad - line_start + 1}, byte offset {bad})",
                        where=str(path),
                        hint="re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
                    ) from None
                line += chunk.count(b"\n")
                if b"\n" in chunk:
                    line_start = offset + chunk.rindex(b"\n") + 1
                offset += len(chunk)
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise SeqrecError(
                    f"line {line}: not UTF-8 text (truncated character at the end)",
                    where=str(path),
                ) from None
    except FileNotFoundError:
        raise SeqrecError("no such file", where=str(path)) from None
    except IsADirectoryError:
        raise SeqrecError("is a directory, not a file", where=str(path)) from None
    except OSError as exc:
        raise SeqrecError(f"cannot read file: {exc.strerror or exc}", where=str(path)) from None
    return h.hexdigest()


def types_from_values(rows: Iterable[Row], mode: EventTypeFrom) -> Iterator[Row]:
    """``rows`` with each event's type named by its value: ``r<value>`` (``mode="rating"``) or
    ``liked``/``disliked`` (``mode="liked"``, :data:`LIKED_FROM` and up is liked)."""
    for n, ev in rows:
        if isinstance(ev, str):
            yield n, ev
        elif ev.value is None:
            yield n, f"no value (rating) to name the event type by (event_type_from={mode})"
        elif mode == "rating":
            yield n, replace(ev, event_type=f"r{ev.value:g}")
        else:
            yield n, replace(ev, event_type="liked" if ev.value >= LIKED_FROM else "disliked")


def import_file(
    engine: Engine,
    path: str | Path,
    fmt: Format = "csv",
    *,
    columns: CsvColumns | None = None,
    time_unit: TimeUnit = "auto",
    delimiter: str = ",",
    default_event_type: str | None = None,
    on_error: OnError = "fail",
    batch_size: int = 10_000,
    progress: bool = False,
    event_type_from: EventTypeFrom | None = None,
) -> ImportReport:
    """Import one file (``csv``, ``movielens`` or ``recbole``) in one transaction.

    ``default_event_type`` defaults to ``"view"`` for CSV and ``"rating"`` otherwise;
    ``event_type_from`` names events by their value instead (see the module docstring).
    """
    path = Path(path)
    if fmt not in DEFAULT_EVENT_TYPE:
        raise SeqrecError(
            f"unknown format {fmt!r}", hint=f"use one of {', '.join(DEFAULT_EVENT_TYPE)}"
        )
    if event_type_from not in (None, "rating", "liked"):
        raise SeqrecError(
            f"unknown event_type_from {event_type_from!r}", hint="use rating or liked"
        )
    etype = default_event_type or DEFAULT_EVENT_TYPE[fmt]
    if len(etype) > MAX_TYPE_LEN:
        raise SeqrecError(f"event type longer than {MAX_TYPE_LEN} characters: {etype!r}")
    sha = file_sha256(path)
    fast_ok = event_type_from is None and time_unit != "iso"
    if fmt == "csv" and engine.dialect.name == "postgresql" and fast_ok:
        from seqrec.data.bulk import NotFast

        if time_unit not in ("auto", "s", "ms"):
            raise SeqrecError(f"unknown time unit {time_unit!r}", hint="use auto, s, ms or iso")
        if len(delimiter) != 1:
            raise SeqrecError(f"delimiter must be one character, got {shown(delimiter)}")
        try:
            return _import_csv_fast(
                engine,
                path,
                sha256=sha,
                columns=columns or CsvColumns(),
                time_unit=time_unit,
                delimiter=delimiter,
                default_event_type=etype,
                progress=progress,
            )
        except NotFast:
            pass  # rolled back; the row reader gives exact per-line results
    rows: Iterator[Row]
    if fmt == "csv":
        rows = read_csv(
            path,
            columns=columns,
            time_unit=time_unit,
            delimiter=delimiter,
            default_event_type=etype,
        )
    elif fmt == "movielens":
        rows = read_movielens(path, default_event_type=etype)
    else:
        rows = read_recbole(path, default_event_type=etype)
    if event_type_from is not None:
        rows = types_from_values(rows, event_type_from)
    return import_events(
        engine,
        rows,
        source=str(path),
        sha256=sha,
        fmt=fmt,
        on_error=on_error,
        batch_size=batch_size,
        progress=progress,
    )
