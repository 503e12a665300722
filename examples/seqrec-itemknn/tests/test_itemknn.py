"""The itemknn plugin: the contract kit, similarities counted by hand on a tiny log, scoring,
save/load, and trained, evaluated and served through the platform like any model."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from seqrec_itemknn.model import POPULARITY_TIEBREAK, ItemKNN

from seqrec.config import Workspace
from seqrec.errors import SeqrecError
from seqrec.models import Batch, ModelContext, get_spec, load_weights, save_weights
from seqrec.testing import check_plugin, make_workspace

# -- a tiny log, counted by hand ------------------------------------------------------------------

V = 5  # items 1..4, 0 = padding
SEQS = [[1, 2, 3], [3, 1, 2], [2, 4], [4, 1]]  # four users' training sequences
R2 = math.sqrt(2)
# n(i), how often i is a training target (every event but a user's first):
#   1: users 2 and 4 -> 2;  2: users 1 and 2 -> 2;  3: user 1 -> 1;  4: user 3 -> 1
# window 0 pairs each target with every earlier event of its user:
#   [1, 2, 3]: 1-2, 1-3, 2-3   [3, 1, 2]: 3-1, 3-2, 1-2   [2, 4]: 2-4   [4, 1]: 4-1
# so c(1,2) = c(1,3) = c(2,3) = 2 and c(1,4) = c(2,4) = 1; with shrinkage 1,
# sim(i, j) = c(i, j) / (sqrt(n(i) n(j)) + 1):
WHOLE = {(1, 2): 2 / 3, (1, 3): 2 / (R2 + 1), (2, 3): 2 / (R2 + 1), (1, 4): 1 / (R2 + 1)}
WHOLE[(2, 4)] = 1 / (R2 + 1)
# window 1 pairs only neighbours in the sequence: 1-2, 2-3 | 3-1, 1-2 | 2-4 | 4-1
ADJACENT = {(1, 2): 2 / 3, (2, 3): 1 / (R2 + 1), (1, 3): 1 / (R2 + 1), (1, 4): 1 / (R2 + 1)}
ADJACENT[(2, 4)] = 1 / (R2 + 1)
POP = torch.tensor([0.0, 1.0, 1.0, 0.5, 0.5])  # n(i) / max n


def rows(seqs: list[list[int]], width: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """The trainer's tensors for whole sequences: inputs = all but the newest event,
    targets = the event after each input (left-padded, 0 = none)."""
    items = torch.zeros(len(seqs), width, dtype=torch.long)
    targets = torch.zeros(len(seqs), width, dtype=torch.long)
    for r, s in enumerate(seqs):
        items[r, width - len(s) + 1 :] = torch.tensor(s[:-1])
        targets[r, width - len(s) + 1 :] = torch.tensor(s[1:])
    return items, targets


def fitted(seqs: list[list[int]] = SEQS, n_items: int = V, **params: Any) -> ItemKNN:
    params = {"shrinkage": 1.0, "window": 0, **params}
    model = get_spec("itemknn").make(ModelContext(n_items, 2, 4, params=params))
    assert isinstance(model, ItemKNN)
    model.fit_statistics(*rows(seqs))
    return model.eval()


def scores(model: ItemKNN, *histories: list[int], width: int = 4) -> torch.Tensor:
    items = torch.zeros(len(histories), width, dtype=torch.long)
    for r, h in enumerate(histories):
        if h:
            items[r, width - len(h) :] = torch.tensor(h)
    with torch.no_grad():
        return model.score(Batch(items=items, types=(items > 0).long(), times=items * 0))


def expected_neighbours(sims: dict[tuple[int, int], float], item: int) -> list[tuple[int, float]]:
    """``item``'s row of the symmetric matrix ``sims``, most similar first, ties by index."""
    row = [(j, s) for (a, b), s in sims.items() for j in (a, b) if item in (a, b) and j != item]
    return sorted(row, key=lambda js: (-js[1], js[0]))


@pytest.mark.parametrize(("window", "sims"), [(0, WHOLE), (1, ADJACENT)])
def test_similarities_match_the_hand_counted_tiny_log(
    window: int, sims: dict[tuple[int, int], float]
) -> None:
    model = fitted(window=window)
    for item in range(1, V):
        got = model.similar_items(item)
        want = expected_neighbours(sims, item)
        assert [j for j, _ in got] == [j for j, _ in want], f"item {item}"
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-6)
    assert model.similar_items(0) == []  # padding has no neighbours


def test_neighbours_keeps_the_top_m_per_item_with_ties_to_the_smaller_index() -> None:
    model = fitted(neighbours=1)
    assert model.similar_items(1) == [(3, pytest.approx(WHOLE[(1, 3)]))]
    assert model.similar_items(3) == [(1, pytest.approx(WHOLE[(1, 3)]))]  # 1 and 2 tie
    assert model.similar_items(4) == [(1, pytest.approx(WHOLE[(1, 4)]))]  # 1 and 2 tie
    assert model.nbr_items.numel() - 1 == V - 1  # one stored neighbour per item (+ sentinel)


