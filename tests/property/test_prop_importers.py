"""Property tests of the event importers: generated CSV, MovieLens and RecBole files.

Each generated file knows what must come of it. Either the import succeeds and every accepted
row is stored exactly once with the right values (read back from the events table), or it fails
with a SeqrecError naming the file (and the line of the first bad row) and nothing changed.
"""

from __future__ import annotations

import csv
import io
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from outcomes import Recorder
from propgen import (
    BAD,
    CHARS,
    DEFAULT,
    INJECTIONS,
    PLAIN_ID,
    Cell,
    broken_variant,
    clean_cells,
    dedupe,
    examples,
    extra_cells,
    id_cells,
    note,
    snapshot,
    stored_events,
    tally,
    time_cells,
    type_cells,
    value_cells,
)
from sqlalchemy import Engine, text

from seqrec.data import importers
from seqrec.data.importers import (
    CsvColumns,
    RawEvent,
    import_events,
    import_file,
    parse_timestamp,
)
from seqrec.data.schema import create_schema, make_engine
from seqrec.errors import SeqrecError
from seqrec.testing import make_workspace

pytestmark = pytest.mark.property

Event = tuple[str, str, str, int, "float | None"]
SEED = [
    RawEvent("seed", "seed", 1_600_000_000_000, "view", 1.0),
    RawEvent(INJECTIONS[0], INJECTIONS[1], 1_600_000_001_000, INJECTIONS[2], None),
]
#: the file name carries quotes and a semicolon: it is stored in the import log as text
FILE_NAME = "events 'x'; --.csv"


@dataclass
class Case:
    """A generated file, how to import it, and what must come of it."""

    text: str
    encoding: str = "utf-8"
    columns: CsvColumns = field(default_factory=CsvColumns)
    unit: str = "auto"
    delimiter: str = ","
    on_error: str = "fail"
    fmt: str = "csv"
    default_type: str = "view"
    #: the header lacks a column the import needs: the whole import fails
    header_error: bool = False
    #: (last line of the record, the event it must store | BAD | None for a blank line)
    records: list[tuple[int, Any]] = field(default_factory=list)
    #: bad-input classes (propgen.CLASSES) its cells hold beyond the file's structure
    tags: set[str] = field(default_factory=set)

    def __repr__(self) -> str:  # long runs of one character shortened: failures stay readable
        short = re.sub(
            r"(.)\1{40,}", lambda m: f"<{m.group(1)!r} x {len(m.group(0))}>", repr(self.__dict__)
        )
        return f"Case({short})"


@dataclass
class Expected:
    ok: bool
    line: int | None = None  # the line an error must name
    events: list[Event] = field(default_factory=list)
    bad: int = 0


def _lines_in(s: str) -> int:
    """Physical lines as a file read with universal newlines counts them."""
    return len(re.findall(r"\r\n|\r|\n", s))


#: a cell holding an ISO-8601 date or time
_ISO = re.compile(r"\d{4}-\d\d-\d\d")


def _tag(tags: set[str], role: str, cell: Cell) -> None:
    """Note the bad-input classes ``cell`` (of column ``role``) belongs to."""
    if role in ("value", "timestamp") and cell.want == BAD:
        tags.add("types")
    if role == "timestamp" and _ISO.search(cell.text):
        tags.add("time")


def classes_of(case: Case) -> list[str]:
    """The bad-input classes (propgen.CLASSES) ``case`` holds."""
    found = {"structure", *case.tags}
    if case.encoding != "utf-8":
        found.add("encoding")
    if len(case.text) > 100_000:  # only a huge field makes a generated file this long
        found.add("huge")
    if "\x00" in case.text:
        found.add("nul")
    return sorted(found)


