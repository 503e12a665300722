"""Top-k over the item catalogue in chunks: never a full [B, V] score matrix in memory.

A next-item model that exposes its scores as factors (:class:`seqrec.models.ItemFactors`:
``scores = hidden @ items.T + bias`` plus learned repeat offsets of the history items) is ranked
``chunk_items`` items at a time: each chunk's scores are masked (padding column 0, excluded
items), its top-k merged into the running top-k, and the items scoring at least each target
counted. Peak memory is O(B x chunk_items) whatever the catalogue size; with ``V <= chunk_items``
there is one chunk, the same work as scoring the whole catalogue at once. Models that only give
full scores are ranked by :func:`scores_topk` with the same masking and tie rule.

Exclusions are index lists ``[B, E]`` (0 = nothing: column 0 is padding and always masked), not
[B, V] masks. A target's rank counts the items scoring at least as high as it, the target itself
left out (ties count against it, as :func:`seqrec.evaluation.metrics.target_ranks`); a target
that is padding or excluded scores -inf and ranks last.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: items scored at once by default: 65,536 x a batch of 512 is 128 MiB of float32 scores
DEFAULT_CHUNK_ITEMS = 65_536


@dataclass(frozen=True)
class TopK:
    """``scores`` [B, k] float32 (best first; -inf where fewer items are left), their item
    ``indices`` [B, k], and the 0-based ``ranks`` [B] of the targets (None without targets)."""

    scores: Tensor
    indices: Tensor
    ranks: Tensor | None = None


def chunked_topk(
    hidden: Tensor,
    items: Tensor,
    k: int,
    *,
    bias: Tensor | None = None,
    history: Tensor | None = None,
    repeat: Tensor | None = None,
    exclude: Tensor | None = None,
    targets: Tensor | None = None,
    chunk_items: int = DEFAULT_CHUNK_ITEMS,
) -> TopK:
    """Top-``k`` items of ``hidden`` [B, d] over ``items`` [V, d] (+ ``bias`` [V]), computed
    ``chunk_items`` items at a time.

    ``history``/``repeat`` [B, H]: items with sparse learned offsets added to their scores
    (seen items, the newest item's counted successors; an item listed twice gets both).
    ``exclude`` [B, E]: item indices scored -inf (0 = none). ``targets`` [B]: items whose rank
    to count.
    """
    if chunk_items < 1:
        raise ValueError(f"chunk_items must be positive, not {chunk_items}")
    with torch.autocast(hidden.device.type, enabled=False):  # float32 scores, as documented
        return _chunked_topk(hidden, items, k, bias, history, repeat, exclude, targets, chunk_items)


def _chunked_topk(
    hidden: Tensor,
    items: Tensor,
    k: int,
    bias: Tensor | None,
    history: Tensor | None,
    repeat: Tensor | None,
    exclude: Tensor | None,
    targets: Tensor | None,
    chunk_items: int,
) -> TopK:
    n_rows, n_items = hidden.shape[0], items.shape[0]
    k = max(0, min(k, n_items))
    h = hidden.float()
    device = h.device
    best_v = torch.empty(n_rows, 0, device=device)
    best_i = torch.empty(n_rows, 0, dtype=torch.long, device=device)
    rows = torch.arange(n_rows, device=device)
    t_score = count = None
    if targets is not None:
        targets = targets.to(device)
        t_score = _target_scores(h, items, bias, history, repeat, exclude, targets)
        count = torch.zeros(n_rows, dtype=torch.long, device=device)
    for start in range(0, n_items, chunk_items):
        stop = min(n_items, start + chunk_items)
        s = h @ items[start:stop].float().T  # [B, C]
        if bias is not None:
            s += bias[start:stop].float()  # in place: one [B, C] matrix alive
        if history is not None and repeat is not None:
            _put(s, history, repeat.float(), start, accumulate=True)
        if start == 0:
            s[:, 0] = -torch.inf
        if exclude is not None:
            _put(s, exclude, None, start)
        if t_score is not None and count is not None and targets is not None:
            ge = s >= t_score[:, None]
            local = targets - start
            own = (local >= 0) & (local < stop - start)
            count += ge.sum(1) - (ge[rows, local.clamp(0, stop - start - 1)] & own).long()
        kc = min(k, stop - start)
        v, i = s.topk(kc, dim=1)
        best_v, best_i = _merge(best_v, best_i, v, i + start, k)
    return TopK(best_v, best_i, count)


def scores_topk(
    scores: Tensor,
    k: int,
    *,
    exclude: Tensor | None = None,
    targets: Tensor | None = None,
) -> TopK:
    """:func:`chunked_topk` for a model that only gives full ``scores`` [B, V]: padding and
    ``exclude`` [B, E] masked, the top ``k``, and the ranks of ``targets`` [B]."""
    s = scores.float().clone()
    s[:, 0] = -torch.inf
    if exclude is not None:
        s.scatter_(1, exclude.to(s.device), -torch.inf)
    ranks = None
    if targets is not None:
        t = s.gather(1, targets.to(s.device).view(-1, 1))
        ranks = (s >= t).sum(dim=1) - 1
    v, i = s.topk(max(0, min(k, s.shape[1])), dim=1)
    return TopK(v, i, ranks)


def _merge(v1: Tensor, i1: Tensor, v2: Tensor, i2: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top ``k`` of two partial top-k lists (values [B, *], item indices [B, *])."""
    if v1.shape[1] == 0:
        return v2, i2
    v = torch.cat([v1, v2], dim=1)
    i = torch.cat([i1, i2], dim=1)
    top_v, pos = v.topk(min(k, v.shape[1]), dim=1)
    return top_v, i.gather(1, pos)


def _put(s: Tensor, idx: Tensor, vals: Tensor | None, start: int, accumulate: bool = False) -> None:
    """Into chunk scores ``s`` [B, C] (items ``start`` ..): ``vals`` [B, E] added at item
    indices ``idx`` [B, E] that fall in the chunk, or -inf there when ``vals`` is None."""
    idx = idx.to(s.device)
    local = idx - start
    inside = (local >= 0) & (local < s.shape[1])
    r, c = inside.nonzero(as_tuple=True)
    if not len(r):
        return
    cols = local[r, c]
    if vals is None:
        s[r, cols] = -torch.inf
    else:
        s.index_put_((r, cols), vals.to(s.device)[r, c], accumulate=accumulate)


def _target_scores(
    h: Tensor,
    items: Tensor,
    bias: Tensor | None,
    history: Tensor | None,
    repeat: Tensor | None,
    exclude: Tensor | None,
    targets: Tensor,
) -> Tensor:
    """[B] each target's score (-inf for padding and excluded targets)."""
    t = (h * items[targets].float()).sum(-1)
    if bias is not None:
        t = t + bias[targets].float()
    if history is not None and repeat is not None:
        same = history.to(t.device) == targets[:, None]
        t = t + (repeat.float().to(t.device) * same).sum(1)
    masked = targets == 0
    if exclude is not None:
        masked |= (exclude.to(t.device) == targets[:, None]).any(1)
    return t.masked_fill(masked, -torch.inf)


def pad_indices(rows: list[list[int]], device: torch.device | str = "cpu") -> Tensor:
    """[len(rows), longest] item indices, right-padded with 0 (padding: masked anyway)."""
    width = max((len(r) for r in rows), default=0)
    out = torch.zeros(len(rows), max(1, width), dtype=torch.long)
    for n, r in enumerate(rows):
        if r:
            out[n, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out.to(device)
