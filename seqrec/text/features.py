"""Item text embeddings as features: the ``item_text_v1`` Feast view, online and offline reads.

Which embeddings: those of the workspace's ``[text]`` encoder when it has any, else those of
the encoder that ran most recently (:func:`active_encoder`), and only for items whose text has
not changed since it was embedded (an item whose text changed counts as "without text" until
``seqrec items embed`` runs again).

* :func:`apply_items` (called by ``seqrec features apply``): registers entity ``item`` and the
  view; it does nothing while there are no embeddings, so workspaces without item text work as
  before.
* :func:`materialize_items` (called by ``seqrec features materialize [--incremental]``):
  refreshes the offline source (embedded: a Parquet snapshot; postgres-redis: the
  ``item_text_features`` table) and writes the rows online (SQLite or Redis, through Feast);
  ``--incremental`` writes only embeddings newer than the last run.
* :class:`ItemTextReader` / :func:`item_text_embeddings`: online vectors of item ids (for
  serving new items at once).
* :func:`item_text_matrix`: the ``[n_items, dim]`` matrix aligned with the item vocabulary
  (row ``item_idx``; zeros for padding and for items without text) and its mask, for training.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Engine, and_, func, inspect, select, text

from seqrec.config import Workspace
from seqrec.data.schema import item_embeddings, item_meta, items
from seqrec.errors import SeqrecError, StoreUnavailable
from seqrec.features.definitions import (
    ITEM_FEATURES,
    ITEM_SNAPSHOT_FILE,
    ITEM_TABLE,
    ITEM_VIEW_NAME,
    ItemDefinitions,
    build_item_definitions,
)
from seqrec.text.embed import from_bytes

if TYPE_CHECKING:
    from feast import FeatureStore

ITEM_ONLINE_STATE = "item_online_state.json"


@dataclass(frozen=True)
class ActiveEncoder:
    """The encoder whose embeddings are the item features, and their width."""

    id: str
    dim: int


def active_encoder(ws: Workspace, engine: Engine | None = None) -> ActiveEncoder | None:
    """The configured encoder if it has embeddings, else the most recently run one; None when
    there are no embeddings at all."""
    engine = engine or ws.engine
    if not inspect(engine).has_table(item_embeddings.name):
        return None  # a workspace without item text: nothing is created here
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                item_embeddings.c.encoder,
                func.max(item_embeddings.c.dim),
                func.max(item_embeddings.c.updated_at),
            ).group_by(item_embeddings.c.encoder)
        ).all()
    if not rows:
        return None
    by_id = {str(e): int(d) for e, d, _ in rows}
    try:
        from seqrec.text.encoder import describe_workspace

        configured = describe_workspace(ws).id
    except SeqrecError:
        configured = None
    if configured in by_id:
        return ActiveEncoder(configured, by_id[configured])
    newest = max(rows, key=lambda r: str(r[2]))
    return ActiveEncoder(str(newest[0]), int(newest[1]))


def item_text_rows(
    ws: Workspace, engine: Engine | None = None, *, since: datetime | None = None
) -> tuple[ActiveEncoder | None, pd.DataFrame]:
    """The active encoder and its current embeddings: item_id, item_idx, updated_at,
    embedding (float32 arrays), text_hash; only embeddings of the items' current text."""
    engine = engine or ws.engine
    enc = active_encoder(ws, engine)
    cols = ["item_id", "item_idx", "updated_at", "embedding", "text_hash"]
    if enc is None:
        return None, pd.DataFrame(columns=cols)
    e = item_embeddings
    q = (
        select(e.c.item_id, items.c.item_idx, e.c.updated_at, e.c.vector, e.c.text_hash)
        .join(items, items.c.item_id == e.c.item_id)
        .join(
            item_meta,
            and_(item_meta.c.item_id == e.c.item_id, item_meta.c.text_hash == e.c.text_hash),
        )
        .where(e.c.encoder == enc.id)
        .order_by(items.c.item_idx)
    )
    if since is not None:
        q = q.where(e.c.updated_at >= since)
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    df = pd.DataFrame(
        {
            "item_id": [str(r.item_id) for r in rows],
            "item_idx": np.array([int(r.item_idx) for r in rows], dtype=np.int64),
            "updated_at": pd.to_datetime([_utc(r.updated_at) for r in rows], utc=True),
            "embedding": [from_bytes(r.vector, enc.dim) for r in rows],
            "text_hash": [str(r.text_hash) for r in rows],
        },
        columns=cols,
    )
    return enc, df


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


