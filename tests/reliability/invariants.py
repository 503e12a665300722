"""What must hold after a ``seqrec`` command was killed and run again, checked on the real stores.

Each ``*_problems`` function returns a list of readable problems (empty: the invariant holds),
so a scenario asserts ``== []`` and its broken-variant twin asserts the same function reports
what the broken code did. :func:`seqrec` runs the real command line, optionally killed at a
kill point (:mod:`seqrec.faults`); :func:`workspace` makes a fresh workspace of either profile.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from seqrec.config import Workspace
from seqrec.faults import KILL_ENV

SEQREC = str(Path(sys.executable).parent / "seqrec")
#: how many examples a problem message shows
SHOWN = 3
EventRow = tuple[str, str, str, int, float | None]


# -- running the command line ------------------------------------------------------------------


def run(
    argv: Sequence[str], *, kill_at: str | None = None, plugins: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in a fresh process; with ``kill_at`` (``SEQREC_KILL_AT``), assert it died by
    SIGKILL there, else assert it succeeded. ``plugins``: the entry-point plugins it loads
    (``SEQREC_LOAD_PLUGINS``; none by default: the built-in models start much faster)."""
    env = {k: v for k, v in os.environ.items() if k not in ("SEQREC_PROJECT", KILL_ENV)}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", SEQREC_LOAD_PLUGINS=plugins)
    if kill_at is not None:
        env[KILL_ENV] = kill_at
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, env=env, timeout=900, check=False
    )
    what = " ".join(argv[:3]) + (f" (SEQREC_KILL_AT={kill_at})" if kill_at else "")
    if kill_at is not None:
        assert proc.returncode == -signal.SIGKILL, (
            f"{what} was not killed at its kill point: exit {proc.returncode}\n"
            f"{proc.stderr[-3000:]}"
        )
    else:
        assert proc.returncode == 0, f"{what} failed: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc


