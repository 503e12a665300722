"""Ranking metrics against hand-computed cases and scikit-learn; threshold tuning and the
bootstrap against their former (quadratic, all-at-once) implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import ndcg_score

from seqrec.evaluation.classification import _prf, best_threshold
from seqrec.evaluation.metrics import mask_scores, ranking_metrics, target_ranks
from seqrec.pipeline import BOOTSTRAP_CHUNK, bootstrap_chunks, bootstrap_ci


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


def _best_threshold_by_trying_each(y: np.ndarray, p1: np.ndarray) -> float:
    """The former O(n^2) implementation: F1 of ``p1 >= t`` for every candidate in turn."""
    best, best_f = 0.5, -1.0
    for t in np.unique(np.r_[p1, 0.5]):
        f = _prf(y, (p1 >= t).astype(np.int64), 1)[2]
        if f > best_f:
            best, best_f = float(t), f
    return best


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5, 0.7, 0.9, 1.0])),
        max_size=40,
    ),
    st.integers(0, 2**31 - 1),
)
def test_best_threshold_equals_trying_every_threshold(
    pairs: list[tuple[int, float]], seed: int
) -> None:
    """Few distinct scores (many ties, 0.5 among them), any label mix, including none."""
    y = np.array([a for a, _ in pairs], dtype=np.int64)
    p1 = np.array([b for _, b in pairs], dtype=np.float64)
    # and continuous scores with a few exact ties
    rng = np.random.default_rng(seed)
    y2 = rng.integers(0, 2, 60)
    p2 = np.round(rng.random(60), 1 + seed % 3)
    assert best_threshold(y, p1) == _best_threshold_by_trying_each(y, p1)
    assert best_threshold(y2, p2) == _best_threshold_by_trying_each(y2, p2)
    assert best_threshold(y2, p2.astype(np.float32)) == _best_threshold_by_trying_each(
        y2, p2.astype(np.float32)
    )


def _bootstrap_all_at_once(values: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """The former implementation: every resample's indices in one [n_boot, n] array."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


@pytest.mark.parametrize("n", [1, 7, 500])
def test_bootstrap_in_chunks_draws_the_same_resamples(n: int) -> None:
    values = np.random.default_rng(n).random(n)
    want = _bootstrap_all_at_once(values, 200, seed=3)
    for budget in (1, 3 * n, 64 * n, 10**9):  # one resample per chunk .. all in one
        assert bootstrap_ci(values, n_boot=200, seed=3, budget=budget) == want


def test_bootstrap_memory_is_bounded_by_the_chunk_not_n_boot_times_n() -> None:
    import tracemalloc

    n, n_boot = 2_000_000, 1000
    chunks = bootstrap_chunks(n_boot, n)
    assert sum(chunks) == n_boot and max(chunks) * n <= BOOTSTRAP_CHUNK
    assert bootstrap_chunks(5, 10**8) == [1] * 5  # one resample bigger than the budget
    values = np.random.default_rng(0).random(n)
    tracemalloc.start()
    try:
        lo, hi = bootstrap_ci(values, n_boot=8, budget=n)  # 8 resamples, one per chunk
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * n * 8 + (1 << 20)  # a chunk's indices and values, not 8 resamples'
    assert lo < values.mean() < hi
