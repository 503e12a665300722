"""SQL injection attempts through every way a name or an id reaches seqrec: config (schema and
project names, the feature service), files (user, item and event type ids, the file name), and
model label selectors. Each is refused with a clear error or stored literally, on the embedded
profile and on PostgreSQL (a schema of its own), and the events table is intact afterwards.
Requests (user and item ids) are covered against a served app in test_prop_api.py."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from outcomes import Recorder
from propgen import INJECTIONS, broken_variant, snapshot, stored_events, tally
from sqlalchemy import Engine, func, select, text

from seqrec.config import Workspace, parse_config
from seqrec.data.importers import import_file
from seqrec.data.schema import events, make_engine, quoted_identifier
from seqrec.errors import SeqrecError

pytestmark = pytest.mark.property

#: identifiers that must never become SQL text unchecked
BAD_NAMES = (*INJECTIONS, 'x"; DROP SCHEMA public CASCADE; --', "a b", "", "Seqrec", "a" * 64)


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize(("section", "key"), [("events", "pg_schema"), ("features", "project")])
def test_config_refuses_names_that_are_not_plain_identifiers(
    section: str, key: str, name: str, outcome: Recorder
) -> None:
    toml = f"[{section}]\n{key} = {json.dumps(name)}\n"
    with pytest.raises(SeqrecError) as err:
        parse_config(toml, source="seqrec.toml")
    assert str(err.value).startswith(f"seqrec.toml:2: bad value for '{section}.{key}'")
    tally(outcome, "injection")


def check_refused(name: str) -> None:
    """``name`` never becomes an SQL identifier: quoted_identifier refuses it."""
    with pytest.raises(SeqrecError, match="not a plain SQL identifier"):
        quoted_identifier(make_engine("sqlite://"), name)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_quoted_identifier_refuses_anything_but_a_plain_identifier(
    name: str, outcome: Recorder
) -> None:
    check_refused(name)
    tally(outcome, "injection")


def test_the_identifier_check_catches_a_quoter_without_the_identifier_pattern(
    monkeypatch: pytest.MonkeyPatch, outcome: Recorder
) -> None:
    """quoted_identifier with its pattern opened up: injected names become SQL identifiers."""
    import seqrec.config

    check_refused(INJECTIONS[0])
    monkeypatch.setattr(seqrec.config, "IDENTIFIER", r"^.+$")
    missed = []
    for name in INJECTIONS:
        with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
            check_refused(name)
        missed.append(name)
    broken_variant(
        outcome,
        "an SQL identifier quoter without the plain-identifier pattern",
        f"{len(missed)} of {len(INJECTIONS)} injected names not refused",
        cases=len(missed),
    )


def test_quoted_identifier_quotes_a_plain_one() -> None:
    assert quoted_identifier(make_engine("sqlite://"), "seqrec_t1") == '"seqrec_t1"'


def _csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["user_id", "item_id", "event_type", "timestamp", "value"])
    writer.writerows(rows)
    return buf.getvalue()


def _count(engine: Engine) -> int:
    with engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(events)).scalar_one())


def test_injected_ids_and_file_names_are_stored_literally(
    profile_ws: Workspace, outcome: Recorder
) -> None:
    engine = make_engine(profile_ws.events_url)
    rows = [[bad, bad, bad[:64], str(1_700_000_000 + i), "1"] for i, bad in enumerate(INJECTIONS)]
    path = profile_ws.root / "x'; DROP TABLE events; --.csv"
    path.write_text(_csv(rows), encoding="utf-8")
    report = import_file(engine, path)
    assert report.rows_added == len(INJECTIONS)
    want = [(b, b, b[:64], (1_700_000_000 + i) * 1000, 1.0) for i, b in enumerate(INJECTIONS)]
    assert stored_events(engine) == want
    with engine.connect() as c:
        assert c.execute(text("SELECT source FROM imports")).scalars().all() == [str(path)]
    # the same ids flow through the feature SQL (window functions) as plain values
    from seqrec.features.sql import event_positions

    assert set(event_positions(engine)["user_id"]) == set(INJECTIONS)
    assert import_file(engine, path).rows_added == 0  # re-import: nothing twice
    assert _count(engine) == len(INJECTIONS)
    engine.dispose()
    tally(outcome, "injection", cases=len(INJECTIONS) + 1)  # the ids, the file name


def test_a_refused_import_with_injected_ids_leaves_events_intact(
    profile_ws: Workspace, outcome: Recorder
) -> None:
    engine = make_engine(profile_ws.events_url)
    good = profile_ws.root / "good.csv"
    good.write_text(_csv([["u", "i", "view", "1700000000", ""]]), encoding="utf-8")
    import_file(engine, good)
    before = snapshot(engine)
    bad = profile_ws.root / "bad.csv"
    rows = [[b, b, "view", "1700000000", ""] for b in INJECTIONS] + [["u\x00", "i", "v", "1", ""]]
    bad.write_text(_csv(rows), encoding="utf-8")
    with pytest.raises(SeqrecError, match=f"line {len(INJECTIONS) + 2}: user id holds a NUL"):
        import_file(engine, bad)
    assert snapshot(engine) == before
    engine.dispose()
    tally(outcome, "injection", cases=len(INJECTIONS))


def test_injected_model_label_selectors_are_stored_literally(
    profile_ws: Workspace, outcome: Recorder
) -> None:
    from seqrec import promotion
    from seqrec.data.schema import create_schema
    from seqrec.runs import label_history

    engine = make_engine(profile_ws.events_url)
    create_schema(engine)
    good = profile_ws.root / "good.csv"
    good.write_text(_csv([["u", "i", "view", "1700000000", ""]]), encoding="utf-8")
    import_file(engine, good)
    before = stored_events(engine)
    for bad in INJECTIONS:
        selector = f"stage={bad}"
        assert promotion.pointer(profile_ws, selector) is promotion._MISSING
        assert promotion.withdraw(profile_ws, selector, reason=bad) is None
        assert promotion.pointer(profile_ws, selector) is None  # a row: explicitly no model
    changes = label_history(profile_ws)
    assert [c["selector"] for c in changes] == [f"stage={b.strip()}" for b in INJECTIONS]
    assert [c["reason"] for c in changes] == list(INJECTIONS)
    assert stored_events(engine) == before
    engine.dispose()
    tally(outcome, "injection", cases=len(INJECTIONS))


def test_an_injected_feature_service_name_is_registered_literally(
    profile_ws: Workspace, tmp_path: Path, outcome: Recorder
) -> None:
    """The name goes into Feast's registry (SQL on PostgreSQL) as a value."""
    from seqrec.features.repo import apply, get_store

    name = INJECTIONS[0]
    profile_ws.config.features.feature_service = name
    engine = make_engine(profile_ws.events_url)
    good = profile_ws.root / "good.csv"
    good.write_text(_csv([["u", "i", "view", "1700000000", ""]]), encoding="utf-8")
    import_file(engine, good)
    before = snapshot(engine)
    apply(profile_ws)
    assert get_store(profile_ws).get_feature_service(name).name == name
    assert snapshot(engine) == before
    engine.dispose()
    tally(outcome, "injection")
