"""Large catalogues: chunked top-k equals the unchunked ranking; the logQ-corrected sampled
softmax approaches the full softmax; the models' item factors give their scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqrec.config import Workspace
from seqrec.data.synth import user_id
from seqrec.errors import SeqrecError
from seqrec.evaluation.ranking import rank_next_items
from seqrec.evaluation.topk import chunked_topk, pad_indices, scores_topk
from seqrec.losses import NegativeSampler, sampled_logq_loss
from seqrec.models import Batch, ModelContext, get_spec
from seqrec.training.data import SequenceSet
from seqrec.training.trainer import predict


def _problem(seed: int = 0, b: int = 37, v: int = 5003, d: int = 24) -> dict[str, torch.Tensor]:
    """Random hidden states, items, bias, repeat offsets, exclusions and targets (no ties)."""
    g = torch.Generator().manual_seed(seed)
    history = torch.randint(0, v, (b, 9), generator=g)
    exclude = torch.randint(0, v, (b, 5), generator=g)
    targets = torch.randint(1, v, (b,), generator=g)
    targets[0] = exclude[0, 1]  # an excluded target ranks last
    targets[1] = history[1, 2]  # a target with a repeat offset
    return {
        "hidden": torch.randn(b, d, generator=g),
        "items": torch.randn(v, d, generator=g),
        "bias": torch.randn(v, generator=g),
        "history": history,
        "repeat": torch.randn(b, 9, generator=g) * (history > 0),
        "exclude": exclude,
        "targets": targets,
    }


def _full_scores(p: dict[str, torch.Tensor]) -> torch.Tensor:
    s = p["hidden"] @ p["items"].T + p["bias"]
    return s.scatter_add(1, p["history"], p["repeat"])


@pytest.mark.parametrize("chunk", [1, 7, 128, 1000, 5003, 1 << 20])
def test_chunked_topk_gives_the_unchunked_indices_and_ranks(chunk: int) -> None:
    p = _problem()
    want = scores_topk(_full_scores(p), 20, exclude=p["exclude"], targets=p["targets"])
    got = chunked_topk(
        p["hidden"],
        p["items"],
        20,
        bias=p["bias"],
        history=p["history"],
        repeat=p["repeat"],
        exclude=p["exclude"],
        targets=p["targets"],
        chunk_items=chunk,
    )
    assert torch.equal(got.indices, want.indices)
    assert got.ranks is not None and want.ranks is not None
    assert torch.equal(got.ranks, want.ranks)
    assert int(got.ranks[0]) == 5003 - 1  # the excluded target: behind every item
    if chunk >= 128:  # a matrix product per chunk: the same float32 sums as the full one
        assert torch.equal(got.scores, want.scores)
    else:  # tiny chunks take another kernel (vector products): the last bit may differ
        assert torch.allclose(got.scores, want.scores, rtol=0, atol=1e-4)


def test_chunked_topk_never_returns_padding_or_excluded_items() -> None:
    p = _problem(seed=3, v=300)
    top = chunked_topk(p["hidden"], p["items"], 299, exclude=p["exclude"], chunk_items=64)
    finite = torch.isfinite(top.scores)
    for row in range(len(top.indices)):
        shown = set(top.indices[row][finite[row]].tolist())
        assert 0 not in shown and not shown & set(p["exclude"][row].tolist())
        assert len(shown) == 299 - len(set(p["exclude"][row].tolist()) - {0})


def test_pad_indices_right_pads_with_padding() -> None:
    out = pad_indices([[3, 4], [], [7]])
    assert out.tolist() == [[3, 4], [0, 0], [7, 0]]


def _sequences(n: int, n_items: int, length: int, seed: int) -> SequenceSet:
    rng = np.random.default_rng(seed)
    items = rng.integers(1, n_items, (n, length))
    items[: n // 2, : length // 2] = 0  # left padding
    types = (items > 0).astype(np.int64)
    times = np.where(items > 0, 1_700_000_000 + np.arange(length) * 60, 0)
    labels = rng.integers(1, n_items, n)
    return SequenceSet(np.arange(n).astype(object), items, types, times, labels)


@pytest.mark.parametrize("model_name", ["gpt2", "lstm", "bert"])
def test_models_rank_in_chunks_as_they_score(model_name: str) -> None:
    """A built-in model's item factors give exactly its scores: ranking in chunks of 7 items
    equals the full-score evaluation (the trainer's predict)."""
    spec = get_spec(model_name)
    torch.manual_seed(0)
    model = spec.make(ModelContext(n_items=501, n_event_types=2, max_len=8))
    assert model.repeat_bias is not None
    with torch.no_grad():
        model.repeat_bias.copy_(torch.linspace(2.0, -1.0, len(model.repeat_bias)))
    data = _sequences(40, 501, 8, seed=1)
    cpu = torch.device("cpu")
    want = predict(model, data, device=cpu, batch_size=16, topk=10)
    for chunk in (7, 100, 1 << 16):
        got = rank_next_items(model, data, device=cpu, batch_size=16, topk=10, chunk_items=chunk)
        assert np.array_equal(got["ranks"], want["ranks"])
        assert np.array_equal(got["topk"], want["topk"])


def test_models_without_factors_are_ranked_from_full_scores() -> None:
    model = get_spec("popularity").make(ModelContext(n_items=50, n_event_types=2, max_len=4))
    data = _sequences(12, 50, 4, seed=2)
    model.fit_statistics(torch.from_numpy(data.items), torch.from_numpy(data.labels))
    batch = Batch(*(torch.from_numpy(a) for a in (data.items, data.types, data.times)))
    assert model.next_item_factors(batch) is None
    cpu = torch.device("cpu")
    want = predict(model, data, device=cpu, topk=5)
    got = rank_next_items(model, data, device=cpu, topk=5, chunk_items=4)
    assert np.array_equal(got["ranks"], want["ranks"])
    assert np.array_equal(got["topk"], want["topk"])


# -- the service's chunked ranking, with items newer than the model ----------------------------


def test_chunked_service_ranking_counts_items_newer_than_the_model_in_k(
    trained_ws: Workspace,
) -> None:
    """A catalogue over ``topk_chunk_items`` plus a block of text-only items newer than the
    model (as a text-aware model's refresh sets it): asking for every item returns every
    known item and every newer one, in score order, as the unchunked path does."""
    from seqrec.extra_items import ExtraItems
    from seqrec.recommend import Recommender

    serve = trained_ws.config.serve.model_copy(update={"topk_chunk_items": 7})
    ws = Workspace(trained_ws.root, trained_ws.config.model_copy(update={"serve": serve}))
    rec = Recommender(ws, "gpt2", device="cpu")
    assert rec.chunked and rec._item_rows is not None
    n, m = rec.n_items, 5
    new_ids = tuple(f"new-{j}" for j in range(m))
    g = torch.Generator().manual_seed(0)
    rec.extra = ExtraItems(
        n,
        ids=new_ids,
        vectors=torch.randn(m, rec._item_rows.shape[1], generator=g),
        column={x: n + j for j, x in enumerate(new_ids)},
    )
    user = user_id(0, 120)
    everything = rec.recommend(user, k=n + m, exclude_seen=False)
    assert everything["fallback"] is False
    got = [r["item_id"] for r in everything["items"]]
    assert len(got) == n - 1 + m
    assert set(got) == set(rec.vocab[1:n]) | set(new_ids)
    scores = [r["score"] for r in everything["items"]]
    assert scores == sorted(scores, reverse=True)
    top = rec.recommend(user, k=3, exclude_seen=False)["items"]
    assert [r["item_id"] for r in top] == got[:3]


# -- sampled softmax with logQ correction ------------------------------------------------------


def _skewed(seed: int = 0, v: int = 200, d: int = 16, n: int = 64) -> tuple[torch.Tensor, ...]:
    """A catalogue with Zipf-like popularity: targets drawn by popularity, scores random."""
    g = torch.Generator().manual_seed(seed)
    counts = (1000.0 / torch.arange(1, v + 1).double()).floor()
    counts[0] = 0
    targets = torch.multinomial(counts.float(), n, replacement=True, generator=g)
    return (
        torch.randn(n, d, generator=g),
        targets,
        torch.randn(v, d, generator=g) * 0.5,
        counts,
    )


def _uncorrected(
    h: torch.Tensor, targets: torch.Tensor, emb: torch.Tensor, sampler: NegativeSampler, k: int
) -> torch.Tensor:
    """The same sampled softmax over the same popularity negatives, without logQ."""
    neg = sampler.sample(k, "cpu")
    pos = (h * emb[targets]).sum(-1, keepdim=True)
    rest = (h @ emb[neg].T).masked_fill(neg == targets[:, None], torch.finfo(h.dtype).min)
    return F.cross_entropy(torch.cat([pos, rest], 1), torch.zeros_like(targets))


def test_logq_corrected_loss_approaches_the_full_softmax() -> None:
    """With popularity-sampled negatives, the logQ-corrected loss is close to full-softmax
    cross-entropy; the same negatives without the correction are far from it."""
    hidden, targets, emb, counts = _skewed()
    full = float(F.cross_entropy(hidden @ emb[1:].T, targets - 1))
    sampler = NegativeSampler.from_counts(counts)
    torch.manual_seed(0)
    corrected = float(sampled_logq_loss(hidden, targets, emb, None, 4096, sampler))
    torch.manual_seed(0)
    plain = float(_uncorrected(hidden, targets, emb, sampler, 4096))
    assert abs(corrected - full) < 0.05 * full
    assert abs(plain - full) > 5 * abs(corrected - full)


def test_logq_gradient_points_closer_to_the_full_softmax_gradient_than_uncorrected() -> None:
    """Summed over 20 seeded draws of 64 popularity negatives each, the gradient of the
    logQ-corrected loss is closer in direction to the full-softmax gradient than the gradient
    of the same sampled loss without the correction."""
    hidden, targets, emb, counts = _skewed(seed=1)
    sampler = NegativeSampler.from_counts(counts)

    def grad(corrected: bool) -> torch.Tensor:
        total = torch.zeros_like(hidden)
        for seed in range(20):
            torch.manual_seed(seed)
            h = hidden.clone().requires_grad_(True)
            if corrected:
                loss = sampled_logq_loss(h, targets, emb, None, 64, sampler)
            else:
                loss = _uncorrected(h, targets, emb, sampler, 64)
            loss.backward()
            assert h.grad is not None
            total += h.grad
        return total.flatten()

    h0 = hidden.clone().requires_grad_(True)
    F.cross_entropy(h0 @ emb[1:].T, targets - 1).backward()
    assert h0.grad is not None
    full = h0.grad.flatten()
    cos = F.cosine_similarity
    with_logq, without = float(cos(grad(True), full, dim=0)), float(cos(grad(False), full, dim=0))
    assert with_logq > without
    assert with_logq > 0.95


def test_sampler_mixes_popularity_with_uniform_and_never_draws_padding() -> None:
    counts = torch.tensor([5.0, 90.0, 10.0, 0.0])
    s = NegativeSampler.from_counts(counts, uniform_share=0.1)
    expected = [0.0, 0.9 * 0.9 + 0.1 / 3, 0.9 * 0.1 + 0.1 / 3, 0.1 / 3]
    assert torch.allclose(s.probs, torch.tensor(expected))
    torch.manual_seed(0)
    draws = s.sample(20_000, "cpu")
    assert draws.min() >= 1
    freq = torch.bincount(draws, minlength=4).double() / len(draws)
    assert torch.allclose(freq, s.probs.double(), atol=0.01)


def test_sampled_logq_trains_through_the_platform_loss() -> None:
    """``loss = "sampled_logq"`` reaches every model through its hyperparameters; the trainer's
    fit_statistics fits the sampler to the training targets; an unknown loss is refused."""
    spec = get_spec("gpt2")
    ctx = ModelContext(30, 3, 8, params={"loss": "sampled_logq", "num_negatives": 16})
    model = spec.make(ctx)
    data = _sequences(16, 30, 8, seed=4)
    targets = torch.from_numpy(data.next_item_targets())
    model.fit_statistics(torch.from_numpy(data.items), targets)
    assert model.negative_sampler is not None
    assert float(model.negative_sampler.probs[0]) == 0.0
    batch = Batch(
        *(torch.from_numpy(a) for a in (data.items, data.types, data.times)), targets=targets
    )
    loss = model.loss(batch)
    assert torch.isfinite(loss) and loss.requires_grad
    with pytest.raises(SeqrecError, match="unknown loss 'softmax'"):
        spec.make(ModelContext(30, 3, 8, params={"loss": "softmax"}))


def test_logq_loss_equals_one_logit_per_draw_with_repeat_offsets() -> None:
    """Distinct negatives with log(times drawn) added give the loss of one logit per draw,
    the repeat offsets of history items included."""
    hidden, targets, emb, counts = _skewed(seed=2, v=50)
    g = torch.Generator().manual_seed(5)
    hist = torch.randint(0, 50, (len(targets), 6), generator=g)
    hist[:, 0] = targets  # a target seen before
    vals = torch.randn(hist.shape, generator=g) * (hist > 0)
    sampler = NegativeSampler.from_counts(counts)
    torch.manual_seed(7)
    got = sampled_logq_loss(hidden, targets, emb, None, 40, sampler, (hist, vals))
    torch.manual_seed(7)
    neg = sampler.sample(40, "cpu")  # the same draws, duplicates kept
    pos = (hidden * emb[targets]).sum(-1, keepdim=True) + ((hist == targets[:, None]) * vals).sum(
        1, keepdim=True
    )
    rest = hidden @ emb[neg].T + ((hist[:, :, None] == neg) * vals[:, :, None]).sum(1)
    rest = (rest - torch.log(40 * sampler.probs[neg])).masked_fill(
        neg == targets[:, None], torch.finfo(torch.float32).min
    )
    want = F.cross_entropy(torch.cat([pos, rest], 1), torch.zeros_like(targets))
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
