"""PostgreSQL unreachable during `seqrec events import`: a clear error, nothing half imported.

The workspace reaches PostgreSQL through a TCP proxy run by this test (never the machine's
server itself). Two outages: the proxy refuses from the start (the database is down), and the
proxy drops every connection part-way through the COPY of a 20,000-event file. Each time the
import must stop with a clear error, the events and imports tables (read straight from
127.0.0.1:5432) must be as before, and once the proxy is back the same import, run again in the
same process, must import every event exactly once.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from invariants import event_rows, import_problems
from proxies import TcpProxy
from sqlalchemy import Engine, create_engine, func, select

from seqrec.config import Workspace
from seqrec.data.importers import import_file
from seqrec.data.schema import imports
from seqrec.errors import SeqrecError
from seqrec.testing import (
    PG_URL,
    drop_pg_redis_workspace,
    make_pg_redis_workspace,
    make_workspace,
    require_services,
    unique_name,
)

pytestmark = pytest.mark.integration

#: bytes sent to PostgreSQL before the proxy drops everything: part-way through the big COPY
CUT_AFTER = 200_000


def _write(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    lines = ["user_id,item_id,timestamp,event_type,value"]
    ts = 1_700_000_000_000 + seed * 10**9
    for _ in range(n):
        ts += rng.choice([0, 1, 1_000, 60_000])
        kind = rng.choice(["view", "view", "cart", "purchase"])
        lines.append(f"u{rng.randrange(400):04d},i{rng.randrange(250):04d},{ts},{kind},1")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small file imported first, the big one the outages hit, and ``want``: the events of
    a clean import of both (SQLite)."""
    root = tmp_path_factory.mktemp("pg-import")
    out: dict[str, Any] = {"small": _write(root / "small.csv", 300, 1)}
    out["big"] = _write(root / "big.csv", 20_000, 2)
    clean = make_workspace(root / "clean")
    for name in ("small", "big"):
        import_file(clean.engine, out[name])
    out["want"] = event_rows(clean.engine)
    return out


@pytest.fixture
def proxied(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Workspace, TcpProxy]]:
    """A postgres-redis workspace whose events database is reached through a proxy."""
    require_services()
    with TcpProxy(5432) as pg:
        url = PG_URL.replace("127.0.0.1:5432", f"127.0.0.1:{pg.port}")
        assert url != PG_URL, f"SEQREC_PG_URL {PG_URL} is not on 127.0.0.1:5432"
        extra = f'[events]\nurl = "{url}"\n'
        ws = make_pg_redis_workspace(tmp_path / "ws", unique_name("op", request), extra)
        try:
            yield ws, pg
        finally:
            if not pg.is_open:
                pg.start()
            drop_pg_redis_workspace(ws)


def _direct(ws: Workspace) -> Engine:
    """The workspace's schema, read straight from PostgreSQL (not through the proxy)."""
    return create_engine(
        PG_URL, connect_args={"options": f"-csearch_path={ws.config.events.pg_schema}"}
    )


def _imports(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(imports)).scalar_one())


def outage_problems(
    err: BaseException | None, direct: Engine, base: list[Any], n_imports: int
) -> list[str]:
    """An import the database dropped out of: a clear SeqrecError, and nothing of it kept."""
    problems = []
    if err is None:
        problems.append("the import succeeded although the database was unreachable")
    elif not isinstance(err, SeqrecError):
        problems.append(f"a raw {type(err).__name__}: {err}".splitlines()[0])
    elif "database" not in str(err):
        problems.append(f"the error does not say the database failed: {err}")
    got = event_rows(direct)
    if got != base:
        problems.append(f"{len(got) - len(base)} events of the failed import are visible")
    if _imports(direct) != n_imports:
        problems.append("the failed import was recorded in the imports table")
    return problems


def test_postgres_unreachable_during_import_keeps_nothing_and_a_rerun_imports_everything_once(
    proxied: tuple[Workspace, TcpProxy],
    files: dict[str, Any],
    outcome: Callable[..., None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ws, pg = proxied
    direct = _direct(ws)
    try:
        import_file(ws.engine, files["small"])
        base, n_imports = event_rows(direct), _imports(direct)
        problems = []
        for case in ("refused", "cut"):
            if case == "refused":
                pg.close()
            else:
                pg.cut_after = pg.bytes_up + CUT_AFTER
            err: BaseException | None = None
            try:
                import_file(ws.engine, files["big"], batch_size=1_000)
            except BaseException as exc:
                err = exc
            if case == "cut":
                assert not pg.is_open, "the proxy never cut: the file went through whole"
            problems += [f"{case}: {p}" for p in outage_problems(err, direct, base, n_imports)]
            noise = [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")]
            problems += [f"{case}: psycopg logged {m.splitlines()[0]!r}" for m in noise]
            caplog.clear()
            pg.start()  # the database is back
        assert problems == []
        rep = import_file(ws.engine, files["big"], batch_size=1_000)  # same process
        assert import_problems(event_rows(direct), files["want"]) == []
        assert _imports(direct) == n_imports + 1
    finally:
        direct.dispose()
    outcome(
        "PostgreSQL unreachable during events import (refused; dropped mid-COPY)",
        "store unreachable",
        cases=2,
        result=f"clear error, nothing of the import visible; rerun imported all "
        f"{rep.rows_added:,} events once",
        data_lost="none",
    )


def test_the_outage_check_catches_an_import_committing_every_batch(
    proxied: tuple[Workspace, TcpProxy], files: dict[str, Any], outcome: Callable[..., None]
) -> None:
    """An import that commits every 1,000 rows (each batch a file and an import of its own),
    the connection dropped part-way: the batches before the drop stay."""
    ws, pg = proxied

    def per_batch(path: Path, batch: int = 1_000) -> None:
        head, *rows = path.read_text().splitlines(keepends=True)
        for i in range(0, len(rows), batch):
            part = path.parent / f"{path.stem}-{i // batch}.csv"
            part.write_text(head + "".join(rows[i : i + batch]))
            import_file(ws.engine, part)

    direct = _direct(ws)
    try:
        import_file(ws.engine, files["small"])
        base, n_imports = event_rows(direct), _imports(direct)
        pg.cut_after = pg.bytes_up + CUT_AFTER
        err: BaseException | None = None
        try:
            per_batch(files["big"])
        except BaseException as exc:
            err = exc
        assert not pg.is_open, "the proxy never cut: the file went through whole"
        pg.start()
        problems = outage_problems(err, direct, base, n_imports)
    finally:
        direct.dispose()
    assert len(problems) == 2 and "events of the failed import are visible" in problems[0], problems
    outcome(
        "broken variant: events import committing every 1,000 rows, dropped mid-COPY",
        "store unreachable",
        cases=1,
        result=f"the outage check catches it ({problems[0]})",
        data_lost="none",
    )