def test_shrinkage_lowers_rare_pairs_more_than_frequent_ones() -> None:
    plain, shrunk = fitted(shrinkage=0.0), fitted(shrinkage=10.0)
    assert dict(plain.similar_items(3))[1] == pytest.approx(2 / R2)  # c 2 / sqrt(2 * 1)
    assert dict(shrunk.similar_items(3))[1] == pytest.approx(2 / (R2 + 10))
    ratio = dict(shrunk.similar_items(1))[2] / dict(plain.similar_items(1))[2]
    assert ratio == pytest.approx(2 / 12)  # (2 / (2 + 10)) / (2 / 2)


def test_score_is_the_recency_decayed_similarity_sum_and_padding_never_ranks() -> None:
    s = scores(fitted(decay=0.5), [1, 2])[0]  # 2 is the newest (weight 1), 1 weighs 0.5
    want = torch.tensor(
        [
            0.0,
            WHOLE[(1, 2)],  # sim(2, 1); 1 has no similarity to itself
            0.5 * WHOLE[(1, 2)],
            WHOLE[(2, 3)] + 0.5 * WHOLE[(1, 3)],
            WHOLE[(2, 4)] + 0.5 * WHOLE[(1, 4)],
        ]
    )
    assert s[0] == torch.finfo(s.dtype).min
    assert torch.allclose(s[1:], (want + POPULARITY_TIEBREAK * POP)[1:], atol=1e-6)
    assert s.argsort(descending=True).tolist() == [3, 1, 4, 2, 0]


def test_an_empty_history_ranks_by_popularity() -> None:
    s = scores(fitted(), [])[0]
    assert torch.allclose(s[1:], POPULARITY_TIEBREAK * POP[1:])
    assert sorted(s.argsort(descending=True)[:2].tolist()) == [1, 2]


def test_items_newer_than_the_model_count_as_padding() -> None:
    model = fitted(decay=0.5)
    newer, alone = scores(model, [1, 7], [1])  # 7 >= V: unknown to the model
    tie = POPULARITY_TIEBREAK * POP
    assert torch.isfinite(newer[1:]).all()
    assert torch.allclose(newer[1:] - tie[1:], 0.5 * (alone[1:] - tie[1:]), atol=1e-7)


def test_a_fitted_model_round_trips_through_safetensors(tmp_path: Path) -> None:
    model = fitted(neighbours=2)
    save_weights(model, tmp_path / "m")
    loaded = load_weights(tmp_path / "m")  # buffers resized to the stored neighbour lists
    assert isinstance(loaded, ItemKNN)
    histories: list[list[int]] = [[1, 2], [3], [4, 1, 2], []]
    assert torch.equal(scores(model, *histories), scores(loaded, *histories))
    assert [loaded.similar_items(i) for i in range(V)] == [model.similar_items(i) for i in range(V)]


def test_a_fitted_model_scores_each_row_as_it_does_alone() -> None:
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, 40, (int(n),), generator=gen).tolist() for n in range(2, 30)]
    items, targets = rows(seqs, width=30)
    model = get_spec("itemknn").make(ModelContext(40, 2, 30, params={"neighbours": 5}))
    model.fit_statistics(items, targets)
    model.eval()
    with torch.no_grad():
        batch = Batch(items=items, types=items * 0, times=items * 0)
        together = model.score(batch)
        for r in range(len(items)):
            one = slice(r, r + 1)
            alone = model.score(Batch(items=items[one], types=items[one] * 0, times=items[one] * 0))
            torch.testing.assert_close(together[one], alone, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("params", [{}, {"window": 0, "neighbours": 3, "shrinkage": 0}])
def test_itemknn_passes_the_contract_kit(params: dict[str, Any]) -> None:
    # every check: tasks, round trip, padding, determinism, trace, left padding, batch
    # independence, vocabulary growth (what `seqrec retrain` does before refitting the counts)
    check_plugin("itemknn", params)


def test_itemknn_is_registered_through_its_entry_point() -> None:
    spec = get_spec("itemknn")
    assert (spec.plugin, spec.tasks) == ("itemknn", ("next-item",))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"neighbours": 0}, "neighbours must be an integer >= 1"),
        ({"neighbours": 2.5}, "neighbours must be an integer >= 1"),
        ({"window": -1}, "window must be an integer >= 0"),
        ({"shrinkage": -1}, "shrinkage must be a number >= 0"),
        ({"shrinkage": "big"}, "shrinkage must be a number >= 0"),
        ({"decay": 0}, r"decay must be a number in \(0, 1\]"),
        ({"decay": 1.5}, r"decay must be a number in \(0, 1\]"),
        ({"repeat_bias": True}, "no repeat bias"),
        ({"neighbors": 5}, "unknown hyperparameter"),
    ],
)
def test_bad_params_raise_a_clear_error(params: dict[str, Any], message: str) -> None:
    with pytest.raises(SeqrecError, match=message):
        get_spec("itemknn").make(ModelContext(V, 2, 4, params=params))


