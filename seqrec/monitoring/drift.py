"""Drift between the training window and the newest window, as population stability indices.

PSI = sum over bins of (c - r) * ln(c / r), where r and c are the shares of the reference
(training window) and current (newest window) populations in each bin, both floored at
``EPS``. Bins are fixed by the reference: quantile bins for continuous values, one bin per
category for categorical ones. The usual reading: below 0.1 stable, 0.1-0.2 moderate, above
0.2 a significant shift (the default threshold).

Features, from the training data of a run (:func:`seqrec.pipeline.build_data`):

Continuous features get up to ``N_BINS`` quantile bins, fewer on small windows.

- ``sequence_length``: input events per example; each user's sequence at the end of the
  training window (validation examples) vs at the newest cutoff (test examples).
- ``event_type``: the mix of event types; events of the training inputs vs the newest event
  before each test example's cutoff.
- ``item_popularity``: those same events over popularity deciles of the reference items
  (decile 1 = most popular), with a bin for items the reference never saw; next-item test
  targets count as newest events too.
- ``score``: the model's confidence, the top-1 probability (next-item) or the predicted
  probability of the positive class (binary classifiers; the top class otherwise), on the
  validation vs the test examples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from seqrec.errors import SeqrecError, log_caught

#: what computing drift fails with when its input is missing or unusable (a model gone or
#: damaged, a window too small); anything else is a bug, logged with its traceback
DRIFT_FAILURES: tuple[type[BaseException], ...] = (SeqrecError, OSError, ValueError)

#: the usual "significant shift" PSI
DEFAULT_THRESHOLD = 0.2
#: floor of a bin's share, so empty bins give a large but finite PSI
EPS = 1e-4
#: quantile bins of continuous features (at most)
N_BINS = 10
#: examples of the smaller population per quantile bin (at least): fewer bins on small windows,
#: so that sampling noise alone (about (bins - 1) * (1/n_ref + 1/n_cur)) stays small
MIN_PER_BIN = 25


@dataclass
class FeatureDrift:
    """PSI of one feature, with the binned shares it was computed from."""

    name: str
    psi: float
    flagged: bool
    bins: list[str]
    reference: list[float]
    current: list[float]
    n_reference: int
    n_current: int


@dataclass
class DriftResult:
    """PSI per feature, the threshold, and whether any feature crossed it."""

    threshold: float
    features: list[FeatureDrift] = field(default_factory=list)
    error: str | None = None

    @property
    def flagged(self) -> bool:
        return any(f.flagged for f in self.features)

    def psi(self) -> dict[str, float]:
        return {f.name: f.psi for f in self.features}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["flagged"] = self.flagged
        out["psi"] = self.psi()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DriftResult:
        return cls(
            threshold=float(d.get("threshold", DEFAULT_THRESHOLD)),
            features=[
                FeatureDrift(**{k: f[k] for k in FeatureDrift.__dataclass_fields__})
                for f in d.get("features") or []
            ],
            error=d.get("error"),
        )


def psi(reference: np.ndarray, current: np.ndarray, eps: float = EPS) -> float:
    """PSI of two histograms over the same bins (counts or shares)."""
    r = np.asarray(reference, dtype=np.float64)
    c = np.asarray(current, dtype=np.float64)
    r = np.maximum(r / max(r.sum(), 1e-12), eps)
    c = np.maximum(c / max(c.sum(), 1e-12), eps)
    return float(np.sum((c - r) * np.log(c / r)))


def quantile_edges(reference: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Interior bin edges at the reference's quantiles (duplicates merged)."""
    qs = np.quantile(np.asarray(reference, dtype=np.float64), np.linspace(0, 1, n_bins + 1))
    return np.unique(qs[1:-1])