def _event(cells: dict[str, Cell], default_type: str) -> Any:
    wants = {role: c.want for role, c in cells.items() if role != "extra"}
    if BAD in wants.values():
        return BAD
    etype = wants.get("event_type", DEFAULT)
    return (
        wants["user"],
        wants["item"],
        default_type if etype == DEFAULT else etype,
        wants["timestamp"],
        wants.get("value"),
    )


def expected(case: Case) -> Expected:
    """What the import of ``case`` must do, from the cells' own expectations."""
    data = case.text.encode(case.encoding)
    try:
        decoded = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return Expected(False)
    if decoded != case.text:
        assume(case.encoding != "latin-1")  # accidentally valid UTF-8 with other characters
        return Expected(False)  # UTF-16 without BOM: NULs everywhere, the header cannot match
    if (not case.text and case.fmt != "movielens") or case.header_error:
        return Expected(False)  # no header, or one without a column the import needs
    good: list[Event] = []
    bad_lines: list[int] = []
    for line, want in case.records:
        if want is None:
            continue
        if want == BAD:
            bad_lines.append(line)
        else:
            good.append(want)
    if bad_lines and case.on_error == "fail":
        return Expected(False, line=bad_lines[0])
    return Expected(True, events=good, bad=len(bad_lines))


# --------------------------------------------------------------------------------------------
# Generating CSV files

ROLES = {
    "user": id_cells,
    "item": id_cells,
    "event_type": type_cells,
    "value": value_cells,
    "extra": extra_cells,
}


@st.composite
def csv_cases(draw: Any) -> Case:
    # clean files: what PostgreSQL's vectorised reader takes without the row reader
    clean = draw(st.booleans())
    unit = draw(st.sampled_from(["auto", "s", "ms"] if clean else ["auto", "s", "ms", "iso"]))
    delimiter = draw(st.sampled_from([",", ";", "\t", "|"] + ([] if clean else [" ", ":", "x"])))
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]))
    # csv.writer quotes a field holding a line break only if it is in the terminator
    terminator = (
        "\r\n" if quoting == csv.QUOTE_MINIMAL else draw(st.sampled_from(["\n", "\r\n", "\r"]))
    )
    roles = ["user", "item", "timestamp"]
    roles += ["event_type"] * draw(st.booleans()) + ["value"] * draw(st.booleans())
    roles += ["extra"] * draw(st.integers(0, 2))
    names = draw(
        st.lists(
            st.text(PLAIN_ID if clean else CHARS, min_size=1, max_size=6)
            .map(str.strip)
            .filter(lambda s: s and s not in ("event_type", "value")),
            min_size=len(roles),
            max_size=len(roles),
            unique=True,
        )
    )
    order = draw(st.permutations(list(range(len(roles)))))
    cols = [(roles[i], names[i]) for i in order]
    by_role = {role: name for role, name in cols if role != "extra"}
    columns = CsvColumns(
        user=by_role["user"],
        item=by_role["item"],
        timestamp=by_role["timestamp"],
        event_type=by_role.get("event_type", draw(st.sampled_from([None, "event_type"]))),
        value=by_role.get("value", draw(st.sampled_from([None, "value"]))),
    )
    header_error = draw(st.integers(0, 14)) == 0
    if header_error:  # a column the import needs is not in the header
        role = draw(st.sampled_from(["user", "item", "timestamp", "event_type"]))
        setattr(columns, "timestamp" if role == "timestamp" else role, "absent column")

    def row_text(fields: list[str]) -> str:
        buf = io.StringIO()
        csv.writer(buf, delimiter=delimiter, quoting=quoting, lineterminator=terminator).writerow(
            fields
        )
        return buf.getvalue()

    pad = "" if clean else draw(st.sampled_from(["", " "]))
    head = row_text([f"{pad}{name}{pad}" for _, name in cols])
    parts, records, line = [head], [], _lines_in(head)
    tags: set[str] = set()
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["data"] * 5 + ["bad", "blank", "short", "long"]))
        checked = [role for role, _ in cols if role != "extra"]
        bad_role = draw(st.sampled_from(checked)) if kind == "bad" else None
        if kind == "blank":
            blank = "" if delimiter == " " else draw(st.sampled_from(["", "  "]))
            parts.append(blank + terminator)
            line += 1
            records.append((line, None))
            continue
        cells = {}
        fields = []
        for role, _ in cols:
            bad = role == bad_role
            if clean:
                strat = clean_cells(role, unit, bad)
            else:
                strat = time_cells(unit, bad) if role == "timestamp" else ROLES[role](bad=bad)
            cell = draw(strat)
            fields.append(cell.text)
            _tag(tags, role, cell)
            if role != "extra":
                cells[role] = cell
        want = _event(cells, "view")
        if kind == "short":
            fields, want = fields[:-1], BAD
        elif kind == "long":
            fields, want = [*fields, "z"], BAD
        text_ = row_text(fields)
        parts.append(text_)
        line += _lines_in(text_)
        records.append((line, want))
    empty = draw(st.integers(0, 19)) == 0
    encoding = draw(
        st.sampled_from(["utf-8"] * 8 + ["utf-8-sig", "utf-16", "utf-16-le", "latin-1"])
    )
    body = "" if empty else "".join(parts)
    if encoding == "latin-1":
        try:
            body.encode("latin-1")
        except UnicodeEncodeError:
            encoding = "utf-8"
    return Case(
        text=body,
        encoding=encoding,
        columns=columns,
        unit=unit,
        delimiter=delimiter,
        on_error=draw(st.sampled_from(["fail", "skip"])),
        header_error=header_error,
        records=records,
        tags=tags if not empty else set(),
    )


