"""Feast glue: the workspace's feature repo, offline features, apply, materialize, reads.

Embedded profile: the SQL features are written to a Parquet snapshot that Feast's DuckDB offline
store reads; ``materialize`` copies the newest row per user into the SQLite online store.

postgres-redis profile: the same SQL features live in a PostgreSQL table refreshed incrementally
(:mod:`seqrec.features.pg`) that Feast's postgres offline store reads through a
``PostgreSQLSource``; the registry is Feast's SQL registry in the same schema; ``materialize``
writes the newest row per user straight into Redis in Feast's layout
(:mod:`seqrec.features.redis_online`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Engine, func, select

from seqrec.config import Workspace
from seqrec.data.schema import events, make_engine, require_schema
from seqrec.errors import SeqrecError, StoreUnavailable
from seqrec.features.definitions import FEATURES, SNAPSHOT_FILE, VIEW_NAME, build_definitions
from seqrec.features.sql import compute_feature_rows

if TYPE_CHECKING:
    from feast import FeatureStore

META_FILE = "snapshot.json"

_GENERATED = "# Generated from seqrec.toml by seqrec; edit seqrec.toml instead.\n"


def _quiet_feast() -> None:
    for name in ("feast", "feast.infra", "feast.repo_config"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="feast")
    os.environ.setdefault("FEAST_USAGE", "False")


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML scalar


def _redis_connection_string(url: str) -> str:
    """Feast's ``host:port,db=N[,password=..][,ssl=true]`` form of a ``redis://`` URL."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    db = (parts.path or "/0").lstrip("/") or "0"
    out = f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379},db={db}"
    if parts.password:
        out += f",password={unquote(parts.password)}"
    if parts.scheme == "rediss":
        out += ",ssl=true"
    return out


def render_feature_store_yaml(ws: Workspace) -> str:
    """feature_store.yaml for the workspace's profile (one template for all profiles)."""
    f = ws.config.features
    lines = [_GENERATED.rstrip(), f"project: {f.project}", "provider: local"]
    if ws.is_postgres_redis:
        from sqlalchemy.engine import make_url

        url = make_url(ws.events_url)
        lines += [
            "registry:",
            "  registry_type: sql",
            f"  path: {_yaml_str(ws.events_url)}",
            "  cache_ttl_seconds: 60",
            "  serve_features_while_materializing: true",
            "  sqlalchemy_config_kwargs: {echo: false, pool_pre_ping: true}",
            "offline_store:",
            "  type: postgres",
            f"  host: {_yaml_str(url.host or '127.0.0.1')}",
            f"  port: {url.port or 5432}",
            f"  database: {_yaml_str(url.database or 'postgres')}",
            f"  db_schema: {ws.config.events.pg_schema}",
            f"  user: {_yaml_str(url.username or 'postgres')}",
            f"  password: {_yaml_str(url.password or '')}",
            "  sslmode: disable",
            "online_store:",
            "  type: redis",
            f"  connection_string: {_yaml_str(_redis_connection_string(ws.redis_url))}",
        ]
    else:
        lines += [
            f"registry: {ws.path(f.registry_path)}",
            "offline_store:",
            "  type: duckdb",
            "online_store:",
            "  type: sqlite",
            f"  path: {ws.path(f.online_path)}",
        ]
    lines += [
        "entity_key_serialization_version: 3",
        "materialization:",
        "  pull_latest_features: true",
    ]
    return "\n".join(lines) + "\n"


def write_repo(ws: Workspace) -> Path:
    """Write the workspace's Feast repo; feature_store.yaml is always regenerated."""
    repo = ws.feature_repo
    repo.mkdir(parents=True, exist_ok=True)
    target = repo / "feature_store.yaml"
    content = render_feature_store_yaml(ws)
    if not target.is_file() or target.read_text() != content:
        tmp = repo / f".feature_store.yaml.{os.getpid()}.tmp"
        tmp.write_text(content)
        os.replace(tmp, target)
    template = resources.files("seqrec") / "feature_repo"
    for name in ("definitions.py", ".feastignore"):
        target = repo / name
        if not target.exists():
            target.write_text((template / name).read_text())
    return repo


