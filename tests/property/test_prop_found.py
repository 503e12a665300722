"""What the property tests found, each pinned by its smallest example (every one of these
failed before its fix)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from propgen import snapshot, stored_events
from sqlalchemy import Engine

from seqrec.config import Workspace, load_workspace, parse_config
from seqrec.data.importers import file_sha256, import_file, parse_timestamp
from seqrec.data.item_text import import_item_file
from seqrec.data.schema import create_schema, item_meta, make_engine
from seqrec.errors import SeqrecError
from seqrec.training.labels import parse_label

pytestmark = pytest.mark.property

HEADER = "user_id,item_id,timestamp\n"


@pytest.fixture
def engine(profile_ws: Workspace) -> Iterator[Engine]:
    eng = make_engine(profile_ws.events_url)
    create_schema(eng)
    yield eng
    eng.dispose()


# -- events importer -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "unit", "ms"),
    [
        ("1094841422.1035", "s", 1_094_841_422_104),  # 103.5 ms: half to even (float: 103)
        ("2004-09-29T16:43:38.630500+00:00", "iso", 1_096_476_218_630),  # float: 631
        ("1700000000000.5", "ms", 1_700_000_000_000),
    ],
)
def test_fractional_times_round_half_to_even_exactly(text: str, unit: str, ms: int) -> None:
    assert parse_timestamp(text, unit) == ms  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "unit"),
    [("-0.5", "ms"), ("-0.0004", "s"), ("-1e-400", "ms"), ("1969-12-31T23:59:59.9995Z", "iso")],
)
def test_a_time_just_before_1970_is_refused_not_rounded_to_the_epoch(text: str, unit: str) -> None:
    """Rounding came first: half a millisecond before 1970 was stored as the epoch."""
    assert "before 1970" in str(parse_timestamp(text, unit))  # type: ignore[arg-type]
    assert parse_timestamp("-0", unit if unit != "iso" else "ms") == 0


def test_a_huge_number_of_seconds_is_a_bad_timestamp_not_an_overflow() -> None:
    assert "future" in str(parse_timestamp("1e306", "s"))  # was OverflowError


def test_errors_quote_a_long_field_only_in_part() -> None:
    reason = str(parse_timestamp("9" * 5000, "s"))
    assert len(reason) < 200 and "5,000 characters" in reason


def test_a_nul_in_an_id_is_a_bad_row_naming_its_line(engine: Engine, tmp_path: Path) -> None:
    """SQLite stored it; PostgreSQL's COPY failed with a driver traceback."""
    path = tmp_path / "nul.csv"
    path.write_text(HEADER + "u1,i1,1700000000\nu\x002,i1,1700000000\n", encoding="utf-8")
    before = snapshot(engine)
    with pytest.raises(SeqrecError, match="line 3: user id holds a NUL character"):
        import_file(engine, path)
    assert snapshot(engine) == before
    assert import_file(engine, path, on_error="skip").rows_skipped == 1


def test_a_field_over_128_kib_is_read(engine: Engine, tmp_path: Path) -> None:
    """Python's csv module stopped at 131,072 characters: the whole import failed ("field
    larger than field limit", no line), even for a column the importer ignores."""
    path = tmp_path / "long.csv"
    note = "n" * 200_000
    long_id = "u" * 200_000
    path.write_text(
        f"user_id,item_id,timestamp,note\nu1,i1,1700000000,{note}\n{long_id},i1,1700000000,x\n",
        encoding="utf-8",
    )
    with pytest.raises(SeqrecError, match="line 3: user id longer than 256"):
        import_file(engine, path)
    report = import_file(engine, path, on_error="skip")
    assert (report.rows_added, report.rows_skipped) == (1, 1)


def test_a_header_over_two_lines_adds_no_event(engine: Engine, tmp_path: Path) -> None:
    """PostgreSQL's vectorised reader skipped one physical line as the header and imported
    the header's second line as an event (user 'b"', item 'c', 123 s)."""
    path = tmp_path / "header.csv"
    path.write_text('"a\nb",c,123\nu1,i1,1700000000\n', encoding="utf-8")
    from seqrec.data.importers import CsvColumns

    import_file(engine, path, columns=CsvColumns(user="a\nb", item="c", timestamp="123"))
    assert stored_events(engine) == [("u1", "i1", "view", 1_700_000_000_000, None)]