# --------------------------------------------------------------------------------------------
# Running one case


@contextmanager
def embedded_engine() -> Iterator[Engine]:
    """A fresh embedded workspace's events database (a temp directory per example)."""
    with tempfile.TemporaryDirectory(prefix="seqrec-prop-") as tmp:
        ws = make_workspace(Path(tmp) / "ws")
        engine = make_engine(ws.events_url)
        create_schema(engine)
        try:
            yield engine
        finally:
            engine.dispose()


def check(engine: Engine, case: Case, seed: bool, directory: Path) -> None:
    """Import ``case`` into ``engine`` and check the outcome against :func:`expected`."""
    if seed:
        import_events(engine, enumerate(SEED, 1), source="seed", sha256="0", fmt="test")
    want = expected(case)
    path = directory / FILE_NAME
    path.write_bytes(case.text.encode(case.encoding))
    before_events = stored_events(engine)
    before = snapshot(engine)
    try:
        report = import_file(
            engine,
            path,
            case.fmt,  # type: ignore[arg-type]
            columns=case.columns,
            time_unit=case.unit,  # type: ignore[arg-type]
            delimiter=case.delimiter,
            on_error=case.on_error,  # type: ignore[arg-type]
            batch_size=3,
        )
    except SeqrecError as exc:
        message = str(exc)
        note("refused")
        assert not want.ok, f"import failed, expected it to succeed: {message}"
        assert str(path) in message, f"the error does not name the file: {message}"
        if want.line is not None:
            assert f"line {want.line}:" in message, f"expected line {want.line}: {message}"
        assert snapshot(engine) == before, "a failed import changed the database"
        return
    assert want.ok, f"import succeeded, expected an error (line {want.line})"
    note("imported, rows stored" if want.events else "imported, nothing stored")
    got, wanted = stored_events(engine), dedupe(before_events, want.events)
    assert got == wanted, f"stored {got!r:.300} where the file says {wanted!r:.300}"
    assert report.rows_skipped == want.bad
    with engine.connect() as c:
        sources = c.execute(text("SELECT source FROM imports")).scalars().all()
    assert str(path) in sources


