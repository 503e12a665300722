"""The production pointer: which model a selector such as ``stage=production`` names.

The ``model_labels`` table (one row per selector, in the events database) is the source of
truth. :func:`promote` moves it in one transaction together with its ``label_changes`` record
(and the run's decision), so there is never a moment with zero or two production models; only
after the commit are the BentoML labels mirrored (the new model gets ``key=value``, any other
carrying it gets ``stage=archived``), best effort: labels left stale by a crash in between are
repaired by the next retrain (:func:`repair_labels`) or promotion, and readers follow the
pointer anyway.

Workspaces from before the pointer have no row: :func:`production_tag` then falls back to the
newest stored model carrying the BentoML label, as seqrec always did.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError

from seqrec.config import Workspace
from seqrec.errors import SeqrecError, StoreUnavailable, log_caught
from seqrec.faults import kill_point
from seqrec.labels import one_selector
from seqrec.runs import model_labels, now, record_label_change, tables, training_runs

log = logging.getLogger("seqrec.promotion")

#: the selector that always goes through the pointer
PRODUCTION = "stage=production"

_MISSING = object()


def _normal(selector: str) -> str:
    key, value = one_selector(selector)
    return f"{key}={value}"


def pointer(ws: Workspace, selector: str) -> Any:
    """The pointer's tag for ``selector`` (None: explicitly no model), or ``_MISSING`` when it
    has no row (or no table yet). One indexed query. A database that does not answer is a
    :class:`StoreUnavailable`, never ``_MISSING``: falling back to the BentoML labels then
    would follow a mirror that may be stale (a crash between pointer and mirror)."""
    from seqrec.runs import engine

    eng = engine(ws)
    query = select(model_labels.c.tag).where(model_labels.c.selector == _normal(selector))
    try:
        with eng.connect() as conn:
            try:
                row = conn.execute(query).first()
            except DBAPIError as exc:
                if exc.connection_invalidated:  # lost while asking: the database is down
                    raise
                log.debug("no promotion pointer for %s: %s", selector, exc)  # no table yet
                return _MISSING
    except DBAPIError as exc:  # cannot connect, or the connection was lost
        raise StoreUnavailable(
            f"events database unreachable, cannot read the pointer {selector}: "
            + (str(exc.orig).splitlines() or ["?"])[0],
            where=eng.url.render_as_string(),
            hint="a serving model stays until the database answers again",
        ) from None
    return _MISSING if row is None else row.tag


def has_pointer(ws: Workspace, selector: str) -> bool:
    """Whether ``selector`` goes through the pointer: stage=production always, any other
    selector once it has a row."""
    return _normal(selector) == PRODUCTION or pointer(ws, selector) is not _MISSING


def labelled(ws: Workspace, selector: str) -> str | None:
    """The newest stored model carrying the BentoML label ``selector`` (a model store scan)."""
    from seqrec import model_store

    key, value = one_selector(selector)
    for row in model_store.list_models(ws.model_store):  # newest first
        if row["labels"].get(key) == value:
            return str(row["tag"])
    return None


def production_tag(ws: Workspace, selector: str = PRODUCTION) -> str | None:
    """The model ``selector`` names: the pointer's, else (no row) the newest labelled one."""
    tag = pointer(ws, selector)
    return labelled(ws, selector) if tag is _MISSING else tag


def _move(
    ws: Workspace, selector: str, tag: str | None, run_id: int | None, reason: str
) -> str | None:
    """Point ``selector`` at ``tag`` in one transaction, recorded; returns the old tag."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    selector = _normal(selector)
    eng = tables(ws)
    fallback = labelled(ws, selector)  # the old model when the pointer has no row yet
    insert_ = pg_insert if eng.dialect.name == "postgresql" else sqlite_insert
    with eng.begin() as conn:
        row = conn.execute(
            select(model_labels.c.tag).where(model_labels.c.selector == selector).with_for_update()
        ).first()
        old = fallback if row is None else row.tag
        values = {"selector": selector, "tag": tag, "updated_at": now(), "run_id": run_id}
        stmt = insert_(model_labels).values(**values)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[model_labels.c.selector],
                set_={k: v for k, v in values.items() if k != "selector"},
            )
        )
        record_label_change(conn, selector, old, tag, run_id=run_id, reason=reason)
        if run_id is not None and tag is not None:
            conn.execute(
                update(training_runs)
                .where(training_runs.c.id == run_id)
                .values(decision="promoted")
            )
    return old


def mirror_labels(ws: Workspace, selector: str, tag: str | None) -> None:
    """Make BentoML's labels agree with the pointer: ``tag`` carries ``selector`` and no other
    model does (``stage`` becomes ``archived``, another key is removed). Best effort."""
    from seqrec import model_store
    from seqrec.labels import set_labels

    key, value = one_selector(selector)
    try:
        if tag is not None:
            set_labels(ws, tag, {key: value})
        for row in model_store.list_models(ws.model_store):
            if row["tag"] != tag and row["labels"].get(key) == value:
                set_labels(ws, row["tag"], {key: "archived" if key == "stage" else ""})
    except Exception as exc:  # the pointer is the truth; the next promotion repairs labels
        from bentoml.exceptions import BentoMLException

        expected = (SeqrecError, OSError, BentoMLException)  # model gone, damaged, unwritable
        log_caught(log, exc, expected, "BentoML labels not mirrored for %s -> %s", selector, tag)


def repair_labels(ws: Workspace, selector: str = PRODUCTION) -> bool:
    """Mirror the pointer's labels again where they disagree with it (a process killed between
    a promotion's commit and its mirroring leaves them stale); returns whether it had to."""
    from seqrec import model_store

    tag = pointer(ws, selector)
    if tag is _MISSING:
        return False
    key, value = one_selector(selector)
    carrying = [
        r["tag"] for r in model_store.list_models(ws.model_store) if r["labels"].get(key) == value
    ]
    if carrying == ([] if tag is None else [tag]):
        return False
    log.warning("BentoML labels for %s disagreed with the pointer (%s): repaired", selector, tag)
    mirror_labels(ws, selector, tag)
    return True


def promote(
    ws: Workspace,
    tag: str,
    selector: str = PRODUCTION,
    *,
    run_id: int | None = None,
    reason: str = "",
) -> str | None:
    """Make ``tag`` the model ``selector`` names; returns the one it named before.

    One transaction moves the pointer, records the change and (with ``run_id``) the run's
    decision; the BentoML labels are mirrored after the commit."""
    from seqrec import model_store

    tag = model_store.locate(tag, ws.model_store)[0]  # it must exist: fail before moving
    old = _move(ws, selector, tag, run_id, reason)
    kill_point("promote.mirror")
    mirror_labels(ws, selector, tag)
    return old


def withdraw(
    ws: Workspace, selector: str, *, run_id: int | None = None, reason: str = ""
) -> str | None:
    """Point ``selector`` at no model (recorded); returns the one it named before."""
    old = _move(ws, selector, None, run_id, reason)
    mirror_labels(ws, selector, None)
    return old


def pointers_to(ws: Workspace, tag: str) -> list[str]:
    """The selectors whose pointer names ``tag``."""
    try:
        with tables(ws).connect() as conn:
            rows = conn.execute(
                select(model_labels.c.selector).where(model_labels.c.tag == tag)
            ).all()
    except DBAPIError:
        return []
    return [str(r.selector) for r in rows]
