"""Items newer than a model: serving, evaluation and retraining drop them and left-pad again;
a warm start (``seqrec retrain``) grows the model's vocabulary for them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from seqrec.config import Workspace
from seqrec.features.sql import drop_unknown, left_pad
from seqrec.models import ModelContext, get_spec, load_weights, save_weights
from seqrec.pipeline import _clip_vocab, _init_from, build_data, evaluate_model
from seqrec.training.data import SequenceSet

T0 = 1_700_000_000


def _set(rows: list[tuple[list[int], list[int], list[int]]], labels: list[int]) -> SequenceSet:
    width = 6
    return SequenceSet(
        user_ids=np.array([f"u{i}" for i in range(len(rows))], dtype=object),
        items=left_pad([r[0] for r in rows], width),
        types=left_pad([r[1] for r in rows], width),
        times=left_pad([r[2] for r in rows], width),
        labels=np.array(labels, dtype=np.int64),
    )


def test_unknown_items_are_dropped_and_the_rest_left_padded_with_their_types_and_times() -> None:
    # model: items 1..9 (n_items 10), event types 1..2 (n_types 3); 12, 15 are newer items
    s = _set(
        [
            ([3, 12, 5, 7], [1, 2, 1, 2], [T0, T0 + 1, T0 + 2, T0 + 3]),  # new in the middle
            ([3, 5, 15], [1, 1, 2], [T0, T0 + 1, T0 + 2]),  # new as the newest event
            ([12, 15], [1, 1], [T0, T0 + 1]),  # nothing known
            ([4, 6], [1, 3], [T0, T0 + 1]),  # all known; event type 3 is new
        ],
        [8, 8, 8, 8],
    )
    items, types, times = s.items.copy(), s.types.copy(), s.times.copy()
    known = drop_unknown(items, types, times, n_items=10, n_types=3)
    assert items.tolist() == [
        [0, 0, 0, 3, 5, 7],
        [0, 0, 0, 0, 3, 5],
        [0] * 6,
        [0, 0, 0, 0, 4, 6],
    ]
    assert types.tolist() == [[0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 1, 1], [0] * 6, [0, 0, 0, 0, 1, 0]]
    assert times[0].tolist() == [0, 0, 0, T0, T0 + 2, T0 + 3]
    assert times[1].tolist() == [0, 0, 0, 0, T0, T0 + 1]
    assert known.tolist() == [True, True, False, True]
    # evaluation prepares its examples with the same function, without touching the data
    ctx = ModelContext(n_items=10, n_event_types=3, max_len=6)
    clipped = _clip_vocab(s, ctx, targets=False)
    assert np.array_equal(clipped.items, items) and np.array_equal(clipped.times, times)
    assert np.array_equal(clipped.types, types) and s.items[0, 3] == 12


def test_evaluation_scores_a_sequence_with_a_newer_item_as_the_sequence_without_it(
    trained_ws: Workspace, tmp_path: Path
) -> None:
    """A stored model meets items added after it was trained (the evaluation of production in
    ``seqrec retrain``): its ranking for a sequence holding such an item, in the middle or as
    the newest event, is its ranking for the sequence with that event removed; examples whose
    target is newer than the model are left out."""
    from seqrec import model_store

    data = build_data(trained_ws, "next-item", None)
    n = model_store.load("gpt2", store=trained_ws.model_store).model.ctx.n_items
    assert data.n_items == n
    t, width = data.test, data.max_len
    row = next(i for i in range(len(t)) if 4 <= (t.items[i] > 0).sum() < width - 1)
    real = t.items[row] > 0
    seq = [t.items[row][real].tolist(), t.types[row][real].tolist(), t.times[row][real].tolist()]
    target = int(t.labels[row])

    def with_event(at: int) -> list[list[int]]:
        item, typ, time = n + 2, 1, seq[2][at - 1] if at else seq[2][0]
        return [[*a[:at], x, *a[at:]] for a, x in zip(seq, (item, typ, time), strict=True)]

    rows = [seq, with_event(len(seq[0]) // 2), with_event(len(seq[0])), seq]
    test = SequenceSet(
        user_ids=np.array([t.user_ids[row]] * 4, dtype=object),
        items=left_pad([r[0] for r in rows], width),
        types=left_pad([r[1] for r in rows], width),
        times=left_pad([r[2] for r in rows], width),
        labels=np.array([target, target, target, n + 1], dtype=np.int64),  # last: a new target
    )
    grown = replace(data, test=test, n_items=n + 5)
    path = tmp_path / "top.jsonl"
    res = evaluate_model(
        trained_ws, "gpt2", ks=(20,), data=grown, dump_topk=path, progress=False, ci=False
    )
    assert res["users"] == 3  # the example with a target newer than the model is left out
    top = [json.loads(x)["topk"] for x in path.read_text().splitlines()]
    assert top[1] == top[0] and top[2] == top[0]


def test_a_warm_start_uses_the_models_own_rule_for_new_items(tmp_path: Path) -> None:
    """``train_model(init_from=...)`` (what ``seqrec retrain`` runs) grows a stored model's
    vocabulary through ``SeqModel.grow_from``: for bert, the MASK row moves to the new MASK id."""
    torch.manual_seed(0)
    old = get_spec("bert").make(ModelContext(n_items=20, n_event_types=3, max_len=8))
    save_weights(old, tmp_path / "old")
    torch.manual_seed(1)
    new = get_spec("bert").make(ModelContext(n_items=26, n_event_types=3, max_len=8))
    _init_from(new, tmp_path / "old", load_weights)
    assert torch.equal(new.item_weight[26], old.item_weight[20])  # MASK
    assert torch.equal(new.item_weight[:20], old.item_weight[:20])
    assert not torch.equal(new.item_weight[20], old.item_weight[20])