# --------------------------------------------------------------------------------------------
# Apply and materialize


def apply_items(ws: Workspace, store: FeatureStore, engine: Engine | None = None) -> list[str]:
    """Register entity ``item`` and the item text view when there are embeddings."""
    enc = active_encoder(ws, engine)
    if enc is None:
        return []
    defs = build_item_definitions(ws, encoder=enc.id, dim=enc.dim)
    store.apply(defs.objects)
    return ["entity item", f"source {defs.source.name}", f"view {ITEM_VIEW_NAME} ({enc.id})"]


def workspace_item_definitions(ws: Workspace) -> ItemDefinitions | None:
    """The item Feast objects for the workspace's active encoder; None without embeddings
    (what the workspace's ``feature_repo/definitions.py`` registers for ``feast apply``)."""
    enc = active_encoder(ws)
    return None if enc is None else build_item_definitions(ws, encoder=enc.id, dim=enc.dim)


def _write_snapshot(ws: Workspace, df: pd.DataFrame, dim: int) -> None:
    """The embedded profile's offline source: Parquet, timestamps as us/UTC (DuckDB)."""
    table = pa.table(
        {
            "item_id": pa.array(df["item_id"], pa.string()),
            "event_timestamp": pa.array(df["updated_at"], pa.timestamp("us", tz="UTC")),
            "created": pa.array(df["updated_at"], pa.timestamp("us", tz="UTC")),
            "embedding": pa.array([v.tolist() for v in df["embedding"]], pa.list_(pa.float32())),
            "text_hash": pa.array(df["text_hash"], pa.string()),
            "item_idx": pa.array(df["item_idx"], pa.int64()),
        }
    )
    out = ws.snapshot_dir
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (ITEM_SNAPSHOT_FILE + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, out / ITEM_SNAPSHOT_FILE)


_PG_DDL = f"""
CREATE TABLE IF NOT EXISTS {ITEM_TABLE} (
    item_id varchar(256) COLLATE "C" PRIMARY KEY,
    item_idx bigint NOT NULL,
    event_timestamp timestamptz NOT NULL,
    created timestamptz NOT NULL,
    embedding real[] NOT NULL,
    text_hash text NOT NULL
)
"""


def _write_pg_table(engine: Engine, df: pd.DataFrame) -> None:
    """The postgres-redis profile's offline source, rebuilt in one transaction."""
    rows = [
        {
            "item_id": r.item_id,
            "item_idx": int(r.item_idx),
            "ts": r.updated_at.to_pydatetime(),
            "embedding": [float(x) for x in r.embedding],
            "text_hash": r.text_hash,
        }
        for r in df.itertuples(index=False)
    ]
    with engine.begin() as conn:
        conn.execute(text(_PG_DDL))
        conn.execute(text(f"DELETE FROM {ITEM_TABLE}"))
        if rows:
            conn.execute(
                text(
                    f"INSERT INTO {ITEM_TABLE} (item_id, item_idx, event_timestamp, created, "
                    "embedding, text_hash) VALUES (:item_id, :item_idx, :ts, :ts, "
                    "CAST(:embedding AS real[]), :text_hash)"
                ),
                rows,
            )


@dataclass
class ItemMaterializeReport:
    """What one item text materialization did."""

    mode: str
    encoder: str
    items_written: int
    seconds: float


@contextlib.contextmanager
def _online_errors(ws: Workspace) -> Iterator[None]:
    """Online store failures (Redis or SQLite unreachable) as :class:`StoreUnavailable`."""
    import sqlite3

    import redis

    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, sqlite3.Error, OSError) as exc:
        where = ws.redis_url if ws.uses_redis else str(ws.path(ws.config.features.online_path))
        from seqrec.features.redis_online import _safe_url

        raise StoreUnavailable(f"online store unreachable: {exc}", where=_safe_url(where)) from None


