"""Import item text (title, description, category, attributes) into the ``item_meta`` table.

Two readers turn a file into ``(line_number, ItemText | reason)`` pairs:

* :func:`read_items_csv`: a CSV file with a header ``item_id,title`` and optional
  ``description`` and ``category`` columns; every further column becomes an attribute
  (a string; empty cells are left out);
* :func:`read_items_recbole`: a RecBole/MovieLens atomic ``.item`` file (tab-separated, typed
  header ``name:type``), e.g. ``item_id:token  movie_title:token_seq  release_year:token
  class:token_seq``. The title is the first of ``movie_title``, ``title``, ``name`` (the
  ``token_seq`` text as written); the genres (``class``, ``genre``, ``genres``, ``categories``)
  become the category (``"Action, Adventure"``) and the attribute ``genres`` (a list); every
  other column is an attribute (``token_seq`` as a list of tokens, ``float`` as a number,
  ``token`` as a string).

:func:`import_items` writes the rows in ONE transaction, with the events importer's
guarantees: re-importing the same file changes nothing; a row whose text changed is updated
(new ``text_hash`` and ``updated_at``). A bad row (no item id, an id over 256 characters, an
empty title, a NUL character in the id, title, description or category, bytes that are not
UTF-8, the same id twice in one file with different text) fails the import naming the file and
line, and nothing is written; with ``on_error="skip"`` it is left out and counted. A header
that is not UTF-8 fails the import. CSV fields may be as long as the events importer allows
(:data:`seqrec.data.importers.MAX_FIELD_CHARS`).

Items may arrive before any event about them: an imported item that is not in the vocabulary
(``items``) gets the next free index there, exactly as the events importer assigns them, so it is
part of the catalogue a model ranks as soon as its vocabulary is next read.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection, Engine, insert, select, text, update
from sqlalchemy.exc import OperationalError

from seqrec.data.importers import MAX_ERRORS_KEPT, _log_import, _Vocab, allow_long_fields
from seqrec.data.schema import MAX_ID_LEN, create_schema, item_meta, items, require_item_schema
from seqrec.errors import SeqrecError, driver_reason

ItemFormat = Literal["csv", "recbole"]
OnError = Literal["fail", "skip"]
ItemRow = tuple[int, "ItemText | str"]

CSV_COLUMNS = ("item_id", "title", "description", "category")
TITLE_COLUMNS = ("movie_title", "title", "name")
GENRE_COLUMNS = ("class", "genre", "genres", "categories", "category")


@dataclass(frozen=True)
class ItemText:
    """One item's text as imported."""

    item_id: str
    title: str
    description: str | None = None
    category: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def attributes_json(self) -> str | None:
        """The attributes as canonical JSON text (sorted keys), or None when there are none."""
        if not self.attributes:
            return None
        return json.dumps(self.attributes, sort_keys=True, ensure_ascii=False)

    @property
    def text_hash(self) -> str:
        """SHA-256 of the canonical JSON of title, description, category and attributes."""
        doc = [self.title, self.description, self.category, self.attributes or None]
        raw = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(raw.encode()).hexdigest()


@dataclass
class ItemImportReport:
    """What one item import did."""

    source: str
    sha256: str
    format: str
    rows_read: int
    added: int
    updated: int
    unchanged: int
    skipped: int
    #: items that were new to the vocabulary and got an index (``items`` rows)
    new_in_vocabulary: int
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Readers


