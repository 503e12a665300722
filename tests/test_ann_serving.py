"""Serving large catalogues: chunked ranking answers as the full-score path does; the FAISS
index (``[serve] ann``) finds the exact top-k, honours exclusions and the repeat bias, and is a
clear error where it cannot be used."""

from __future__ import annotations

import sys

import pytest
import torch

from seqrec.config import Workspace
from seqrec.data.synth import user_id
from seqrec.errors import SeqrecError
from seqrec.evaluation.topk import chunked_topk, pad_indices

faiss = pytest.importorskip("faiss", reason="the ann extra: pip install 'seqrec[ann]'")

from seqrec.serving.ann import AnnIndex  # noqa: E402


def _catalogue(
    seed: int = 0, v: int = 20_000, d: int = 32, b: int = 200
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "items": torch.randn(v, d, generator=g),
        "bias": torch.randn(v, generator=g) * 0.1,
        "hidden": torch.randn(b, d, generator=g),
    }


def _recall(got: torch.Tensor, want: torch.Tensor) -> float:
    hits = sum(len(set(a.tolist()) & set(w.tolist())) for a, w in zip(got, want, strict=True))
    return hits / want.numel()


@pytest.mark.parametrize("kind", ["hnsw"])
def test_ann_recall_at_10_against_exact_topk_is_at_least_095(kind: str) -> None:
    c = _catalogue()
    exact = chunked_topk(c["hidden"], c["items"], 10, bias=c["bias"])
    index = AnnIndex(c["items"], c["bias"], kind=kind, search=128)
    approx = index.topk(c["hidden"], 10, items=c["items"], bias=c["bias"])
    assert _recall(approx.indices, exact.indices) >= 0.95


def test_ann_hnsw_finds_the_inner_product_top_k_of_rows_with_very_different_norms() -> None:
    """Learned item rows are long for popular items and short for the rest; the HNSW index
    orders by inner product through the Euclidean reduction, so the long-tailed norms do
    not hide the true top 10 (exact with a search as wide as a small catalogue)."""
    c = _catalogue(seed=4, v=20_000)
    g = torch.Generator().manual_seed(5)
    norms = torch.exp(torch.randn(20_000, 1, generator=g))  # log-normal lengths
    items = c["items"] * norms
    exact = chunked_topk(c["hidden"], items, 10, bias=c["bias"])
    approx = AnnIndex(items, c["bias"], search=128).topk(
        c["hidden"], 10, items=items, bias=c["bias"]
    )
    assert _recall(approx.indices, exact.indices) >= 0.95
    small = _catalogue(seed=6, v=2000)
    rows = small["items"] * torch.exp(torch.randn(2000, 1, generator=g))
    want = chunked_topk(small["hidden"], rows, 10, bias=small["bias"])
    index = AnnIndex(rows, small["bias"], search=4096)
    got = index.topk(small["hidden"], 10, items=rows, bias=small["bias"])
    assert torch.equal(got.indices, want.indices)


def test_ann_ivf_index_is_exact_when_it_probes_every_list() -> None:
    c = _catalogue(seed=1, v=3000)
    exact = chunked_topk(c["hidden"], c["items"], 10, bias=c["bias"])
    index = AnnIndex(c["items"], c["bias"], kind="ivf", search=10_000)
    approx = index.topk(c["hidden"], 10, items=c["items"], bias=c["bias"])
    assert torch.equal(approx.indices, exact.indices)


def test_ann_honours_exclusions_and_lifts_history_items_by_their_repeat_offset() -> None:
    c = _catalogue(seed=2, v=5000, b=20)
    index = AnnIndex(c["items"], c["bias"], search=128)
    exact = chunked_topk(c["hidden"], c["items"], 10, bias=c["bias"])
    exclude = exact.indices[:, :3]  # the three best of every row are excluded
    history = torch.randint(1, 5000, (20, 4), generator=torch.Generator().manual_seed(3))
    repeat = torch.zeros(20, 4)
    repeat[:, 0] = 1e3  # the oldest history item is lifted to the top
    top = index.topk(
        c["hidden"],
        10,
        items=c["items"],
        bias=c["bias"],
        history=history,
        repeat=repeat,
        exclude=exclude,
    )
    want = chunked_topk(
        c["hidden"],
        c["items"],
        10,
        bias=c["bias"],
        history=history,
        repeat=repeat,
        exclude=exclude,
    )
    for row in range(20):
        shown = top.indices[row].tolist()
        assert not set(shown) & set(exclude[row].tolist())
        if int(history[row, 0]) not in exclude[row].tolist():
            assert shown[0] == int(history[row, 0])
        assert len(set(shown)) == 10 and 0 not in shown
    assert _recall(top.indices, want.indices) >= 0.95


def test_ann_without_faiss_installed_is_an_error_saying_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    c = _catalogue(v=100)
    with pytest.raises(SeqrecError, match="needs FAISS") as info:
        AnnIndex(c["items"], c["bias"])
    assert "seqrec[ann]" in (info.value.hint or "")


# -- the service's ranking ---------------------------------------------------------------------


def _with_serve(ws: Workspace, **serve: object) -> Workspace:
    config = ws.config.model_copy(update={"serve": ws.config.serve.model_copy(update=serve)})
    return Workspace(ws.root, config)


def _answers(rec: object, users: list[str], **kw: object) -> list[list[str]]:
    out = rec.recommend_batch(users, **kw)  # type: ignore[attr-defined]
    assert not any(r["fallback"] for r in out)
    return [[x["item_id"] for x in r["items"]] for r in out]


def test_service_ranks_in_chunks_and_with_ann_as_it_does_from_full_scores(
    trained_ws: Workspace,
) -> None:
    from seqrec.recommend import Event, Recommender

    full = Recommender(trained_ws, "gpt2", device="cpu")
    chunked = Recommender(_with_serve(trained_ws, topk_chunk_items=7), "gpt2", device="cpu")
    ann = Recommender(_with_serve(trained_ws, ann=True), "gpt2", device="cpu")
    assert not full.chunked and full._traced is not None  # small catalogue: one traced call
    assert chunked.chunked and chunked.ann is None
    assert ann.chunked and ann.ann is not None
    users = [user_id(u, 120) for u in range(12)]
    some = [full.vocab[i] for i in (1, 2, 3)]
    for kw in (
        {"k": 10},
        {"k": 10, "exclude_seen": False},
        {"k": 5, "exclude_items": some},
        {"k": full.n_items},
    ):
        want = _answers(full, users, **kw)
        assert _answers(chunked, users, **kw) == want
        assert _answers(ann, users, **kw) == want  # 60 items: the index finds them all
    events = [Event(full.vocab[i]) for i in (4, 5, 6)]
    want_ev = full.recommend_from_events(events, k=8)["items"]
    got_ev = chunked.recommend_from_events(events, k=8)["items"]
    assert [x["item_id"] for x in got_ev] == [x["item_id"] for x in want_ev]


def test_service_refuses_ann_for_a_model_without_item_factors(trained_ws: Workspace) -> None:
    from seqrec.recommend import Recommender

    with pytest.raises(SeqrecError, match="does not expose item factors"):
        Recommender(_with_serve(trained_ws, ann=True), "popularity", device="cpu")


def test_pad_indices_on_a_device_keeps_rows() -> None:
    assert pad_indices([[1], [2, 3]], "cpu").shape == (2, 2)
