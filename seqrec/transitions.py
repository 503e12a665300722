"""The learned transition bias: a score offset for the items that followed the newest item in
the training data, looked up by how often and how large a share (``transition_bias=true``).

A neural model scores item ``j`` after a sequence as a dot product ``h . e_j`` in ``d``
dimensions. That cannot hold an arbitrary sparse "item ``i`` is followed by these few items"
table for a whole catalogue (the softmax bottleneck: a rank-``d`` logit matrix), which is
exactly what a first-order Markov chain counts. This module adds the counted table as a
feature, not as a second model: for the newest item ``i`` and each of its ``TOP_SUCCESSORS``
most frequent successors ``j`` in the training data, the score of ``j`` gets

    a[b] + s[b] * log2(c(i, j) / c(i)),    b = min(floor(log2 c(i, j)), COUNT_BUCKETS - 1)

a line in the log of the transition's share whose intercept and slope depend on how often it
was counted (a pair seen once is weaker evidence than the same share of 200). The
``COUNT_BUCKETS x 2`` numbers, zero at the start (the plain model), are fitted on top of the
model's scores (:meth:`seqrec.models.SeqModel.item_loss`: the same cross-entropy with the
model's gradients stopped), so the data decide how far counted transitions are trusted beyond
what the model already scores, and the model trains as it would without them. With ``s = 1``
and ``a = 0`` the offsets rank a row's successors as a maximum-likelihood Markov chain does.
Items that never followed ``i`` get no offset.

Training counts the very transitions it trains on, so a training position's own transition is
left out of its features (``c - 1``, ``c(i) - 1``): without that, a pair seen once would
always be the target wherever it has a feature, and the table would learn to trust single
counts that are noise at test time.

The counts are buffers (CSR: row pointers, successor items, counts, row totals): they are saved
with the model, refitted from the current training data on every training run (a warm start
never copies them), and their sizes follow the data, so loading resizes them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: successors kept per item (the most frequent, ties by item index)
TOP_SUCCESSORS = 64
#: count buckets: floor(log2(c(i, j))), capped (1, 2-3, 4-7, ... 128+)
COUNT_BUCKETS = 8
#: buffer names (also in :data:`seqrec.models.DATA_BUFFERS`: never copied by a warm start)
BUFFERS = ("succ_ptr", "succ_item", "succ_count", "succ_total")


class PairCounter:
    """Counts (previous item, next item) pairs over any number of chunks (a streamed training
    set is read once, chunk by chunk); memory follows the distinct pairs, not the events."""

    def __init__(self, n_items: int):
        self.n_items = n_items
        self._keys: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []
        self._pending = 0

    def add(self, prev: np.ndarray, nxt: np.ndarray) -> None:
        """Count the pairs ``prev[k] -> nxt[k]`` (1-based items; 0 or out of range: skipped)."""
        prev, nxt = prev.reshape(-1).astype(np.int64), nxt.reshape(-1).astype(np.int64)
        real = (prev > 0) & (nxt > 0) & (prev < self.n_items) & (nxt < self.n_items)
        keys, counts = np.unique(prev[real] * self.n_items + nxt[real], return_counts=True)
        self._keys.append(keys)
        self._counts.append(counts)
        self._pending += len(keys)
        if self._pending > 4_000_000:  # merge: memory stays near the distinct pairs
            self._merge()

    def _merge(self) -> tuple[np.ndarray, np.ndarray]:
        keys = np.concatenate(self._keys) if self._keys else np.zeros(0, np.int64)
        counts = np.concatenate(self._counts) if self._counts else np.zeros(0, np.int64)
        uniq, inv = np.unique(keys, return_inverse=True)
        merged = np.bincount(inv.reshape(-1), weights=counts, minlength=len(uniq))
        self._keys, self._counts = [uniq], [merged.astype(np.int64)]
        self._pending = len(uniq)
        return uniq, self._counts[0]

    def table(
        self, top: int = TOP_SUCCESSORS
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """CSR successor counts of every item: row pointers [n_items + 1], successor items
        [nnz + 1] and their counts [nnz + 1] (each row's ``top`` most frequent, ties by item
        index), and each item's count of successors [n_items] (all of them, cut off or not).
        The last entry of items and counts is a sentinel (item 0, count 0) for empty slots."""
        n = self.n_items
        keys, counts = self._merge()
        row, item = keys // n, keys % n
        total = np.bincount(row, weights=counts, minlength=n).astype(np.float32)
        ptr, item, counts = top_per_row(row, item, counts, n, top)
        return (
            ptr,
            np.concatenate([item, [0]]).astype(np.int64),
            np.concatenate([counts, [0]]).astype(np.float32),
            total,
        )


def top_per_row(
    row: np.ndarray, item: np.ndarray, count: np.ndarray, n_rows: int, top: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse (row, item, count) entries, distinct per row, as CSR with each row's ``top``
    most frequent items first (ties by item index): row pointers [n_rows + 1], items, counts."""
    order = np.lexsort((item, -count, row))
    row, item, count = row[order], item[order], count[order]
    starts = np.searchsorted(row, row, side="left")
    keep = np.arange(len(row)) - starts < top
    row, item, count = row[keep], item[keep], count[keep]
    ptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=n_rows))]).astype(np.int64)
    return ptr, item, count