def _decoded_lines(path: Path, bad: dict[int, str]) -> Iterator[str]:
    """The file's lines as text (ended by ``\\n``, ``\\r\\n`` or a lone ``\\r``, as the events
    importer counts them); a line that is not UTF-8 is recorded in ``bad`` (line -> reason)
    and yielded with replacement characters so that the reader keeps its place."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed below, after the checks)
    except FileNotFoundError:
        raise SeqrecError("no such file", where=str(path)) from None
    except IsADirectoryError:
        raise SeqrecError("is a directory, not a file", where=str(path)) from None
    except OSError as exc:
        raise SeqrecError(f"cannot read file: {exc.strerror or exc}", where=str(path)) from None
    lines = (part for chunk in fh for part in chunk.splitlines(keepends=True))
    with fh:
        for n, raw in enumerate(lines, 1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad[n] = f"not valid UTF-8 (bad byte at column {exc.start + 1})"
                yield raw.decode("utf-8", errors="replace")


def _make_item(
    raw_id: str, title: str, description: str, category: str, attributes: dict[str, Any]
) -> ItemText | str:
    item_id = raw_id.strip()
    if not item_id:
        return "empty item id"
    if len(item_id) > MAX_ID_LEN:
        return f"item id longer than {MAX_ID_LEN} characters"
    title = title.strip()
    if not title:
        return f"empty title for item {item_id!r}"
    for what, field_text in (
        ("item id", item_id),
        ("title", title),
        ("description", description),
        ("category", category),
    ):
        at = field_text.find("\x00")
        if at >= 0:  # PostgreSQL text cannot hold one
            return f"{what} holds a NUL character (at character {at + 1})"
    return ItemText(
        item_id, title, description.strip() or None, category.strip() or None, attributes
    )


def read_items_csv(path: str | Path, *, delimiter: str = ",") -> Iterator[ItemRow]:
    """Stream an item CSV (header ``item_id,title[,description][,category][,more...]``)."""
    path = Path(path)
    bad: dict[int, str] = {}
    lines = _decoded_lines(path, bad)
    allow_long_fields()
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            raise SeqrecError("empty file: expected a header row", where=str(path))
        broken = [f"line {k}: {bad[k]}" for k in range(1, reader.line_num + 1) if k in bad]
        if broken:
            raise SeqrecError(f"header {broken[0]}", where=str(path))
        header = [h.strip() for h in header]
        for need in ("item_id", "title"):
            if need not in header:
                raise SeqrecError(
                    f"missing column '{need}' (header: {', '.join(header)})",
                    where=str(path),
                    hint="an item CSV has a header item_id,title[,description][,category][,...]",
                )
        pos = {name: i for i, name in reversed(list(enumerate(header)))}
        extra = [(i, h) for i, h in enumerate(header) if h not in CSV_COLUMNS and h]
        width = len(header)
        last = reader.line_num
        for row in reader:
            first, last = last + 1, reader.line_num
            n = first
            broken = [bad[k] for k in range(first, last + 1) if k in bad]
            if broken:
                yield n, broken[0]
                continue
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != width:
                yield n, f"expected {width} fields, found {len(row)}"
                continue

            def cell(name: str, row: list[str] = row) -> str:
                return row[pos[name]] if name in pos else ""

            attrs = {h: row[i].strip() for i, h in extra if row[i].strip()}
            yield (
                n,
                _make_item(
                    cell("item_id"), cell("title"), cell("description"), cell("category"), attrs
                ),
            )
    except csv.Error as exc:
        raise SeqrecError(
            f"line {reader.line_num}: malformed CSV: {exc}", where=str(path)
        ) from None


def _recbole_value(typ: str, raw: str) -> Any:
    raw = raw.strip()
    if typ == "token_seq":
        return raw.split()
    if typ == "float":
        try:
            return float(raw)
        except ValueError:
            return raw
    return raw


def read_items_recbole(path: str | Path) -> Iterator[ItemRow]:
    """Stream a RecBole atomic ``.item`` file (typed header ``name:type``, tab-separated)."""
    path = Path(path)
    bad: dict[int, str] = {}
    lines = _decoded_lines(path, bad)
    first = next(lines, None)
    if first is None:
        raise SeqrecError("empty file: expected a typed header row", where=str(path))
    if 1 in bad:
        raise SeqrecError(f"header line 1: {bad[1]}", where=str(path))
    header = first.rstrip("\r\n").split("\t")
    names, types = [], []
    for h in header:
        name, _, typ = h.strip().partition(":")
        names.append(name)
        types.append(typ or "token")
    pos = {name: i for i, name in reversed(list(enumerate(names)))}
    i_title = next((pos[c] for c in TITLE_COLUMNS if c in pos), None)
    if "item_id" not in pos or i_title is None:
        raise SeqrecError(
            f"a RecBole .item file needs item_id and a title column (header: {', '.join(header)})",
            where=str(path),
            hint="e.g. item_id:token<TAB>movie_title:token_seq<TAB>release_year:token<TAB>"
            "class:token_seq",
        )
    i_id = pos["item_id"]
    i_genre = next((pos[c] for c in GENRE_COLUMNS if c in pos), None)
    i_desc = pos.get("description")
    width = len(header)
    for n, line in enumerate(lines, 2):
        if n in bad:
            yield n, bad[n]
            continue
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != width:
            yield n, f"expected {width} fields, found {len(parts)}"
            continue
        attrs: dict[str, Any] = {}
        category = ""
        if i_genre is not None:
            genres = parts[i_genre].split()
            category = ", ".join(genres)
            if genres:
                attrs["genres"] = genres
        for i, (name, typ) in enumerate(zip(names, types, strict=True)):
            if i in (i_id, i_title, i_genre, i_desc) or not parts[i].strip():
                continue
            attrs[name] = _recbole_value(typ, parts[i])
        desc = parts[i_desc] if i_desc is not None else ""
        yield n, _make_item(parts[i_id], parts[i_title], desc, category, attrs)


# --------------------------------------------------------------------------------------------
# Writing


def _lock_vocabulary(conn: Connection) -> None:
    """On PostgreSQL, serialise with event imports (they take the same lock) so that two
    writers never hand out the same vocabulary index."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE"))


