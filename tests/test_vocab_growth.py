"""A growing item vocabulary (``seqrec retrain`` after new items arrived), for every built-in
model: known items keep their index and their trained rows, special rows stay special, new items
start from a fresh model's initialisation, and items only in the held-out window are never
training targets.

The unit tests warm-start through ``pipeline._init_from`` (save, load, ``grow_from``), the
function ``train_model(init_from=...)`` runs for ``seqrec retrain``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from seqrec_bert.model import BertNextItem
from torch import nn

from seqrec.config import Workspace
from seqrec.models import (
    DATA_BUFFERS,
    Batch,
    ModelContext,
    SeqModel,
    get_spec,
    load_weights,
    save_weights,
)
from seqrec.pipeline import _init_from
from seqrec.testing import load_synth, make_workspace, random_batch

V_OLD, V_NEW = 30, 70  # item vocabularies (padding 0 included): 40 new items
N_TYPES, MAX_LEN = 4, 10
#: tiny configurations of the neural models; every tensor that depends on V is exercised
NEURAL: dict[str, dict[str, Any]] = {
    "lstm": {"d_model": 16, "hidden": 16, "dropout": 0.0},
    "gpt2": {"d_model": 16, "n_layer": 1, "n_head": 2, "dropout": 0.0},
    "bert": {"d_model": 16, "n_layers": 1, "n_heads": 2, "dropout": 0.0},
}


def _ctx(n_items: int, params: dict[str, Any]) -> ModelContext:
    return ModelContext(n_items, N_TYPES, MAX_LEN, params=dict(params))


#: the item embedding module of each model (tied with its output layer)
EMBEDDING = {
    "lstm": "item_emb",
    "gpt2": "backbone.wte",
    "bert": "backbone.embeddings.word_embeddings",
}


def _embedding(model: SeqModel) -> nn.Embedding:
    emb = model.get_submodule(EMBEDDING[model.spec_name])
    assert isinstance(emb, nn.Embedding)
    return emb


def _item_rows(model: SeqModel) -> torch.Tensor:
    """[V, d] item embeddings = output rows (bert: [V + 1, d], MASK last)."""
    return _embedding(model).weight.detach()


def _out_bias(model: SeqModel) -> torch.Tensor:
    """bert's output-layer item bias [V]."""
    return model.get_parameter("out_bias").detach()


