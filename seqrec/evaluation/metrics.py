"""Ranking metrics over the full catalogue (no sampled negatives).

With one target per user, a target's rank r (0 = top) gives: HR@K = Recall@K = [r < K],
NDCG@K = 1 / log2(r + 2) if r < K, MRR@K = 1 / (r + 1) if r < K. Ties are counted against the
target (pessimistic), so a model that scores everything equally gets no credit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor


def target_ranks(scores: Tensor, targets: Tensor) -> Tensor:
    """[B] 0-based rank of each target in its row of ``scores`` [B, V] (ties count against)."""
    target_scores = scores.gather(1, targets.view(-1, 1))
    better_or_equal = (scores >= target_scores).sum(dim=1)
    return better_or_equal - 1  # the target itself is not ahead of itself


def ndcg_per_example(ranks: np.ndarray, k: int) -> np.ndarray:
    """Each target's NDCG@K for its 0-based rank (one relevant item: 1 / log2(rank + 2))."""
    r = np.asarray(ranks, dtype=np.float64)
    return np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)


def ranking_metrics(ranks: Iterable[int] | np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Mean Recall@K (= HR@K), NDCG@K and MRR@K over targets with the given ranks."""
    r = np.asarray(list(ranks) if not isinstance(ranks, np.ndarray) else ranks, dtype=np.float64)
    out: dict[str, float] = {}
    if r.size == 0:
        return {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg", "mrr")}
    for k in ks:
        hit = r < k
        out[f"recall@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(ndcg_per_example(r, k).mean())
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / (r + 1.0), 0.0).mean())
    return out


def mask_scores(scores: Tensor, exclude: Tensor | None = None) -> Tensor:
    """Padding (column 0) and, optionally, excluded items [B, V] bool get -inf."""
    scores = scores.float().clone()
    scores[:, 0] = -torch.inf
    if exclude is not None:
        scores.masked_fill_(exclude, -torch.inf)
    return scores
