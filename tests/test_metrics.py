"""Ranking metrics against hand-computed cases and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import ndcg_score

from seqrec.evaluation.metrics import mask_scores, ranking_metrics, target_ranks


def test_hand_computed_ranks_and_metrics() -> None:
    # ranks 0, 1, 4, 10 with K = 5
    m = ranking_metrics(np.array([0, 1, 4, 10]), ks=(5,))
    assert m["recall@5"] == pytest.approx(3 / 4)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 4)
    assert m["mrr@5"] == pytest.approx((1 + 1 / 2 + 1 / 5) / 4)
    assert ranking_metrics(np.array([], dtype=int), ks=(10,))["ndcg@10"] == 0.0


def test_target_ranks_count_ties_against_the_target() -> None:
    scores = torch.tensor([[0.0, 0.9, 0.5, 0.5, 0.1], [0.0, 1.0, 1.0, 1.0, 1.0]])
    ranks = target_ranks(scores, torch.tensor([2, 4]))
    assert ranks.tolist() == [2, 3]  # one better + one tie; three ties
    assert target_ranks(scores, torch.tensor([1, 1])).tolist() == [0, 3]


def test_mask_scores_drops_padding_and_excluded_items() -> None:
    scores = torch.tensor([[5.0, 1.0, 2.0, 3.0]])
    exclude = torch.tensor([[False, False, False, True]])
    out = mask_scores(scores, exclude)
    assert out[0, 0] == -torch.inf and out[0, 3] == -torch.inf
    assert target_ranks(out, torch.tensor([2])).tolist() == [0]
    assert scores[0, 0] == 5.0  # input untouched


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=2**31 - 1), st.integers(1, 8))
def test_ndcg_matches_sklearn_without_ties(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    n, v = 12, 20
    scores = rng.permutation(n * v).reshape(n, v).astype(np.float64)  # all distinct
    targets = rng.integers(0, v, size=n)
    ranks = target_ranks(torch.from_numpy(scores), torch.from_numpy(targets)).numpy()
    truth = np.zeros((n, v))
    truth[np.arange(n), targets] = 1
    expected = ndcg_score(truth, scores, k=k)
    assert ranking_metrics(ranks, ks=(k,))[f"ndcg@{k}"] == pytest.approx(expected)
    # and HR@K is the top-k hit rate
    topk = np.argsort(-scores, axis=1)[:, :k]
    hits = np.mean([t in row for t, row in zip(targets, topk, strict=True)])
    assert ranking_metrics(ranks, ks=(k,))[f"recall@{k}"] == pytest.approx(hits)
