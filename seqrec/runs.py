"""Run history: one row per ``seqrec train`` and ``seqrec retrain`` in the events database.

Tables (SQLAlchemy Core, created on first use in the workspace's events database; on PostgreSQL
in the workspace's schema, like the events): ``training_runs`` (what a run did, step by step),
``label_changes`` (every label move, with the run that made it) and ``model_labels`` (the
production pointer: :mod:`seqrec.promotion` owns it).

A run records the step it begins (``materialize``, ``train``, ``evaluate``, ``promote``, then
``done``). A run left ``running`` by a process that died (same host, pid gone) is stored and
shown as ``crashed``, at the step it had begun. Testing hook: ``SEQREC_KILL_AT=<step>`` makes
the process SIGKILL itself right after it recorded that step as begun (:mod:`seqrec.faults`).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError

from seqrec.config import Workspace
from seqrec.data.schema import ensure_pg_schema
from seqrec.errors import SeqrecError
from seqrec.faults import kill_point

KINDS = ("train", "retrain")
STATUSES = ("running", "succeeded", "failed", "crashed")
STEPS = ("materialize", "train", "evaluate", "promote", "done")
DECISIONS = ("promoted", "kept", "rejected", "not-promoted")
#: columns stored as JSON text
JSON_FIELDS = frozenset(
    {"config", "candidate_metrics", "production_metrics", "baseline_metrics", "drift", "details"}
)

log = logging.getLogger("seqrec.runs")

metadata = MetaData()

training_runs = Table(
    "training_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("step", String(16), nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("model", String(128), nullable=True),
    Column("task", String(32), nullable=True),
    Column("label", String(128), nullable=True),
    Column("preset", String(128), nullable=True),
    Column("seed", Integer, nullable=True),
    Column("config", Text, nullable=True),
    Column("train_cutoff", String(40), nullable=True),
    Column("eval_cutoff", String(40), nullable=True),
    Column("events_seen", Integer, nullable=True),
    Column("users_seen", Integer, nullable=True),
    Column("vocab_before", Integer, nullable=True),
    Column("vocab_after", Integer, nullable=True),
    Column("duration_s", Float, nullable=True),
    Column("peak_rss_mb", Float, nullable=True),
    Column("candidate_tag", String(255), nullable=True),
    Column("production_tag", String(255), nullable=True),
    Column("metric", String(64), nullable=True),
    Column("candidate_metrics", Text, nullable=True),
    Column("production_metrics", Text, nullable=True),
    Column("baseline_metrics", Text, nullable=True),
    Column("decision", String(16), nullable=True),
    Column("reason", Text, nullable=True),
    Column("drift", Text, nullable=True),
    Column("drift_flagged", Boolean, nullable=True),
    Column("error", Text, nullable=True),
    Column("details", Text, nullable=True),
    Index("ix_training_runs_status", "status", "kind"),
)

label_changes = Table(
    "label_changes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("selector", String(255), nullable=False),
    Column("old_tag", String(255), nullable=True),
    Column("new_tag", String(255), nullable=True),
    Column("reason", Text, nullable=True),
    Index("ix_label_changes_run", "run_id"),
)

model_labels = Table(
    "model_labels",
    metadata,
    Column("selector", String(255), primary_key=True),
    Column("tag", String(255), nullable=True),  # NULL: explicitly no model
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("run_id", Integer, nullable=True),
)

_FIELDS = frozenset(c.name for c in training_runs.columns) - {"id", "kind", "started_at"}
_READY: set[str] = set()


def now() -> datetime:
    return datetime.now(UTC)


def engine(ws: Workspace) -> Engine:
    """The workspace's events database engine (:attr:`Workspace.engine`, shared)."""
    return ws.engine


