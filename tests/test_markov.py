"""The ``markov`` baseline: counting, backoff, sparse storage, save/load and serving."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from seqrec.config import Workspace
from seqrec.errors import SeqrecError
from seqrec.models import Batch, ModelContext, SeqModel, get_spec, load_weights, save_weights
from seqrec.testing import check_model_contract

V = 8  # items 1..7, 0 = padding
# 1 -> 2 three times, 1 -> 3 once; 2 -> 1 three times, 2 -> 4 once; 5 is the most popular
SEQS = [[1, 2, 1, 2, 1, 2, 1, 3], [5, 5, 5, 5, 4, 5], [6, 5, 3, 5, 2, 4]]


def tensors(seqs: list[list[int]], width: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded items [N, width] and the next item after each position (0 = none)."""
    items = torch.zeros(len(seqs), width, dtype=torch.long)
    for r, s in enumerate(seqs):
        items[r, width - len(s) :] = torch.tensor(s)
    targets = torch.cat([items[:, 1:], torch.zeros(len(seqs), 1, dtype=torch.long)], 1)
    return items, targets.masked_fill(items == 0, 0)


def fitted(seqs: list[list[int]] = SEQS, n_items: int = V, **params: Any) -> SeqModel:
    model = get_spec("markov").make(
        ModelContext(n_items=n_items, n_event_types=2, max_len=10, params=params)
    )
    model.fit_statistics(*tensors(seqs))
    return model.eval()


def scores(model: SeqModel, *histories: list[int]) -> torch.Tensor:
    items = tensors([list(h) for h in histories] if histories else [[]])[0]
    with torch.no_grad():
        return model.score(Batch(items=items, types=(items > 0).long(), times=items * 0))


def reference(seqs: list[list[int]], history: list[int], n_items: int, alpha: float) -> list[float]:
    """P1(b | newest) = (c(a, b) + alpha * Ppop(b)) / (c(a) + alpha), computed with dicts."""
    pairs = Counter((a, b) for s in seqs for a, b in itertools.pairwise(s))
    pop = Counter(b for s in seqs for b in s[1:])
    total = sum(pop.values())
    a = history[-1] if history else 0
    c_a = sum(n for (x, _), n in pairs.items() if x == a)
    return [
        0.0 if b == 0 else (pairs[(a, b)] + alpha * pop[b] / total) / (c_a + alpha)
        for b in range(n_items)
    ]


def test_top_item_after_an_item_is_its_most_frequent_successor() -> None:
    s = scores(fitted(), [4, 1], [6, 2], [3])
    assert s[0].argmax().item() == 2  # 1 -> 2 (3 times) over 1 -> 3 (once)
    assert s[1].argmax().item() == 1  # 2 -> 1 (3 times) over 2 -> 4 (once)
    assert s[2].argmax().item() == 5  # 3 -> 5


def test_scores_match_a_dict_reference_and_sum_to_one() -> None:
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, 12, (int(n),), generator=gen).tolist() for n in range(3, 11)]
    model = fitted(seqs, n_items=12, alpha=2.5)
    histories = [[int(a)] for a in range(12)]
    got = scores(model, *histories)
    want = torch.tensor([reference(seqs, h, 12, 2.5) for h in histories])
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(got[:, 1:].sum(1), torch.ones(12), atol=1e-5)  # a distribution


def test_unknown_or_missing_newest_item_backs_off_to_popularity() -> None:
    model = fitted()
    pop = torch.tensor([0.0, *(Counter(b for s in SEQS for b in s[1:])[i] for i in range(1, V))])
    pop = pop / pop.sum()
    s = scores(model, [1, 7], [])  # 7 is never followed by anything; [] is an empty sequence
    assert torch.allclose(s[0], pop) and torch.allclose(s[1], pop)
    assert s[0].argmax().item() == 5


def test_second_order_uses_the_pair_then_backs_off_to_first_order() -> None:
    seqs = [[1, 3, 4], [1, 3, 4], [2, 3, 6], [2, 3, 6], [2, 3, 6], [5, 3, 6]]
    first, second = fitted(seqs), fitted(seqs, order=2)
    assert scores(first, [1, 3])[0].argmax().item() == 6  # 3 -> 6 four times, 3 -> 4 twice
    assert scores(second, [1, 3])[0].argmax().item() == 4  # but (1, 3) -> 4
    assert scores(second, [2, 3])[0].argmax().item() == 6
    # an unseen pair (7, 3) and a single item use first order alone
    assert torch.allclose(scores(second, [7, 3]), scores(first, [3]))
    assert torch.allclose(scores(second, [3]), scores(first, [3]))
    assert torch.allclose(scores(second, []), scores(first, []))