@examples(50)
@given(case=csv_cases(), seed=st.booleans())
def test_generated_csv_imports_exactly_or_fails_cleanly(
    case: Case, seed: bool, outcome: Recorder
) -> None:
    with embedded_engine() as engine:
        check(engine, case, seed, Path(str(engine.url.database)).parent)
    tally(outcome, *classes_of(case))


@pytest.fixture(scope="module")
def pg_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """An events database in a PostgreSQL schema of its own (emptied per example)."""
    from seqrec.testing import PG_URL, require_services, unique_name

    require_services()
    schema = unique_name("prop", request)
    engine = make_engine(f"{PG_URL}?options=-csearch_path%3D{schema}")
    try:
        yield engine
    finally:
        with engine.begin() as c:
            c.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()


@pytest.mark.integration
@examples(25)
@given(case=csv_cases(), seed=st.booleans())
def test_generated_csv_on_postgres_imports_exactly_or_fails_cleanly(
    pg_engine: Engine, case: Case, seed: bool, outcome: Recorder
) -> None:
    """The PostgreSQL path (COPY, vectorised CSV reading with a row-reader fallback) keeps
    the same contract as the embedded one."""
    from seqrec.data.schema import pg_schema_name

    with pg_engine.begin() as c:
        c.execute(text(f"DROP SCHEMA IF EXISTS {pg_schema_name(pg_engine)} CASCADE"))
    create_schema(pg_engine)
    with tempfile.TemporaryDirectory(prefix="seqrec-prop-") as tmp:
        check(pg_engine, case, seed, Path(tmp))
    tally(outcome, *classes_of(case))


# --------------------------------------------------------------------------------------------
# MovieLens u.data and RecBole .inter: tab-separated, no quoting

#: no tabs, line breaks or ':' (MovieLens splits ``::`` lines) in these formats' fields
PLAIN = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\t\n\r:")


def _rating_cells(bad: bool = False) -> Any:
    if bad:
        return st.one_of(value_cells(bad=True), st.just(Cell("", BAD)))
    return value_cells(blank=False)


@st.composite
def movielens_cases(draw: Any) -> Case:
    lines, records, n = [], [], 0
    tags: set[str] = set()
    dat = draw(st.booleans())  # ratings.dat: user::item::rating::timestamp
    for _ in range(draw(st.integers(0, 6))):
        n += 1
        kind = draw(st.sampled_from(["data"] * 5 + ["bad", "blank", "short"]))
        if kind == "blank":
            lines.append("")
            records.append((n, None))
            continue
        bad = draw(st.sampled_from(["user", "item", "value", "timestamp"])) if kind == "bad" else ""
        user = draw(id_cells(PLAIN, bad=bad == "user"))
        item = draw(id_cells(PLAIN, bad=bad == "item"))
        rating = draw(_rating_cells(bad=bad == "value"))
        ts = draw(time_cells("s", bad=bad == "timestamp"))
        cells = {"user": user, "item": item, "timestamp": ts, "value": rating}
        for role, cell in cells.items():
            _tag(tags, role, cell)
        fields = [user.text, item.text, rating.text, ts.text]
        want = _event(cells, "rating")
        if kind == "short":
            fields, want = fields[:3], BAD
        lines.append(("::" if dat else "\t").join(fields))
        records.append((n, want))
    body = "".join(line + "\n" for line in lines)
    return Case(
        text=body,
        fmt="movielens",
        default_type="rating",
        on_error=draw(st.sampled_from(["fail", "skip"])),
        records=records,
        tags=tags,
    )


