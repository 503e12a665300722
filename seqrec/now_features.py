"""When a sequence's events happened relative to the prediction time, for classifiers.

A classifier of churn or purchase propensity is mostly asked *when*: how long since the user's
newest event, how many events in the last day, week and month, how long since their newest
purchase. The batch carries the prediction time as ``Batch.now`` (a training example's cutoff,
the request time in serving); the events' own times say nothing about it. :class:`NowFeatures`
turns ``now`` and the window of events into a few log-scaled numbers and embeds them, so a
plugin's classifier can add them to its sequence state (the built-in plugins do, with
``--param now_features=true``, their default).

Only what the batch holds is used: the window of the newest ``L`` events (counts saturate at
``L``). Where ``now`` is unknown (None), it is taken as the newest event's time and a flag
feature says so.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HOUR = 3600
DAY = 24 * HOUR
#: windows before ``now`` the events are counted over
HORIZONS = (DAY, 7 * DAY, 30 * DAY)
#: features are log1p of hours or counts; divided by this they stay within about [0, 2]
SCALE = 5.0


def now_feature_names(n_event_types: int) -> list[str]:
    """The columns of :func:`now_features`, in order (event type 0 is padding)."""
    names = ["now_known", "hours_since_newest", "events", "events_1d", "events_7d", "events_30d"]
    names += ["span_hours"]
    for k in range(1, n_event_types):
        names += [f"type{k}_events", f"type{k}_hours_since_newest"]
    return names


def now_features(
    items: Tensor, types: Tensor, times: Tensor, now: Tensor | None, n_event_types: int
) -> Tensor:
    """[B, F] float32 features (columns as :func:`now_feature_names`) of left-padded
    ``items``, ``types``, ``times`` [B, L] (epoch seconds) at ``now`` [B] (epoch seconds).

    Times are subtracted in int64 before any float conversion, so epoch seconds lose nothing.
    A row without events is all zeros; a time after ``now`` counts as ``now``.
    """
    mask = items > 0  # [B, L]
    has = mask.any(1)  # [B]
    at = times[:, -1] if now is None else now.to(times.dtype)
    ago = (at[:, None] - times).clamp(min=0)  # [B, L] seconds before now
    hours = ago.float() / HOUR

    def log_hours(h: Tensor) -> Tensor:
        return torch.log1p(h) / SCALE

    def log_count(m: Tensor) -> Tensor:
        return torch.log1p(m.sum(1).float()) / SCALE

    oldest = torch.where(mask, ago, torch.zeros_like(ago)).amax(1)  # [B] seconds
    cols = [
        has.float() * float(now is not None),
        log_hours(hours[:, -1]) * has,
        log_count(mask),
        *(log_count(mask & (ago <= h)) for h in HORIZONS),
        log_hours((oldest - ago[:, -1]).clamp(min=0).float() / HOUR) * has,
    ]
    big = torch.iinfo(ago.dtype).max
    for k in range(1, n_event_types):
        of_type = mask & (types == k)
        since = torch.where(of_type, ago, torch.full_like(ago, big)).amin(1)  # [B]
        seen = of_type.any(1)
        cols += [log_count(of_type), log_hours(since.float() / HOUR) * seen]
    return torch.stack(cols, dim=1)


class NowFeatures(nn.Module):
    """[B, d] embedding of :func:`now_features`: a two-layer MLP, so that recency, frequency
    and the per-type counts combine before they meet the sequence state."""

    def __init__(self, n_event_types: int, d: int, norm: bool = False):
        super().__init__()
        self.n_event_types = n_event_types
        width = len(now_feature_names(n_event_types))
        #: with ``norm``: each feature standardised by batch statistics in training and their
        #: running averages at inference (batch normalisation), before the MLP
        self.norm = nn.BatchNorm1d(width) if norm else None
        self.inp = nn.Linear(width, d)
        self.out = nn.Sequential(nn.GELU(), nn.Linear(d, d))

    def forward(self, items: Tensor, types: Tensor, times: Tensor, now: Tensor | None) -> Tensor:
        feats = now_features(items, types, times, now, self.n_event_types)
        feats = feats.to(self.inp.weight.dtype)
        if self.norm is not None:
            feats = self._normalise(feats)
        return self.out(self.inp(feats))  # type: ignore[no-any-return]

    def _normalise(self, feats: Tensor) -> Tensor:
        """Batch statistics in training; a training batch of one example (the last of an
        epoch can be) has none, so it uses the running averages, as inference does."""
        bn = self.norm
        assert bn is not None
        if bn.training and feats.shape[0] > 1:
            return bn(feats)  # type: ignore[no-any-return]
        return F.batch_norm(
            feats, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
        )