def test_classification_is_refused_with_the_supported_task() -> None:
    ctx = ModelContext(V, 2, 4, task="classify", n_classes=2)
    with pytest.raises(SeqrecError, match="does not support task 'classify'"):
        get_spec("itemknn").make(ctx)


# -- through the platform: train, evaluate, serve ---------------------------------------------------


@pytest.mark.slow
def test_the_trainer_fits_the_counts_of_the_imported_tiny_log(tmp_path: Path) -> None:
    """SEQS imported as events (plus two later events per user for validation and test):
    the stored model holds the hand-counted similarities, by item id."""
    from seqrec import model_store
    from seqrec.data.importers import RawEvent
    from seqrec.features.repo import apply
    from seqrec.pipeline import train_model
    from seqrec.testing import import_rows

    ws = make_workspace(tmp_path / "ws")
    events = []
    for u, seq in enumerate(SEQS):
        for t, item in enumerate([*seq, 9, 9]):  # the last two: validation and test targets
            events.append(
                RawEvent(f"u{u}", f"i{item}", 1_700_000_000_000 + t * 60_000, "view", None)
            )
    import_rows(ws, events, "tiny")
    apply(ws)
    tag = train_model(ws, "itemknn", params={"shrinkage": 1.0, "window": 0}, progress=False).tag
    stored = model_store.load(tag, store=ws.model_store)
    model, vocab = stored.model, stored.vocab
    assert isinstance(model, ItemKNN)
    got = {(vocab[i], vocab[j]): s for i in range(1, len(vocab)) for j, s in model.similar_items(i)}
    want = {(f"i{a}", f"i{b}"): s for (a, b), s in WHOLE.items()}
    want |= {(b, a): s for (a, b), s in want.items()}
    assert got == pytest.approx(want, abs=1e-6)


@pytest.fixture(scope="module")
def synth_ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """A small synthetic log (item-to-item structure, see seqrec.data.synth), online."""
    from seqrec.features.materialize import materialize
    from seqrec.features.repo import apply
    from seqrec.testing import load_synth

    ws = make_workspace(tmp_path_factory.mktemp("synth") / "ws")
    load_synth(ws, users=120, items=60)
    apply(ws)
    materialize(ws)
    yield ws


@pytest.fixture(scope="module")
def trained(synth_ws: Workspace) -> dict[str, str]:
    from seqrec.pipeline import train_model
    from seqrec.plugins import reset_plugin_manager

    reset_plugin_manager()
    return {m: train_model(synth_ws, m, progress=False).tag for m in ("itemknn", "popularity")}


@pytest.mark.slow
@pytest.mark.parametrize("exclude_seen", [False, True])
def test_itemknn_beats_popularity_on_the_synthetic_log(
    synth_ws: Workspace, trained: dict[str, str], exclude_seen: bool
) -> None:
    from seqrec.pipeline import evaluate_model

    ndcg = {
        m: float(
            evaluate_model(synth_ws, tag, ks=(10,), exclude_seen=exclude_seen, progress=False)[
                "ndcg@10"
            ]
        )
        for m, tag in trained.items()
    }
    assert ndcg["itemknn"] > ndcg["popularity"], ndcg


@pytest.mark.slow
def test_served_itemknn_is_traced_and_ranks_the_nearest_neighbour_first(
    synth_ws: Workspace, trained: dict[str, str]
) -> None:
    from seqrec.recommend import Event, Recommender

    rec = Recommender(synth_ws, trained["itemknn"], device="cpu")
    assert rec._traced is not None  # the TorchScript trace matched eager scores at startup
    model = rec.model
    assert isinstance(model, ItemKNN)

    def clear_winner(i: int) -> bool:  # a top neighbour no popularity tie-break can overturn
        nb = model.similar_items(i)
        return len(nb) >= 2 and nb[0][1] - nb[1][1] > 1e-4

    item = next(i for i in range(1, rec.n_items) if clear_winner(i))
    res = rec.recommend_from_events([Event(rec.vocab[item])], k=3, exclude_seen=True)
    assert res["fallback"] is False
    assert res["items"][0]["item_id"] == rec.vocab[model.similar_items(item)[0][0]]


@pytest.mark.slow
def test_tune_searches_the_four_parameters_and_saves_a_preset(synth_ws: Workspace) -> None:
    from seqrec.tuning import tune

    res = tune(synth_ws, "itemknn", trials=3, progress=False)
    assert len(res.trials) == 3
    assert set(res.best_params) == {"neighbours", "shrinkage", "window", "decay"}
    assert Path(res.preset_file).is_file() and res.preset == "tuned"
    assert 0 < res.best_value <= 1
