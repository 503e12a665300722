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