@st.composite
def recbole_cases(draw: Any) -> Case:
    roles = ["user", "item", "timestamp"]
    roles += ["value"] * draw(st.booleans()) + ["event_type"] * draw(st.booleans())
    roles += ["extra"] * draw(st.integers(0, 2))
    order = draw(st.permutations(roles))
    header_name = {
        "user": "user_id:token",
        "item": "item_id:token",
        "timestamp": "timestamp:float",
        "value": "rating:float",
        "event_type": "event_type:token",
    }
    head = [header_name.get(r, f"extra{i}:token") for i, r in enumerate(order)]
    lines, records = ["\t".join(head)], []
    tags: set[str] = set()
    for n in range(2, 2 + draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["data"] * 5 + ["bad", "blank", "short"]))
        if kind == "blank":
            lines.append(" ")
            records.append((n, None))
            continue
        checked = [role for role in order if role != "extra"]
        bad_role = draw(st.sampled_from(checked)) if kind == "bad" else None
        cells, fields = {}, []
        for role in order:
            bad = role == bad_role
            if role == "timestamp":
                cell = draw(time_cells("s", bad))
            elif role == "value":
                cell = draw(value_cells(bad))
            elif role == "extra":
                cell = Cell(draw(st.text(PLAIN, max_size=5)), None)
            else:
                cell = draw(ROLES[role](PLAIN, bad=bad))
            fields.append(cell.text)
            _tag(tags, role, cell)
            if role != "extra":
                cells[role] = cell
        want = _event(cells, "rating")
        if kind == "short":
            fields, want = fields[:-1], BAD
        lines.append("\t".join(fields))
        records.append((n, want))
    return Case(
        text="".join(line + "\n" for line in lines),
        fmt="recbole",
        default_type="rating",
        on_error=draw(st.sampled_from(["fail", "skip"])),
        records=records,
        tags=tags,
    )


@examples(40)
@given(case=st.one_of(movielens_cases(), recbole_cases()), seed=st.booleans())
def test_generated_movielens_and_recbole_files(case: Case, seed: bool, outcome: Recorder) -> None:
    with embedded_engine() as engine:
        check(engine, case, seed, Path(str(engine.url.database)).parent)
    tally(outcome, *classes_of(case))


# --------------------------------------------------------------------------------------------
# Single fields: timestamps in every unit, a NUL in any column


@examples(200)
@given(data=st.data(), unit=st.sampled_from(["auto", "s", "ms", "iso"]), bad=st.booleans())
def test_timestamps_parse_to_exact_utc_milliseconds_or_a_reason(
    data: st.DataObject, unit: str, bad: bool, outcome: Recorder
) -> None:
    cell = data.draw(time_cells(unit, bad))
    got = parse_timestamp(cell.text, unit)  # type: ignore[arg-type]
    if bad:
        assert isinstance(got, str), f"{cell.text!r} ({unit}) read as {got}"
    else:
        assert got == cell.want, f"{cell.text!r} ({unit}): {got} != {cell.want}"
    tally(outcome, "types" if bad else "time")


ROW = {"user": "u1", "item": "i1", "event_type": "view", "timestamp": "1700000000", "value": "1"}
HEADER = ["user_id", "item_id", "event_type", "timestamp", "value", "note"]
NUL_REASON = {"user": "user id", "item": "item id", "event_type": "event type"}


@examples(100)
@given(role=st.sampled_from([*ROW, "note"]), at=st.integers(0, 12), pad=st.text(CHARS, max_size=3))
def test_a_nul_in_any_column_is_a_bad_row_unless_the_column_is_ignored(
    role: str, at: int, pad: str, outcome: Recorder
) -> None:
    fields = {**ROW, "note": "x"}
    cell = fields[role] + pad
    at %= len(cell) + 1
    fields[role] = cell[:at] + "\x00" + cell[at:]
    buf = io.StringIO()
    csv.writer(buf).writerows([HEADER, list(fields.values())])
    with tempfile.TemporaryDirectory(prefix="seqrec-prop-") as tmp:
        path = Path(tmp) / "nul.csv"
        path.write_text(buf.getvalue(), encoding="utf-8")
        [(line, got)] = list(importers.read_csv(path))
    assert line == _lines_in(buf.getvalue()), f"line {line}"
    if role == "note":  # an ignored column
        assert isinstance(got, RawEvent), got
    elif role in NUL_REASON:
        assert got == f"{NUL_REASON[role]} holds a NUL character (at character {at + 1})", got
    else:
        assert isinstance(got, str) and got.startswith(f"bad {role} "), got
    tally(outcome, "nul")


