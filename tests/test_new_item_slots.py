"""New-item slots: the slotted lists and target positions agree with the rule applied by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrec.evaluation.slots import slotted_lists, slotted_positions


def _by_hand(row: np.ndarray, cold: np.ndarray, k: int, n: int) -> list[int]:
    """The rule, item by item: the model's own top k (finite scores), then the lowest trained
    items make room for the best cold items not yet listed, up to n cold items in all."""
    order = [int(i) for i in np.argsort(-row, kind="stable") if np.isfinite(row[i])]
    own = order[:k]
    n = min(n, k)
    listed_cold = [i for i in own if cold[i]]
    more = [i for i in order if cold[i] and i not in own][: max(0, n - len(listed_cold))]
    trained = [i for i in own if not cold[i]]
    keep_trained = trained[: max(0, min(len(trained), k - len(listed_cold) - len(more)))]
    final = set(listed_cold) | set(more) | set(keep_trained)
    return [i for i in order if i in final]


def _case(seed: int, rows: int = 40, items: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, items, generator=g)  # distinct: no ties
    scores[torch.rand(rows, items, generator=g) < 0.2] = -torch.inf  # excluded items
    cold = torch.rand(items, generator=g) < 0.3
    return scores, cold


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slotted_lists_follow_the_rule(seed: int) -> None:
    scores, cold = _case(seed)
    for k in (1, 3, 5, 10):
        for n in (0, 1, 2, 3):
            top = torch.topk(scores, k, dim=1)
            cv, ci = torch.topk(scores.masked_fill(~cold, -torch.inf), 3, dim=1)
            _, idx = slotted_lists(top.values, top.indices, cv, ci, cold[top.indices], k, n)
            for r in range(len(scores)):
                want = _by_hand(scores[r].numpy(), cold.numpy(), k, n)
                got = [int(i) for i, v in zip(idx[r], scores[r, idx[r]], strict=True) if v > -1e30]
                assert got == want, (k, n, r)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slotted_positions_are_the_targets_places_in_the_slotted_lists(seed: int) -> None:
    scores, cold = _case(seed)
    g = torch.Generator().manual_seed(100 + seed)
    targets = torch.randint(1, scores.shape[1], (len(scores),), generator=g)
    for k in (1, 3, 5, 10):
        for n in (0, 1, 2, 3):
            pos = slotted_positions(scores, targets, cold, k, n)
            for r in range(len(scores)):
                listed = _by_hand(scores[r].numpy(), cold.numpy(), k, n)
                t = int(targets[r])
                want = listed.index(t) if t in listed else k
                assert int(pos[r]) == want, (k, n, r)


def test_no_slots_or_no_cold_items_leave_the_model_ranking_alone() -> None:
    scores, cold = _case(3)
    targets = torch.arange(1, len(scores) + 1) % scores.shape[1]
    rank = (scores >= scores.gather(1, targets[:, None])).sum(1) - 1
    own = torch.where(rank < 10, rank, torch.full_like(rank, 10))
    assert torch.equal(slotted_positions(scores, targets, cold, 10, 0), own)
    none = torch.zeros_like(cold)
    assert torch.equal(slotted_positions(scores, targets, none, 10, 3), own)


def test_fewer_cold_items_than_slots_fill_what_they_can() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.5]])
    cold = torch.tensor([False, False, False, False, False, True])
    top = torch.topk(scores, 3, dim=1)
    cv, ci = torch.topk(scores.masked_fill(~cold, -torch.inf), 3, dim=1)
    _, idx = slotted_lists(top.values, top.indices, cv, ci, cold[top.indices], 3, 3)
    assert idx.tolist() == [[0, 1, 5]]  # one cold item: one place
    pos = slotted_positions(scores, torch.tensor([5]), cold, 3, 3)
    assert pos.tolist() == [2]