class _OnlineState:
    """The item view's online watermark: a file (embedded) or a Redis key (postgres-redis),
    beside the online rows it describes."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.path = ws.snapshot_dir / ITEM_ONLINE_STATE
        self.key = f"seqrec:{ws.config.features.project}:item_online_state"

    def read(self) -> dict[str, Any] | None:
        if self.ws.uses_redis:
            from seqrec.features.materialize import redis_online

            raw = redis_online(self.ws).client.get(self.key)
            return json.loads(raw) if raw else None
        return json.loads(self.path.read_text()) if self.path.is_file() else None

    def write(self, state: dict[str, Any]) -> None:
        if self.ws.uses_redis:
            from seqrec.features.materialize import redis_online

            redis_online(self.ws).client.set(self.key, json.dumps(state))
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.path)


def materialize_items(
    ws: Workspace,
    store: FeatureStore,
    engine: Engine | None = None,
    *,
    incremental: bool = False,
    batch_size: int = 1_000,
) -> ItemMaterializeReport | None:
    """Refresh the item text source and write the embeddings online; None when there are none.

    Incremental runs write only embeddings updated since the previous run of the same encoder
    (a different encoder means a full run). Online rows are stamped with the run's time so that
    they always replace what is there.
    """
    import time

    engine = engine or ws.engine
    t0 = time.perf_counter()
    enc, df = item_text_rows(ws, engine)
    if enc is None:
        return None
    from feast.errors import FeatureViewNotFoundException

    try:
        store.get_feature_view(ITEM_VIEW_NAME)
    except FeatureViewNotFoundException:
        raise SeqrecError(
            "item text embeddings exist but their feature view is not registered",
            hint="run `seqrec features apply`",
        ) from None
    if ws.is_postgres_redis:
        _write_pg_table(engine, df)
    else:
        _write_snapshot(ws, df, enc.dim)
    state_store = _OnlineState(ws)
    with _online_errors(ws):
        state = state_store.read() if incremental else None
    if state is not None and state.get("encoder") == enc.id and state.get("newest"):
        since = pd.Timestamp(state["newest"])
        df_out = df[df["updated_at"] > since]
        mode = "incremental"
    else:
        df_out, mode = df, "full"
    now = pd.Timestamp(datetime.now(UTC))
    out = pd.DataFrame(
        {
            "item_id": df_out["item_id"],
            "event_timestamp": now,
            "created": now,
            "embedding": [v.tolist() for v in df_out["embedding"]],
            "text_hash": df_out["text_hash"],
            "item_idx": df_out["item_idx"],
        }
    )
    newest = df["updated_at"].max() if len(df) else None
    with _online_errors(ws), contextlib.redirect_stdout(sys.stderr):
        for start in range(0, len(out), batch_size):
            store.write_to_online_store(ITEM_VIEW_NAME, out.iloc[start : start + batch_size])
        state_store.write(
            {"encoder": enc.id, "newest": newest.isoformat() if newest is not None else None}
        )
    return ItemMaterializeReport(mode, enc.id, len(out), round(time.perf_counter() - t0, 3))


def item_status(ws: Workspace) -> dict[str, Any]:
    """For ``seqrec features status``: the active encoder, items with current embeddings, and
    the online watermark of the item view."""
    engine = ws.engine
    enc = active_encoder(ws, engine)
    if enc is None:
        return {"item_text_encoder": None}
    with engine.connect() as conn:
        n_meta = int(conn.execute(select(func.count()).select_from(item_meta)).scalar_one())
    _, df = item_text_rows(ws, engine)
    with _online_errors(ws):
        state = _OnlineState(ws).read()
    return {
        "item_text_encoder": enc.id,
        "item_text_items": n_meta,
        "item_text_embedded": len(df),
        "item_text_online_upto": state.get("newest") if state else None,
    }


def drop_item_online(ws: Workspace) -> int:
    """Delete the item view's Redis rows and watermark (postgres-redis teardown); returns the
    number of keys deleted. Other projects' keys and user rows are left alone."""
    from seqrec.compat.feast_private import entity_key
    from seqrec.features.materialize import redis_online
    from seqrec.features.redis_online import ENTITY_KEY_VERSION

    project = ws.config.features.project.encode()
    head = entity_key("item_id", "", ENTITY_KEY_VERSION)[:-4]
    client = redis_online(ws).client
    keys = [
        k
        for k in client.scan_iter(match=b"*" + project, count=10_000)
        if k.startswith(head)
        and len(k)
        == len(head) + 4 + int.from_bytes(k[len(head) : len(head) + 4], "little") + len(project)
    ]
    n = 0
    for start in range(0, len(keys), 5_000):
        n += int(client.delete(*keys[start : start + 5_000]))
    client.delete(_OnlineState(ws).key)
    return n