def test_max_successors_keeps_the_most_frequent_and_the_rest_score_by_the_prior() -> None:
    seqs = [[1, 2]] * 5 + [[1, 3]] * 3 + [[1, 4]] * 2 + [[1, 5]]
    full, cut = fitted(seqs), fitted(seqs, max_successors=2)
    assert cut.item1.numel() - 1 == 2  # stored successors (+ the sentinel) across all rows
    f, c = scores(full, [1])[0], scores(cut, [1])[0]
    assert torch.allclose(f[[2, 3]], c[[2, 3]])  # kept successors score as without the cut
    w = cut.alpha / (11 + cut.alpha)  # the dropped ones score by the prior alone
    assert torch.allclose(c[[4, 5]], w * cut.pop[[4, 5]])
    assert c[2] > c[3] > max(c[4], c[5])


def test_save_and_load_give_equal_scores(tmp_path: Path) -> None:
    for order in (1, 2):
        model = fitted(order=order, max_successors=3)
        save_weights(model, tmp_path / f"o{order}")
        loaded = load_weights(tmp_path / f"o{order}")  # buffers resized to the stored tables
        batch = ([4, 1], [1, 2], [6, 5, 3], [7], [])
        assert torch.equal(scores(model, *batch), scores(loaded, *batch))


@pytest.mark.parametrize("params", [{}, {"order": 2, "max_successors": 4}])
def test_markov_passes_the_model_contract(params: dict[str, Any]) -> None:
    check_model_contract("markov", params)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"order": 3}, "order must be 1 or 2"),
        ({"alpha": 0}, "alpha must be a number > 0"),
        ({"alpha": "big"}, "alpha must be a number > 0"),
        ({"max_successors": 0}, "max_successors must be an integer >= 1"),
        ({"repeat_bias": True}, "no repeat bias"),
    ],
)
def test_bad_params_raise_a_clear_error(params: dict[str, Any], message: str) -> None:
    with pytest.raises(SeqrecError, match=message):
        fitted(**params)


# -- trained, evaluated, stored and served like any model -----------------------------------------


@pytest.fixture(scope="module")
def markov_tag(trained_ws: Workspace) -> Iterator[str]:
    """markov trained on the shared workspace; the stored model is deleted after."""
    from seqrec import model_store
    from seqrec.pipeline import train_model

    tag = train_model(trained_ws, "markov", progress=False).tag
    yield tag
    model_store.delete(tag, trained_ws.model_store)


def test_markov_beats_popularity_with_exclude_seen(trained_ws: Workspace, markov_tag: str) -> None:
    from seqrec.pipeline import evaluate_model

    def ndcg(ref: str) -> float:
        res = evaluate_model(trained_ws, ref, ks=(10,), exclude_seen=True, progress=False)
        return float(res["ndcg@10"])

    assert markov_tag.startswith("seqrec-markov:")
    assert ndcg(markov_tag) > ndcg("popularity")


def test_markov_serves_traced_and_answers_its_most_likely_successor(
    trained_ws: Workspace, markov_tag: str
) -> None:
    from seqrec.recommend import Event, Recommender

    rec = Recommender(trained_ws, markov_tag, device="cpu")
    assert rec._traced is not None  # the TorchScript trace matched eager scores at startup
    a = max(range(1, rec.n_items), key=lambda i: int(rec.model.ptr1[i + 1] - rec.model.ptr1[i]))
    best = int(rec.model.item1[rec.model.ptr1[a]])  # a's most frequent successor
    res = rec.recommend_from_events([Event(rec.vocab[a])], k=3, exclude_seen=False)
    assert res["fallback"] is False
    assert res["items"][0]["item_id"] == rec.vocab[best]
    if best != a:
        seen = rec.recommend_from_events([Event(rec.vocab[a])], k=3, exclude_seen=True)
        assert rec.vocab[a] not in [i["item_id"] for i in seen["items"]]


def test_markov_successor_counts_follow_the_training_transitions() -> None:
    model = fitted()
    counts: dict[int, Counter[int]] = defaultdict(Counter)
    for s in SEQS:
        for a, b in itertools.pairwise(s):
            counts[a][b] += 1
    for a in range(V):
        lo, hi = int(model.ptr1[a]), int(model.ptr1[a + 1])
        assert set(model.item1[lo:hi].tolist()) == set(counts[a])


def test_popularity_with_repeat_bias_is_a_clear_error_not_silently_ignored() -> None:
    from seqrec.default_plugins.popularity import Popularity
    from seqrec.models import ModelContext

    ctx = ModelContext(n_items=10, n_event_types=2, max_len=5, params={"repeat_bias": True})
    with pytest.raises(SeqrecError, match="popularity has no repeat bias"):
        Popularity(ctx)