def _trained(name: str) -> SeqModel:
    """A model at ``V_OLD`` whose weights are unlike any fresh initialisation: a few optimiser
    steps, then the repeat bias (and bert's output bias, and the transition bias's table of a
    model that has one, its counts fitted) set to distinct values."""
    torch.manual_seed(0)
    model = get_spec(name).make(_ctx(V_OLD, NEURAL[name]))
    batch = random_batch(model.ctx, batch_size=16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    with torch.no_grad():
        assert model.repeat_bias is not None
        model.repeat_bias.copy_(torch.linspace(-1.0, 1.0, len(model.repeat_bias)))
        if name == "bert":
            bias = model.get_parameter("out_bias")
            bias.uniform_(-1.0, 1.0)
            bias[0] = 0.0
        if model.transitions is not None:
            model.fit_statistics(*_pairs())
            model.transitions.table.copy_(torch.linspace(-1.0, 1.0, 16).reshape(8, 2))
    return model.eval()


def _pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Training sequences of known items and their next items, counted by the transition bias
    (a grown model's training counts them again: data, not weights)."""
    g = torch.Generator().manual_seed(3)
    items = torch.randint(1, V_OLD, (16, MAX_LEN), generator=g)
    return items, torch.roll(items, -1, dims=1)


def _grown(name: str, old: SeqModel, tmp_path: Path) -> tuple[SeqModel, dict[str, torch.Tensor]]:
    """(the model at ``V_NEW`` warm-started from ``old`` the way retrain does it, the same
    model's fresh state before the warm start)."""
    save_weights(old, tmp_path / "old")
    torch.manual_seed(1)
    new = get_spec(name).make(_ctx(V_NEW, NEURAL[name]))
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    _init_from(new, tmp_path / "old", load_weights)
    return new.eval(), fresh


def _known_batch(seed: int = 5) -> Batch:
    """Left-padded sequences of known items (1..V_OLD-1) with a repeat, of lengths 1..L."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, V_OLD, (6, MAX_LEN), generator=g)
    items[:, -1] = items[:, 0]  # a repeated item: the repeat bias takes part in the scores
    for row, n in enumerate((MAX_LEN, 1, 4, 7, 9, 2)):
        items[row, : MAX_LEN - n] = 0
    types = torch.where(items > 0, 1 + items % (N_TYPES - 1), 0)
    times = torch.where(items > 0, 1_700_000_000 + 37 * torch.arange(MAX_LEN) ** 2, 0)
    return Batch(items=items, types=types, times=times)


@pytest.mark.parametrize("name", sorted(NEURAL))
def test_known_items_keep_their_input_and_output_rows_and_biases(name: str, tmp_path: Path) -> None:
    old = _trained(name)
    new, fresh = _grown(name, old, tmp_path)
    before, after = _item_rows(old), _item_rows(new)
    # known items 0..V_OLD-1 (padding among them): input embeddings = tied output rows
    assert torch.equal(after[:V_OLD], before[:V_OLD])
    assert new.repeat_bias is not None and old.repeat_bias is not None
    assert torch.equal(new.repeat_bias, old.repeat_bias)
    if name == "bert":  # the output layer's item bias
        assert torch.equal(_out_bias(new)[:V_OLD], _out_bias(old))
    grown_keys = {"item_emb.weight", "backbone.wte.weight", "out_bias"}
    grown_keys.add("backbone.embeddings.word_embeddings.weight")
    got = new.state_dict()
    for k, v in old.state_dict().items():  # everything that does not depend on V: unchanged
        if k.rsplit(".", 1)[-1] in DATA_BUFFERS:  # data, such as the transition bias's counts:
            assert torch.equal(got[k], fresh[k]), f"{name}: {k} copied"  # refitted, not copied
        elif k not in grown_keys:
            assert torch.equal(got[k], v), f"{name}: {k} not kept"


@pytest.mark.parametrize("name", sorted(NEURAL))
def test_new_items_get_a_fresh_models_initialisation_not_copies_of_other_rows(
    name: str, tmp_path: Path
) -> None:
    old = _trained(name)
    new, fresh = _grown(name, old, tmp_path)
    table = EMBEDDING[name] + ".weight"
    rows = _item_rows(new)[V_OLD:V_NEW]
    # exactly the rows a fresh model of V_NEW items (same seed) starts with
    assert torch.equal(rows, fresh[table][V_OLD:V_NEW])
    # ... with the initialiser's statistics: N(0, 1) for torch's Embedding, N(0, 0.02) for
    # the transformers models (initializer_range)
    std = 1.0 if name == "lstm" else 0.02
    assert abs(float(rows.mean())) < 0.2 * std
    assert 0.8 * std < float(rows.std()) < 1.2 * std
    # no new row is a copy of a trained row (or of another new row)
    every = torch.cat([_item_rows(old), rows])
    assert len(torch.unique(every, dim=0)) == len(every)
    if name == "bert":
        assert not _out_bias(new)[V_OLD:].any()  # a fresh bias is zero


@pytest.mark.parametrize("name", sorted(NEURAL))
def test_padding_stays_padding_and_is_never_recommended(name: str, tmp_path: Path) -> None:
    old = _trained(name)
    new, _ = _grown(name, old, tmp_path)
    row0 = _item_rows(new)[0]
    assert torch.equal(row0, _item_rows(old)[0])
    if name != "gpt2":  # nn.Embedding(padding_idx=0): a zero row that gets no gradient
        assert _embedding(new).padding_idx == 0 and not row0.any()
    with torch.no_grad():
        scores = new.score(_known_batch())
    assert (scores[:, 0] == torch.finfo(scores.dtype).min).all()
    assert (scores[:, 1:] > scores[:, :1]).all()


def test_bert_mask_row_keeps_its_trained_vector_at_the_new_mask_index(tmp_path: Path) -> None:
    old = _trained("bert")
    new, fresh = _grown("bert", old, tmp_path)
    before, after = _item_rows(old), _item_rows(new)
    mask = before[V_OLD]  # old MASK id = V_OLD, new MASK id = V_NEW
    assert isinstance(old, BertNextItem) and isinstance(new, BertNextItem)
    assert old.mask_id == V_OLD and new.mask_id == V_NEW
    assert after.shape[0] == V_NEW + 1
    assert torch.equal(after[V_NEW], mask)
    # the old MASK index is a real item now: a fresh row, not the MASK vector
    word = "backbone.embeddings.word_embeddings.weight"
    assert torch.equal(after[V_OLD], fresh[word][V_OLD])
    assert not any(torch.equal(after[i], mask) for i in range(V_NEW))


@pytest.mark.parametrize("name", sorted(NEURAL))
def test_known_items_logits_on_known_sequences_are_unchanged_by_growth(
    name: str, tmp_path: Path
) -> None:
    """Scores are logits (embedding dot products plus biases), which do not depend on V: on
    sequences of known items, the grown model scores every known item as the old one did."""
    old = _trained(name)
    new, _ = _grown(name, old, tmp_path)
    if new.transitions is not None:  # training refits the counts, here from the same data
        new.fit_statistics(*_pairs())
    batch = _known_batch()
    with torch.no_grad():
        a, b = old.score(batch), new.score(batch)
    assert b.shape == (6, V_NEW)
    torch.testing.assert_close(b[:, 1:V_OLD], a[:, 1:], rtol=1e-5, atol=1e-5)
    assert torch.equal(b[:, 1:V_OLD].argsort(dim=1), a[:, 1:].argsort(dim=1))


@pytest.mark.parametrize("name", ["markov", "popularity"])
def test_statistics_models_refit_on_the_grown_vocabulary(name: str, tmp_path: Path) -> None:
    """Counting models have no trained weights to carry over: after the warm start the trainer
    refits them (``fit_statistics``), which gives exactly a fresh fit of V_NEW items."""
    fit = random_batch(_ctx(V_OLD, {}), batch_size=16)
    old = get_spec(name).make(_ctx(V_OLD, {}))
    old.fit_statistics(fit.items, fit.targets)
    data = random_batch(_ctx(V_NEW, {}), batch_size=32, seed=3)
    save_weights(old, tmp_path / "old")
    new = get_spec(name).make(_ctx(V_NEW, {}))
    _init_from(new, tmp_path / "old", load_weights)
    new.fit_statistics(data.items, data.targets)
    ref = get_spec(name).make(_ctx(V_NEW, {}))
    ref.fit_statistics(data.items, data.targets)
    for k, v in ref.state_dict().items():
        assert torch.equal(new.state_dict()[k], v), f"{name}: {k}"
    with torch.no_grad():
        assert torch.equal(new.score(_known_batch()), ref.score(_known_batch()))


# -- end to end: a real workspace, retrained after events with new items ------------------------


def _vocab(ws: Workspace) -> dict[str, int]:
    from sqlalchemy import select

    from seqrec.data.schema import items, make_engine

    engine = make_engine(ws.events_url)
    with engine.connect() as conn:
        out = {str(k): int(i) for k, i in conn.execute(select(items.c.item_id, items.c.item_idx))}
    engine.dispose()
    return out


def _add_newest_events(ws: Workspace, n_users: int, known: list[str]) -> tuple[set[str], str]:
    """Events after everything in the log. Each of ``n_users`` users gets two: a new item
    (``late-*``) and one of ``known``, in either order, so each ``late-*`` item is only ever one
    of its users' newest two events (validation or test targets). One more user gets three: a
    new item (``learned``) then two known ones, so that item is a training target (the third
    newest event). Returns (the ``late-*`` item ids, ``learned``)."""
    from sqlalchemy import func, select

    from seqrec.data.importers import RawEvent
    from seqrec.data.schema import events, make_engine

    engine = make_engine(ws.events_url)
    with engine.connect() as conn:
        last = int(conn.execute(select(func.max(events.c.ts_ms))).scalar_one())
        users = [r[0] for r in conn.execute(select(events.c.user_id).distinct().limit(n_users + 1))]
    late, learned = set(), "learned-0"
    seqs: list[tuple[str, ...]] = []
    for i in range(n_users):
        item, old = f"late-{i % 4}", known[(i * 7) % len(known)]
        late.add(item)
        seqs.append((item, old) if i % 2 else (old, item))  # late item: valid or test target
    seqs.append((learned, known[0], known[1]))
    rows, t = [], last
    for user, seq in zip(users, seqs, strict=True):
        for item in seq:
            t += 60_000
            rows.append(RawEvent(user, item, t, "view", None))
    engine.dispose()
    from seqrec.testing import import_rows

    import_rows(ws, rows, "test:late-items")
    return late, learned


def test_retrain_keeps_old_item_indices_and_never_trains_on_items_only_in_the_held_out_window(
    tmp_path: Path,
) -> None:
    """Import, train production, import newer events with new items, ``retrain``: old items keep
    their indices, the candidate's vocabulary grew by the new items, and the training set it was
    trained on (each user's events before their validation event) has none of the new items
    that only occur in the held-out window as a target, while a new item seen before a user's
    validation event is one; every training example is older than its user's validation
    cutoff."""
    from seqrec import model_store
    from seqrec.commands.serve import set_labels
    from seqrec.features.materialize import materialize
    from seqrec.features.repo import apply
    from seqrec.pipeline import build_data, train_model
    from seqrec.retrain import retrain

    ws = make_workspace(tmp_path / "ws")
    load_synth(ws, users=60, items=40)
    apply(ws)
    materialize(ws)
    prod = train_model(ws, "gpt2", epochs=1, seed=0, progress=False).tag
    set_labels(ws, prod, {"stage": "production"})
    before = _vocab(ws)

    late, learned = _add_newest_events(ws, n_users=40, known=sorted(before))
    after = _vocab(ws)
    assert {k: after[k] for k in before} == before  # known items: same index
    late_idx = {after[k] for k in late}
    assert min(late_idx) == max(before.values()) + 1 and len(late_idx) == len(late)
    assert after[learned] > max(before.values())

    rep = retrain(ws, min_gain=-1.0, epochs=1, seed=0, progress=False)
    cand = model_store.load(rep.candidate, store=ws.model_store)
    old = model_store.load(prod, store=ws.model_store)
    assert cand.info["init_from"] == str(old.path)
    assert cand.model.ctx.n_items == old.model.ctx.n_items + len(late) + 1 == len(after) + 1
    assert old.item_index() == before  # the stored vocabularies agree with the table
    assert {k: cand.item_index()[k] for k in before} == before

    data = build_data(ws, "next-item", None)  # the candidate's training set, as retrain builds it
    tensors = data.train.tensors(with_targets=True)
    targets = set(tensors["targets"].unique().tolist()) | set(tensors["labels"].tolist())
    assert not targets & late_idx, "items only in the held-out window are training targets"
    held_out = set(data.valid.labels.tolist()) | set(data.test.labels.tolist())
    assert late_idx <= held_out  # ... though they are in it (the test is not vacuous)
    assert after[learned] in targets  # a new item before a validation event is learned
    # every training example (its target event) precedes its user's validation event
    assert data.train.now is not None and data.valid.now is not None
    valid_at = dict(zip(data.valid.user_ids, data.valid.now, strict=True))
    cutoff = np.array([valid_at.get(u, np.iinfo(np.int64).max) for u in data.train.user_ids])
    assert (data.train.now <= cutoff).all()