def tables(ws: Workspace) -> Engine:
    """:func:`engine`, with the run-history tables created when missing (once per process)."""
    eng = engine(ws)
    if ws.events_url not in _READY:
        ensure_pg_schema(eng)
        try:
            metadata.create_all(eng)
        except DBAPIError as exc:  # the database down, or refusing to create tables
            raise SeqrecError(
                f"cannot create the run-history tables: {exc}".splitlines()[0],
                where=eng.url.render_as_string(),
                hint="check the events database (seqrec.toml [events] url) is reachable",
            ) from None
        _READY.add(ws.events_url)
    return eng


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _values(fields: dict[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - _FIELDS
    if unknown:
        raise TypeError(f"unknown run field(s) {sorted(unknown)}; known: {sorted(_FIELDS)}")
    out = {}
    for key, value in fields.items():
        if key in JSON_FIELDS and value is not None:
            value = json.dumps(value, sort_keys=True, default=_jsonable)
        out[key] = value
    return out


def process_alive(host: str | None, pid: int | None) -> bool:
    """Whether process ``pid`` of ``host`` still runs (True for another host's: not ours to
    judge)."""
    if host != socket.gethostname() or pid is None:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (Linux: KiB), plus peak CUDA memory."""
    mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            mb += torch.cuda.max_memory_allocated() / 2**20
    except Exception:  # pragma: no cover - no torch/cuda: RSS alone
        pass
    return round(mb, 1)


def start_run(ws: Workspace, kind: str, **fields: Any) -> int:
    """Record a run of ``kind`` ('train' or 'retrain') begun by this process; returns its id."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    eng = tables(ws)
    mark_crashed(ws)
    values = {"status": "running", "host": socket.gethostname(), "pid": os.getpid(), **fields}
    with eng.begin() as conn:
        res = conn.execute(
            insert(training_runs).values(kind=kind, started_at=now(), **_values(values))
        )
        key = res.inserted_primary_key
        assert key is not None
        return int(key[0])


def update_run(ws: Workspace, run_id: int, **fields: Any) -> None:
    """Set fields of run ``run_id`` (any column but id, kind and started_at)."""
    if not fields:
        return
    with tables(ws).begin() as conn:
        conn.execute(
            update(training_runs).where(training_runs.c.id == run_id).values(**_values(fields))
        )


def begin_step(ws: Workspace, run_id: int, step: str) -> None:
    """Record that run ``run_id`` begins ``step`` (then honour the SEQREC_KILL_AT hook)."""
    if step not in STEPS:
        raise ValueError(f"step must be one of {STEPS}, got {step!r}")
    update_run(ws, run_id, step=step)
    kill_point(step)  # testing hook: a real, unclean death (seqrec.faults)


def finish_run(ws: Workspace, run_id: int, status: str, **fields: Any) -> None:
    """Close run ``run_id`` with ``status``; duration and peak memory are filled in."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    eng = tables(ws)
    with eng.connect() as conn:
        started = conn.execute(
            select(training_runs.c.started_at).where(training_runs.c.id == run_id)
        ).scalar_one()
    end = now()
    fields.setdefault("duration_s", round((end - _utc(started)).total_seconds(), 1))
    fields.setdefault("peak_rss_mb", peak_rss_mb())
    if status == "succeeded":
        fields.setdefault("step", "done")
    update_run(ws, run_id, status=status, finished_at=end, **fields)


def fail_run(ws: Workspace, run_id: int, exc: BaseException) -> None:
    """Close run ``run_id`` as failed with ``exc`` as its error (quietly: the database may be
    what failed, and the error itself says more)."""
    try:
        finish_run(ws, run_id, "failed", error=str(exc) or type(exc).__name__)
    except Exception:
        log.warning("run %s not recorded as failed", run_id, exc_info=True)


def mark_crashed(ws: Workspace, *, kinds: tuple[str, ...] = ()) -> list[int]:
    """Runs left 'running' by dead processes become 'crashed'; returns their ids.

    Dead: same host and the pid is gone. Runs of ``kinds`` count as dead whatever their host:
    the caller holds the job lock of those kinds, so none of them can still be running.
    """
    eng = tables(ws)
    c = training_runs.c
    with eng.connect() as conn:
        rows = conn.execute(
            select(c.id, c.kind, c.host, c.pid, c.step).where(c.status == "running")
        ).all()
    dead = [r for r in rows if r.kind in kinds or not process_alive(r.host, r.pid)]
    with eng.begin() as conn:
        for r in dead:
            conn.execute(
                update(training_runs)
                .where((c.id == r.id) & (c.status == "running"))
                .values(
                    status="crashed",
                    error=f"process {r.pid} on {r.host} died during step {r.step or '?'}",
                )
            )
    return [int(r.id) for r in dead]


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # SQLite keeps no zone


def _row(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    for key, value in out.items():
        if isinstance(value, datetime):
            out[key] = _utc(value).isoformat(timespec="seconds")
        elif key in JSON_FIELDS and isinstance(value, str):
            out[key] = json.loads(value)
    return out


def list_runs(ws: Workspace, limit: int = 50) -> list[dict[str, Any]]:
    """The newest ``limit`` runs, newest first (dead 'running' ones marked crashed first)."""
    mark_crashed(ws)
    with tables(ws).connect() as conn:
        rows = conn.execute(
            select(training_runs).order_by(training_runs.c.id.desc()).limit(limit)
        ).all()
    return [_row(r) for r in rows]


def find_runs(
    ws: Workspace, *, kind: str | None = None, status: str | None = None
) -> list[dict[str, Any]]:
    """Runs of ``kind`` with ``status`` (None: any), oldest first."""
    query = select(training_runs).order_by(training_runs.c.id)
    if kind is not None:
        query = query.where(training_runs.c.kind == kind)
    if status is not None:
        query = query.where(training_runs.c.status == status)
    with tables(ws).connect() as conn:
        return [_row(r) for r in conn.execute(query).all()]


def get_run(ws: Workspace, run_id: int) -> dict[str, Any]:
    """Everything recorded about run ``run_id``."""
    mark_crashed(ws)
    with tables(ws).connect() as conn:
        row = conn.execute(select(training_runs).where(training_runs.c.id == run_id)).first()
    if row is None:
        raise SeqrecError(f"no run with id {run_id}", hint="`seqrec runs` lists the recorded runs")
    return _row(row)


def running_run(ws: Workspace, kind: str) -> dict[str, Any] | None:
    """The newest run of ``kind`` still marked running, if any."""
    c = training_runs.c
    with tables(ws).connect() as conn:
        row = conn.execute(
            select(c.id, c.host, c.pid, c.started_at, c.step)
            .where((c.kind == kind) & (c.status == "running"))
            .order_by(c.id.desc())
            .limit(1)
        ).first()
    return None if row is None else _row(row)


def record_label_change(
    conn: Any,
    selector: str,
    old_tag: str | None,
    new_tag: str | None,
    *,
    run_id: int | None = None,
    reason: str = "",
) -> None:
    """Insert a ``label_changes`` row on ``conn`` (inside the caller's transaction)."""
    conn.execute(
        insert(label_changes).values(
            run_id=run_id,
            at=now(),
            selector=selector,
            old_tag=old_tag,
            new_tag=new_tag,
            reason=reason,
        )
    )


def label_history(ws: Workspace, run_id: int | None = None) -> list[dict[str, Any]]:
    """Label changes, oldest first (only those made by run ``run_id`` when given)."""
    query = select(label_changes).order_by(label_changes.c.id)
    if run_id is not None:
        query = query.where(label_changes.c.run_id == run_id)
    with tables(ws).connect() as conn:
        return [_row(r) for r in conn.execute(query).all()]
