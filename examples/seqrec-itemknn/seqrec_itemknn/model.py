"""The ``itemknn`` model: next item = similarity-weighted sum over the user's recent items.

Fitting (once, by the shared trainer, from the training tensors) builds the top-M cosine
neighbours of every item (:mod:`seqrec_itemknn.similarity`). Scoring a history ``h`` (newest
last) gives every item j::

    score(j) = sum over history positions t of decay**age(t) * sim(h[t], j)
               + POPULARITY_TIEBREAK * pop(j)

``age`` is 0 for the newest event. ``pop(j)`` is j's share of the most frequent target's
count, in [0, 1]: with a weight of 1e-6 it only orders the items that no history item is
similar to (an empty history, unknown items) by popularity instead of by index. Padding
(column 0) scores the lowest float, so it is never ranked. Items newer than the model count as
padding.

The neighbours are buffers (CSR: pointers, items, similarities), saved with the model by the
platform (safetensors); their sizes follow the data, so loading resizes them first. Scoring
gathers a fixed number of neighbour slots per history item: vectorised, and it traces with
TorchScript, so the service runs the traced graph.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from seqrec.models import Batch, ModelContext, SeqModel
from seqrec_itemknn.params import ItemKNNParams
from seqrec_itemknn.similarity import top_neighbours

#: weight of the popularity term: small enough to only break ties (see the module doc)
POPULARITY_TIEBREAK = 1e-6


class ItemKNN(SeqModel):
    """Item-based k nearest neighbours over co-occurrence in users' sequences."""

    def __init__(self, ctx: ModelContext):
        self.hp = ItemKNNParams.from_params(ctx.params)
        super().__init__(ctx)
        V = ctx.n_items
        #: neighbour slots gathered per history item (a row never has more)
        self.slots = max(1, min(self.hp.neighbours, V - 1))
        self.ptr: Tensor
        self.nbr_items: Tensor
        self.nbr_sims: Tensor
        self.pop: Tensor
        self.register_buffer("ptr", torch.zeros(V + 1, dtype=torch.int64))
        self.register_buffer("nbr_items", torch.zeros(1, dtype=torch.int64))  # sentinel only
        self.register_buffer("nbr_sims", torch.zeros(1, dtype=torch.float32))
        self.register_buffer("pop", torch.zeros(V, dtype=torch.float32))

    def fit_statistics(self, items: Tensor, targets: Tensor) -> None:
        """Count co-occurrences in the training tensors and keep the top neighbours."""
        nb = top_neighbours(
            items.detach().cpu().numpy(),
            targets.detach().cpu().numpy(),
            self.ctx.n_items,
            self.hp.window,
            float(self.hp.shrinkage),
            self.hp.neighbours,
        )
        pop = nb.counts / max(int(nb.counts.max(initial=0)), 1)
        for name, arr in (
            ("ptr", nb.ptr),
            ("nbr_items", nb.items),
            ("nbr_sims", nb.sims),
            ("pop", pop),
        ):
            old: Tensor = getattr(self, name)
            setattr(self, name, torch.as_tensor(arr).to(device=old.device, dtype=old.dtype))

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # the neighbour lists' sizes come from the data: take the stored sizes before copying
        for name, buf in self._buffers.items():
            stored = state_dict.get(prefix + name)
            if buf is not None and stored is not None and stored.shape != buf.shape:
                self._buffers[name] = buf.new_empty(stored.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def similar_items(self, item: int) -> list[tuple[int, float]]:
        """The stored neighbours of ``item`` (index), most similar first: (index, similarity)."""
        lo, hi = int(self.ptr[item]), int(self.ptr[item + 1])
        return [
            (int(i), float(s))
            for i, s in zip(self.nbr_items[lo:hi], self.nbr_sims[lo:hi], strict=True)
        ]

    def next_item_scores(self, batch: Batch) -> Tensor:
        V = self.ctx.n_items
        x = torch.where(batch.items < V, batch.items, torch.zeros_like(batch.items))  # [B, L]
        B = x.shape[0]
        age = torch.ones_like(x).flip(1).cumsum(1).flip(1) - 1  # [B, L] 0 = newest column
        weight = torch.pow(self.hp.decay, age.float()) * (x > 0)  # [B, L]
        start = self.ptr[x]  # [B, L]
        count = self.ptr[x + 1] - start
        slot = torch.arange(self.slots, device=x.device)  # [M]
        idx = start.unsqueeze(-1) + slot  # [B, L, M]
        sentinel = torch.full_like(idx, self.nbr_items.shape[0] - 1)
        idx = torch.where(slot < count.unsqueeze(-1), idx, sentinel)
        cols = self.nbr_items[idx].reshape(B, -1)  # [B, L * M]
        vals = (self.nbr_sims[idx] * weight.unsqueeze(-1)).reshape(B, -1)
        base = (POPULARITY_TIEBREAK * self.pop).unsqueeze(0).repeat(B, 1)  # [B, V]
        scores = base.scatter_add(1, cols, vals.to(base.dtype))  # [B, V]
        padding = torch.arange(V, device=x.device) == 0  # column 0: never ranked
        return scores.masked_fill(padding, torch.finfo(scores.dtype).min)