def test_a_file_that_is_not_utf8_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + "u1,caf\xe9,1700000000\n").encode("latin-1"))
    with pytest.raises(SeqrecError, match=r"line 2: not UTF-8 text \(bad byte 0xe9 at column 7"):
        file_sha256(path)


# -- item text importer --------------------------------------------------------------------


def test_item_text_with_a_nul_is_a_bad_row(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("item_id,title\ni1,Fine\ni2,Bad\x00title\n", encoding="utf-8")
    with pytest.raises(SeqrecError, match="line 3: title holds a NUL character"):
        import_item_file(engine, path)


def test_an_item_description_over_128_kib_is_read(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text(f"item_id,title,description\ni1,T,{'d' * 200_000}\n", encoding="utf-8")
    assert import_item_file(engine, path).added == 1


def test_an_item_header_that_is_not_utf8_fails(engine: Engine, tmp_path: Path) -> None:
    """It was read with replacement characters: an attribute column named 'g\\ufffdnre'."""
    path = tmp_path / "items.csv"
    path.write_bytes("item_id,title,g\xe9nre\ni1,T,x\n".encode("latin-1"))
    with pytest.raises(SeqrecError, match="header line 1: not valid UTF-8"):
        import_item_file(engine, path)


def test_item_lines_count_a_lone_carriage_return(engine: Engine, tmp_path: Path) -> None:
    """A file with CR line ends failed ('new-line character seen in unquoted field'), and a
    quoted CR did not count as a line break as it does for events: line numbers differed."""
    path = tmp_path / "items.csv"
    path.write_bytes(b"item_id,title\ri1,A\ri2,\r")
    with pytest.raises(SeqrecError, match="line 3: empty title"):
        import_item_file(engine, path)
    path.write_bytes(b"item_id,title\ri1,A\r")
    import_item_file(engine, path)
    with engine.connect() as c:
        assert c.execute(item_meta.select()).all()[0].title == "A"


# -- config ------------------------------------------------------------------------------------


def test_a_seqrec_toml_that_is_not_utf8_is_an_error_naming_line_and_column() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seqrec.toml"
        path.write_bytes('[models]\ndefault = "caf\xe9"\n'.encode("latin-1"))
        with pytest.raises(SeqrecError, match="bad byte 0xe9 at column 15") as err:
            load_workspace(tmp)  # was UnicodeDecodeError
        assert err.value.where == f"{path.resolve()}:2"


def test_config_lines_are_toml_lines_whatever_the_values_hold() -> None:
    """Line numbers came from str.splitlines, which also breaks at \\x85, \\u2028, \\x1c."""
    text = '[models]\nstore = "a\x85b\u2028c"\n\n[serve]\nport = "x"\n'
    with pytest.raises(SeqrecError) as err:
        parse_config(text, source="seqrec.toml")
    assert err.value.where == "seqrec.toml:5"


def test_broken_toml_names_its_line() -> None:
    with pytest.raises(SeqrecError) as err:
        parse_config("[train]\nepochs = 2\nlr = = 1\n", source="seqrec.toml")
    assert err.value.where == "seqrec.toml:3"


def test_a_long_bad_value_is_quoted_only_in_part() -> None:
    with pytest.raises(SeqrecError) as err:
        parse_config(f'[serve]\nport = "{"x" * 10_000}"\n', source="seqrec.toml")
    assert len(str(err.value)) < 300


# -- label definitions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["churn:" + "9" * 5000 + "d", "churn:100000000w", "churn:٣d", "churn:３d"],
)
def test_label_horizons_are_ascii_and_at_most_ten_years(text: str) -> None:
    """5,000 digits raised ValueError (int's digit limit); huge horizons overflowed the SQL
    cutoffs later; non-ASCII digits were read as numbers."""
    with pytest.raises(SeqrecError, match="horizon"):
        parse_label(text)
    assert parse_label("churn:520w").horizon_s == 520 * 7 * 86400
