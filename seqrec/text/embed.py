"""Item text embeddings cached in SQL by content: ``item_embeddings`` (item, encoder, text hash).

:func:`embed_items` encodes only the items whose current ``text_hash`` has no embedding for the
encoder yet (new items, changed text, or a different encoder: checkpoint, weights, max length
or template), and upserts one row per (item, encoder). Vectors are float32, little-endian bytes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, select

from seqrec.config import Workspace
from seqrec.data.schema import (
    create_schema,
    item_embeddings,
    item_meta,
    require_item_schema,
)
from seqrec.errors import SeqrecError
from seqrec.text.encoder import TextEncoder, describe_workspace, load_encoder


@dataclass
class EmbedReport:
    """What one :func:`embed_items` run did."""

    encoder: str
    dim: int
    items: int
    encoded: int
    cached: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def to_bytes(vec: np.ndarray) -> bytes:
    """A vector as stored: float32, little-endian."""
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


def from_bytes(raw: bytes, dim: int) -> np.ndarray:
    """A stored vector back as float32 ``[dim]``."""
    vec = np.frombuffer(raw, dtype="<f4")
    if vec.shape[0] != dim:
        raise SeqrecError(f"stored embedding has {vec.shape[0]} values, expected {dim}")
    return vec.astype(np.float32)


def _upsert(engine: Engine) -> Any:
    dml: Any
    if engine.dialect.name == "sqlite":
        from sqlalchemy.dialects import sqlite as dml
    elif engine.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql as dml
    else:
        raise SeqrecError(f"unsupported events database '{engine.dialect.name}'")
    stmt = dml.insert(item_embeddings)
    return stmt.on_conflict_do_update(
        index_elements=["item_id", "encoder"],
        set_={c: stmt.excluded[c] for c in ("text_hash", "dim", "vector", "updated_at")},
    )


def _cached_dim(engine: Engine, encoder_id: str) -> int:
    with engine.connect() as conn:
        dim = conn.execute(
            select(func.max(item_embeddings.c.dim)).where(item_embeddings.c.encoder == encoder_id)
        ).scalar()
    return int(dim or 0)


def embed_items(
    ws: Workspace,
    *,
    encoder: TextEncoder | None = None,
    checkpoint: str | Path | None = None,
    engine: Engine | None = None,
    progress: bool = False,
    device: str = "auto",
    write_batch: int = 1_000,
) -> EmbedReport:
    """Encode every item whose text has no cached embedding for ``encoder`` (default: the
    workspace's ``[text]`` encoder, ``checkpoint`` overriding its checkpoint, loaded on
    ``device`` only when something needs encoding); returns how many items were encoded and
    how many were already cached."""
    t0 = time.perf_counter()
    engine = engine or ws.engine
    create_schema(engine)
    require_item_schema(engine)
    with engine.connect() as conn:
        n_meta = int(conn.execute(select(func.count()).select_from(item_meta)).scalar_one())
    if n_meta == 0:
        raise SeqrecError("no item text to embed", hint="import it: `seqrec items import FILE`")
    # the encoder's identity is known without loading it: an all-cached run loads nothing
    enc_id = encoder.id if encoder is not None else describe_workspace(ws, checkpoint).id
    with engine.connect() as conn:
        meta = conn.execute(
            select(
                item_meta.c.item_id,
                item_meta.c.title,
                item_meta.c.category,
                item_meta.c.description,
                item_meta.c.text_hash,
            ).order_by(item_meta.c.item_id)
        ).all()
        cached = {
            str(i): str(h)
            for i, h in conn.execute(
                select(item_embeddings.c.item_id, item_embeddings.c.text_hash).where(
                    item_embeddings.c.encoder == enc_id
                )
            )
        }
    todo = [r for r in meta if cached.get(str(r.item_id)) != r.text_hash]
    dim = encoder.dim if encoder is not None else _cached_dim(engine, enc_id)
    if todo:
        enc = encoder or load_encoder(ws, checkpoint=checkpoint, device=device)
        dim = enc.dim
        texts = [enc.render(r.title, r.category, r.description) for r in todo]
        vectors = enc.encode(texts, progress=progress)
        now = datetime.now(UTC)
        rows = [
            {
                "item_id": r.item_id,
                "encoder": enc.id,
                "text_hash": r.text_hash,
                "dim": enc.dim,
                "vector": to_bytes(v),
                "updated_at": now,
            }
            for r, v in zip(todo, vectors, strict=True)
        ]
        stmt = _upsert(engine)
        with engine.begin() as conn:
            for start in range(0, len(rows), write_batch):
                conn.execute(stmt, rows[start : start + write_batch])
    return EmbedReport(
        encoder=enc_id,
        dim=dim,
        items=len(meta),
        encoded=len(todo),
        cached=len(meta) - len(todo),
        seconds=round(time.perf_counter() - t0, 3),
    )


__all__ = ["EmbedReport", "embed_items", "from_bytes", "to_bytes"]