def seqrec(
    *args: str, kill_at: str | None = None, plugins: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run the ``seqrec`` command line (see :func:`run`)."""
    return run([SEQREC, *args], kill_at=kill_at, plugins=plugins)


@contextmanager
def workspace(profile: str, root: Path, name: str, extra: str = "") -> Iterator[Workspace]:
    """A fresh workspace of ``profile``; a postgres-redis one in its own schema and Redis key
    prefix ``name``, dropped afterwards."""
    from seqrec.testing import (
        drop_pg_redis_workspace,
        make_pg_redis_workspace,
        make_workspace,
        require_services,
    )

    if profile == "embedded":
        yield make_workspace(root, extra)
        return
    require_services()
    ws = make_pg_redis_workspace(root, name, extra)
    try:
        yield ws
    finally:
        drop_pg_redis_workspace(ws)


def _examples(items: Iterable[Any]) -> str:
    shown = list(items)[:SHOWN]
    return ", ".join(repr(x) for x in shown)


# -- events ------------------------------------------------------------------------------------


def event_rows(engine: Engine) -> list[EventRow]:
    """Every event as (user, item id, event type, ts_ms, value), in event id order."""
    from seqrec.data.schema import event_types, events, items

    query = (
        select(
            events.c.user_id, items.c.item_id, event_types.c.name, events.c.ts_ms, events.c.value
        )
        .join(items, items.c.item_idx == events.c.item_idx)
        .join(event_types, event_types.c.type_idx == events.c.type_idx)
        .order_by(events.c.event_id)
    )
    with engine.connect() as conn:
        return [(str(u), str(i), str(t), int(ts), v) for u, i, t, ts, v in conn.execute(query)]


def import_problems(got: Sequence[EventRow], want: Sequence[EventRow]) -> list[str]:
    """Events duplicated, lost, unexpected or out of import order, against a clean import."""
    have, need = Counter(got), Counter(want)
    problems = []
    extra, missing = have - need, need - have
    dup = Counter({k: n for k, n in extra.items() if k in need})
    alien = extra - dup
    if dup:
        problems.append(f"{sum(dup.values())} events duplicated, e.g. {_examples(dup)}")
    if missing:
        problems.append(f"{sum(missing.values())} events lost, e.g. {_examples(missing)}")
    if alien:
        problems.append(f"{sum(alien.values())} events not in the file, e.g. {_examples(alien)}")
    if not problems and list(got) != list(want):
        at = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
        problems.append(f"events out of import order from event {at}: {got[at]} vs {want[at]}")
    return problems


# -- features ----------------------------------------------------------------------------------

#: a feature row as compared: user, row time (µs), the lists, the scalars
FeatureRow = tuple[Any, ...]
LISTS = ("item_seq", "type_seq", "ts_seq")
SCALARS = ("seq_len", "n_events", "n_purchases", "last_gap_s")


def _rows(df: Any, time_us: Sequence[int]) -> list[FeatureRow]:
    users = df["user_id"].tolist()
    lists = [df[c].tolist() for c in LISTS]
    scalars = [df[c].tolist() for c in SCALARS]
    return [
        (
            str(users[i]),
            int(time_us[i]),
            *(tuple(int(x) for x in col[i]) for col in lists),
            *(int(col[i]) for col in scalars),
        )
        for i in range(len(users))
    ]


def truth_rows(ws: Workspace) -> list[FeatureRow]:
    """Every feature row, computed from scratch in SQL from the events (the offline truth)."""
    from seqrec.features.sql import compute_feature_rows

    df = compute_feature_rows(ws.engine, ws.config.features.max_len)
    return sorted(_rows(df, df["order_us"].tolist()))


def offline_rows(ws: Workspace) -> list[FeatureRow]:
    """The offline feature rows Feast reads: the Parquet snapshot (embedded) or the PostgreSQL
    feature table (postgres-redis)."""
    import pandas as pd

    if ws.is_postgres_redis:
        from seqrec.features.pg import TABLE

        with ws.engine.connect() as conn:
            df = pd.read_sql_query(f"SELECT * FROM {TABLE}", conn)
        return sorted(_rows(df, df["order_us"].tolist()))
    from seqrec.features.definitions import SNAPSHOT_FILE

    df = pd.read_parquet(ws.snapshot_dir / SNAPSHOT_FILE)
    epoch = pd.Timestamp(0, tz="UTC")
    us = (df["event_timestamp"] - epoch) // pd.Timedelta(microseconds=1)
    return sorted(_rows(df, us.tolist()))


def diff_rows(got: list[FeatureRow], want: list[FeatureRow], what: str) -> list[str]:
    """Rows missing from ``got``, unexpected in it, or different (by user and time)."""
    have, need = Counter(got), Counter(want)
    problems = []
    if need - have:
        problems.append(
            f"{what}: {sum((need - have).values())} rows missing or wrong, e.g. "
            f"{_examples(sorted(need - have))}"
        )
    if have - need:
        problems.append(
            f"{what}: {sum((have - need).values())} rows not in the truth, e.g. "
            f"{_examples(sorted(have - need))}"
        )
    return problems


def offline_problems(ws: Workspace) -> list[str]:
    """The offline features equal the SQL truth, and their watermark covers every event."""
    from seqrec.features.snapshots import events_state, read_snapshot_info

    problems = diff_rows(offline_rows(ws), truth_rows(ws), "offline features")
    n_events, max_id = events_state(ws.engine)
    if ws.is_postgres_redis:
        from seqrec.features.pg import feature_state

        state = feature_state(ws.engine) or {}
        if state.get("event_id") != max_id:
            problems.append(f"feature watermark {state.get('event_id')} != max event id {max_id}")
    else:
        info = read_snapshot_info(ws)
        if info is None or (info.events, info.max_event_id) != (n_events, max_id):
            problems.append(f"snapshot.json {info} does not describe {n_events} events")
    return problems


def online_problems(ws: Workspace, chunk: int = 1_000) -> list[str]:
    """Every user's online row equals the newest row of the SQL truth."""
    from seqrec.features.readers import online_reader
    from seqrec.testing import latest_feature_rows

    latest = latest_feature_rows(ws)
    want = {r[0]: r[2:] for r in _rows(latest, [0] * len(latest))}
    reader = online_reader(ws)
    users = sorted(want)
    missing, stale = [], []
    for start in range(0, len(users), chunk):
        part = users[start : start + chunk]
        got = reader.read(part)
        for i, user in enumerate(part):
            if got[LISTS[0]][i] is None:
                missing.append(user)
                continue
            row = (
                *(tuple(int(x) for x in got[c][i]) for c in LISTS),
                *(int(got[c][i]) for c in SCALARS),
            )
            if row != want[user]:
                stale.append(user)
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {len(users)} users not online, e.g. {missing[:SHOWN]}")
    if stale:
        problems.append(
            f"{len(stale)} of {len(users)} users' online rows differ from their newest "
            f"offline row, e.g. {stale[:SHOWN]}"
        )
    return problems


# -- the model store ---------------------------------------------------------------------------


def store_problems(store: Path) -> list[str]:
    """The store lists, every model directory in it loads whole, and ``latest`` of each name
    names one that does."""
    from seqrec import model_store

    problems = []
    try:
        listed = {r["tag"] for r in model_store.list_models(store)}
    except Exception as exc:
        problems.append(f"the model store cannot be listed: {type(exc).__name__}: {exc}")
        listed = set()
    models = store / "models"
    on_disk = {
        f"{d.parent.name}:{d.name}"
        for d in (models.glob("*/*") if models.is_dir() else [])
        if d.is_dir()
    }
    for tag in sorted(on_disk):
        try:
            model_store.load(tag, store=store)
        except Exception as exc:
            problems.append(f"{tag} is in the store but does not load: {exc}".splitlines()[0])
    if listed - on_disk:
        problems.append(f"listed but not on disk: {sorted(listed - on_disk)}")
    for name in sorted({t.split(":")[0] for t in on_disk}):
        try:
            model_store.load(name, store=store)
        except Exception as exc:
            problems.append(f"{name}:latest does not load: {exc}".splitlines()[0])
    return problems


# -- training ----------------------------------------------------------------------------------


def weights_problems(got: dict[str, Any], want: dict[str, Any], what: str = "weights") -> list[str]:
    """Tensors missing from ``got``, unexpected in it, or not exactly equal to ``want``'s."""
    import torch

    problems = []
    if got.keys() != want.keys():
        problems.append(
            f"{what}: tensors {sorted(got.keys() ^ want.keys())[:SHOWN]} in one but not the other"
        )
    differ = sorted(k for k in got.keys() & want.keys() if not torch.equal(got[k], want[k]))
    if differ:
        problems.append(
            f"{what}: {len(differ)} of {len(want)} tensors differ, e.g. {differ[:SHOWN]}"
        )
    return problems


# -- production and the run history ------------------------------------------------------------


def production_problems(ws: Workspace, selector: str = "stage=production") -> list[str]:
    """Exactly one production model: the pointer names one, it loads, and it is the only
    model carrying the label in the model store."""
    from seqrec import model_store
    from seqrec.promotion import production_tag

    tag = production_tag(ws, selector)
    if tag is None:
        return ["no production model"]
    problems = []
    try:
        model_store.load(tag, store=ws.model_store)
    except Exception as exc:
        problems.append(f"production model {tag} does not load: {exc}".splitlines()[0])
    key, _, value = selector.partition("=")
    labelled = [
        r["tag"] for r in model_store.list_models(ws.model_store) if r["labels"].get(key) == value
    ]
    if labelled != [tag]:
        problems.append(
            f"the pointer names {tag} but the models labelled {selector} are {labelled}"
        )
    return problems


def crashed_run_problems(ws: Workspace, run_id: int, step: str) -> list[str]:
    """Run ``run_id`` shows as crashed during ``step``."""
    from seqrec.runs import get_run

    run = get_run(ws, run_id)
    if run["status"] != "crashed" or run["step"] != step:
        return [f"run {run_id} is {run['status']} at step {run['step']}, not crashed at {step}"]
    if f"died during step {step}" not in (run["error"] or ""):
        return [f"run {run_id} says {run['error']!r}"]
    return []


# -- setup -------------------------------------------------------------------------------------


def new_events(ws: Workspace, n_users: int, source: str) -> int:
    """Events for ``n_users`` existing users: each gets one after every event so far (every
    fifth a new item), every third also a late-arriving one (an old timestamp, imported now);
    returns the events added."""
    from sqlalchemy import func

    from seqrec.data.importers import RawEvent
    from seqrec.data.schema import events
    from seqrec.testing import import_rows

    with ws.engine.connect() as conn:
        first, last = conn.execute(select(func.min(events.c.ts_ms), func.max(events.c.ts_ms))).one()
        query = select(events.c.user_id).distinct().order_by(events.c.user_id).limit(n_users)
        users = list(conn.execute(query).scalars())
    rows = []
    for i, user in enumerate(users):
        item = f"{source}-new-{i % 7}" if i % 5 == 0 else f"i{1 + i % 20:05d}"
        rows.append(RawEvent(user, item, int(last) + 1_000 * (i + 1), "view", None))
        if i % 3 == 0:
            rows.append(RawEvent(user, f"i{1 + i % 11:05d}", int(first) - 1_000 * i, "cart", None))
    return import_rows(ws, rows, source)
