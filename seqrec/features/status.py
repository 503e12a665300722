"""``seqrec features status``: offline features, registry and online store at a glance."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from seqrec.config import Workspace
from seqrec.data.schema import events
from seqrec.errors import SeqrecError
from seqrec.features.definitions import VIEW_NAME
from seqrec.features.materialize import read_online_state, redis_online
from seqrec.features.repo import get_store
from seqrec.features.snapshots import events_state, read_snapshot_info

#: the events database down or refusing a query, or its URL unusable: shown, not raised
DB_FAILURES: tuple[type[Exception], ...] = (DBAPIError, SeqrecError)


def status(ws: Workspace) -> dict[str, Any]:
    """Offline features, registry and online store: watermarks, counts, reachability."""
    if ws.is_postgres_redis:
        return _status_pg(ws)
    if ws.is_spark:
        return _status_spark(ws)
    info = read_snapshot_info(ws)
    out: dict[str, Any] = {
        "profile": ws.config.profile,
        "snapshot_rows": info.rows if info else 0,
        "snapshot_users": info.users if info else 0,
        "snapshot_built_at": info.built_at if info else None,
    }
    try:
        n_events, max_id = events_state(ws.engine)
        out["events"] = n_events
        out["snapshot_stale"] = (
            info is None or info.max_event_id != max_id or info.events != n_events
        )
    except DB_FAILURES as exc:
        out["events"] = f"unreachable: {exc}"
    out["applied"] = _applied(ws)
    state = read_online_state(ws)
    out["online_max_event_id"] = state["max_event_id"] if state else None
    out["online_materialized_at"] = state["at"] if state else None
    if state and isinstance(out.get("events"), int):
        try:
            out["events_not_online"] = _events_after(ws, int(state["max_event_id"]))
        except DBAPIError:
            out["events_not_online"] = None
    out["online_store"] = str(ws.path(ws.config.features.online_path))
    out["online_reachable"] = ws.path(ws.config.features.online_path).is_file()
    out.update(_item_status(ws))
    return out


def _events_after(ws: Workspace, event_id: int) -> int:
    with ws.engine.connect() as conn:
        n = conn.execute(select(func.count()).where(events.c.event_id > event_id)).scalar()
    return int(n or 0)


def _item_status(ws: Workspace) -> dict[str, Any]:
    """The item text view's part of the status (best effort)."""
    try:
        from seqrec.text.features import item_status

        return item_status(ws)
    except (DBAPIError, SeqrecError, OSError, ValueError) as exc:  # a store down, a file damaged
        return {"item_text": f"error: {exc}"}


def _applied(ws: Workspace) -> bool | str:
    """Whether the feature view is registered (an error message when the repo is broken)."""
    from feast.errors import FeatureViewNotFoundException
    from google.protobuf.message import DecodeError

    try:
        get_store(ws).get_feature_view(VIEW_NAME)
        return True
    except SeqrecError as exc:
        return f"error: {exc}"
    except FeatureViewNotFoundException:
        return False
    except (DBAPIError, OSError, DecodeError) as exc:  # registry unreadable: no answer, not no
        first = (str(exc).splitlines() or [""])[0]
        return f"error: Feast registry unreadable: {type(exc).__name__}: {first}"


def _status_pg(ws: Workspace) -> dict[str, Any]:
    from seqrec.features import pg

    out: dict[str, Any] = {"profile": ws.config.profile}
    max_id: int | None = None
    try:
        engine = ws.engine
        n_events, max_id = events_state(engine)
        state = pg.feature_state(engine)
        out["events"] = n_events
        out["feature_rows"] = pg.table_rows(engine)
        out["features_max_event_id"] = state["event_id"] if state else None
        out["features_stale"] = state is None or int(state["event_id"]) != max_id
    except DB_FAILURES as exc:
        out["events"] = f"unreachable: {exc}"
    out["applied"] = _applied(ws)
    out.update(_redis_status(ws, max_id))
    return out


def _status_spark(ws: Workspace) -> dict[str, Any]:
    from seqrec.features.spark.features import FEATURES_DIR

    info = read_snapshot_info(ws)
    out: dict[str, Any] = {
        "profile": ws.config.profile,
        "features": str(ws.snapshot_dir / FEATURES_DIR),
        "feature_rows": info.rows if info else 0,
        "feature_users": info.users if info else 0,
        "features_built_at": info.built_at if info else None,
    }
    max_id: int | None = None
    try:
        n_events, max_id = events_state(ws.engine)
        out["events"] = n_events
        out["features_stale"] = (
            info is None or info.max_event_id != max_id or info.events != n_events
        )
    except DB_FAILURES as exc:
        out["events"] = f"unreachable: {exc}"
    out["applied"] = _applied(ws)
    out.update(_redis_status(ws, max_id))
    return out


def _redis_status(ws: Workspace, max_id: int | None) -> dict[str, Any]:
    """The Redis online store's part of the status (server profiles)."""
    from seqrec.features.redis_online import _safe_url

    out: dict[str, Any] = {}
    online_rows = redis_online(ws)
    out["online_store"] = _safe_url(ws.redis_url)
    out["online_reachable"] = online_rows.ping()
    online_state = online_rows.read_state() if out["online_reachable"] else None
    out["online_users"] = online_rows.count_keys() if out["online_reachable"] else None
    out["online_max_event_id"] = online_state["max_event_id"] if online_state else None
    out["online_materialized_at"] = online_state["at"] if online_state else None
    if online_state and max_id is not None:
        pending = _events_after(ws, int(online_state["max_event_id"]))
        out["events_not_online"] = pending
        at = datetime.fromisoformat(online_state["at"])
        out["online_staleness_s"] = (
            round((datetime.now(UTC) - at).total_seconds(), 1) if pending else 0.0
        )
    out.update(_item_status(ws))
    return out