def continuous_drift(
    name: str,
    reference: np.ndarray,
    current: np.ndarray,
    threshold: float,
    n_bins: int | None = None,
) -> FeatureDrift:
    """PSI over quantile bins of ``reference`` (right-closed: ``x <= edge``); ``n_bins``
    defaults to ``N_BINS``, fewer when a population is small (``MIN_PER_BIN``)."""
    reference, current = np.asarray(reference, np.float64), np.asarray(current, np.float64)
    if n_bins is None:
        n_bins = int(np.clip(min(len(reference), len(current)) // MIN_PER_BIN, 2, N_BINS))
    edges = quantile_edges(reference, n_bins) if len(reference) else np.array([])
    n = len(edges) + 1
    r = np.bincount(np.searchsorted(edges, reference, side="left"), minlength=n)
    c = np.bincount(np.searchsorted(edges, current, side="left"), minlength=n)
    bounds = [-np.inf, *edges.tolist(), np.inf]
    bins = [_interval(bounds[i], bounds[i + 1]) for i in range(n)]
    return _feature(name, r, c, bins, threshold)


def categorical_drift(
    name: str,
    reference: np.ndarray,
    current: np.ndarray,
    threshold: float,
    names: list[str] | None = None,
) -> FeatureDrift:
    """PSI over the categories (non-negative ints) seen in either population."""
    reference, current = np.asarray(reference, np.int64), np.asarray(current, np.int64)
    n = int(max(reference.max(initial=-1), current.max(initial=-1))) + 1
    r, c = np.bincount(reference, minlength=n), np.bincount(current, minlength=n)
    keep = np.flatnonzero((r + c) > 0)
    bins = [names[i] if names and i < len(names) and names[i] else str(i) for i in keep]
    return _feature(name, r[keep], c[keep], bins, threshold)


def popularity_deciles(ref_items: np.ndarray, n_items: int) -> np.ndarray:
    """[n_items] bin of each item: 0-9 the popularity decile among the items the reference
    saw (0 = most popular), 10 for items it never saw."""
    counts = np.bincount(np.asarray(ref_items, np.int64), minlength=n_items)[:n_items]
    counts[0] = 0  # padding
    seen = np.flatnonzero(counts > 0)
    order = seen[np.argsort(-counts[seen], kind="stable")]
    out = np.full(n_items, 10, dtype=np.int64)
    out[order] = np.arange(len(order)) * 10 // max(1, len(order))
    return out


def _feature(
    name: str, r: np.ndarray, c: np.ndarray, bins: list[str], threshold: float
) -> FeatureDrift:
    nr, nc = int(r.sum()), int(c.sum())
    value = psi(r, c) if nr and nc else 0.0
    return FeatureDrift(
        name=name,
        psi=round(value, 6),
        flagged=bool(value > threshold),
        bins=bins,
        reference=[round(float(x) / max(nr, 1), 6) for x in r],
        current=[round(float(x) / max(nc, 1), 6) for x in c],
        n_reference=nr,
        n_current=nc,
    )


def _interval(lo: float, hi: float) -> str:
    if lo == -np.inf:
        return f"<= {hi:.4g}"
    if hi == np.inf:
        return f"> {lo:.4g}"
    return f"({lo:.4g}, {hi:.4g}]"


def compute_drift(
    data: Any,
    *,
    scores: tuple[np.ndarray, np.ndarray] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    event_type_names: list[str] | None = None,
) -> DriftResult:
    """Every feature's PSI from a run's training data (``NextItemData`` or
    ``ClassificationData``) and, optionally, the model's (validation, test) scores
    (:func:`model_scores`)."""
    train, valid, test = data.train, data.valid, data.test
    lengths = (valid.items > 0).sum(axis=1), (test.items > 0).sum(axis=1)
    ref_mask = train.items > 0
    newest = test.items[:, -1] > 0
    ref_types, cur_types = train.types[ref_mask], test.types[:, -1][newest]
    ref_items, cur_items = train.items[ref_mask], test.items[:, -1][newest]
    if not hasattr(data, "n_classes"):  # next-item: the newest targets are events too
        cur_items = np.concatenate([cur_items, test.labels[test.labels > 0]])
    decile = popularity_deciles(ref_items, data.n_items)
    out = DriftResult(threshold=threshold)
    out.features.append(continuous_drift("sequence_length", *lengths, threshold))
    out.features.append(
        categorical_drift("event_type", ref_types, cur_types, threshold, event_type_names)
    )
    names = [f"decile {i + 1}" for i in range(10)] + ["unseen"]
    out.features.append(
        categorical_drift(
            "item_popularity", decile[ref_items], decile[_clip(cur_items, decile)], threshold, names
        )
    )
    if scores is not None:
        out.features.append(continuous_drift("score", scores[0], scores[1], threshold))
    return out


def _clip(items: np.ndarray, decile: np.ndarray) -> np.ndarray:
    """Items beyond the reference vocabulary map to padding (index 0, in the unseen bin)."""
    return np.where(items < len(decile), items, 0)


def model_scores(model: Any, examples: Any, device: Any = "cpu", batch_size: int = 512) -> Any:
    """[N] confidence of ``model`` on a ``SequenceSet``: the top-1 probability over the
    catalogue (next-item, padding excluded) or P(class 1) (binary; the top class otherwise)."""
    import torch

    from seqrec.training.data import iter_batches

    model.eval()
    out: list[np.ndarray] = []
    tensors = examples.tensors(with_targets=False)
    with torch.no_grad():
        for batch in iter_batches(tensors, batch_size):
            s = model.score(batch.to(device)).float()
            if model.ctx.task != "classify":
                s[:, 0] = -torch.inf
            p = torch.softmax(s, dim=1)
            col = p[:, 1] if model.ctx.task == "classify" and p.shape[1] == 2 else p.max(1).values
            out.append(col.cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def drift_for_model(
    ws: Any, data: Any, tag: str | None, threshold: float = DEFAULT_THRESHOLD
) -> DriftResult:
    """:func:`compute_drift` with the scores of stored model ``tag`` (none: no score feature).
    Never raises: a failure is returned as the result's ``error``, so monitoring cannot fail
    the job it watches."""
    import logging

    try:
        scores = None
        type_names = None
        if tag is not None:
            from seqrec import model_store
            from seqrec.pipeline import _clip_vocab, _newer_than

            stored = model_store.load(tag, store=ws.model_store)
            type_names = stored.event_types
            sets = [data.valid, data.test]
            if _newer_than(data, stored.model.ctx):  # as the model is served: unknown dropped
                sets = [_clip_vocab(s, stored.model.ctx, targets=False) for s in sets]
            bs = ws.config.train.eval_batch_size
            scores = (
                model_scores(stored.model, sets[0], batch_size=bs),
                model_scores(stored.model, sets[1], batch_size=bs),
            )
        return compute_drift(data, scores=scores, threshold=threshold, event_type_names=type_names)
    except Exception as exc:  # monitoring must not fail the run
        log_caught(logging.getLogger(__name__), exc, DRIFT_FAILURES, "drift not computed")
        return DriftResult(threshold=threshold, error=f"{type(exc).__name__}: {exc}")