class TransitionBias(nn.Module):
    """Counted successors of each item and the learned offset table (see the module doc)."""

    succ_ptr: Tensor
    succ_item: Tensor
    succ_count: Tensor
    succ_total: Tensor

    def __init__(self, n_items: int, top: int = TOP_SUCCESSORS):
        super().__init__()
        self.n_items, self.top = n_items, top
        self.table = nn.Parameter(torch.zeros(COUNT_BUCKETS, 2))
        self.register_buffer("succ_ptr", torch.zeros(n_items + 1, dtype=torch.int64))
        self.register_buffer("succ_item", torch.zeros(1, dtype=torch.int64))
        self.register_buffer("succ_count", torch.zeros(1, dtype=torch.float32))
        self.register_buffer("succ_total", torch.zeros(n_items, dtype=torch.float32))

    def fit(self, items: Tensor, targets: Tensor) -> None:
        """Count the (item, next item) pairs of the training tensors [N, L] (targets 0 = none)."""
        counter = PairCounter(self.n_items)
        counter.add(items.detach().cpu().numpy(), targets.detach().cpu().numpy())
        self.fit_counted(counter)

    def fit_counted(self, counter: PairCounter) -> None:
        """Take the successor counts of ``counter``."""
        # one successor more than are scored: what a training position sees without its own
        # transition is the top of the counts without it, which may reach one further
        for name, arr in zip(BUFFERS, counter.table(self.top + 1), strict=True):
            old: Tensor = getattr(self, name)
            setattr(self, name, torch.as_tensor(arr).to(device=old.device, dtype=old.dtype))

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # the CSR arrays' sizes come from the data: take the stored sizes before copying
        for name in BUFFERS:
            buf, stored = self._buffers.get(name), state_dict.get(prefix + name)
            if buf is not None and stored is not None and stored.shape != buf.shape:
                self._buffers[name] = buf.new_empty(stored.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def offsets(self, prev: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(successor items [N, top + 1], their score offsets [N, top + 1]) after the items
        ``prev`` [N] (0 = none: no successors): the ``top`` most frequent successors; empty
        slots are item 0 with offset 0.

        ``targets`` [N] (training): each row's own transition ``prev -> target`` is left out
        of its counts, as it was counted from this very position, and the successors scored
        are the ``top`` most frequent of the counts without it: the same as a test position,
        whose transition was never counted, would see.
        """
        k = self.top + 1
        prev = torch.where((prev > 0) & (prev < self.n_items), prev, torch.zeros_like(prev))
        start = self.succ_ptr[prev]
        n = self.succ_ptr[prev + 1] - start
        slot = torch.arange(k, device=prev.device)
        idx = torch.where(slot < n[:, None], start[:, None] + slot, torch.full_like(n[:, None], -1))
        idx = torch.where(idx < 0, idx + self.succ_item.shape[0], idx)  # -1 -> the sentinel
        cols, count = self.succ_item[idx], self.succ_count[idx]
        total = self.succ_total[prev][:, None].expand_as(count)
        own = torch.zeros_like(cols, dtype=torch.bool)
        if targets is not None:
            own = (cols == targets[:, None]) & (count > 0)
            count = count - own.to(count.dtype)
            total = total - (prev > 0)[:, None].to(total.dtype)
        real = count > 0
        shown = slot < self.top  # stored most frequent first: the last slot is one too many
        if targets is not None:
            # the ``top`` most frequent of the counts left (ties: the lower item index): only
            # the target's count fell, so it may drop below the next one, which then comes in
            key = count.long() * (self.n_items + 1) - cols  # larger ranks first
            dropped = (own & shown & (key < key[:, -1:]) & real[:, -1:]).any(1, keepdim=True)
            shown = torch.where(dropped, ~(own & shown), shown)
        real = real & shown
        safe = torch.where(real, count, torch.ones_like(count))
        log_share = torch.log2(safe / total.clamp(min=1.0))  # <= 0
        cb = torch.log2(safe).floor().long().clamp(0, COUNT_BUCKETS - 1)
        # [N, k, 2]: intercept and slope of each slot's count bucket (a one-hot product: its
        # gradient is a small matrix product, not an accumulating scatter)
        with torch.autocast(prev.device.type, enabled=False):  # as served: full precision
            line = F.one_hot(cb, COUNT_BUCKETS).to(self.table.dtype) @ self.table
        vals = (line[..., 0] + line[..., 1] * log_share) * real.to(self.table.dtype)
        return torch.where(real, cols, torch.zeros_like(cols)), vals
