"""Cold-start items for a served text-aware model: items newer than the model, scored by text.

A text-aware next-item model (``item_text=true``) represents an item it never trained on by its
text alone. Items imported after it was trained (``seqrec items import`` + ``seqrec items
embed`` + ``seqrec features materialize``) have a vocabulary index of at least the model's
``n_items`` and a text embedding online: :class:`ExtraItemsSource` finds them in SQL (the
``items`` vocabulary joined with ``item_meta``), reads their vectors with
:class:`~seqrec.text.features.ItemTextReader` and projects them with the model's
:class:`~seqrec.text.fusion.TextFusion` into an :class:`ExtraItems` block. The recommender
appends the block's scores (``state @ vectors.T + bias``, one matmul) after the model's own:
known items' scores are the model's, unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sqlalchemy import select

from seqrec.config import Workspace
from seqrec.data.schema import item_meta, items


@dataclass(frozen=True)
class ExtraItems:
    """Items the model has no row for, as columns ``n_items + j`` after its own scores."""

    n_items: int  # the model's vocabulary size: the first extra column
    ids: tuple[str, ...] = ()
    vectors: torch.Tensor | None = None  # [m, d] float32 on the model's device
    bias: torch.Tensor | None = None  # [m] or None
    #: item id -> column; vocabulary index -> column (to mask a user's history)
    column: dict[str, int] = field(default_factory=dict)
    by_index: dict[int, int] = field(default_factory=dict)
    refreshed_at: float | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def scores(self, state: torch.Tensor) -> torch.Tensor:
        """[B, m] scores of the extra items for user states [B, d]."""
        assert self.vectors is not None
        out = state.float() @ self.vectors.T
        return out if self.bias is None else out + self.bias

    def item_id(self, col: int) -> str:
        return self.ids[col - self.n_items]


class ExtraItemsSource:
    """Builds the :class:`ExtraItems` block of a text-aware model from SQL and the online
    store; ``reader``: an :class:`~seqrec.text.features.ItemTextReader` to reuse (made on
    first use otherwise)."""

    def __init__(self, ws: Workspace, model: Any, device: torch.device, reader: Any = None):
        self.ws, self.model, self.device = ws, model, device
        self.n_items = int(model.ctx.n_items)
        self.reader = reader
        self._engine: Any = None

    def new_items(self) -> list[tuple[str, int]]:
        """(item id, vocabulary index) of items with text and an index the model lacks."""
        if self._engine is None:
            self._engine = self.ws.engine
        q = (
            select(items.c.item_id, items.c.item_idx)
            .join(item_meta, item_meta.c.item_id == items.c.item_id)
            .where(items.c.item_idx >= self.n_items)
            .order_by(items.c.item_idx)
        )
        with self._engine.connect() as conn:
            return [(str(i), int(x)) for i, x in conn.execute(q)]

    def load(self) -> ExtraItems:
        """The current block: new items whose text embedding is online. Raises
        :class:`~seqrec.errors.StoreUnavailable` (online store down) or another error (the
        database, a missing item view): the caller keeps its last block."""
        found_items = self.new_items()
        if not found_items:
            return ExtraItems(self.n_items, refreshed_at=time.time())
        if self.reader is None:
            from seqrec.text.features import ItemTextReader

            self.reader = ItemTextReader(self.ws)
        vecs, found = self.reader.read([i for i, _ in found_items])
        keep = np.flatnonzero(found)
        ids = tuple(found_items[k][0] for k in keep)
        if not ids:
            return ExtraItems(self.n_items, refreshed_at=time.time())
        text = torch.from_numpy(np.ascontiguousarray(vecs[keep])).to(self.device)
        vectors, bias = self.model.text_fusion.vectors(text)
        cols = range(self.n_items, self.n_items + len(ids))
        return ExtraItems(
            self.n_items,
            ids,
            vectors.float(),
            None if bias is None else bias.float(),
            dict(zip(ids, cols, strict=True)),
            {found_items[k][1]: c for k, c in zip(keep, cols, strict=True)},
            time.time(),
        )


__all__ = ["ExtraItems", "ExtraItemsSource"]
