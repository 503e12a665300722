"""SIGKILL during `seqrec events import`: after a rerun the events equal a clean import's.

A large CSV (in-file duplicates, events already imported by an earlier file) is imported by a
real `seqrec` process killed part-way (after a batch) or with everything written but not yet
committed, then imported again. On PostgreSQL both paths are killed: the vectorised COPY path
(epoch timestamps) and the row path (ISO-8601 timestamps).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from invariants import event_rows, import_problems, run, seqrec, workspace

from seqrec.data.importers import import_file
from seqrec.testing import make_workspace, unique_name

#: batches of 1,000 rows: a kill at the 3rd batch is part-way through the file
EXTRA = "[events]\nbatch_size = 1000\n"
#: (kill point, timestamps) per profile
CASES = {
    "embedded": [("import.batch:3", "ms")],
    "postgres-redis": [("import.commit", "ms"), ("import.batch:3", "iso")],
}


def _rows(n: int = 8_000, users: int = 300, items: int = 200) -> list[list[str]]:
    """Deterministic events: several types, shared timestamps, about 2% exact duplicates."""
    rng = random.Random(7)
    ts = 1_700_000_000_000
    rows: list[list[str]] = []
    while len(rows) < n:
        if rows and rng.random() < 0.02:
            rows.append(list(rng.choice(rows)))
            continue
        ts += rng.choice([0, 0, 1, 250, 60_000])
        kind = rng.choice(["view", "view", "view", "cart", "purchase"])
        rows.append(
            [f"u{rng.randrange(users):04d}", f"i{rng.randrange(items):04d}", str(ts), kind, "1"]
        )
    return rows


def _write(path: Path, rows: list[list[str]], iso: bool = False) -> Path:
    lines = ["user_id,item_id,timestamp,event_type,value"]
    for user, item, ts, kind, value in rows:
        if iso:
            ts = datetime.fromtimestamp(int(ts) / 1000, UTC).isoformat(timespec="milliseconds")
        lines.append(",".join([user, item, ts, kind, value]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``before.csv`` (overlapping the big file), the big file with epoch-ms and with ISO
    timestamps, and ``want``: the events of a clean import of both, in an embedded workspace."""
    root = tmp_path_factory.mktemp("import")
    rows = _rows()
    before = [*rows[:300], ["u9999", "i9999", "1700000000000", "view", "1"]]
    out: dict[str, Any] = {
        "before": _write(root / "before.csv", before),
        "ms": _write(root / "big.csv", rows),
        "iso": _write(root / "big-iso.csv", rows, iso=True),
    }
    clean = make_workspace(root / "clean", EXTRA)
    for name in ("before", "ms"):
        import_file(clean.engine, out[name])
    out["want"] = event_rows(clean.engine)
    return out


@pytest.mark.parametrize("profile", CASES)
def test_sigkill_during_import_then_rerun_duplicates_and_loses_nothing(
    profile: str,
    files: dict[str, Any],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    outcome: Callable[..., None],
) -> None:
    want = files["want"]
    for i, (point, stamps) in enumerate(CASES[profile]):
        name = unique_name(f"ki{i}", request)
        with workspace(profile, tmp_path / f"case{i}", name, EXTRA) as ws:
            import_file(ws.engine, files["before"])
            base = event_rows(ws.engine)
            args = ("events", "import", str(files[stamps]), "-p", str(ws.root), "--json")
            if stamps == "iso":
                args += ("--time-unit", "iso")
            seqrec(*args, kill_at=point)
            assert event_rows(ws.engine) == base, f"{point}: the killed import left rows"
            seqrec(*args)
            assert import_problems(event_rows(ws.engine), want) == [], point
    outcome(
        f"SIGKILL during events import ({profile})",
        "process killed",
        cases=len(CASES[profile]),
        result=f"killed at {', '.join(p for p, _ in CASES[profile])}; nothing of the killed "
        f"import kept, rerun equal to a clean import ({len(want):,} events)",
        data_lost="none",
    )


#: an importer without the natural key that commits every row (what the real one must not be)
BROKEN_IMPORT = """
import sys
from sqlalchemy import create_engine, event, insert, text
from seqrec.data.importers import RawEvent, read_csv
from seqrec.data.schema import event_types, events, items, metadata
from seqrec.faults import kill_point

engine = create_engine(f"sqlite:///{sys.argv[1]}")
event.listen(engine, "connect", lambda c, _: c.execute("PRAGMA synchronous=OFF"))  # speed only
metadata.create_all(engine, tables=[items, event_types])
with engine.begin() as conn:  # the events table without its unique natural key
    conn.execute(text("CREATE TABLE IF NOT EXISTS events (event_id INTEGER PRIMARY KEY, "
                      "user_id TEXT, item_idx INT, type_idx INT, ts_ms BIGINT, value FLOAT)"))
vocab = {}
for table, key, idx in ((items, "item_id", "item_idx"), (event_types, "name", "type_idx")):
    with engine.connect() as conn:
        vocab[table.name] = dict(conn.execute(table.select().with_only_columns(
            table.c[key], table.c[idx])).all())

def index(conn, table, key, idx, name):
    known = vocab[table.name]
    if name not in known:
        known[name] = len(known) + 1
        conn.execute(insert(table).values({key: name, idx: known[name]}))
    return known[name]

for _, ev in read_csv(sys.argv[2]):
    assert isinstance(ev, RawEvent)
    with engine.begin() as conn:
        conn.execute(insert(events).values(
            user_id=ev.user_id, ts_ms=ev.ts_ms, value=ev.value,
            item_idx=index(conn, items, "item_id", "item_idx", ev.item_id),
            type_idx=index(conn, event_types, "name", "type_idx", ev.event_type)))
    kill_point("import.batch")
"""


def test_the_import_check_reports_a_killed_per_row_import_without_a_dedupe_key(
    files: dict[str, Any], tmp_path: Path, outcome: Callable[..., None]
) -> None:
    from sqlalchemy import create_engine

    want = files["want"]
    db = tmp_path / "broken.db"
    argv = [sys.executable, "-c", BROKEN_IMPORT, str(db)]
    run([*argv, str(files["before"])])
    run([*argv, str(files["ms"])], kill_at="import.batch:500")
    run([*argv, str(files["ms"])])  # the rerun
    problems = import_problems(event_rows(create_engine(f"sqlite:///{db}")), want)
    assert any("duplicated" in p for p in problems), problems
    outcome(
        "broken variant: import committing per row, no dedupe key, killed and rerun",
        "process killed",
        cases=1,
        result=f"the import check catches it ({problems[0].split(',')[0]})",
        data_lost="none",
    )