# --------------------------------------------------------------------------------------------
# Arbitrary bytes: no oracle, only the contract


def check_bytes(engine: Engine, data: bytes, fmt: str, importer: Any = import_file) -> None:
    """Import ``data`` as a ``fmt`` file with ``importer``: it imports, or fails with a
    SeqrecError naming the file and the database as it was."""
    import_events(engine, enumerate(SEED, 1), source="seed", sha256="0", fmt="test")
    path = Path(str(engine.url.database)).parent / FILE_NAME
    path.write_bytes(data)
    before = snapshot(engine)
    try:
        importer(engine, path, fmt)
    except SeqrecError as exc:
        assert str(path) in str(exc), f"the error does not name the file: {exc}"
        assert snapshot(engine) == before, "a failed import changed the database"


@examples(40)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=80).map(lambda s: s.encode("utf-8", "surrogatepass")),
        st.lists(
            st.sampled_from(
                [
                    b"user_id,item_id,timestamp\n",
                    b'"',
                    b"\x00",
                    b",",
                    b"\r",
                    b"\n",
                    b"u1",
                    b"1700000000",
                    b"\xff",
                    b"\xef\xbb\xbf",
                ]
            ),
            max_size=12,
        ).map(b"".join),
    ),
    fmt=st.sampled_from(["csv", "movielens", "recbole"]),
)
def test_arbitrary_bytes_import_or_fail_with_the_file_named(
    data: bytes, fmt: str, outcome: Recorder
) -> None:
    with embedded_engine() as engine:
        check_bytes(engine, data, fmt)
    tally(outcome, "bytes")


# --------------------------------------------------------------------------------------------
# Broken variants: the same checks against an importer with one safety step taken out

HEAD = "user_id,item_id,timestamp"
EV = ("u1", "i1", "view", 1_700_000_000_000, None)


def caught(case: Case, monkeypatch: pytest.MonkeyPatch, **broken: Any) -> str:
    """:func:`check` passes ``case`` on the real importer and fails it with the functions of
    seqrec.data.importers named in ``broken`` swapped in; the first line of its report."""
    with embedded_engine() as engine:
        check(engine, case, False, Path(str(engine.url.database)).parent)
    with monkeypatch.context() as m:
        for name, fn in broken.items():
            m.setattr(importers, name, fn)
        with embedded_engine() as engine, pytest.raises(AssertionError) as err:
            check(engine, case, False, Path(str(engine.url.database)).parent)
    return str(err.value).splitlines()[0]


def test_the_import_check_catches_columns_read_by_position(
    monkeypatch: pytest.MonkeyPatch, outcome: Recorder
) -> None:
    def by_position(header: list[str], cols: CsvColumns, path: Path) -> Any:
        n = len(header)  # the default column order, whatever the header says
        return 0, 1, 2, (3 if n > 3 else None), (4 if n > 4 else None)

    case = Case("item_id,user_id,timestamp\ni1,u1,1700000000\n", records=[(2, EV)])
    report = caught(case, monkeypatch, csv_layout=by_position)
    assert report.startswith("stored [('i1', 'u1'"), report
    broken_variant(outcome, "an importer reading CSV columns by position", "user and item swapped")


def test_the_import_check_catches_a_byte_order_mark_read_as_text(
    monkeypatch: pytest.MonkeyPatch, outcome: Recorder
) -> None:
    def bom_kept(path: Path) -> Any:
        return open(path, encoding="utf-8", newline="")

    case = Case(f"{HEAD}\nu1,i1,1700000000\n", encoding="utf-8-sig", records=[(2, EV)])
    report = caught(case, monkeypatch, _open_text=bom_kept)
    assert "missing user column 'user_id' (header: \ufeffuser_id," in report, report
    broken_variant(
        outcome, "an importer keeping the UTF-8 byte-order mark", "the header's first name lost"
    )


