"""How much one model beats another on the same validation examples, and how surely.

``seqrec tune`` uses it to decide whether its best trial is better than the configuration the
study started from, or only luckier: the best of many trials on one validation split is
biased upwards, and a gain within the noise of the split does not carry over to new data.
"""

from __future__ import annotations

import numpy as np

from seqrec.evaluation.classification import roc_auc
from seqrec.evaluation.metrics import ndcg_per_example

#: bootstrap resamples for the ROC-AUC difference of two classifiers (bounded cost)
N_BOOT = 200


def paired_gain(
    metric: str,
    base: np.ndarray,
    other: np.ndarray,
    labels: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """(gain, standard error) of ``other`` over ``base`` on the same examples.

    ``metric`` ``ndcg@10``: ``base``/``other`` are each example's target rank; the gain is the
    mean per-example difference and its standard error ``sd / sqrt(n)``. ``roc_auc``: they are
    class probabilities [N, C] for ``labels`` [N]; the gain is the ROC-AUC difference and its
    standard error the sd over ``N_BOOT`` paired bootstrap resamples.
    """
    if len(base) != len(other):
        raise ValueError(f"paired_gain: {len(base)} examples against {len(other)}")
    n = len(base)
    if n < 2:
        return 0.0, float("inf")
    if metric == "ndcg@10":
        d = ndcg_per_example(other, 10) - ndcg_per_example(base, 10)
        return float(d.mean()), float(d.std(ddof=1) / np.sqrt(n))
    if metric != "roc_auc":
        raise ValueError(f"paired_gain: unknown metric {metric!r}")
    if labels is None:
        raise ValueError("paired_gain: roc_auc needs the labels")
    y = np.asarray(labels)

    def auc(p: np.ndarray, idx: np.ndarray) -> float:
        return roc_auc(y[idx], p[idx])

    every = np.arange(n)
    gain = auc(other, every) - auc(base, every)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(N_BOOT):
        idx = rng.integers(0, n, n)
        diffs.append(auc(other, idx) - auc(base, idx))
    d = np.asarray(diffs)
    d = d[np.isfinite(d)]  # a resample with one class only has no ROC-AUC
    return gain, float(d.std(ddof=1)) if len(d) > 1 else float("inf")
