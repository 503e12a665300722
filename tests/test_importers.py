"""Event importers: formats, validation, transactions, idempotence, vocabularies."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from seqrec.data.importers import (
    CsvColumns,
    RawEvent,
    import_events,
    import_file,
    parse_timestamp,
    read_csv,
)
from seqrec.data.schema import create_schema, event_types, events, imports, items, make_engine
from seqrec.errors import SeqrecError

TS = 1_700_000_000  # 2023-11-14T22:13:20Z
TS_MS = TS * 1000


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path: Path):
    """An events database of each dialect (PostgreSQL: a schema of its own, dropped after)."""
    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path}/e.db")
        create_schema(eng)
        yield eng
        eng.dispose()
        return
    from sqlalchemy import text

    from seqrec.testing import PG_URL, require_services, unique_name

    require_services()
    schema = unique_name("imp", request)
    eng = make_engine(f"{PG_URL}?options=-csearch_path%3D{schema}")
    with eng.begin() as c:
        c.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    create_schema(eng)
    yield eng
    with eng.begin() as c:
        c.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    eng.dispose()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def rows(engine) -> list[tuple]:
    with engine.connect() as c:
        return c.execute(
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


def counts(engine) -> tuple[int, int, int, int]:
    with engine.connect() as c:
        return tuple(  # type: ignore[return-value]
            c.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (events, items, event_types, imports)
        )


def vocab(engine) -> dict[str, int]:
    with engine.connect() as c:
        return dict(c.execute(select(items.c.item_id, items.c.item_idx)).all())


# ---------------------------------------------------------------------------------------------
# Timestamps and CSV


def test_csv_epoch_seconds_ms_and_iso(engine, tmp_path):
    f = write(
        tmp_path / "a.csv",
        "user_id,item_id,timestamp,event_type,value\n"
        f"u1,i1,{TS},view,\n"
        f"u1,i2,{TS_MS + 5},cart,\n"
        "u1,i3,2023-11-14T22:13:21Z,purchase,9.5\n"
        "u2,i1,2023-11-14T23:13:22+01:00,view,\n"
        "u2,i2,2023-11-14T22:13:23,,\n"
        f"u2,i3,{TS}.25,view,1\n",
    )
    rep = import_file(engine, f, "csv")
    assert (rep.rows_read, rep.rows_added, rep.rows_duplicate, rep.rows_skipped) == (6, 6, 0, 0)
    assert rows(engine) == [
        ("u1", "i1", "view", TS_MS, None),
        ("u1", "i2", "cart", TS_MS + 5, None),
        ("u1", "i3", "purchase", TS_MS + 1000, 9.5),
        ("u2", "i1", "view", TS_MS + 2000, None),  # +01:00 offset
        ("u2", "i2", "view", TS_MS + 3000, None),  # naive ISO = UTC; empty type = default
        ("u2", "i3", "view", TS_MS + 250, 1.0),
    ]
    d = rep.to_dict()
    assert d["format"] == "csv" and d["rows_added"] == 6 and len(d["sha256"]) == 64


@pytest.mark.parametrize(
    ("text", "unit", "expected"),
    [
        ("1700000000", "auto", TS_MS),
        ("1700000000000", "auto", TS_MS),
        ("1700000000", "s", TS_MS),
        ("1700000000", "ms", 1_700_000_000),
        ("2023-11-14T22:13:20Z", "iso", TS_MS),
        ("2023-11-14 22:13:20", "auto", TS_MS),
        ("2023-11-14T22:13:20.5+00:00", "auto", TS_MS + 500),
    ],
)
def test_parse_timestamp(text, unit, expected):
    assert parse_timestamp(text, unit) == expected


@pytest.mark.parametrize(
    ("text", "unit", "fragment"),
    [
        ("yesterday", "auto", "bad timestamp"),
        ("", "auto", "empty"),
        ("-5", "s", "before 1970"),
        ("1969-12-31T23:59:59Z", "iso", "before 1970"),
        ("4000000000", "s", "future"),
        ("2023-01-01", "s", "epoch seconds"),
        ("nan", "auto", "bad timestamp"),
    ],
)
def test_parse_timestamp_rejects(text, unit, fragment):
    reason = parse_timestamp(text, unit)
    assert isinstance(reason, str) and fragment in reason


def test_column_overrides_and_missing_optional_columns(engine, tmp_path):
    f = write(tmp_path / "b.csv", f"who;what;when\nalice;x;{TS}\nbob;y;{TS + 1}\n")
    cols = CsvColumns(user="who", item="what", timestamp="when")
    rep = import_file(
        engine, f, "csv", columns=cols, delimiter=";", default_event_type="click", time_unit="s"
    )
    assert rep.rows_added == 2
    assert rows(engine) == [
        ("alice", "x", "click", TS_MS, None),
        ("bob", "y", "click", TS_MS + 1000, None),
    ]


def test_renamed_optional_column_must_exist(engine, tmp_path):
    f = write(tmp_path / "c.csv", f"user_id,item_id,timestamp\nu,i,{TS}\n")
    with pytest.raises(SeqrecError, match="missing event type column 'kind'"):
        import_file(engine, f, "csv", columns=CsvColumns(event_type="kind"))


def test_missing_header_column_is_named(engine, tmp_path):
    f = write(tmp_path / "d.csv", f"user,item_id,timestamp\nu,i,{TS}\n")
    with pytest.raises(SeqrecError) as exc:
        import_file(engine, f, "csv")
    msg = str(exc.value)
    assert "d.csv" in msg and "'user_id'" in msg and "user, item_id, timestamp" in msg
    assert counts(engine) == (0, 0, 0, 0)


def test_missing_file_and_not_utf8(engine, tmp_path):
    with pytest.raises(SeqrecError, match=r"nope\.csv: no such file"):
        import_file(engine, tmp_path / "nope.csv", "csv")
    bad = tmp_path / "latin1.csv"
    bad.write_bytes(f"user_id,item_id,timestamp\nJos\xe9,i,{TS}\n".encode("latin-1"))
    with pytest.raises(
        SeqrecError, match=r"latin1\.csv: line 2: not UTF-8 text \(bad byte 0xe9 at column 4"
    ):
        import_file(engine, bad, "csv")
    with pytest.raises(SeqrecError, match="is a directory"):
        import_file(engine, tmp_path, "csv")


def test_bom_and_blank_lines(engine, tmp_path):
    f = tmp_path / "bom.csv"
    f.write_bytes(f"\ufeffuser_id,item_id,timestamp\r\n\r\nu,i,{TS}\r\n\r\n".encode())
    assert import_file(engine, f, "csv").rows_added == 1


# ---------------------------------------------------------------------------------------------
# MovieLens and RecBole


def test_movielens(engine, tmp_path):
    f = write(
        tmp_path / "u.data", f"196\t242\t3\t{TS}\n186\t302\t4.5\t{TS + 60}\n196\t302\t1\t{TS}\n"
    )
    rep = import_file(engine, f, "movielens")
    assert (rep.rows_added, rep.format) == (3, "movielens")
    assert rows(engine) == [
        ("196", "242", "rating", TS_MS, 3.0),
        ("186", "302", "rating", TS_MS + 60_000, 4.5),
        ("196", "302", "rating", TS_MS, 1.0),
    ]
    assert vocab(engine) == {"242": 1, "302": 2}


def test_movielens_dat_and_bad_line(engine, tmp_path):
    f = write(tmp_path / "ratings.dat", f"1::10::5::{TS}\n2::10::x::{TS}\n")
    with pytest.raises(SeqrecError, match=r"ratings.dat: line 2: bad rating 'x'"):
        import_file(engine, f, "movielens")
    g = write(tmp_path / "u2.data", "1\t10\t5\n")
    with pytest.raises(SeqrecError, match=r"u2.data: line 1: expected 4 fields"):
        import_file(engine, g, "movielens")
    assert counts(engine) == (0, 0, 0, 0)


def test_recbole(engine, tmp_path):
    f = write(
        tmp_path / "ml.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        f"1\t10\t4\t{TS}.5\n"
        f"2\t11\t\t{TS + 1}\n",
    )
    rep = import_file(engine, f, "recbole")
    assert rep.rows_added == 2
    assert rows(engine) == [
        ("1", "10", "rating", TS_MS + 500, 4.0),
        ("2", "11", "rating", TS_MS + 1000, None),
    ]


def test_recbole_event_type_column_and_no_rating(engine, tmp_path):
    f = write(
        tmp_path / "x.inter",
        "session_id:token\tuser_id:token\titem_id:token\ttimestamp:float\tevent_type:token\n"
        f"s\tu\ti\t{TS}\tclick\n"
        f"s\tu\tj\t{TS + 2}\tbuy\n",
    )
    import_file(engine, f, "recbole")
    assert rows(engine) == [("u", "i", "click", TS_MS, None), ("u", "j", "buy", TS_MS + 2000, None)]
    g = write(tmp_path / "bad.inter", "user_id:token\titem_id:token\n1\t2\n")
    with pytest.raises(SeqrecError, match=r"bad.inter: missing column 'timestamp'"):
        import_file(engine, g, "recbole")


def test_event_type_from_names_events_by_rating(engine, tmp_path):
    """``liked``: 4 and up liked, below disliked; ``rating``: r<value>; no value is a bad row."""
    f = write(tmp_path / "u.data", f"1\t10\t5\t{TS}\n1\t11\t3\t{TS + 1}\n2\t10\t4\t{TS}\n")
    import_file(engine, f, "movielens", event_type_from="liked")
    assert [r[2] for r in rows(engine)] == ["liked", "disliked", "liked"]
    g = write(
        tmp_path / "ml.inter",
        f"user_id:token\titem_id:token\trating:float\ttimestamp:float\n3\t12\t2\t{TS}\n",
    )
    import_file(engine, g, "recbole", event_type_from="rating")
    assert rows(engine)[-1][2] == "r2"
    h = write(tmp_path / "e.csv", f"user_id,item_id,timestamp\n4,13,{TS}\n")
    with pytest.raises(SeqrecError, match=r"e.csv: line 2: no value \(rating\)"):
        import_file(engine, h, "csv", event_type_from="liked")
    with pytest.raises(SeqrecError, match="unknown event_type_from"):
        import_file(engine, h, "csv", event_type_from="stars")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Bad rows: fail leaves the DB untouched, skip imports the rest

GOOD = f"user_id,item_id,timestamp,value\nu1,i1,{TS},\nu1,i2,{TS + 1},2.5\n"


@pytest.mark.parametrize(
    ("bad_line", "fragment"),
    [
        ("u9,i9,not-a-time,", "bad timestamp"),
        (f",i9,{TS},", "empty user id"),
        (f"u9,,{TS},", "empty item id"),
        (f"u9,i9,{TS},cheap", "bad value 'cheap'"),
        (f"u9,i9,{TS}", "expected 4 fields, found 3"),
        (f"{'u' * 257},i9,{TS},", "longer than 256"),
    ],
)
@pytest.mark.parametrize("previous_import", [False, True])
def test_bad_row_fails_and_rolls_back(engine, tmp_path, bad_line, fragment, previous_import):
    if previous_import:
        import_file(engine, write(tmp_path / "good.csv", GOOD), "csv")
    before = counts(engine)
    before_vocab = vocab(engine)
    # New items before the bad row, with a batch size that flushes them before the failure.
    text = f"user_id,item_id,timestamp,value\nu5,new1,{TS},\nu5,new2,{TS},\n{bad_line}\nu6,new3,{TS},\n"
    f = write(tmp_path / "bad.csv", text)
    with pytest.raises(SeqrecError) as exc:
        import_file(engine, f, "csv", batch_size=1)
    msg = str(exc.value)
    assert "bad.csv" in msg and "line 4" in msg and fragment in msg
    assert counts(engine) == before
    assert vocab(engine) == before_vocab


def test_skip_imports_good_rows_and_reports(engine, tmp_path):
    text = (
        "user_id,item_id,timestamp,value\n"
        f"u1,i1,{TS},\n"
        f"u1,i2,oops,\n"
        f"u1,i3,{TS + 2},x\n"
        f"u1,i4,{TS + 3},\n"
    )
    rep = import_file(engine, write(tmp_path / "s.csv", text), "csv", on_error="skip")
    assert (rep.rows_read, rep.rows_added, rep.rows_skipped) == (4, 2, 2)
    assert rep.errors[0].startswith("line 3: bad timestamp 'oops'")
    assert rep.errors[1].startswith("line 4: bad value 'x'")
    assert [r[1] for r in rows(engine)] == ["i1", "i4"]
    assert vocab(engine) == {"i1": 1, "i4": 2}
    with engine.connect() as c:
        logged = c.execute(select(imports)).one()._mapping
    assert (logged["rows_read"], logged["rows_added"], logged["rows_skipped"]) == (4, 2, 2)
    assert logged["source"].endswith("s.csv") and logged["format"] == "csv"


def test_skip_keeps_only_first_ten_reasons(engine, tmp_path):
    bad = "".join(f"u,i,bad{k},\n" for k in range(15))
    rep = import_file(
        engine,
        write(tmp_path / "m.csv", "user_id,item_id,timestamp,value\n" + bad),
        "csv",
        on_error="skip",
    )
    assert rep.rows_skipped == 15 and len(rep.errors) == 10 and rep.rows_added == 0


# ---------------------------------------------------------------------------------------------
# Idempotence, vocabularies, ordering


def test_reimport_adds_nothing(engine, tmp_path):
    f = write(tmp_path / "g.csv", GOOD + f"u1,i1,{TS},\n")  # an in-file duplicate too
    first = import_file(engine, f, "csv")
    assert (first.rows_added, first.rows_duplicate) == (2, 1)
    snapshot = (counts(engine)[:3], vocab(engine), rows(engine))
    again = import_file(engine, f, "csv")
    assert (again.rows_read, again.rows_added, again.rows_duplicate) == (3, 0, 3)
    assert (counts(engine)[:3], vocab(engine), rows(engine)) == snapshot
    assert counts(engine)[3] == 2  # both imports logged
    assert again.sha256 == first.sha256


def test_vocab_starts_at_one_and_is_stable(engine, tmp_path):
    import_file(
        engine,
        write(tmp_path / "1.csv", f"user_id,item_id,timestamp\nu,b,{TS}\nu,a,{TS + 1}\nv,b,{TS}\n"),
        "csv",
    )
    assert vocab(engine) == {"b": 1, "a": 2}
    import_file(
        engine,
        write(tmp_path / "2.csv", f"user_id,item_id,timestamp\nw,c,{TS}\nw,a,{TS}\nw,d,{TS}\n"),
        "csv",
    )
    assert vocab(engine) == {"b": 1, "a": 2, "c": 3, "d": 4}
    with engine.connect() as c:
        assert dict(c.execute(select(event_types.c.name, event_types.c.type_idx)).all()) == {
            "view": 1
        }
    import_file(
        engine,
        write(tmp_path / "3.csv", f"user_id,item_id,timestamp,event_type\nw,d,{TS},buy\n"),
        "csv",
    )
    with engine.connect() as c:
        assert dict(c.execute(select(event_types.c.name, event_types.c.type_idx)).all()) == {
            "view": 1,
            "buy": 2,
        }


def test_file_order_breaks_timestamp_ties(engine, tmp_path):
    f = write(tmp_path / "t.csv", f"user_id,item_id,timestamp\nu,z,{TS}\nu,a,{TS}\nu,m,{TS}\n")
    import_file(engine, f, "csv", batch_size=2)
    with engine.connect() as c:
        got = (
            c.execute(
                select(items.c.item_id)
                .join(events, events.c.item_idx == items.c.item_idx)
                .order_by(events.c.user_id, events.c.ts_ms, events.c.event_id)
            )
            .scalars()
            .all()
        )
    assert got == ["z", "a", "m"]


def test_read_csv_streams_lazily(tmp_path):
    f = write(tmp_path / "l.csv", f"user_id,item_id,timestamp\nu,i,{TS}\nu,,{TS}\n")
    gen = read_csv(f)
    assert next(gen) == (2, RawEvent("u", "i", TS_MS, "view", None))
    assert next(gen) == (3, "empty item id")


def test_import_events_checks_raw_events(engine):
    bad = [(1, RawEvent("u", "i", TS_MS, "view", None)), (2, RawEvent("u", "i", -1, "view", None))]
    with pytest.raises(SeqrecError, match="src: line 2: timestamp -1 ms out of range"):
        import_events(engine, bad, source="src", sha256="0" * 64, fmt="test")
    assert counts(engine) == (0, 0, 0, 0)


# ---------------------------------------------------------------------------------------------
# Property: any valid rows round-trip to their distinct natural keys

_event = st.builds(
    RawEvent,
    user_id=st.sampled_from(["u1", "u2", "ü3"]),
    item_id=st.text(alphabet='ab,"é ', min_size=1, max_size=3).filter(
        lambda s: bool(s) and s.strip() == s
    ),
    ts_ms=st.integers(0, 3).map(lambda k: TS_MS + k),
    event_type=st.sampled_from(["view", "cart"]),
    value=st.none() | st.floats(-10, 10, allow_nan=False),
)


@settings(max_examples=30, deadline=None)
@given(evs=st.lists(_event, max_size=25), batch=st.integers(1, 7))
def test_property_roundtrip(evs, batch):
    eng = make_engine("sqlite://")
    try:
        rep = import_events(
            eng, enumerate(evs, 1), source="p", sha256="0" * 64, fmt="t", batch_size=batch
        )
        keys = {(e.user_id, e.item_id, e.event_type, e.ts_ms) for e in evs}
        assert rep.rows_added == len(keys)
        assert rep.rows_duplicate == len(evs) - len(keys)
        assert {r[:4] for r in rows(eng)} == {(u, i, t, ts) for u, i, t, ts in keys}
        # first occurrence of each item gets the next index, from 1
        first: dict[str, int] = {}
        for e in evs:
            first.setdefault(e.item_id, len(first) + 1)
        assert vocab(eng) == first
    finally:
        eng.dispose()


def test_property_roundtrip_through_csv(engine, tmp_path):
    import csv

    evs = [RawEvent("u,1", 'i"x', TS_MS + k, "view", 1.5 if k % 2 else None) for k in range(5)]
    f = tmp_path / "q.csv"
    with open(f, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "item_id", "timestamp", "event_type", "value"])
        for e in evs:
            w.writerow(
                [e.user_id, e.item_id, e.ts_ms, e.event_type, "" if e.value is None else e.value]
            )
    import_file(engine, f, "csv")
    assert rows(engine) == [(e.user_id, e.item_id, e.event_type, e.ts_ms, e.value) for e in evs]


def test_imported_at_is_utc(engine, tmp_path):
    import_file(engine, write(tmp_path / "g.csv", GOOD), "csv")
    with engine.connect() as c:
        at = c.execute(select(imports.c.imported_at)).scalar_one()
    assert abs((at.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds()) < 60


# ---------------------------------------------------------------------------------------------
# CLI


@pytest.fixture
def cli_project(tmp_path):
    from seqrec.config import render_default_config

    (tmp_path / "seqrec.toml").write_text(render_default_config())
    return tmp_path


def _invoke(args):
    from click.testing import CliRunner

    from seqrec.cli import build_cli

    return CliRunner().invoke(build_cli(), args)


def test_cli_import_bad_row(cli_project):
    f = write(cli_project / "bad.csv", f"user_id,item_id,timestamp\nu,i,{TS}\nu,i,later\n")
    res = _invoke(["events", "import", str(f), "--project", str(cli_project)])
    assert res.exit_code == 1
    out = res.output
    assert "error:" in out and "bad.csv" in out and "line 3" in out and "bad timestamp" in out
    assert "Traceback" not in out
    assert isinstance(res.exception, SystemExit)  # a clean exit, not an uncaught exception


def test_cli_import_json_and_stats(cli_project):
    import json

    f = write(cli_project / "ok.csv", GOOD)
    res = _invoke(["events", "import", str(f), "--json", "--project", str(cli_project)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["rows_added"] == 2 and report["rows_skipped"] == 0
    res = _invoke(["events", "stats", "--json", "--project", str(cli_project)])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout)
    assert stats["events"] == 2 and stats["users"] == 1 and stats["items"] == 2
    assert stats["event_types"] == {"view": 2}
    assert stats["first_event"] == "2023-11-14T22:13:20Z"


def test_postgres_copy_paths_match_the_row_importer(engine, tmp_path):
    """The same file gives the same events, ids order and vocabularies on every path: SQLite
    inserts, PostgreSQL COPY of validated rows, and the vectorised CSV path (duplicates within
    the file keep the first row; timestamp ties keep file order)."""
    lines = ["user_id,item_id,timestamp,event_type,value"]
    for k in range(300):
        lines.append(f"u{k % 7},i{(k * 13) % 17},{TS + k // 4},{'buy' if k % 5 == 0 else ''},{k}")
    lines.append(f"u1,i13,{TS},,999")  # duplicate natural key of an earlier row: ignored
    path = write(tmp_path / "ev.csv", "\n".join(lines) + "\n")
    report = import_file(engine, path)
    expected = "insert" if engine.dialect.name == "sqlite" else "copy-vectorized"
    assert report.method == expected
    ref = make_engine(f"sqlite:///{tmp_path}/ref.db")
    create_schema(ref)
    from seqrec.data.importers import read_csv

    ref_report = import_events(ref, read_csv(path), source="ref", sha256="x", fmt="csv")
    assert ref_report.method == "insert"
    assert rows(engine) == rows(ref)
    assert vocab(engine) == vocab(ref)
    assert report.rows_added == ref_report.rows_added == 300
    # a second load of the same file adds nothing (the ON CONFLICT path on PostgreSQL)
    assert import_file(engine, path).rows_added == 0
    assert counts(engine)[0] == 300


def test_postgres_bad_row_falls_back_to_exact_line_errors(engine, tmp_path):
    good = [f"u{k},i{k},{TS + k}" for k in range(50)]
    path = write(tmp_path / "bad.csv", "\n".join(["user_id,item_id,timestamp", *good, "u9,,1"]))
    with pytest.raises(SeqrecError, match="line 52: empty item id"):
        import_file(engine, path)
    assert counts(engine) == (0, 0, 0, 0)
    report = import_file(engine, path, on_error="skip")
    assert report.rows_added == 50 and report.rows_skipped == 1
    assert report.method == ("insert" if engine.dialect.name == "sqlite" else "copy")
