"""Tensor helpers for BERT4Rec cloze training on left-padded sequences."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def append_newest(x: Tensor, col: Tensor, keep: Tensor) -> Tensor:
    """[B, L + 1]: ``col`` [B] appended after the newest event of ``x`` [B, L] where ``keep``
    [B] is True; elsewhere a padding column is prepended, so rows stay left-padded."""
    appended = torch.cat([x, col[:, None].to(x.dtype)], dim=1)
    return torch.where(keep[:, None], appended, F.pad(x, (1, 0)))


def cloze_positions(real: Tensor, mask_prob: float, last_prob: float) -> Tensor:
    """[B, T] bool: positions to replace by MASK, drawn with the global torch RNG.

    Each real position ([B, T] ``real``) is masked with probability ``mask_prob``; with
    probability ``last_prob`` a row masks only its newest position (as at inference). A non-empty
    row with nothing drawn masks its newest position, so every row has at least one.
    """
    newest = torch.zeros_like(real)
    newest[:, -1] = real[:, -1]
    drawn = (torch.rand(real.shape, device=real.device) < mask_prob) & real
    last_only = torch.rand(real.shape[0], 1, device=real.device) < last_prob
    chosen = torch.where(last_only, newest, drawn)
    return chosen | (newest & ~chosen.any(1, keepdim=True))


def crop_newest(cols: list[Tensor], real: Tensor, prob: float) -> list[Tensor]:
    """Each row of ``cols`` (left-padded [B, T] tensors; ``real`` [B, T] marks the events),
    with probability ``prob``, cut after a uniformly drawn event (at least two kept, where the
    row has two): the newer events are dropped and the row right-aligned again. The newest
    event kept is what the row's cloze then predicts last, so training sees the end of a
    sequence at every point of it (RecBole trains BERT4Rec on every prefix)."""
    B, T = real.shape
    n = real.long().sum(1)  # [B]
    lo = n.clamp(max=2)
    k = lo + (torch.rand(B, device=real.device) * (n - lo + 1).float()).floor().long()
    k = torch.where(torch.rand(B, device=real.device) < prob, k.clamp(max=n), n)
    shift = (n - k)[:, None]
    j = torch.arange(T, device=real.device)[None, :]
    keep = j >= (T - k)[:, None]
    idx = (j - shift).clamp(min=0)
    return [c.gather(1, idx).masked_fill(~keep, 0) for c in cols]
