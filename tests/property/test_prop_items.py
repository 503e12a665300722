"""Property tests of the item text importer: generated item CSV files and arbitrary bytes.

Either the import succeeds and every accepted item is stored once with the right text (read
back from ``item_meta``), or it fails with a SeqrecError naming the file (and the line of the
first bad row) and nothing changed.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from outcomes import Recorder
from propgen import BAD, CHARS, Cell, broken_variant, examples, id_cells, note, snapshot, tally
from sqlalchemy import Engine, select

from seqrec.data.item_text import import_item_file
from seqrec.data.schema import create_schema, item_meta, make_engine
from seqrec.errors import SeqrecError
from seqrec.testing import make_workspace

pytestmark = pytest.mark.property

FILE_NAME = 'items "x"; --.csv'
ItemRow = tuple[str, str | None, str | None, str | None]  # title, description, category, attrs


@dataclass
class ItemCase:
    text: str
    encoding: str
    delimiter: str
    on_error: str
    #: (first line of the record, item id, its row | BAD | None for a blank line); the
    #: same id again with other text is a bad row, with the same text a harmless repeat
    records: list[tuple[int, str, Any]] = field(default_factory=list)
    #: the record's text, to tell which ones a non-UTF-8 encoding breaks
    record_texts: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        short = re.sub(
            r"(.)\1{40,}", lambda m: f"<{m.group(1)!r} x {len(m.group(0))}>", repr(self.__dict__)
        )
        return f"ItemCase({short})"


def text_cells(required: bool, bad: bool = False) -> Any:
    """Title (``required``), description or category cells: stored stripped, 200k characters
    are fine, blank is none. Bad: a NUL, a blank title."""
    if bad:
        blank = st.sampled_from(["", " "]).map(lambda s: Cell(s, BAD))
        return st.one_of(st.just(Cell("a\x00b", BAD)), *([blank] if required else []))
    return st.one_of(
        st.text(CHARS, min_size=1, max_size=8).filter(str.strip).map(lambda s: Cell(s, s.strip())),
        st.just(Cell("T" * 200_000, "T" * 200_000)),
        *([] if required else [st.sampled_from(["", " "]).map(lambda s: Cell(s, None))]),
    )


def _lines_in(s: str) -> int:
    return len(re.findall(r"\r\n|\r|\n", s))


@st.composite
def item_cases(draw: Any) -> ItemCase:
    delimiter = draw(st.sampled_from([",", ";", "\t", "|"]))
    roles = ["item_id", "title"]
    roles += ["description"] * draw(st.booleans()) + ["category"] * draw(st.booleans())
    extras = draw(
        st.lists(
            st.text(CHARS, min_size=1, max_size=5)
            .map(str.strip)
            .filter(lambda s: s and s not in ("item_id", "title", "description", "category")),
            max_size=2,
            unique=True,
        )
    )
    header = draw(st.permutations(roles + extras))

    def row_text(fields: list[str]) -> str:
        buf = io.StringIO()
        csv.writer(buf, delimiter=delimiter, lineterminator="\r\n").writerow(fields)
        return buf.getvalue()

    head = row_text(header)
    parts, records, texts, line = [head], [], [head], _lines_in(head) + 1
    written: dict[str, tuple[list[str], Any]] = {}  # item id -> a row written for it
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["data"] * 5 + ["bad", "blank", "short", "again"]))
        bad_role = draw(st.sampled_from(roles)) if kind == "bad" else None
        if kind == "blank":
            parts.append("\r\n")
            records.append((line, "", None))
            texts.append("")
            line += 1
            continue
        if kind == "again" and written:  # an id again: the same text or another one
            known = draw(st.sampled_from(sorted(written)))
            item = Cell(known, known)
        else:
            item = draw(id_cells(bad=bad_role == "item_id"))
        cells: dict[str, Cell] = {"item_id": item}
        fields = []
        for name in header:
            if name == "item_id":
                cell = item
            elif name in ("title", "description", "category"):
                cell = draw(text_cells(name == "title", bad=bad_role == name))
            else:
                cell = Cell(draw(st.text(CHARS, max_size=4)), None)
            cells[name] = cell
            fields.append(cell.text)
        want: Any = _item(cells, extras)
        if kind == "again" and item.want in written and draw(st.booleans()):
            fields, want = written[item.want]  # the very same row again
        if kind == "short":
            fields, want = fields[:-1], BAD
        if want != BAD:
            written.setdefault(item.want, (fields, want))
        text = row_text(fields)
        parts.append(text)
        texts.append(text)
        records.append((line, item.want, want))
        line += _lines_in(text)
    encoding = draw(
        st.sampled_from(["utf-8"] * 4 + ["utf-8-sig", "utf-16", "utf-16-le", "latin-1"])
    )
    body = "".join(parts)
    if encoding == "latin-1":
        try:
            body.encode("latin-1")
        except UnicodeEncodeError:
            encoding = "utf-8"
    return ItemCase(
        text=body,
        encoding=encoding,
        delimiter=delimiter,
        on_error=draw(st.sampled_from(["fail", "skip"])),
        records=records,
        record_texts=texts,
    )


def _item(cells: dict[str, Cell], extras: list[str]) -> Any:
    wants = [cells["item_id"].want, cells["title"].want]
    desc = cells.get("description", Cell("", None)).want
    cat = cells.get("category", Cell("", None)).want
    if BAD in (*wants, desc, cat):
        return BAD
    attrs = {h: cells[h].text.strip() for h in extras if cells[h].text.strip()}
    attrs_json = json.dumps(attrs, sort_keys=True, ensure_ascii=False) if attrs else None
    return (wants[1], desc, cat, attrs_json)


def expected(case: ItemCase) -> tuple[bool, int | None, dict[str, ItemRow], int]:
    """(succeeds, line an error names, item id -> stored row, bad rows skipped)."""
    data = case.text.encode(case.encoding)
    if case.encoding in ("utf-16", "utf-16-le"):
        return False, None, {}, 0  # the header cannot be read as UTF-8 item_id,title
    broken: set[int] = set()  # records that hold a byte that is not UTF-8
    if case.encoding == "latin-1" and data != case.text.encode("utf-8"):
        for i, text in enumerate(case.record_texts):
            raw = text.encode("latin-1")
            for line in raw.splitlines():
                try:
                    ok = line.decode("utf-8") == line.decode("latin-1")
                except UnicodeDecodeError:
                    broken.add(i)
                    continue
                assume(ok)  # accidentally valid UTF-8 holding other characters
        if 0 in broken:
            return False, None, {}, 0  # the header
    good: dict[str, ItemRow] = {}
    bad_lines = []
    for i, (line, item_id, want) in enumerate(case.records, 1):
        if i in broken:
            want = BAD
        if want is None:  # a blank line
            continue
        if want == BAD or good.get(item_id, want) != want:  # an id again with other text
            bad_lines.append(line)
        else:
            good.setdefault(item_id, want)
    if bad_lines and case.on_error == "fail":
        return False, bad_lines[0], {}, 0
    return True, None, good, len(bad_lines)


@contextmanager
def embedded_engine() -> Iterator[Engine]:
    with tempfile.TemporaryDirectory(prefix="seqrec-prop-") as tmp:
        ws = make_workspace(Path(tmp) / "ws")
        engine = make_engine(ws.events_url)
        create_schema(engine)
        try:
            yield engine
        finally:
            engine.dispose()


def stored_items(engine: Engine) -> dict[str, ItemRow]:
    cols = item_meta.c
    with engine.connect() as c:
        rows = c.execute(
            select(cols.item_id, cols.title, cols.description, cols.category, cols.attributes)
        ).all()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def check_items(engine: Engine, case: ItemCase) -> None:
    """Import ``case`` into ``engine`` and check the outcome against :func:`expected`."""
    ok, line, items, bad = expected(case)
    path = Path(str(engine.url.database)).parent / FILE_NAME
    path.write_bytes(case.text.encode(case.encoding))
    before = snapshot(engine)
    try:
        report = import_item_file(
            engine,
            path,
            "csv",
            delimiter=case.delimiter,
            on_error=case.on_error,  # type: ignore[arg-type]
        )
    except SeqrecError as exc:
        message = str(exc)
        note("refused")
        assert not ok, f"import failed, expected it to succeed: {message}"
        assert str(path) in message, message
        if line is not None:
            assert f"line {line}:" in message, f"expected line {line}: {message}"
        assert snapshot(engine) == before, "a failed import changed the database"
        return
    assert ok, f"import succeeded, expected an error (line {line})"
    note("imported, items stored" if items else "imported, nothing stored")
    got = stored_items(engine)
    assert got == items, f"stored {got!r:.300} where the file says {items!r:.300}"
    assert report.skipped == bad


@examples(40)
@given(case=item_cases())
def test_generated_item_csv_imports_exactly_or_fails_cleanly(
    case: ItemCase, outcome: Recorder
) -> None:
    with embedded_engine() as engine:
        check_items(engine, case)
    tally(outcome, "items")


@examples(40)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.lists(
            st.sampled_from(
                [
                    b"item_id,title\n",
                    b"item_id:token\ttitle:token_seq\n",
                    b'"',
                    b"\x00",
                    b",",
                    b"\t",
                    b"\r",
                    b"\n",
                    b"i1",
                    b"A title",
                    b"\xff",
                    b"\xef\xbb\xbf",
                ]
            ),
            max_size=12,
        ).map(b"".join),
    ),
    fmt=st.sampled_from(["csv", "recbole"]),
)
def test_arbitrary_bytes_as_item_files_import_or_fail_naming_the_file(
    data: bytes, fmt: str, outcome: Recorder
) -> None:
    with embedded_engine() as engine:
        path = Path(str(engine.url.database)).parent / FILE_NAME
        path.write_bytes(data)
        before = snapshot(engine)
        try:
            import_item_file(engine, path, fmt)  # type: ignore[arg-type]
        except SeqrecError as exc:
            assert str(path) in str(exc)
            assert snapshot(engine) == before
    tally(outcome, "bytes")


def test_the_item_check_catches_nul_characters_stripped_instead_of_refused(
    monkeypatch: pytest.MonkeyPatch, outcome: Recorder
) -> None:
    """An item reader that quietly removes NULs: the stored title is not the file's, and the
    row the file makes bad is imported."""
    from seqrec.data import item_text

    real = item_text._make_item

    def nul_stripped(raw_id: str, title: str, description: str, category: str, attrs: Any) -> Any:
        return real(raw_id, title.replace("\x00", ""), description, category, attrs)

    text = "item_id,title\r\ni1,Fine\r\ni2,Bad\x00title\r\n"
    case = ItemCase(
        text,
        "utf-8",
        ",",
        "fail",
        records=[(2, "i1", ("Fine", None, None, None)), (3, "i2", BAD)],
        record_texts=text.splitlines(keepends=True),
    )
    with embedded_engine() as engine:
        check_items(engine, case)
    monkeypatch.setattr(item_text, "_make_item", nul_stripped)
    with embedded_engine() as engine, pytest.raises(AssertionError) as err:
        check_items(engine, case)
    report = str(err.value).splitlines()[0]
    assert report == "import succeeded, expected an error (line 3)", report
    broken_variant(outcome, "an item importer stripping NULs instead of refusing the row", report)
