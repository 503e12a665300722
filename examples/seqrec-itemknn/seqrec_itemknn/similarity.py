"""Item-to-item cosine similarity from co-occurrence in the training tensors (numpy only).

The shared trainer hands a next-item model left-padded ``items`` [N, L] and ``targets``
[N, L], the item after each position (0 where the position is not trained on). Every
training event but each user's first is the target of exactly one position, so counting
around targets counts each event, and each pair of events, once::

    n(i)    = how many training targets are item i
    c(i, j) = how many pairs of events (a before b, b a training target, b at most ``window``
              events after a in the same training row) have the items {i, j}, i != j
    sim(i, j) = c(i, j) / (sqrt(n(i) * n(j)) + shrinkage)        (0 where that is 0 / 0)

``window = 0`` counts every earlier event of the row. Where each user has an item at most
once and the whole history fits in a row, ``c(i, j)`` is the number of users with both items
and ``n(i)`` (nearly: a user's first event is no target) the number with ``i``: the classic
item-based cosine (Sarwar et al., 2001) with a shrunk denominator (Koren, 2008).

Only the ``top`` most similar items of each row are kept, as a CSR matrix: row pointers
[V + 1], neighbour items and similarities [nnz + 1]. The last entry is a sentinel (item 0,
similarity 0) that empty slots point at. No dense V x V array is ever built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Neighbours:
    """The top-M neighbours of every item in CSR form (see the module doc)."""

    ptr: np.ndarray  # [V + 1] int64: row i is items[ptr[i]:ptr[i + 1]]
    items: np.ndarray  # [nnz + 1] int64, most similar first, then by item index; + sentinel 0
    sims: np.ndarray  # [nnz + 1] float64; + sentinel 0.0
    counts: np.ndarray  # [V] int64: n(i), how many training targets are item i


def target_counts(targets: np.ndarray, n_items: int) -> np.ndarray:
    """[V] n(i): how many training targets are item i (padding and 0-targets not counted)."""
    y = targets[(targets > 0) & (targets < n_items)]
    return np.bincount(y, minlength=n_items).astype(np.int64)


def pair_counts(
    items: np.ndarray, targets: np.ndarray, n_items: int, window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Co-occurrence counts ``c(i, j)``, i < j, as three arrays (i, j, count), sorted by (i, j).

    A target at column p follows the events at columns p, p - 1, ... (distance 1, 2, ...); a
    pair is counted for each distance up to ``window`` (0: the whole row).
    """
    V = n_items
    x = np.where(items < V, items, 0).astype(np.int64)  # items newer than V: unknown
    y = np.where(targets < V, targets, 0).astype(np.int64)
    L = x.shape[1]
    reach = L if window == 0 else min(window, L)
    keys: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    for d in range(1, reach + 1):
        a, b = x[:, : L - d + 1], y[:, d - 1 :]  # a is d events before target b
        ok = (a > 0) & (b > 0) & (a != b)
        lo, hi = np.minimum(a[ok], b[ok]), np.maximum(a[ok], b[ok])
        k, c = np.unique(lo * V + hi, return_counts=True)
        keys.append(k)
        counts.append(c)
    key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    cnt = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    uniq, inverse = np.unique(key, return_inverse=True)
    total = np.bincount(inverse.reshape(-1), weights=cnt, minlength=len(uniq)).astype(np.int64)
    return uniq // V, uniq % V, total


def cosine(
    ci: np.ndarray, cj: np.ndarray, c: np.ndarray, n: np.ndarray, shrinkage: float
) -> np.ndarray:
    """``c / (sqrt(n[ci] * n[cj]) + shrinkage)``, 0 where the denominator is 0."""
    den = np.sqrt(n[ci].astype(np.float64) * n[cj]) + shrinkage
    return np.divide(c, den, out=np.zeros(len(c)), where=den > 0)


def top_neighbours(
    items: np.ndarray, targets: np.ndarray, n_items: int, window: int, shrinkage: float, top: int
) -> Neighbours:
    """The ``top`` most similar items of every item (ties: the smaller item index first)."""
    n = target_counts(targets, n_items)
    ci, cj, c = pair_counts(items, targets, n_items, window)
    sim = cosine(ci, cj, c, n, shrinkage)
    keep = sim > 0
    row = np.concatenate([ci[keep], cj[keep]])  # both directions: the matrix is symmetric
    col = np.concatenate([cj[keep], ci[keep]])
    val = np.concatenate([sim[keep], sim[keep]])
    order = np.lexsort((col, -val, row))  # per row: most similar first, ties by index
    row, col, val = row[order], col[order], val[order]
    rank = np.arange(len(row)) - np.searchsorted(row, row, side="left")
    row, col, val = row[rank < top], col[rank < top], val[rank < top]
    ptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=n_items))]).astype(np.int64)
    return Neighbours(
        ptr=ptr,
        items=np.concatenate([col, [0]]).astype(np.int64),
        sims=np.concatenate([val, [0.0]]),
        counts=n,
    )
