"""The SQL schema (SQLAlchemy 2 Core): events, item and event-type vocabularies, import log.

Events are stored with integer item and event-type indices (0 is padding, never stored) so that
sequence features come straight out of SQL window functions. Each user's events have a total
order: ``(ts_ms, event_id)``; ``event_id`` grows with import order, which is how ties on the
timestamp are broken (as RecBole does).
"""

from __future__ import annotations

import re

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.exc import DBAPIError, OperationalError

from seqrec.errors import SeqrecError, StoreUnavailable, driver_reason

MAX_ID_LEN = 256
#: ids compare byte-wise on PostgreSQL (collation "C"): the same order as SQLite and Python, and
#: much faster sorts and index builds than a linguistic collation
ID = String(MAX_ID_LEN).with_variant(String(MAX_ID_LEN, collation="C"), "postgresql")

metadata = MetaData()

items = Table(
    "items",
    metadata,
    Column("item_idx", Integer, primary_key=True, autoincrement=False),
    Column("item_id", ID, nullable=False, unique=True),
)

event_types = Table(
    "event_types",
    metadata,
    Column("type_idx", Integer, primary_key=True, autoincrement=False),
    Column("name", String(64), nullable=False, unique=True),
)

events = Table(
    "events",
    metadata,
    Column("event_id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("user_id", ID, nullable=False),
    Column("item_idx", Integer, nullable=False),
    Column("type_idx", Integer, nullable=False),
    Column("ts_ms", BigInteger, nullable=False),
    Column("value", Float, nullable=True),
    UniqueConstraint("user_id", "item_idx", "type_idx", "ts_ms", name="uq_events_natural"),
    Index("ix_events_user_order", "user_id", "ts_ms", "event_id"),
)

imports = Table(
    "imports",
    metadata,
    Column("import_id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(1024), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("format", String(32), nullable=False),
    Column("rows_read", BigInteger, nullable=False),
    Column("rows_added", BigInteger, nullable=False),
    Column("rows_skipped", BigInteger, nullable=False),
    Column("imported_at", DateTime(timezone=True), nullable=False),
)


#: Item text (issue 13): one row per item id (the same ids as ``items.item_id``; an item may
#: have text before any event mentions it). ``attributes`` is a JSON object as text;
#: ``text_hash`` is the SHA-256 of the canonical JSON of title, description, category and
#: attributes (see :mod:`seqrec.data.item_text`).
item_meta = Table(
    "item_meta",
    metadata,
    Column("item_id", ID, primary_key=True),
    Column("title", Text, nullable=False),
    Column("description", Text, nullable=True),
    Column("category", Text, nullable=True),
    Column("attributes", Text, nullable=True),
    Column("text_hash", String(64), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: Item text embeddings, one row per (item, encoder): the float32 vector (little-endian bytes)
#: computed from the item text whose hash is ``text_hash`` (see :mod:`seqrec.text.embed`).
item_embeddings = Table(
    "item_embeddings",
    metadata,
    Column("item_id", ID, nullable=False),
    Column("encoder", String(256), nullable=False),
    Column("text_hash", String(64), nullable=False),
    Column("dim", Integer, nullable=False),
    Column("vector", LargeBinary, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("item_id", "encoder", name="pk_item_embeddings"),
)


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get WAL mode and their directory created.

    A server database's pooled connections are checked before each use (``pool_pre_ping``):
    after the server restarted or dropped them, a job or the service reconnects instead of
    failing once per dead connection."""
    sqlite = url.startswith("sqlite")
    if url.startswith("sqlite:///") and not url.endswith(":memory:"):
        from pathlib import Path

        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(url) if sqlite else create_engine(url, pool_pre_ping=True)
    except Exception as exc:  # bad URL or missing driver
        raise SeqrecError(f"cannot use events database URL {url!r}: {exc}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def quoted_identifier(engine: Engine, name: str) -> str:
    """``name`` as an SQL identifier for ``engine``'s dialect, quoted by its identifier
    preparer; anything but a plain lower-case identifier (``[a-z_][a-z0-9_]{0,62}``, the
    pattern config names are checked against) is refused, so no name becomes SQL text
    unchecked."""
    from seqrec.config import IDENTIFIER

    if not re.fullmatch(IDENTIFIER.strip("^$"), name):
        raise SeqrecError(
            f"{name[:80]!r} is not a plain SQL identifier",
            hint="use lower-case letters, digits and underscores (at most 63, not first a digit)",
        )
    return str(engine.dialect.identifier_preparer.quote_identifier(name))


def pg_schema_name(engine: Engine) -> str | None:
    """The schema a PostgreSQL engine's ``search_path`` option names, if any."""
    opts = engine.url.query.get("options")
    for opt in [opts] if isinstance(opts, str) else list(opts or ()):
        m = re.search(r"search_path\s*=\s*([a-z_][a-z0-9_]*)", opt)
        if m:
            return m.group(1)
    return None


def ensure_pg_schema(engine: Engine) -> None:
    """On PostgreSQL, create the engine's search_path schema when missing (idempotent)."""
    if engine.dialect.name != "postgresql":
        return
    name = pg_schema_name(engine)
    if name is None:
        return
    schema = quoted_identifier(engine, name)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
    except OperationalError as exc:
        raise StoreUnavailable(
            f"events database unreachable: {driver_reason(exc)}",
            where=engine.url.render_as_string(),
        ) from None


def create_schema(engine: Engine) -> None:
    """Create the tables that do not exist yet (idempotent)."""
    ensure_pg_schema(engine)
    metadata.create_all(engine)


def _require_tables(engine: Engine, names: tuple[str, ...], hint: str) -> None:
    """Fail with a clear message when the database is down or one of ``names`` is missing."""
    try:
        present = set(inspect(engine).get_table_names())
    except DBAPIError as exc:  # cannot connect, or the connection was refused or lost
        raise StoreUnavailable(
            f"events database unreachable ({engine.url!r}): {driver_reason(exc)}"
        ) from None
    missing = [t for t in names if t not in present]
    if missing:
        raise SeqrecError(f"events database has no table(s) {', '.join(missing)}", hint=hint)


def require_schema(engine: Engine) -> None:
    """Fail with a clear message when the events tables are missing."""
    _require_tables(
        engine,
        ("events", "items", "event_types"),
        "import events first: `seqrec events import FILE` or `seqrec events synth`",
    )
    _check_columns(engine)


def require_item_schema(engine: Engine) -> None:
    """Fail with a clear message when the item text tables are missing or lack columns."""
    _require_tables(
        engine,
        ("items", "item_meta", "item_embeddings"),
        "import item text first: `seqrec items import FILE`",
    )
    _check_columns(engine, (items, item_meta, item_embeddings))


def _check_columns(engine: Engine, tables: tuple[Table, ...] | None = None) -> None:
    """Tables made by someone else must still have seqrec's columns and column kinds."""
    from sqlalchemy import Integer as _Int
    from sqlalchemy import String as _Str

    insp = inspect(engine)
    for table in tables or (events, items, event_types):
        found = {c["name"]: c["type"] for c in insp.get_columns(table.name)}
        for col in table.columns:
            where = f"{engine.url.render_as_string()} table {table.name}"
            if col.name not in found:
                raise SeqrecError(
                    f"column '{col.name}' is missing", where=where, hint="see docs/production.md"
                )
            want = (
                _Int if isinstance(col.type, _Int) else _Str if isinstance(col.type, _Str) else None
            )
            if want is not None and not isinstance(found[col.name], want):
                raise SeqrecError(
                    f"column '{col.name}' has type {found[col.name]}, expected "
                    f"{'an integer' if want is _Int else 'a string'} type",
                    where=where,
                )
