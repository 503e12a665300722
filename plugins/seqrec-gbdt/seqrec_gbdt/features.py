"""Tabular features of a batch of left-padded sequences (one row per sequence).

Everything is computed from the batch the platform hands every model: the last L items, event
types and epoch-second timestamps, which the SQL feature query computed point in time and Feast
joined at each example's cutoff, plus ``now`` (the cutoff; the request time in serving).
Features that need ``now`` are NaN without it (LightGBM treats NaN as missing).

Frequency counts only what the window holds: a user with more than L events before the cutoff
shows L of them (``events`` saturates at L, ``events_30d`` may be undercounted).
"""

from __future__ import annotations

import numpy as np

DAY = 86_400
#: windows (seconds before ``now``) the event counts are taken over
HORIZONS = {"1d": DAY, "7d": 7 * DAY, "30d": 30 * DAY}
#: how many of the newest items the mean popularity is taken over
LAST_ITEMS = 5


def feature_names(n_event_types: int) -> list[str]:
    """The column names, in order, for a vocabulary of ``n_event_types`` (padding included)."""
    names = ["events", "recency_s", *(f"events_{h}" for h in HORIZONS)]
    names += ["span_s", "events_per_day", "gap_mean_s", "gap_min_s", "gap_max_s", "gap_last_s"]
    names += ["last_type"]
    for t in range(1, n_event_types):
        names += [f"type{t}_count", f"type{t}_share", f"type{t}_recency_s"]
    names += ["pop_last", f"pop_last{LAST_ITEMS}_mean", "distinct_share", "last_item_repeated"]
    return names


def sequence_features(
    items: np.ndarray,
    types: np.ndarray,
    times: np.ndarray,
    now: np.ndarray | None,
    n_event_types: int,
    item_pop: np.ndarray,
) -> np.ndarray:
    """[B, F] float64 features (columns as :func:`feature_names`) of left-padded ``items``,
    ``types``, ``times`` [B, L]; ``now`` [B] epoch seconds or None; ``item_pop`` [n_items] the
    log training count of each item (0 for padding and unknown items)."""
    B, L = items.shape
    mask = items > 0
    n = mask.sum(axis=1).astype(np.float64)
    has = n > 0
    t = times.astype(np.float64)
    nan = np.full(B, np.nan)
    t_last = np.where(has, t[:, -1], np.nan)
    first = np.clip(L - n.astype(np.int64), 0, L - 1)
    t_first = np.where(has, t[np.arange(B), first], np.nan)
    at = nan if now is None else now.astype(np.float64)

    cols: list[np.ndarray] = [n, at - t_last]
    for h in HORIZONS.values():
        cols.append(nan if now is None else (mask & (t >= at[:, None] - h)).sum(axis=1) * 1.0)
    span = t_last - t_first
    cols += [span, n / (span / DAY + 1.0)]

    gaps = t[:, 1:] - t[:, :-1]
    valid = mask[:, 1:] & mask[:, :-1]
    n_gaps = valid.sum(axis=1)
    some = n_gaps > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        cols.append(np.where(some, (gaps * valid).sum(axis=1) / n_gaps, np.nan))
    cols.append(np.where(some, np.where(valid, gaps, np.inf).min(axis=1), np.nan))
    cols.append(np.where(some, np.where(valid, gaps, -np.inf).max(axis=1), np.nan))
    cols.append(np.where(valid[:, -1], gaps[:, -1], np.nan))
    cols.append(np.where(has, types[:, -1], np.nan).astype(np.float64))

    for k in range(1, n_event_types):
        of_type = mask & (types == k)
        count = of_type.sum(axis=1).astype(np.float64)
        newest = np.where(of_type, t, -np.inf).max(axis=1)
        cols += [count, np.where(has, count / np.maximum(n, 1), np.nan)]
        cols.append(np.where(count > 0, at - newest, np.nan))

    safe = np.where(items < len(item_pop), items, 0)
    pop = item_pop[safe] * mask  # [B, L]
    cols.append(np.where(has, pop[:, -1], np.nan))
    recent = mask[:, -LAST_ITEMS:]
    cols.append(
        np.where(has, pop[:, -LAST_ITEMS:].sum(axis=1) / np.maximum(recent.sum(axis=1), 1), np.nan)
    )
    srt = np.sort(np.where(mask, items, -1), axis=1)
    distinct = ((srt[:, 1:] != srt[:, :-1]) & (srt[:, 1:] > 0)).sum(axis=1) + (srt[:, 0] > 0)
    cols.append(np.where(has, distinct / np.maximum(n, 1), np.nan))
    earlier = (items[:, :-1] == items[:, -1:]) & mask[:, :-1]
    cols.append(np.where(has, earlier.any(axis=1), np.nan).astype(np.float64))
    return np.stack(cols, axis=1)
