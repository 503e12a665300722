"""Feast glue: the workspace's feature repo, snapshots, apply, materialize, reads.

Embedded profile: the SQL features are written to a Parquet snapshot that Feast's DuckDB offline
store reads; ``materialize`` copies the newest row per user into the SQLite online store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
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
from seqrec.errors import SeqrecError
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


def render_feature_store_yaml(ws: Workspace) -> str:
    """feature_store.yaml for the workspace's profile (one template for all profiles)."""
    f = ws.config.features
    lines = [
        _GENERATED.rstrip(),
        "project: seqrec",
        "provider: local",
        f"registry: {ws.path(f.registry_path)}",
        "offline_store:",
        "  type: duckdb",
        "online_store:",
        "  type: sqlite",
        f"  path: {ws.path(f.online_path)}",
        "entity_key_serialization_version: 3",
        "materialization:",
        "  pull_latest_features: true",
    ]
    return "\n".join(lines) + "\n"


def write_repo(ws: Workspace) -> Path:
    """Write the workspace's Feast repo; feature_store.yaml is always regenerated."""
    repo = ws.feature_repo
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(render_feature_store_yaml(ws))
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

    repo = ws.feature_repo
    if not (repo / "feature_store.yaml").is_file():
        write_repo(ws)
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


def _events_state(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        n, max_id = conn.execute(select(func.count(), func.max(events.c.event_id))).one()
    return int(n or 0), int(max_id or 0)


def read_snapshot_info(ws: Workspace) -> SnapshotInfo | None:
    path = ws.snapshot_dir / META_FILE
    if not path.is_file():
        return None
    return SnapshotInfo(**json.loads(path.read_text()))


def build_snapshot(ws: Workspace, engine: Engine | None = None) -> SnapshotInfo:
    """Compute the features in SQL and write the Parquet snapshot atomically."""
    engine = engine or make_engine(ws.events_url)
    require_schema(engine)
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
    """Rebuild the snapshot when events or the sequence length changed since it was built."""
    engine = engine or make_engine(ws.events_url)
    require_schema(engine)
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
    return [
        "entity user",
        f"source {defs.source.name}",
        f"view {VIEW_NAME}",
        f"service {defs.service.name}",
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
    """Write each user's newest sequence to the online store.

    Incremental runs are driven by an ingestion watermark (the largest ``event_id`` already
    online), not by event time, so late-arriving events (old timestamps, imported now) are
    picked up. Writes are upserts of the latest row per user: rerunning, or rerunning after a
    crash, gives the same online state; the watermark advances only after all writes succeed.
    """
    from sqlalchemy import distinct

    engine = engine or make_engine(ws.events_url)
    info = ensure_snapshot(ws, engine)
    store = get_store(ws)
    _require_applied(store, ws)
    state = _read_online_state(ws) if incremental else None
    t0 = time.perf_counter()
    users: set[str] | None = None
    if state is not None:
        with engine.connect() as conn:
            users = set(
                conn.execute(
                    select(distinct(events.c.user_id)).where(
                        events.c.event_id > int(state["max_event_id"])
                    )
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
    return MaterializeReport(
        mode="incremental" if state is not None else "full",
        users_written=len(rows),
        max_event_id=info.max_event_id,
        seconds=round(secs, 3),
        rows_per_s=round(len(rows) / secs, 1) if secs > 0 else 0.0,
        watermark=now,
    )


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


def status(ws: Workspace) -> dict[str, Any]:
    """Snapshot freshness, registry state and the online store's watermark."""
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
    try:
        store = get_store(ws)
        store.get_feature_view(VIEW_NAME)
        out["applied"] = True
    except SeqrecError as exc:
        out["applied"] = f"error: {exc}"
    except Exception:
        out["applied"] = False
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
    "write_repo",
]
