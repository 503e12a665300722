"""Text-aware next-item models (``--param item_text=true``) for gpt2, lstm and bert.

Unit level: the fused item representation (id embedding for items seen in training + a learned
projection of the text), the text-only scoring the service uses for items newer than a model,
saving and loading the text matrix with the weights, warm starts, and the id-only default left
exactly as it was. Workspace level: a tiny catalogue whose titles share a word per genre,
users who each keep to one genre; every plugin trains, evaluates, is stored and loads with the
text matrix.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from seqrec.config import Workspace
from seqrec.errors import SeqrecError
from seqrec.models import (
    CONTEXT_FILE,
    ItemText,
    ModelContext,
    SeqModel,
    get_spec,
    load_weights,
    save_weights,
)
from seqrec.pipeline import _init_from
from seqrec.testing import make_workspace, random_batch

V, N_TYPES, MAX_LEN, DIM = 30, 4, 10, 12
TINY: dict[str, dict[str, Any]] = {
    "lstm": {"d_model": 16, "hidden": 16, "dropout": 0.0},
    "gpt2": {"d_model": 16, "n_layer": 1, "n_head": 2, "dropout": 0.0},
    "bert": {"d_model": 16, "n_layers": 1, "n_heads": 2, "dropout": 0.0},
}
NAMES = sorted(TINY)
#: items 1..5 have events in training; 6..V-3 text only; the last two neither (no text)
TRAINED = 6


def _text(n_items: int = V, seed: int = 0) -> ItemText:
    g = np.random.default_rng(seed)
    m = g.normal(size=(n_items, DIM)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    m[0] = 0
    m[n_items - 2 :] = 0  # no text
    trained = np.zeros(n_items, dtype=bool)
    trained[:TRAINED] = True
    return ItemText(m, trained)


def _model(name: str, n_items: int = V, text: ItemText | None = None, **extra: Any) -> SeqModel:
    params = {**TINY[name], "item_text": True, **extra}
    text = text or _text(n_items)
    ctx = ModelContext(n_items, N_TYPES, MAX_LEN, params=params, text_dim=DIM, item_text=text)
    return get_spec(name).make(ctx)


def _steps(model: SeqModel, n: int = 3) -> SeqModel:
    batch = random_batch(model.ctx, batch_size=16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(n):
        opt.zero_grad()
        loss = model.loss(batch)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("name", NAMES)
def test_text_aware_model_trains_saves_and_loads_with_its_text_matrix(
    name: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = _steps(_model(name))
    fusion = model.text_fusion
    assert fusion is not None and fusion.proj.weight.grad is not None  # W learns
    assert fusion.proj.weight.grad.abs().sum() > 0
    text = _text()
    np.testing.assert_array_equal(fusion.text_table.numpy(), text.matrix)
    # id rows count for trained items and for items without text
    known = fusion.id_known.numpy()
    assert known[:TRAINED].all() and not known[TRAINED : V - 2].any() and known[V - 2 :].all()
    assert model.ctx.item_text is None  # the model keeps the matrix, not its context

    save_weights(model, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / CONTEXT_FILE).read_text())
    assert meta["context"]["text_dim"] == DIM and "item_text" not in meta["context"]
    loaded = load_weights(tmp_path / "m")
    assert loaded.text_fusion is not None
    assert torch.equal(loaded.text_fusion.text_table, fusion.text_table)
    assert torch.equal(loaded.text_fusion.id_known, fusion.id_known)
    batch = random_batch(model.ctx, batch_size=6, seed=4)
    with torch.no_grad():
        assert torch.equal(model.score(batch), loaded.score(batch))


@pytest.mark.parametrize("neighbours", [0, 3])
@pytest.mark.parametrize("name", NAMES)
def test_text_only_scoring_is_the_models_own_score_of_an_untrained_item(
    name: str, neighbours: int
) -> None:
    """What the service does for an item newer than the model (``state @ W text + bias``,
    plus its text neighbours' id rows) is exactly how the model scores an item of its own
    vocabulary it never trained on."""
    torch.manual_seed(0)
    model = _steps(_model(name, text_neighbours=neighbours))
    batch = random_batch(model.ctx, batch_size=5, seed=2)
    with torch.no_grad():
        scores, state = model.next_item_scores_and_state(batch)
        assert torch.equal(scores, model.score(batch))
        cold = torch.arange(TRAINED, V - 2)
        text = model.text_fusion.text_table[cold]
        vectors, bias = model.text_fusion.vectors(text)
        mine = state @ vectors.T + (0 if bias is None else bias)
    # columns of untrained text items (not in any history: no repeat offset)
    seen = torch.zeros(scores.shape, dtype=torch.bool).scatter(1, batch.items, True)
    sel = ~seen[:, cold]
    torch.testing.assert_close(mine[sel], scores[:, cold][sel], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_the_id_only_default_is_unchanged(name: str, tmp_path: Path) -> None:
    """No ``item_text``, or ``item_text=false``: no text module, no new weights, the saved
    context as before, the same scores."""
    ctx = ModelContext(V, N_TYPES, MAX_LEN, params=dict(TINY[name]))
    torch.manual_seed(0)
    default = get_spec(name).make(ctx)
    torch.manual_seed(0)
    off = get_spec(name).make(
        ModelContext(V, N_TYPES, MAX_LEN, params={**TINY[name], "item_text": False})
    )
    assert default.text_fusion is None and off.ctx.params["item_text"] is False
    assert not any("text" in k or "id_known" in k for k in default.state_dict())
    batch = random_batch(ctx, batch_size=6)
    with torch.no_grad():
        assert torch.equal(default.score(batch), off.score(batch))
    save_weights(default, tmp_path / "m")
    assert "text_dim" not in json.loads((tmp_path / "m" / CONTEXT_FILE).read_text())["context"]


@pytest.mark.parametrize("name", NAMES)
def test_item_text_without_a_text_matrix_is_a_clear_error(name: str) -> None:
    ctx = ModelContext(V, N_TYPES, MAX_LEN, params={**TINY[name], "item_text": True})
    with pytest.raises(SeqrecError) as err:
        get_spec(name).make(ctx)
    assert "seqrec items embed" in str(err.value)


def test_warm_start_of_a_text_aware_model_onto_a_grown_vocabulary(tmp_path: Path) -> None:
    """gpt2: the projection is copied, the known items' id rows too; the text rows (all of
    them, the new items' included) come from the current matrix, not the old model."""
    torch.manual_seed(0)
    old = _steps(_model("gpt2"))
    save_weights(old, tmp_path / "old")
    grown = V + 8
    current = _text(grown, seed=1)  # the current text, also changed for known items
    torch.manual_seed(1)
    new = _model("gpt2", grown, current)
    _init_from(new, tmp_path / "old", load_weights)
    assert old.text_fusion is not None and new.text_fusion is not None
    assert torch.equal(new.text_fusion.proj.weight, old.text_fusion.proj.weight)
    assert torch.equal(new.backbone.wte.weight[:V], old.backbone.wte.weight)
    np.testing.assert_array_equal(new.text_fusion.text_table.numpy(), current.matrix)
    assert new.text_fusion.id_known.tolist() == (current.trained | ~current.matrix.any(1)).tolist()


# -- a workspace with item text ------------------------------------------------------------------

GENRES = {
    "jazz": ["Blue Note", "Late Night", "Smooth", "Bebop", "Cool", "Swing", "Modal", "Free"],
    "metal": ["Heavy", "Thrash", "Doom", "Black", "Power", "Speed", "Death", "Sludge"],
    "classical": [
        "Baroque",
        "Romantic",
        "Chamber",
        "Symphonic",
        "Opera",
        "Sonata",
        "Choral",
        "Organ",
    ],
    "country": [
        "Nashville",
        "Honky Tonk",
        "Bluegrass",
        "Outlaw",
        "Western",
        "Cowboy",
        "Banjo",
        "Prairie",
    ],
}
WORDS = {
    "jazz": "Jazz Saxophone Trio",
    "metal": "Metal Guitar Riffs",
    "classical": "Classical Orchestra Suite",
    "country": "Country Fiddle Ballads",
}
USERS_PER_GENRE = 16


def items_csv() -> str:
    rows = ["item_id,title,category"]
    for genre, adjs in GENRES.items():
        for k, adj in enumerate(adjs):
            rows.append(f"{genre}-{k},{adj} {WORDS[genre]},{genre.title()}")
    return "\n".join(rows) + "\n"


def events_csv(seed: int = 0) -> str:
    """Each user views 6 of the 8 items of one genre (user ``<genre>-fan-<n>``)."""
    rnd = random.Random(seed)
    rows, t = ["user_id,item_id,timestamp,event_type"], 1_700_000_000
    for n in range(USERS_PER_GENRE):
        for genre in GENRES:
            picks = rnd.sample(range(8), 6)
            for k in picks:
                t += 60
                rows.append(f"{genre}-fan-{n},{genre}-{k},{t},view")
    return "\n".join(rows) + "\n"


def text_workspace(root: Path, toml: str = "") -> Workspace:
    """Items with genre titles, embedded (packaged encoder, CPU), features applied and
    materialized online (users and item text)."""
    from seqrec.data.importers import import_file
    from seqrec.data.item_text import import_item_file
    from seqrec.data.schema import make_engine
    from seqrec.features.materialize import materialize
    from seqrec.features.repo import apply
    from seqrec.text.embed import embed_items
    from seqrec.text.encoder import TextEncoder

    ws = make_workspace(root, toml)
    engine = make_engine(ws.events_url)
    root.mkdir(parents=True, exist_ok=True)
    (root / "events.csv").write_text(events_csv())
    (root / "items.csv").write_text(items_csv())
    import_file(engine, root / "events.csv", "csv")
    import_item_file(engine, root / "items.csv", "csv")
    embed_items(ws, encoder=TextEncoder(device="cpu"), engine=engine)
    apply(ws)
    materialize(ws, engine=engine)
    engine.dispose()
    return ws


@pytest.fixture(scope="module")
def text_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return text_workspace(tmp_path_factory.mktemp("text-models") / "ws")


@pytest.mark.parametrize("name", NAMES)
def test_every_plugin_trains_evaluates_and_stores_a_text_aware_model(
    name: str, text_ws: Workspace
) -> None:
    from seqrec import model_store
    from seqrec.pipeline import evaluate_model, train_model
    from seqrec.text.features import item_text_matrix

    out = train_model(text_ws, name, epochs=2, seed=0, params={"item_text": True}, progress=False)
    assert out.params["item_text"] is True
    res = evaluate_model(text_ws, out.tag, progress=False, ci=False)
    assert 0.0 <= res["ndcg@10"] <= 1.0 and res["users"] > 0
    stored = model_store.load(out.tag, store=text_ws.model_store)
    fusion = stored.model.text_fusion
    assert fusion is not None and stored.model.ctx.text_dim == 384
    want = item_text_matrix(text_ws, n_items=stored.model.ctx.n_items).matrix
    np.testing.assert_array_equal(fusion.text_table.numpy(), want)


def test_item_text_in_a_workspace_without_embeddings_names_the_commands(tmp_path: Path) -> None:
    from seqrec.features.repo import apply
    from seqrec.pipeline import train_model
    from seqrec.testing import load_synth

    ws = make_workspace(tmp_path / "ws")
    load_synth(ws, users=20, items=10)
    apply(ws)
    with pytest.raises(SeqrecError) as err:
        train_model(ws, "gpt2", epochs=1, params={"item_text": True}, progress=False)
    text = f"{err.value} {err.value.hint}"
    assert "seqrec items import" in text and "seqrec items embed" in text


def test_text_id_dropout_trains_some_items_on_text_alone_and_never_those_without_text() -> None:
    from dataclasses import replace

    from seqrec.models import ItemText, ModelContext
    from seqrec.text.fusion import TextFusion

    n, dim, d = 400, 8, 4
    matrix = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    matrix[0] = 0.0
    matrix[1:50] = 0.0  # items without text
    ctx = ModelContext(
        n_items=n,
        n_event_types=2,
        max_len=5,
        params={"text_id_dropout": 0.25},
        text_dim=dim,
        item_text=ItemText(matrix),
    )
    torch.manual_seed(0)
    fusion = TextFusion(ctx, d, init_std=0.02)
    ids = torch.ones(n, d)
    fusion.train()
    torch.manual_seed(1)
    known = fusion._known()
    dropped = (~known[50:]).float().mean().item()
    assert 0.15 < dropped < 0.35  # about the share asked for, among items with text
    assert known[:50].all()  # padding and items without text always keep their id row
    torch.manual_seed(1)  # the same draw as above
    table = fusion.table(ids)
    text_only = ~known
    assert torch.allclose(table[text_only], fusion.proj(fusion.text_table[text_only]))
    fusion.eval()
    assert fusion._known().all()  # serving and evaluation: every trained item's id counts
    with pytest.raises(SeqrecError, match="text_id_dropout"):
        TextFusion(replace(ctx, params={"text_id_dropout": 1.0}), d, init_std=0.02)


def _neighbour_fusion(k: int, with_bias: bool = False) -> Any:
    """A fusion over 8 items: 1-4 trained, 5-6 cold (5's text is 2's, 6's is between 3 and
    4), 7 cold without text."""
    from seqrec.text.fusion import TextFusion

    eye = np.eye(DIM, dtype=np.float32)
    matrix = np.zeros((8, DIM), dtype=np.float32)
    matrix[1:5] = eye[:4]
    matrix[5] = eye[1]
    matrix[6] = (eye[2] + eye[3]) / np.sqrt(2)
    trained = np.array([True, True, True, True, True, False, False, False])
    params = {"text_neighbours": k, "text_neighbour_temperature": 0.05}
    ctx = ModelContext(8, 2, 5, params=params, text_dim=DIM, item_text=ItemText(matrix, trained))
    torch.manual_seed(0)
    return TextFusion(ctx, 4, init_std=0.1, with_bias=with_bias)


def test_a_cold_item_borrows_the_id_rows_of_its_nearest_trained_items_by_text() -> None:
    ids = torch.randn(8, 4)
    off, on = _neighbour_fusion(0).eval(), _neighbour_fusion(2).eval()
    with torch.no_grad():
        base, lent = off.table(ids), on.table(ids)
    text = on.proj(on.text_table)
    # trained items, and the cold item without text, are as without neighbours
    for i in (0, 1, 2, 3, 4, 7):
        torch.testing.assert_close(lent[i], base[i])
    # item 5's text is item 2's (cosine 1, the other neighbour at 0): it borrows id row 2
    torch.testing.assert_close(lent[5], text[5] + ids[2], rtol=1e-5, atol=1e-5)
    # item 6 sits between 3 and 4 (equal cosines): half of each
    torch.testing.assert_close(lent[6], text[6] + (ids[3] + ids[4]) / 2, rtol=1e-5, atol=1e-5)
    # training leaves cold items to their text: no gradient reaches the lenders through them
    on.train()
    torch.testing.assert_close(on.table(ids)[5], text[5])


def test_an_item_newer_than_the_model_borrows_like_one_of_its_own_cold_items() -> None:
    """The service's path (``vectors``, items past the vocabulary) equals the model's own
    scoring of a cold item with the same text, bias included."""
    fusion = _neighbour_fusion(3, with_bias=True).eval()
    ids, out_bias = torch.randn(8, 4), torch.randn(8)
    with torch.no_grad():
        table, bias = fusion.table(ids), fusion.bias(out_bias)
        vecs, vbias = fusion.vectors(fusion.text_table[[5, 6]])
    assert vbias is not None
    torch.testing.assert_close(vecs, table[[5, 6]], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vbias, bias[[5, 6]], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(bias[5], fusion.text_bias(fusion.text_table[5]).squeeze())


def test_text_neighbours_rejects_a_negative_count_or_temperature() -> None:
    from seqrec.text.fusion import TextFusion

    ctx = ModelContext(8, 2, 5, params={"text_neighbours": -1}, text_dim=DIM, item_text=_text(8))
    with pytest.raises(SeqrecError, match="text_neighbours"):
        TextFusion(ctx, 4, init_std=0.1)
    bad_t = {"text_neighbours": 5, "text_neighbour_temperature": 0.0}
    ctx = ModelContext(8, 2, 5, params=bad_t, text_dim=DIM, item_text=_text(8))
    with pytest.raises(SeqrecError, match="temperature"):
        TextFusion(ctx, 4, init_std=0.1)
