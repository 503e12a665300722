"""The ``markov`` baseline: item-to-item transitions counted in the training data.

Scores for the next item come from the newest item ``a`` of the sequence (and, with
``order=2``, the one before it). Each context's successor distribution is the posterior mean
under a Dirichlet prior centred on the lower order, with ``alpha`` pseudo-counts (the
hierarchical Dirichlet language model of MacKay & Peto, 1995)::

    P1(b | a)    = (c(a, b) + alpha * Ppop(b)) / (c(a) + alpha)
    P2(b | z, a) = (c(z, a, b) + alpha * P1(b | a)) / (c(z, a) + alpha)

``Ppop`` is the training popularity. A context never seen in training has ``c = 0`` and backs
off entirely: an unknown newest item scores by popularity, an unknown pair by first order. The
more often a context was seen, the less the prior matters.

Storage is sparse: per context, its ``max_successors`` most frequent successors in CSR form
(row pointers, item indices, probabilities), never a dense items x items matrix. Successors cut
off keep their share of the context count in the denominator and score by the prior alone.
Scoring gathers a fixed ``max_successors`` slots per row, so it is vectorised and traces with
TorchScript. The statistics are buffers: they save with the model (safetensors) and their sizes
follow the data, so loading resizes them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from seqrec.errors import SeqrecError
from seqrec.hookspecs import hookimpl
from seqrec.models import Batch, ModelContext, ModelSpec, SeqModel
from seqrec.transitions import top_per_row

DEFAULTS: dict[str, Any] = {
    "order": 1,  # 1: the newest item; 2: the newest two, backing off to 1
    "alpha": 1.0,  # Dirichlet prior strength in pseudo-counts (> 0)
    "max_successors": 100,  # successors kept per context (the most frequent)
    "repeat_bias": False,  # a counting model has no learned repeat bias
}
#: sentinel key of the pair table: larger than any real pair key, so lookups never match it
_NO_PAIR = torch.iinfo(torch.int64).max


def _check_params(p: dict[str, Any]) -> tuple[int, float, int]:
    order, alpha, top = p["order"], p["alpha"], p["max_successors"]
    if order not in (1, 2) or isinstance(order, bool):
        raise SeqrecError(f"markov: order must be 1 or 2, got {order!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise SeqrecError(
            f"markov: alpha must be a number > 0, got {alpha!r}",
            hint="it is the prior strength in pseudo-counts, e.g. --param alpha=1",
        )
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise SeqrecError(f"markov: max_successors must be an integer >= 1, got {top!r}")
    if p.get("repeat_bias"):
        raise SeqrecError(
            "markov has no repeat bias (it is counted, not trained)",
            hint="drop --param repeat_bias=true; --exclude-seen masks seen items instead",
        )
    return int(order), float(alpha), int(top)


def _successor_table(
    rows: np.ndarray, nxt: np.ndarray, n_rows: int, alpha: float, top: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sparse successor probabilities of each context row from (row, next item) pairs.

    Returns backoff weights [n_rows] (``alpha / (c + alpha)``), CSR pointers [n_rows + 1],
    successor items [nnz + 1] and their ``c(row, b) / (c + alpha)`` [nnz + 1]; the last entry
    is a sentinel (item 0, probability 0) that empty slots point at.
    """
    total = np.bincount(rows, minlength=n_rows).astype(np.float64)  # c(row)
    weight = alpha / (total + alpha)
    if len(rows):
        width = int(nxt.max()) + 1
        pair, count = np.unique(rows * width + nxt, return_counts=True)
        ptr, item, count = top_per_row(pair // width, pair % width, count, n_rows, top)
        row = np.repeat(np.arange(n_rows), np.diff(ptr))
        prob = count / (total[row] + alpha)
    else:
        item = np.zeros(0, dtype=np.int64)
        prob = np.zeros(0)
        ptr = np.zeros(n_rows + 1, dtype=np.int64)
    return (
        weight,
        ptr,
        np.concatenate([item, [0]]).astype(np.int64),
        np.concatenate([prob, [0.0]]),
    )


class Markov(SeqModel):
    """Next item from the newest item(s) by smoothed transition counts (see the module doc)."""

    def __init__(self, ctx: ModelContext):
        super().__init__(ctx)
        self.order, self.alpha, self.top = _check_params(ctx.params)
        V = ctx.n_items
        f32, i64 = torch.float32, torch.int64
        self.pop: Tensor
        self.w1: Tensor
        self.ptr1: Tensor
        self.item1: Tensor
        self.prob1: Tensor
        self.pair_key: Tensor
        self.w2: Tensor
        self.ptr2: Tensor
        self.item2: Tensor
        self.prob2: Tensor
        self.register_buffer("pop", torch.zeros(V, dtype=f32))  # Ppop(b)
        self.register_buffer("w1", torch.ones(V, dtype=f32))  # backoff weight of item a
        self.register_buffer("ptr1", torch.zeros(V + 1, dtype=i64))
        self.register_buffer("item1", torch.zeros(1, dtype=i64))
        self.register_buffer("prob1", torch.zeros(1, dtype=f32))
        if self.order == 2:  # pair contexts (z, a), sorted by key z * V + a; last = sentinel
            self.register_buffer("pair_key", torch.full((1,), _NO_PAIR, dtype=i64))
            self.register_buffer("w2", torch.ones(1, dtype=f32))
            self.register_buffer("ptr2", torch.zeros(2, dtype=i64))
            self.register_buffer("item2", torch.zeros(1, dtype=i64))
            self.register_buffer("prob2", torch.zeros(1, dtype=f32))

    def fit_statistics(self, items: Tensor, targets: Tensor) -> None:
        V = self.ctx.n_items
        x = items.detach().cpu().numpy().astype(np.int64)  # [N, L]
        y = targets.detach().cpu().numpy().astype(np.int64)  # [N, L] next item, 0 = none
        y = np.where(y < V, y, 0)
        x = np.where(x < V, x, 0)
        real = (x > 0) & (y > 0)
        pop = np.bincount(y[y > 0], minlength=V).astype(np.float64)
        pop /= max(pop.sum(), 1.0)
        self._set("pop", pop)
        w1, ptr1, item1, prob1 = _successor_table(x[real], y[real], V, self.alpha, self.top)
        for name, arr in (("w1", w1), ("ptr1", ptr1), ("item1", item1), ("prob1", prob1)):
            self._set(name, arr)
        if self.order == 2:
            z = np.pad(x, ((0, 0), (1, 0)))[:, :-1]  # the item before each position
            both = real & (z > 0)
            keys, rows = np.unique(z[both] * V + x[both], return_inverse=True)
            w2, ptr2, item2, prob2 = _successor_table(
                rows.reshape(-1), y[both], len(keys), self.alpha, self.top
            )
            self._set("pair_key", np.concatenate([keys, [_NO_PAIR]]))
            self._set("w2", np.concatenate([w2, [1.0]]))
            self._set("ptr2", np.concatenate([ptr2, ptr2[-1:]]))
            for name, arr in (("item2", item2), ("prob2", prob2)):
                self._set(name, arr)

    def _set(self, name: str, values: np.ndarray) -> None:
        old: Tensor = getattr(self, name)
        setattr(self, name, torch.as_tensor(values).to(device=old.device, dtype=old.dtype))

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # the tables' sizes come from the data: take the stored sizes before copying
        for name, buf in self._buffers.items():
            stored = state_dict.get(prefix + name)
            if buf is not None and stored is not None and stored.shape != buf.shape:
                self._buffers[name] = buf.new_empty(stored.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _gather(
        self, ptr: Tensor, item: Tensor, prob: Tensor, row: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Successor items and probabilities [B, top] of context rows ``row`` [B]; empty slots
        point at the sentinel (item 0, probability 0)."""
        start = ptr[row]
        count = ptr[row + 1] - start
        slot = torch.arange(self.top, device=row.device)
        idx = torch.where(
            slot < count[:, None], start[:, None] + slot, torch.full_like(start[:, None], -1)
        )
        idx = torch.where(idx < 0, idx + item.shape[0], idx)  # -1 -> the sentinel (last)
        return item[idx], prob[idx]

    def next_item_scores(self, batch: Batch) -> Tensor:
        V = self.ctx.n_items
        last = batch.items[:, -1].clamp(0, V - 1)  # [B]; 0 (empty) -> popularity
        weight = self.w1[last]  # [B] share of the prior (popularity)
        cols, vals = self._gather(self.ptr1, self.item1, self.prob1, last)  # [B, top]
        if self.order == 2:
            prev = F.pad(batch.items, (1, 0))[:, -2].clamp(0, V - 1)  # 0 when there is none
            key = prev * V + last
            pos = torch.searchsorted(self.pair_key, key).clamp(max=self.pair_key.shape[0] - 1)
            found = (self.pair_key[pos] == key) & (prev > 0) & (last > 0)
            row2 = torch.where(found, pos, torch.full_like(pos, self.pair_key.shape[0] - 1))
            w2 = self.w2[row2]  # 1 for an unseen pair: all first order
            cols2, vals2 = self._gather(self.ptr2, self.item2, self.prob2, row2)
            weight = weight * w2
            cols, vals = torch.cat([cols, cols2], 1), torch.cat([vals * w2[:, None], vals2], 1)
        scores = weight[:, None] * self.pop[None, :]  # [B, V]
        return scores.scatter_add(1, cols, vals.to(scores.dtype))


@hookimpl(trylast=True)
def register_models(register) -> None:  # type: ignore[no-untyped-def]
    register(
        ModelSpec(
            name="markov",
            build=Markov,
            tasks=("next-item",),
            description="item-to-item transition counts (order 1 or 2), popularity backoff",
            defaults=DEFAULTS,
        )
    )