def test_the_import_check_catches_the_csv_modules_field_limit(
    monkeypatch: pytest.MonkeyPatch, outcome: Recorder
) -> None:
    note = "n" * 200_000
    case = Case(f"{HEAD},note\nu1,i1,1700000000,{note}\n", records=[(2, EV)])
    limit = csv.field_size_limit()
    try:
        report = caught(
            case,
            monkeypatch,
            allow_long_fields=lambda: csv.field_size_limit(128 * 1024),  # Python's default
        )
    finally:
        csv.field_size_limit(limit)
    assert "field larger than field limit" in report, report
    broken_variant(
        outcome,
        "an importer with the csv module's 128 KiB field limit",
        "the whole file refused: field larger than field limit",
    )


def test_the_import_check_catches_values_that_are_not_finite(
    monkeypatch: pytest.MonkeyPatch, outcome: Recorder
) -> None:
    def any_float(text: str) -> float | None:
        try:
            return float(text)  # inf and nan pass
        except ValueError:
            return None

    text = f"{HEAD},value\nu1,i1,1700000000,1\nu2,i1,1700000000,inf\n"
    case = Case(text, records=[(2, (*EV[:4], 1.0)), (3, BAD)])
    report = caught(case, monkeypatch, _parse_number=any_float)
    assert report == "import succeeded, expected an error (line 3)", report
    broken_variant(outcome, "an importer taking inf and nan as values", report)


def test_the_import_check_catches_time_zone_offsets_ignored(
    monkeypatch: pytest.MonkeyPatch, outcome: Recorder
) -> None:
    def offset_ignored(text: str) -> int:
        local = datetime.fromisoformat(text).replace(tzinfo=UTC)  # 10:00+02:00 read as 10:00Z
        return int(local.timestamp() * 1000)

    at = datetime.fromisoformat("2024-01-01T08:00:00+00:00").timestamp() * 1000
    case = Case(
        f"{HEAD}\nu1,i1,2024-01-01T10:00:00+02:00\n",
        unit="iso",
        records=[(2, ("u1", "i1", "view", int(at), None))],
    )
    report = caught(case, monkeypatch, _parse_iso=offset_ignored)
    assert report.startswith("stored [('u1', 'i1', 'view', 1704103200000"), report
    broken_variant(outcome, "an importer ignoring ISO-8601 offsets", "stored 2 hours off")


def test_the_import_check_catches_nul_characters_let_through(
    monkeypatch: pytest.MonkeyPatch, outcome: Recorder
) -> None:
    case = Case(f"{HEAD}\nu1,i1,1700000000\nu\x002,i1,1700000000\n", records=[(2, EV), (3, BAD)])
    report = caught(case, monkeypatch, _nul_in=lambda *fields: None)
    assert report == "import succeeded, expected an error (line 3)", report
    broken_variant(outcome, "an importer without the NUL check (SQLite stores them)", report)


def test_the_bytes_check_catches_an_import_committing_per_row(outcome: Recorder) -> None:
    def per_row(engine: Engine, path: Path, fmt: str) -> None:
        for n, ev in importers.read_csv(path):  # each row its own transaction
            import_events(engine, [(n, ev)], source=str(path), sha256="", fmt=fmt)

    data = f"{HEAD}\nu1,i1,1700000000\nu2,i2,yesterday\n".encode()
    with embedded_engine() as engine:
        check_bytes(engine, data, "csv")
    with embedded_engine() as engine, pytest.raises(AssertionError) as err:
        check_bytes(engine, data, "csv", importer=per_row)
    report = str(err.value).splitlines()[0]
    assert report == "a failed import changed the database", report
    broken_variant(outcome, "an importer committing every row on its own", report)