def get_store(ws: Workspace) -> FeatureStore:
    """A FeatureStore over the workspace's repo (written first if missing)."""
    _quiet_feast()
    from feast import FeatureStore

    repo = write_repo(ws)  # regenerated: environment overrides (URLs) take effect
    try:
        return FeatureStore(repo_path=str(repo))
    except Exception as exc:
        raise SeqrecError(f"cannot open the Feast repo: {exc}", where=str(repo)) from None


@dataclass
class SnapshotInfo:
    """What a feature snapshot was built from."""

    rows: int
    users: int
    max_event_id: int
    events: int
    max_len: int
    built_at: str
    seconds: float
    mode: str = "full"
    users_refreshed: int | None = None


def _events_state(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        n, max_id = conn.execute(select(func.count(), func.max(events.c.event_id))).one()
    return int(n or 0), int(max_id or 0)


def read_snapshot_info(ws: Workspace) -> SnapshotInfo | None:
    path = ws.snapshot_dir / META_FILE
    if not path.is_file():
        return None
    return SnapshotInfo(**json.loads(path.read_text()))


def _pg_info(ws: Workspace, engine: Engine, full: bool) -> SnapshotInfo:
    from seqrec.features import pg

    rep = pg.refresh(engine, ws.config.features.max_len, full=full)
    return SnapshotInfo(
        rows=rep.total_rows,
        users=rep.total_users,
        max_event_id=rep.max_event_id,
        events=rep.total_rows,  # one feature row per event
        max_len=ws.config.features.max_len,
        built_at=datetime.now(UTC).isoformat(),
        seconds=rep.seconds,
        mode=rep.mode,
        users_refreshed=rep.users,
    )


def build_snapshot(ws: Workspace, engine: Engine | None = None) -> SnapshotInfo:
    """Compute the offline features in SQL from scratch.

    Embedded: the Parquet snapshot, written atomically. postgres-redis: the feature table,
    rebuilt in one transaction.
    """
    engine = engine or make_engine(ws.events_url)
    require_schema(engine)
    if ws.is_postgres_redis:
        return _pg_info(ws, engine, full=True)
    t0 = time.perf_counter()
    n_events, max_id = _events_state(engine)
    if n_events == 0:
        raise SeqrecError("the events table is empty", hint="import events first")
    max_len = ws.config.features.max_len
    df = compute_feature_rows(engine, max_len)
    table = pa.Table.from_pandas(
        df[["user_id", "event_timestamp", "created", *FEATURES]],
        schema=pa.schema(
            [
                ("user_id", pa.string()),
                ("event_timestamp", pa.timestamp("us", tz="UTC")),
                ("created", pa.timestamp("us", tz="UTC")),
                ("item_seq", pa.list_(pa.int64())),
                ("type_seq", pa.list_(pa.int64())),
                ("ts_seq", pa.list_(pa.int64())),
                ("seq_len", pa.int64()),
                ("n_events", pa.int64()),
                ("n_purchases", pa.int64()),
                ("last_gap_s", pa.int64()),
            ]
        ),
        preserve_index=False,
    )
    out_dir = ws.snapshot_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (SNAPSHOT_FILE + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, out_dir / SNAPSHOT_FILE)
    info = SnapshotInfo(
        rows=len(df),
        users=int(df["user_id"].nunique()),
        max_event_id=max_id,
        events=n_events,
        max_len=max_len,
        built_at=datetime.now(UTC).isoformat(),
        seconds=round(time.perf_counter() - t0, 3),
    )
    (out_dir / META_FILE).write_text(json.dumps(asdict(info), indent=2))
    return info


def ensure_snapshot(ws: Workspace, engine: Engine | None = None) -> SnapshotInfo:
    """Bring the offline features up to date with the events.

    Embedded: rebuild the snapshot when events or the sequence length changed since it was
    built. postgres-redis: refresh the feature table incrementally (only users with new events).
    """
    engine = engine or make_engine(ws.events_url)
    require_schema(engine)
    if ws.is_postgres_redis:
        return _pg_info(ws, engine, full=False)
    info = read_snapshot_info(ws)
    n_events, max_id = _events_state(engine)
    fresh = (
        info is not None
        and info.events == n_events
        and info.max_event_id == max_id
        and info.max_len == ws.config.features.max_len
        and (ws.snapshot_dir / SNAPSHOT_FILE).is_file()
    )
    return info if fresh and info is not None else build_snapshot(ws, engine)


def apply(ws: Workspace) -> list[str]:
    """Register the entity, source, view and feature service in the Feast registry."""
    write_repo(ws)
    store = get_store(ws)
    defs = build_definitions(ws)
    store.apply(defs.objects)
    from seqrec.text.features import apply_items

    return [
        "entity user",
        f"source {defs.source.name}",
        f"view {VIEW_NAME}",
        f"service {defs.service.name}",
        *apply_items(ws, store),  # the item text view, when there are item embeddings
    ]


def _require_applied(store: FeatureStore, ws: Workspace) -> None:
    try:
        store.get_feature_view(VIEW_NAME)
    except Exception:
        raise SeqrecError(
            "the feature definitions are not registered", hint="run `seqrec features apply`"
        ) from None


@dataclass
class MaterializeReport:
    mode: str
    users_written: int
    max_event_id: int
    seconds: float
    rows_per_s: float
    watermark: str
    #: item text embeddings written online (None: the workspace has none)
    items_written: int | None = None


ONLINE_STATE = "online_state.json"


def _read_online_state(ws: Workspace) -> dict[str, Any] | None:
    path = ws.snapshot_dir / ONLINE_STATE
    return json.loads(path.read_text()) if path.is_file() else None


def latest_rows(ws: Workspace, users: set[str] | None = None) -> pd.DataFrame:
    """The newest feature row of each user (optionally only ``users``) from the snapshot."""
    df = pd.read_parquet(ws.snapshot_dir / SNAPSHOT_FILE)
    if users is not None:
        df = df[df["user_id"].isin(users)]
    return df.sort_values("event_timestamp").groupby("user_id", sort=False).tail(1)


def materialize(
    ws: Workspace,
    incremental: bool = False,
    engine: Engine | None = None,
    *,
    batch_size: int = 5_000,
    progress: bool = False,
) -> MaterializeReport:
    """Write each user's newest sequence to the online store, then the item text embeddings
    when there are any (:func:`seqrec.text.features.materialize_items`)."""
    from seqrec.text.features import materialize_items

    engine = engine or make_engine(ws.events_url)
    report = _materialize_users(ws, incremental, engine, batch_size=batch_size, progress=progress)
    items_report = materialize_items(ws, get_store(ws), engine, incremental=incremental)
    if items_report is not None:
        report.items_written = items_report.items_written
    return report


def _materialize_users(
    ws: Workspace,
    incremental: bool = False,
    engine: Engine | None = None,
    *,
    batch_size: int = 5_000,
    progress: bool = False,
) -> MaterializeReport:
    """Write each user's newest sequence to the online store.

    Incremental runs are driven by an ingestion watermark (the largest ``event_id`` already
    online), not by event time, so late-arriving events (old timestamps, imported now) are
    picked up. Writes are upserts of the latest row per user: rerunning, or rerunning after a
    crash, gives the same online state; the watermark advances only after all writes succeed.
    """
    engine = engine or make_engine(ws.events_url)
    info = ensure_snapshot(ws, engine)
    store = get_store(ws)
    _require_applied(store, ws)
    if ws.is_postgres_redis:
        return _materialize_redis(ws, engine, info, incremental, progress)
    state = _read_online_state(ws) if incremental else None
    t0 = time.perf_counter()
    users: set[str] | None = None
    if state is not None:
        with engine.connect() as conn:
            users = set(
                conn.execute(
                    select(events.c.user_id)
                    .distinct()
                    .where(events.c.event_id > int(state["max_event_id"]))
                ).scalars()
            )
    rows = latest_rows(ws, users)
    cols = ["user_id", "event_timestamp", "created", *FEATURES]
    from tqdm.auto import tqdm

    with contextlib.redirect_stdout(sys.stderr):  # Feast may print progress on stdout
        for start in tqdm(
            range(0, len(rows), batch_size), desc="materialize", disable=not progress, unit="batch"
        ):
            store.write_to_online_store(VIEW_NAME, rows.iloc[start : start + batch_size][cols])
    secs = time.perf_counter() - t0
    now = datetime.now(UTC).isoformat()
    new_state = {"max_event_id": info.max_event_id, "at": now}
    tmp = ws.snapshot_dir / (ONLINE_STATE + ".tmp")
    tmp.write_text(json.dumps(new_state))
    os.replace(tmp, ws.snapshot_dir / ONLINE_STATE)
    return _report(state is not None, len(rows), info.max_event_id, secs, now)


def _report(incremental: bool, n: int, max_id: int, secs: float, now: str) -> MaterializeReport:
    return MaterializeReport(
        mode="incremental" if incremental else "full",
        users_written=n,
        max_event_id=max_id,
        seconds=round(secs, 3),
        rows_per_s=round(n / secs, 1) if secs > 0 else 0.0,
        watermark=now,
    )


def redis_online(ws: Workspace) -> Any:
    """The workspace's Redis online rows (postgres-redis profile)."""
    from seqrec.features.redis_online import RedisOnline

    return RedisOnline(ws.redis_url, ws.config.features.project, VIEW_NAME, list(FEATURES))


def _materialize_redis(
    ws: Workspace, engine: Engine, info: SnapshotInfo, incremental: bool, progress: bool
) -> MaterializeReport:
    from tqdm.auto import tqdm

    from seqrec.features import pg

    online_rows = redis_online(ws)
    state = online_rows.read_state() if incremental else None
    t0 = time.perf_counter()
    since = int(state["max_event_id"]) if state is not None else None
    rows = pg.latest_rows(engine, since_event_id=since)
    with tqdm(total=len(rows), desc="materialize", disable=not progress, unit="user") as bar:
        online_rows.write(rows, progress=bar.update)
    secs = time.perf_counter() - t0
    now = datetime.now(UTC).isoformat()
    online_rows.write_state({"max_event_id": info.max_event_id, "at": now})
    return _report(state is not None, len(rows), info.max_event_id, secs, now)


def historical(ws: Workspace, entity_df: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time features for ``entity_df`` (user_id, event_timestamp, extra columns)."""
    store = get_store(ws)
    _require_applied(store, ws)
    service = store.get_feature_service(ws.config.features.feature_service)
    job = store.get_historical_features(entity_df=entity_df, features=service)
    return job.to_df()


def online(store: FeatureStore, service: Any, user_ids: list[str]) -> dict[str, list[Any]]:
    """Online features for ``user_ids`` (one batched lookup); missing users get None values."""
    resp = store.get_online_features(
        features=service, entity_rows=[{"user_id": u} for u in user_ids]
    )
    return resp.to_dict()


class FeastOnline:
    """Online reads through Feast's ``get_online_features`` (embedded profile)."""

    def __init__(self, store: FeatureStore, service: Any, where: str):
        self.store, self.service, self.where = store, service, where

    def read(self, user_ids: list[str]) -> dict[str, list[Any]]:
        try:
            return online(self.store, self.service, user_ids)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"online store unreadable: {exc}", where=self.where) from None

    def ping(self) -> bool:
        try:
            self.read(["__seqrec_ping__"])
            return True
        except StoreUnavailable:
            return False


def online_reader(ws: Workspace, feature_service: str | None = None) -> Any:
    """The profile's online reader: ``read(user_ids)`` -> Feast ``to_dict()``-shaped columns
    (None for users not online), raising :class:`StoreUnavailable` when the store is down;
    ``ping()`` -> bool. postgres-redis reads Redis directly (one pipelined round trip)."""
    if ws.is_postgres_redis:
        return redis_online(ws)
    store = get_store(ws)
    service = store.get_feature_service(feature_service or ws.config.features.feature_service)
    return FeastOnline(store, service, str(ws.path(ws.config.features.online_path)))


def status(ws: Workspace) -> dict[str, Any]:
    """Offline features, registry and online store: watermarks, counts, reachability."""
    if ws.is_postgres_redis:
        return _status_pg(ws)
    info = read_snapshot_info(ws)
    out: dict[str, Any] = {
        "profile": ws.config.profile,
        "snapshot_rows": info.rows if info else 0,
        "snapshot_users": info.users if info else 0,
        "snapshot_built_at": info.built_at if info else None,
    }
    try:
        engine = make_engine(ws.events_url)
        n_events, max_id = _events_state(engine)
        out["events"] = n_events
        out["snapshot_stale"] = (
            info is None or info.max_event_id != max_id or info.events != n_events
        )
    except Exception as exc:
        out["events"] = f"unreachable: {exc}"
    out["applied"] = _applied(ws)
    state = _read_online_state(ws)
    out["online_max_event_id"] = state["max_event_id"] if state else None
    out["online_materialized_at"] = state["at"] if state else None
    if state and isinstance(out.get("events"), int):
        try:
            with make_engine(ws.events_url).connect() as conn:
                pending = conn.execute(
                    select(func.count()).where(events.c.event_id > int(state["max_event_id"]))
                ).scalar()
            out["events_not_online"] = int(pending or 0)
        except Exception:
            out["events_not_online"] = None
    out["online_store"] = str(ws.path(ws.config.features.online_path))
    out["online_reachable"] = ws.path(ws.config.features.online_path).is_file()
    out.update(_item_status(ws))
    return out


def _item_status(ws: Workspace) -> dict[str, Any]:
    """The item text view's part of the status (best effort)."""
    try:
        from seqrec.text.features import item_status

        return item_status(ws)
    except Exception as exc:
        return {"item_text": f"error: {exc}"}


def _applied(ws: Workspace) -> bool | str:
    """Whether the feature view is registered (an error message when the repo is broken)."""
    try:
        get_store(ws).get_feature_view(VIEW_NAME)
        return True
    except SeqrecError as exc:
        return f"error: {exc}"
    except Exception:
        return False


def _status_pg(ws: Workspace) -> dict[str, Any]:
    from seqrec.features import pg
    from seqrec.features.redis_online import _safe_url

    out: dict[str, Any] = {"profile": ws.config.profile}
    max_id: int | None = None
    try:
        engine = make_engine(ws.events_url)
        n_events, max_id = _events_state(engine)
        state = pg.feature_state(engine)
        out["events"] = n_events
        out["feature_rows"] = pg.table_rows(engine)
        out["features_max_event_id"] = state["event_id"] if state else None
        out["features_stale"] = state is None or int(state["event_id"]) != max_id
    except Exception as exc:
        out["events"] = f"unreachable: {exc}"
    out["applied"] = _applied(ws)
    online_rows = redis_online(ws)
    out["online_store"] = _safe_url(ws.redis_url)
    out["online_reachable"] = online_rows.ping()
    online_state = online_rows.read_state() if out["online_reachable"] else None
    out["online_users"] = online_rows.count_keys() if out["online_reachable"] else None
    out["online_max_event_id"] = online_state["max_event_id"] if online_state else None
    out["online_materialized_at"] = online_state["at"] if online_state else None
    if online_state and max_id is not None:
        with make_engine(ws.events_url).connect() as conn:
            pending = conn.execute(
                select(func.count()).where(events.c.event_id > int(online_state["max_event_id"]))
            ).scalar()
        out["events_not_online"] = int(pending or 0)
        at = datetime.fromisoformat(online_state["at"])
        out["online_staleness_s"] = (
            round((datetime.now(UTC) - at).total_seconds(), 1) if pending else 0.0
        )
    out.update(_item_status(ws))
    return out


__all__ = [
    "MaterializeReport",
    "SnapshotInfo",
    "apply",
    "build_snapshot",
    "ensure_snapshot",
    "get_store",
    "historical",
    "materialize",
    "online",
    "online_reader",
    "redis_online",
    "status",
    "write_repo",
]
