"""Generators for the property tests: cells that know what the importer must make of them.

Every generated cell carries its text (as written to the file, before CSV quoting) and what
the importer must store for it (``want``), or :data:`BAD` when the row holding it must be
rejected. Tests build files from such cells and compare the database with the expectation.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from sqlalchemy import Engine, func, select

from seqrec.data.schema import event_types, events, imports, item_meta, items

#: the row holding this cell must be rejected (a bad row, reported with its line)
BAD = "<bad>"
#: a blank event type cell: the import's default event type
DEFAULT = "<default>"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: generated valid timestamps are at most this (the importer accepts up to a day ahead)
NOW_MS = int(time.time() * 1000)
INJECTIONS = (
    "x'; DROP TABLE events; --",
    "'; DROP TABLE events; --",
    '"; DROP TABLE events; --',
    "Robert'); DELETE FROM items; --",
    "1 OR 1=1",
    "a\\'b",
    "$$; TRUNCATE events; $$",
)


def examples(n: int) -> Any:
    """Hypothesis settings for a property test: ``n`` examples (``SEQREC_PROPERTY_EXAMPLES``
    overrides), deterministic (derandomized, no example database), no deadline."""
    override = int(os.environ.get("SEQREC_PROPERTY_EXAMPLES", "0") or 0)
    return settings(
        max_examples=override or n,
        deadline=None,
        derandomize=True,
        database=None,
        # the ``outcome`` fixture is function-scoped on purpose: it counts every example
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )


#: the bad-input classes of the reliability table: key -> (class, what must come of it)
CLASSES: dict[str, tuple[str, str]] = {
    "structure": (
        "delimited event files: delimiters, quoting, line ends, headers, blank, short and long "
        "rows (CSV, MovieLens, RecBole)",
        "imported exactly (read back from the events table), or refused naming the file and "
        "the first bad line with nothing stored",
    ),
    "encoding": (
        "encodings and byte-order marks (UTF-8 with BOM, UTF-16, Latin-1)",
        "read as UTF-8 with or without BOM; anything else refused naming the file, nothing stored",
    ),
    "huge": (
        "huge fields (200,000 characters) in ids and ignored columns",
        "read whole: an id over 256 characters is a bad row naming its line, a long ignored "
        "field is imported",
    ),
    "types": (
        "wrong types: values and timestamps that are not finite numbers or times",
        "a bad row naming its line (skipped with --on-error skip), never stored",
    ),
    "time": (
        "timestamps: time zones and ISO-8601 (offsets, Z, naive = UTC, dates), epoch seconds "
        "and milliseconds, fractions",
        "stored as the exact UTC epoch milliseconds (half to even)",
    ),
    "nul": (
        "NUL characters in any column",
        "a bad row naming its line (ids and event types: where the NUL is); harmless in an "
        "ignored column",
    ),
    "bytes": (
        "arbitrary bytes as event, item and config files",
        "imported, or a SeqrecError naming the file with nothing stored",
    ),
    "config": (
        "seqrec.toml documents: valid ones, one wrong entry, broken TOML",
        "loaded with their values, or refused naming the key and its line",
    ),
    "labels": (
        "label definitions and model label selectors",
        "parsed exactly, or refused with a short SeqrecError",
    ),
    "api": (
        "API request bodies: random JSON, arbitrary bytes, bodies from the request schema",
        "a valid request or a 400 whose body serialises; never a 500",
    ),
    "injection": (
        "SQL injection in config names, ids, event types, file names, label selectors, the "
        "feature service name and requests",
        "refused as not a plain identifier, or stored literally; the events intact",
    ),
    "items": (
        "item text files: titles, descriptions, categories, attributes, repeated ids",
        "imported exactly (read back from item_meta), or refused naming the file and line "
        "with nothing stored",
    ),
}


def note(what: str) -> None:
    """``hypothesis.event`` inside a property test; nothing when a check runs outside one (a
    broken variant's explicit case)."""
    with contextlib.suppress(InvalidArgument):
        event(what)


def tally(outcome: Any, *keys: str, cases: int = 1) -> None:
    """Count ``cases`` examples run for each bad-input class in ``keys``."""
    for key in keys:
        scenario, result = CLASSES[key]
        outcome.add(scenario, "bad input", result=result, cases=cases)


def broken_variant(outcome: Any, what: str, caught: str, cases: int = 1) -> None:
    """The row of a check run against a deliberately broken build that it caught."""
    outcome(
        f"broken variant: {what}",
        "bad input",
        cases=cases,
        result=f"the check catches it ({caught})"[:200],
        data_lost="none",
    )


@dataclass(frozen=True)
class Cell:
    """One field: its text in the file and what must be stored (or :data:`BAD`)."""

    text: str
    want: Any


def _has_text(s: str) -> bool:
    return bool(s.strip())


#: any character a UTF-8 file can hold except NUL (tested on its own)
CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
#: characters of "clean" names and ids
PLAIN_ID = "abcdefghijklmnopqrstuvwxyz0123456789_-"


def _pad(cell: Any) -> Any:
    return st.tuples(cell, st.sampled_from(["", " "]), st.sampled_from(["", " "])).map(
        lambda t: Cell(t[1] + t[0].text + t[2], t[0].want)
    )


def id_cells(chars: Any = CHARS, bad: bool = False) -> Any:
    """User/item id cells: text (possibly padded, quoted, multi-line) stored stripped. Bad:
    blank, too long (over 256), huge (200k characters), holding a NUL."""
    if bad:
        return st.one_of(
            st.sampled_from(["", " ", "  \t"]).map(lambda s: Cell(s, BAD)),
            st.integers(257, 300).map(lambda n: Cell("i" * n, BAD)),
            st.just(Cell("h" * 200_000, BAD)),
            st.text(chars, max_size=3).map(lambda s: Cell(f"{s}\x00{s}", BAD)),
        )
    text = st.text(chars, min_size=1, max_size=10).filter(_has_text)
    return st.one_of(
        text.map(lambda s: Cell(s, s.strip())),
        st.sampled_from(INJECTIONS).map(lambda s: Cell(s, s)),
    )


def type_cells(chars: Any = CHARS, bad: bool = False) -> Any:
    """Event type cells: stored stripped; blank means the default type. Bad: over 64
    characters, a NUL."""
    if bad:
        return st.one_of(
            st.integers(65, 80).map(lambda n: Cell("t" * n, BAD)), st.just(Cell("a\x00b", BAD))
        )
    return st.one_of(
        st.text(chars, min_size=1, max_size=8).filter(_has_text).map(lambda s: Cell(s, s.strip())),
        st.sampled_from(["", " "]).map(lambda s: Cell(s, DEFAULT)),
    )


def value_cells(bad: bool = False, blank: bool = True) -> Any:
    """Value cells: finite numbers, blank (no value; unless not ``blank``). Bad: anything
    else."""
    if bad:
        return st.sampled_from(["abc", "inf", "-inf", "nan", "1e400", "1,5", "--1", "0x10"]).map(
            lambda s: Cell(s, BAD)
        )
    return st.one_of(
        _pad(st.floats(allow_nan=False, allow_infinity=False).map(lambda x: Cell(repr(x), x))),
        _pad(st.integers(-(10**6), 10**6).map(lambda n: Cell(str(n), float(n)))),
        *([st.sampled_from(["", " "]).map(lambda s: Cell(s, None))] if blank else []),
    )


#: bad in every time unit (auto, s, ms, iso)
BAD_TIMES = (
    "",
    "  ",
    "yesterday",
    "-5",
    "-0.5",
    "9999999999999",
    "1e306",
    "-1e306",
    "1e400",
    "nan",
    "inf",
    "2023-13-01",
    "12:00",
    "9" * 5000,
)


@st.composite
def iso_cell(draw: Any) -> Cell:
    """An ISO-8601 time (offset, Z, naive = UTC, space separator, date only) and its epoch
    milliseconds, rounded half to even from the exact microseconds."""
    precision = draw(st.sampled_from([1_000_000, 1000, 1, 86_400_000_000]))
    us = draw(st.integers(0, NOW_MS * 1000 // precision)) * precision
    utc = EPOCH + timedelta(microseconds=us)
    want = round(Fraction(us, 1000))
    if precision == 86_400_000_000:
        return Cell(utc.date().isoformat(), want)
    spec = {1_000_000: "seconds", 1000: "milliseconds", 1: "microseconds"}[precision]
    style = draw(st.sampled_from(["offset", "z", "naive", "space"]))
    if style == "offset":
        minutes = draw(st.integers(-14 * 60, 14 * 60))
        text = utc.astimezone(timezone(timedelta(minutes=minutes))).isoformat(timespec=spec)
    elif style == "z":
        text = utc.isoformat(timespec=spec).replace("+00:00", "Z")
    else:
        sep = "T" if style == "naive" else " "
        text = utc.replace(tzinfo=None).isoformat(sep=sep, timespec=spec)
    return Cell(text, want)


def time_cells(unit: str, bad: bool = False) -> Any:
    """Timestamp cells valid for ``unit`` (auto, s, ms or iso). Bad: bad in every unit."""
    if bad:
        return st.sampled_from(BAD_TIMES).map(lambda s: Cell(s, BAD))
    reps: list[Any] = []
    if unit in ("auto", "s"):
        reps.append(st.integers(0, NOW_MS // 1000).map(lambda s: Cell(str(s), s * 1000)))
        # seconds with up to 4 decimals: exact halves of a millisecond round to even
        reps.append(
            st.integers(0, NOW_MS * 10).map(
                lambda t: Cell(f"{t // 10_000}.{t % 10_000:04d}", round(Fraction(t, 10)))
            )
        )
    if unit in ("auto", "ms"):
        low = 10**11 if unit == "auto" else 0  # auto: numbers from 1e11 on are milliseconds
        reps.append(st.integers(low, NOW_MS).map(lambda ms: Cell(str(ms), ms)))
        reps.append(
            st.integers(low * 10, NOW_MS * 10).map(
                lambda t: Cell(f"{t // 10}.{t % 10}", round(Fraction(t, 10)))
            )
        )
    if unit in ("auto", "iso"):
        reps.append(iso_cell())
    return _pad(st.one_of(*reps))


def extra_cells(bad: bool = False) -> Any:
    """Cells of columns the importer ignores: anything, NUL and 200k characters included."""
    return st.one_of(
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=6).map(
            lambda s: Cell(s, None)
        ),
        st.just(Cell("e" * 200_000, None)),
    )


def clean_cells(role: str, unit: str, bad: bool = False) -> Any:
    """Cells PostgreSQL's vectorised CSV reader takes as they are (plain ids, integer times,
    plain decimals); bad ones it must leave to the row reader (a NUL, a long id, a time in
    the future): both paths meet the same file."""
    plain = st.text(PLAIN_ID, min_size=1, max_size=6)
    if role in ("user", "item"):
        good = plain.map(lambda s: Cell(s, s))
        worse = st.sampled_from([Cell("a\x00b", BAD), Cell("i" * 300, BAD), Cell("", BAD)])
    elif role == "event_type":
        good = st.one_of(plain.map(lambda s: Cell(s, s)), st.just(Cell("", DEFAULT)))
        worse = st.just(Cell("t\x00", BAD))
    elif role == "value":
        good = st.one_of(
            st.integers(-(10**6), 10**6).map(lambda n: Cell(str(n), float(n))),
            st.integers(0, 10**6)
            .map(lambda n: f"{n // 100}.{n % 100:02d}")
            .map(lambda t: Cell(t, float(t))),
            st.just(Cell("", None)),
        )
        worse = st.just(Cell("abc", BAD))
    elif role == "timestamp":
        seconds = st.integers(0, NOW_MS // 1000).map(lambda x: Cell(str(x), x * 1000))
        millis = st.integers(10**11 if unit == "auto" else 0, NOW_MS).map(lambda x: Cell(str(x), x))
        good = {"s": seconds, "ms": millis}.get(unit, st.one_of(seconds, millis))
        worse = st.just(Cell("9999999999999", BAD))
    else:
        return st.text(PLAIN_ID, max_size=4).map(lambda s: Cell(s, None))
    return worse if bad else good


# --------------------------------------------------------------------------------------------
# Reading the database back


def stored_events(engine: Engine) -> list[tuple[str, str, str, int, float | None]]:
    """Every event as (user, item, event type, ts_ms, value), in event id order."""
    with engine.connect() as c:
        rows = c.execute(
            select(
                events.c.user_id,
                items.c.item_id,
                event_types.c.name,
                events.c.ts_ms,
                events.c.value,
            )
            .join(items, items.c.item_idx == events.c.item_idx)
            .join(event_types, event_types.c.type_idx == events.c.type_idx)
            .order_by(events.c.event_id)
        ).all()
    return [(u, i, t, int(ts), None if v is None else float(v)) for u, i, t, ts, v in rows]


def snapshot(engine: Engine) -> tuple[Any, ...]:
    """Everything an import may change: events, both vocabularies, item text, the import log."""
    with engine.connect() as c:
        return (
            c.execute(select(events).order_by(events.c.event_id)).all(),
            c.execute(select(items).order_by(items.c.item_idx)).all(),
            c.execute(select(event_types).order_by(event_types.c.type_idx)).all(),
            c.execute(select(item_meta).order_by(item_meta.c.item_id)).all(),
            c.execute(select(func.count()).select_from(imports)).scalar_one(),
        )


def dedupe(
    before: list[tuple[str, str, str, int, float | None]],
    new: list[tuple[str, str, str, int, float | None]],
) -> list[tuple[str, str, str, int, float | None]]:
    """``before`` plus the ``new`` events whose natural key (user, item, type, ts) is not
    there yet: the first of several wins."""
    out = list(before)
    seen = {e[:4] for e in before}
    for e in new:
        if e[:4] not in seen:
            seen.add(e[:4])
            out.append(e)
    return out
