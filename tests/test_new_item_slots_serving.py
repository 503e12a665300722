"""New-item slots in the recommender (``[serve] new_item_slots``): a text-aware model's lists
give cold-start items their places, on both ranking paths, by the rule of
:mod:`seqrec.evaluation.slots`; an id-only model's lists are its own."""

from __future__ import annotations

from typing import Any

import pytest
from test_text_models import text_workspace

from seqrec.config import Workspace
from seqrec.recommend import Query, Recommender

NEW_ITEMS = (
    "item_id,title,category\n"
    "jazz-new,Midnight Jazz Saxophone Quartet,Jazz\n"
    "metal-new,Iron Metal Guitar Anthems,Metal\n"
)
USERS = ("jazz-fan-0", "metal-fan-0", "jazz-fan-1")


def _with(ws: Workspace, **serve: object) -> Workspace:
    config = ws.config.model_copy(update={"serve": ws.config.serve.model_copy(update=serve)})
    return Workspace(ws.root, config)


@pytest.fixture(scope="module")
def ws_and_tag(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, str]:
    """A text-aware gpt2 trained before two items with text (and no events) arrived."""
    from seqrec.data.item_text import import_item_file
    from seqrec.features.materialize import materialize
    from seqrec.pipeline import train_model
    from seqrec.plugins import reset_plugin_manager
    from seqrec.text.embed import embed_items
    from seqrec.text.encoder import TextEncoder

    root = tmp_path_factory.mktemp("slots") / "ws"
    ws = text_workspace(root)
    reset_plugin_manager()
    tag = train_model(ws, "gpt2", epochs=3, seed=0, params={"item_text": True}, progress=False).tag
    (root / "new.csv").write_text(NEW_ITEMS)
    import_item_file(ws.engine, root / "new.csv", "csv")
    embed_items(ws, encoder=TextEncoder(device="cpu"))
    materialize(ws, incremental=True)
    return ws, tag


def _lists(rec: Recommender, k: int, exclude: tuple[str, ...] = ()) -> list[list[dict[str, Any]]]:
    return [rec.recommend_many([Query(u, k, True, exclude)])[0]["items"] for u in USERS]


@pytest.mark.parametrize("slots", [1, 2])
def test_slotted_lists_follow_the_rule_on_both_ranking_paths(
    ws_and_tag: tuple[Workspace, str], slots: int
) -> None:
    ws, tag = ws_and_tag
    own = Recommender(_with(ws, new_item_slots=0), tag, device="cpu")
    assert own.refresh_extra_items() and len(own.extra or ()) == 2
    dense = Recommender(_with(ws, new_item_slots=slots), tag, device="cpu")
    chunked = Recommender(_with(ws, new_item_slots=slots, topk_chunk_items=4), tag, device="cpu")
    assert chunked.chunked and not dense.chunked
    for rec in (dense, chunked):
        rec.refresh_extra_items()
    k = 4
    for mine, got, also in zip(_lists(own, 50), _lists(dense, k), _lists(chunked, k), strict=True):
        assert [r["item_id"] for r in also] == [r["item_id"] for r in got]
        ranked = [r["item_id"] for r in mine]  # the model's own order of every item
        cold_own = [i for i in ranked[:k] if i.endswith("-new")]
        want_cold = [i for i in ranked if i.endswith("-new")][: max(slots, len(cold_own))]
        trained = [i for i in ranked[:k] if not i.endswith("-new")][: k - len(want_cold)]
        want = [i for i in ranked if i in set(want_cold) | set(trained)]
        assert [r["item_id"] for r in got] == want
        scores = [r["score"] for r in got]
        assert scores == sorted(scores, reverse=True)
    # an excluded cold item is no candidate: the other one takes the place
    for got in _lists(dense, k, exclude=("jazz-new",)):
        ids = [r["item_id"] for r in got]
        assert "jazz-new" not in ids and "metal-new" in ids and len(ids) == k


def test_an_id_only_model_ignores_new_item_slots(ws_and_tag: tuple[Workspace, str]) -> None:
    from seqrec.pipeline import train_model

    ws, _ = ws_and_tag
    tag = train_model(ws, "gpt2", epochs=1, seed=0, progress=False).tag
    plain = Recommender(_with(ws, new_item_slots=0), tag, device="cpu")
    slotted = Recommender(_with(ws, new_item_slots=2), tag, device="cpu")
    assert slotted.new_item_slots == 0
    assert _lists(plain, 5) == _lists(slotted, 5)