def import_items(
    engine: Engine,
    rows: Iterable[ItemRow],
    *,
    source: str,
    sha256: str = "",
    fmt: str = "csv",
    on_error: OnError = "fail",
) -> ItemImportReport:
    """Write ``(line_number, ItemText | reason)`` rows in one transaction (see the module doc).

    A bad row with ``on_error="fail"`` raises :class:`SeqrecError` (``"<source>: line N:
    reason"``) and leaves the database unchanged.
    """
    if on_error not in ("fail", "skip"):
        raise SeqrecError(f"unknown on_error {on_error!r}", hint="use fail or skip")
    started = time.perf_counter()
    create_schema(engine)
    require_item_schema(engine)  # tables made by someone else must have seqrec's columns
    read = skipped = 0
    errors: list[str] = []
    seen: dict[str, tuple[int, str]] = {}  # item id -> (first line, text hash) in this file
    chosen: dict[str, ItemText] = {}

    def bad(n: int, reason: str) -> None:
        nonlocal skipped
        if on_error == "fail":
            raise SeqrecError(f"line {n}: {reason}", where=source)
        skipped += 1
        if len(errors) < MAX_ERRORS_KEPT:
            errors.append(f"line {n}: {reason}")

    for n, item in rows:
        read += 1
        if isinstance(item, str):
            bad(n, item)
            continue
        h = item.text_hash
        prev = seen.get(item.item_id)
        if prev is not None:
            if prev[1] != h:
                bad(n, f"item {item.item_id!r} again with different text (first on line {prev[0]})")
            continue  # an identical repeat is harmless
        seen[item.item_id] = (n, h)
        chosen[item.item_id] = item

    now = datetime.now(UTC)
    added = updated = unchanged = new_vocab = 0
    try:
        with engine.begin() as conn:
            _lock_vocabulary(conn)
            stored = {
                str(k): str(v)
                for k, v in conn.execute(select(item_meta.c.item_id, item_meta.c.text_hash))
            }
            vocab = _Vocab(conn, items, "item_id", "item_idx")
            new_rows: list[dict[str, Any]] = []
            for item_id, item in chosen.items():
                if item_id not in vocab.map:
                    vocab.get(item_id)
                    new_vocab += 1
                h = item.text_hash
                values = {
                    "title": item.title,
                    "description": item.description,
                    "category": item.category,
                    "attributes": item.attributes_json,
                    "text_hash": h,
                    "updated_at": now,
                }
                old = stored.get(item_id)
                if old is None:
                    new_rows.append({"item_id": item_id, **values})
                    added += 1
                elif old != h:
                    conn.execute(
                        update(item_meta).where(item_meta.c.item_id == item_id).values(**values)
                    )
                    updated += 1
                else:
                    unchanged += 1
            vocab.flush(conn)
            for start in range(0, len(new_rows), 5_000):
                conn.execute(insert(item_meta), new_rows[start : start + 5_000])
            _log_import(conn, source, sha256, f"items-{fmt}", read, added + updated, skipped)
    except OperationalError as exc:
        raise SeqrecError(
            f"events database error, nothing imported: {driver_reason(exc)}", where=source
        ) from None
    return ItemImportReport(
        source=source,
        sha256=sha256,
        format=fmt,
        rows_read=read,
        added=added,
        updated=updated,
        unchanged=unchanged,
        skipped=skipped,
        new_in_vocabulary=new_vocab,
        errors=errors,
        seconds=round(time.perf_counter() - started, 3),
    )


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    except FileNotFoundError:
        raise SeqrecError("no such file", where=str(path)) from None
    except IsADirectoryError:
        raise SeqrecError("is a directory, not a file", where=str(path)) from None
    except OSError as exc:
        raise SeqrecError(f"cannot read file: {exc.strerror or exc}", where=str(path)) from None
    return h.hexdigest()


def import_item_file(
    engine: Engine,
    path: str | Path,
    fmt: ItemFormat = "csv",
    *,
    on_error: OnError = "fail",
    delimiter: str = ",",
) -> ItemImportReport:
    """Import one item file (``csv`` or ``recbole``) in one transaction."""
    path = Path(path)
    if fmt not in ("csv", "recbole"):
        raise SeqrecError(f"unknown item format {fmt!r}", hint="use csv or recbole")
    sha = _file_digest(path)
    rows = read_items_csv(path, delimiter=delimiter) if fmt == "csv" else read_items_recbole(path)
    return import_items(engine, rows, source=str(path), sha256=sha, fmt=fmt, on_error=on_error)


__all__ = [
    "ItemImportReport",
    "ItemText",
    "import_item_file",
    "import_items",
    "read_items_csv",
    "read_items_recbole",
]
