"""One job at a time: a workspace-wide lock that the operating system or the database releases
when the holder dies.

- postgres-redis: a PostgreSQL session advisory lock on a dedicated connection held for the
  whole job (the server drops it with the connection when the process dies). The key is derived
  from the workspace's schema and the job name, so workspaces sharing a database do not block
  each other.
- embedded: ``filelock.FileLock`` (``flock``) on ``<workspace>/.locks/<name>.lock``, released
  by the kernel when the process dies.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from seqrec.config import Workspace
from seqrec.errors import EX_TEMPFAIL, SeqrecError, StoreUnavailable, driver_reason


def _busy(ws: Workspace, name: str, waited: float | None) -> SeqrecError:
    """The error for a lock held by someone else, naming the run that holds it."""
    holder = "another process"
    try:
        from seqrec.runs import running_run

        run = running_run(ws, name) if name in ("train", "retrain") else None
    except SeqrecError:
        run = None
    if run is not None:
        holder = (
            f"run {run['id']} (host {run['host']}, pid {run['pid']}, since {run['started_at']}, "
            f"step {run['step']})"
        )
    msg = f"another {name} holds the lock: {holder}"
    if waited:
        msg += f"; still held after waiting {waited:g} s"
    return SeqrecError(
        msg,
        where=str(ws.root),
        hint=f"rerun with --wait [SECONDS] to wait for it (`seqrec runs` shows the {name} runs)",
        exit_code=EX_TEMPFAIL,
    )


def _announce(ws: Workspace, name: str, wait: float) -> None:
    how_long = "until it is free" if math.isinf(wait) else f"up to {wait:g} s"
    print(f"waiting for the {name} lock of {ws.root} ({how_long})", file=sys.stderr, flush=True)


def lock_key(ws: Workspace, name: str) -> int:
    """The 64-bit PostgreSQL advisory lock key of job ``name`` in this workspace."""
    digest = hashlib.sha256(f"seqrec:{ws.config.events.pg_schema}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def job_lock(ws: Workspace, name: str = "retrain", wait: float | None = None) -> Iterator[None]:
    """Hold the workspace's ``name`` lock for the block.

    ``wait``: None or 0 fails at once when another process holds it (a SeqrecError with exit
    code 75, EX_TEMPFAIL, naming the holder); a number of seconds waits that long at most;
    ``math.inf`` waits until it is free.
    """
    wait = wait or 0.0
    if wait < 0:
        raise SeqrecError(f"--wait must be >= 0 seconds, got {wait:g}")
    if ws.uses_redis:  # PostgreSQL events: an advisory lock
        with _pg_lock(ws, name, wait):
            yield
    else:
        with _file_lock(ws, name, wait):
            yield


@contextmanager
def _file_lock(ws: Workspace, name: str, wait: float) -> Iterator[None]:
    from filelock import FileLock, Timeout

    path = ws.path(".locks") / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            raise _busy(ws, name, None) from None
        _announce(ws, name, wait)
        try:
            lock.acquire(timeout=-1 if math.isinf(wait) else wait)
        except Timeout:
            raise _busy(ws, name, wait) from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _pg_lock(ws: Workspace, name: str, wait: float) -> Iterator[None]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.pool import NullPool

    key = lock_key(ws, name)
    engine = create_engine(ws.events_url, poolclass=NullPool)  # this connection is the lock
    try:
        try:
            conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except DBAPIError as exc:
            raise StoreUnavailable(
                f"events database unreachable: {driver_reason(exc)}",
                where=engine.url.render_as_string(),
            ) from None
        try:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            if not got:
                if not wait:
                    raise _busy(ws, name, None)
                _announce(ws, name, wait)
                ms = 0 if math.isinf(wait) else max(1, int(wait * 1000))
                conn.execute(text(f"SET lock_timeout = {ms}"))  # an int: no injection
                try:
                    conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
                except DBAPIError:  # lock_not_available after lock_timeout
                    raise _busy(ws, name, wait) from None
                conn.execute(text("SET lock_timeout = 0"))
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            conn.close()
    finally:
        engine.dispose()