# --------------------------------------------------------------------------------------------
# Reads


class ItemTextReader:
    """Online item text embeddings through Feast (SQLite or Redis); hold one per process."""

    def __init__(self, ws: Workspace):
        from feast.errors import FeatureViewNotFoundException

        from seqrec.features.repo import get_store

        self.ws = ws
        self.store = get_store(ws)
        try:
            view = self.store.get_feature_view(ITEM_VIEW_NAME)
        except FeatureViewNotFoundException:
            raise SeqrecError(
                "no item text feature view",
                hint="run `seqrec items embed`, `seqrec features apply` and "
                "`seqrec features materialize`",
            ) from None
        self.dim = int(view.tags.get("dim", "0"))
        self.encoder = view.tags.get("encoder", "")
        self._refs = [f"{ITEM_VIEW_NAME}:{name}" for name in ITEM_FEATURES]

    def read(self, item_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors [n, dim] float32, found [n] bool)``: zeros where an item is not online;
        :class:`~seqrec.errors.StoreUnavailable` when the online store cannot be reached."""
        out = np.zeros((len(item_ids), self.dim), dtype=np.float32)
        found = np.zeros(len(item_ids), dtype=bool)
        if not item_ids:
            return out, found
        with _online_errors(self.ws):
            resp = self.store.get_online_features(
                features=self._refs, entity_rows=[{"item_id": i} for i in item_ids]
            ).to_dict()
        for k, vec in enumerate(resp["embedding"]):
            if vec is not None and len(vec) == self.dim:
                out[k] = np.asarray(vec, dtype=np.float32)
                found[k] = True
        return out, found


def item_text_embeddings(ws: Workspace, item_ids: list[str]) -> np.ndarray:
    """Online text embeddings of ``item_ids``: ``[n, dim]`` float32, a zeros row for an item
    that has none online (use :class:`ItemTextReader` for the mask and repeated reads)."""
    return ItemTextReader(ws).read(list(item_ids))[0]


@dataclass
class ItemTextMatrix:
    """Item text embeddings aligned with the item vocabulary."""

    #: ``[n_items, dim]`` float32; row ``item_idx``; zeros for padding (0) and items without text
    matrix: np.ndarray
    #: ``[n_items]`` bool: True where the row holds an embedding
    mask: np.ndarray
    encoder: str | None

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])


def item_text_matrix(
    ws: Workspace, n_items: int | None = None, *, engine: Engine | None = None
) -> ItemTextMatrix:
    """The ``[n_items, dim]`` text matrix for a model whose vocabulary has ``n_items`` rows
    (padding included; default: the whole vocabulary). Items with an index of ``n_items`` or
    more (added after the model's vocabulary) are left out. Without any embeddings the matrix
    is ``[n_items, 0]`` and the mask all False."""
    engine = engine or ws.engine
    if n_items is None:
        with engine.connect() as conn:
            n_items = int(conn.execute(select(func.max(items.c.item_idx))).scalar() or 0) + 1
    enc, df = item_text_rows(ws, engine)
    dim = enc.dim if enc is not None else 0
    matrix = np.zeros((n_items, dim), dtype=np.float32)
    mask = np.zeros(n_items, dtype=bool)
    for idx, vec in zip(df["item_idx"], df["embedding"], strict=True):
        if 0 < idx < n_items:
            matrix[idx] = vec
            mask[idx] = True
    return ItemTextMatrix(matrix, mask, enc.id if enc is not None else None)


__all__ = [
    "ActiveEncoder",
    "ItemMaterializeReport",
    "ItemTextMatrix",
    "ItemTextReader",
    "active_encoder",
    "apply_items",
    "drop_item_online",
    "item_status",
    "item_text_embeddings",
    "item_text_matrix",
    "item_text_rows",
    "materialize_items",
    "workspace_item_definitions",
]
