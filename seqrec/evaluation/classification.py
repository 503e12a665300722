"""Classification metrics: accuracy, precision, recall, F1, ROC-AUC, PR-AUC, confusion matrix.

Binary tasks use class 1 as positive and a decision threshold (tuned on validation to maximise
F1); multi-class tasks use the arg-max and macro averages (one-vs-rest for the AUCs).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _auc_roc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum statistic (ties get average ranks)."""
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # 1-based rank of each distinct score's last occurrence
    ranks = (last - (counts - 1) / 2.0)[inverse]  # average ranks over ties
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """ROC-AUC of class probabilities [N, C] for labels [N]: of class 1 when C is 2, else the
    mean over the classes present of one class against the rest (as ``classification_metrics``)."""
    y = np.asarray(y, dtype=np.int64)
    if probs.shape[1] == 2:
        return _auc_roc(y, probs[:, 1])
    rocs = [_auc_roc((y == c).astype(np.int64), probs[:, c]) for c in np.unique(y)]
    return float(np.nanmean(rocs)) if rocs and not np.isnan(rocs).all() else float("nan")


def _auc_pr(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision (step-wise area under the precision-recall curve)."""
    n_pos = int((y == 1).sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y_sorted, s_sorted = y[order], s[order]
    # evaluate only at distinct score thresholds (ties form one step)
    last_of_tie = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    tp = np.cumsum(y_sorted == 1)[last_of_tie]
    k = np.arange(1, len(y) + 1)[last_of_tie]
    precision = tp / k
    recall = tp / n_pos
    prev_recall = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev_recall) * precision))


def _prf(y: np.ndarray, pred: np.ndarray, cls: int) -> tuple[float, float, float]:
    tp = int(((pred == cls) & (y == cls)).sum())
    fp = int(((pred == cls) & (y != cls)).sum())
    fn = int(((pred != cls) & (y == cls)).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def best_threshold(y: np.ndarray, p1: np.ndarray) -> float:
    """The threshold on P(class 1) that maximises F1 (validation-set tuning): the smallest
    of the distinct values of ``p1`` and 0.5 with the highest F1 of ``p1 >= threshold``.

    O(n log n): one sort, then true and false positives at every candidate from cumulative
    counts (F1 computed as :func:`_prf` does, so the choice is the same as trying each)."""
    p1 = np.asarray(p1, dtype=np.float64)
    candidates = np.unique(np.r_[p1, 0.5])  # ascending
    order = np.argsort(p1, kind="stable")
    positive = np.asarray(y)[order] == 1
    below = np.r_[0, np.cumsum(positive)]  # positives among the i smallest scores
    n_pos = int(below[-1])
    first = np.searchsorted(p1[order], candidates, side="left")  # first score >= candidate
    tp = n_pos - below[first]
    predicted = len(p1) - first  # tp + fp
    precision = np.divide(tp, predicted, out=np.zeros(len(tp)), where=predicted > 0)
    recall = tp / n_pos if n_pos else np.zeros(len(tp))  # tp + fn = n_pos
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros(len(tp)), where=total > 0)
    return float(candidates[int(np.argmax(f1))])


def classification_metrics(
    y: np.ndarray, probs: np.ndarray, threshold: float | None = None
) -> dict[str, Any]:
    """All metrics for labels ``y`` [N] and class probabilities ``probs`` [N, C]."""
    y = np.asarray(y, dtype=np.int64)
    n_classes = probs.shape[1]
    if n_classes == 2:
        t = 0.5 if threshold is None else threshold
        pred = (probs[:, 1] >= t).astype(np.int64)
        p, r, f = _prf(y, pred, 1)
        roc, pr = roc_auc(y, probs), _auc_pr(y, probs[:, 1])
        extra: dict[str, Any] = {"threshold": t, "positive_rate": float((y == 1).mean())}
    else:
        pred = probs.argmax(axis=1)
        per = [_prf(y, pred, c) for c in range(n_classes)]
        present = [c for c in range(n_classes) if (y == c).any()]
        p = float(np.mean([per[c][0] for c in present])) if present else 0.0
        r = float(np.mean([per[c][1] for c in present])) if present else 0.0
        f = float(np.mean([per[c][2] for c in present])) if present else 0.0
        prs = [_auc_pr((y == c).astype(np.int64), probs[:, c]) for c in present]
        roc = roc_auc(y, probs)
        pr = float(np.nanmean(prs)) if prs else float("nan")
        extra = {"classes_present": len(present)}
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    return {
        "accuracy": float((pred == y).mean()) if len(y) else 0.0,
        "precision": float(p),
        "recall": float(r),
        "f1": float(f),
        "roc_auc": roc,
        "pr_auc": pr,
        "confusion_matrix": confusion.tolist(),
        "examples": len(y),
        **extra,
    }
