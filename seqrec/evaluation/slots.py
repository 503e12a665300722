"""New-item slots: of every top-k list, up to ``n`` places go to cold-start items.

A cold-start item is one the model has no trained row for: imported with text but without
events in the training data, or newer than the model. A text-aware model scores such items by
their text alone (``W t_i``), on a scale its trained items were never compared on, so in a
catalogue of trained items they rarely reach the top k however well their text fits. Reserving
a few places for them, the way production recommenders give fresh items exposure, makes the
*order among cold items* (which the text decides) what counts.

The rule, for a top-k list and ``n`` slots: take the model's own top k. If it holds fewer than
``n`` cold items, its lowest-scored trained items make room for the best-scored cold items not
yet in it, up to ``n`` cold items in all (fewer when fewer can be ranked). Cold items already in
the top k stay; none is added beyond ``n``. The list stays in score order: the added cold items
come last. With ``n = 0``, or no cold item in the catalogue, the list is the model's own.

:func:`slotted_lists` applies the rule to top-k lists (serving); :func:`slotted_positions`
gives each target's position in the slotted list from full scores (evaluation), with ties
counted against the target as in :func:`seqrec.evaluation.metrics.target_ranks`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def slotted_positions(scores: Tensor, targets: Tensor, cold: Tensor, k: int, n: int) -> Tensor:
    """[B] 0-based position of each target in its row's slotted top-``k`` list, or ``k`` when
    it is not in it.

    ``scores`` [B, V]: the model's scores with excluded items (padding, seen, ...) at -inf;
    ``targets`` [B] item indices; ``cold`` [V] bool: the cold-start items."""
    n = min(n, k)
    cold = cold.to(scores.device)
    t = scores.gather(1, targets.view(-1, 1))
    rank = (scores >= t).sum(1) - 1
    target_cold = cold[targets]
    cold_scores = scores[:, cold]
    # cold items ahead of the target (itself not counted), and how many can be ranked at all
    cold_ahead = (cold_scores >= t).sum(1) - target_cold.long()
    available = torch.isfinite(cold_scores).sum(1)
    n_eff = available.clamp(max=n)
    kk = min(k, scores.shape[1])
    top = torch.topk(scores, kk, dim=1)
    in_top = torch.isfinite(top.values) & cold[top.indices]
    c0 = in_top.sum(1)  # cold items already in the model's own top k
    trained_kept = k - torch.maximum(n_eff, c0)  # trained items left in the list
    trained_ahead = rank - cold_ahead
    pos = torch.full_like(rank, k)
    in_own = rank < k
    # a cold target in the model's own top k stays, behind the cold items and the kept trained
    # items ahead of it; one further down is added after all kept trained items, in cold-score
    # order, when it is among the best n_eff
    pos = torch.where(
        target_cold & in_own, cold_ahead + torch.minimum(trained_ahead, trained_kept), pos
    )
    added = target_cold & ~in_own & (cold_ahead < n_eff)
    pos = torch.where(added, trained_kept + cold_ahead, pos)
    # a trained target keeps its place when it is not among the trained items making room
    kept = ~target_cold & in_own & (trained_ahead < trained_kept)
    return torch.where(kept, rank, pos)


def slotted_lists(
    values: Tensor,
    indices: Tensor,
    cold_values: Tensor,
    cold_indices: Tensor,
    is_cold: Tensor,
    k: int,
    n: int,
) -> tuple[Tensor, Tensor]:
    """Slotted top-``k`` lists ([B, k] values, [B, k] indices; -inf values pad a short row).

    ``values``/``indices`` [B, K >= k]: the model's own top K, best first; ``cold_values``/
    ``cold_indices`` [B, >= n]: the best cold items of each row, best first (-inf where none);
    ``is_cold`` [B, K] bool: which of ``indices`` are cold."""
    values, indices = values[:, :k], indices[:, :k]
    n = min(n, k)
    if n <= 0:
        return values, indices
    out_v, out_i = values.clone(), indices.clone()
    for r in range(len(values)):
        finite = torch.isfinite(values[r])
        cold_r = is_cold[r, :k] & finite
        c0 = int(cold_r.sum())
        extra = [
            j for j in range(c0, min(n, cold_values.shape[1])) if cold_values[r, j] > -torch.inf
        ]
        if not extra:
            continue
        # the lowest-scored trained items (or empty places) of the list make room
        room = [j for j in reversed(range(k)) if not cold_r[j]][: len(extra)]
        keep = sorted(set(range(k)) - set(room))
        v = torch.cat([values[r, keep], cold_values[r, extra]])
        i = torch.cat([indices[r, keep], cold_indices[r, extra]])
        order = torch.argsort(v, descending=True, stable=True)
        out_v[r], out_i[r] = v[order], i[order]
    return out_v, out_i
