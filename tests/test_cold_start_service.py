"""Cold-start items served at once: a running text-aware model ranks an item imported with
text and no interactions, with no retrain and no restart.

A real ``seqrec serve`` of a text-aware gpt2 (``item_text=true``) trained on users who each keep
to one genre; then ``seqrec items import`` + ``seqrec items embed`` + ``seqrec features
materialize --incremental`` add a jazz and a metal item. Within the poll deadline the jazz item
is in a jazz fan's top 3 and not a metal fan's (and the other way round), the known items'
scores are exactly what they were, exclusions hold on the extended catalogue, and ``/status``
shows the extra items. An online store failure keeps the last block and shows in ``/status``.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_hot_reload import wait_for
from test_service import Server, free_port, serve_env, serving
from test_text_models import text_workspace

from seqrec.config import Workspace

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NEW_ITEMS = (
    "item_id,title,category\n"
    "jazz-new,Midnight Jazz Saxophone Quartet,Jazz\n"
    "metal-new,Iron Metal Guitar Anthems,Metal\n"
)
JAZZ_FAN, METAL_FAN = "jazz-fan-0", "metal-fan-0"
ALL = 100  # more than the catalogue: every unseen item with its score


@dataclass(frozen=True)
class Served:
    ws: Workspace
    tag: str
    server: Server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A text-aware gpt2 served with ``[serve] items_poll_s = 0.5``."""
    from seqrec.pipeline import train_model
    from seqrec.plugins import reset_plugin_manager

    root = tmp_path_factory.mktemp("cold-start") / "ws"
    ws = text_workspace(root, "[serve]\nitems_poll_s = 0.5\n")
    reset_plugin_manager()
    tag = train_model(ws, "gpt2", epochs=30, seed=0, params={"item_text": True}, progress=False).tag
    exe = str(Path(sys.executable).parent / "seqrec")
    cmd = [exe, "serve", "-p", str(ws.root), "--model", tag, "--port", str(free_port())]
    log = tmp_path_factory.mktemp("cold-start-serve") / "seqrec-serve.log"
    with serving(cmd, serve_env(), log) as srv:
        yield Served(ws, tag, srv)


def cli(ws: Workspace, *args: str) -> None:
    from click.testing import CliRunner

    from seqrec.cli import build_cli

    result = CliRunner().invoke(build_cli(), [*args, "-p", str(ws.root)])
    assert result.exit_code == 0, result.output


def extra_status(server: Server) -> dict[str, Any]:
    resp = server.get("/status")
    assert resp.status_code == 200, resp.text
    return dict(resp.json()["extra_items"])


def recommend(server: Server, user: str, k: int, **body: Any) -> list[dict[str, Any]]:
    resp = server.post({"user_id": user, "k": k, **body})
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["fallback"] is False
    return list(data["items"])


def from_events(server: Server, items: list[str], k: int, **body: Any) -> dict[str, Any]:
    events = [{"item_id": i, "event_type": "view"} for i in items]
    resp = server.post({"events": events, "k": k, **body}, path="/recommend_from_events")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def ids(recs: list[dict[str, Any]]) -> list[str]:
    return [r["item_id"] for r in recs]


def test_a_new_item_with_text_is_ranked_at_once_and_known_scores_do_not_move(
    served: Served,
) -> None:
    srv, ws = served.server, served.ws
    status = extra_status(srv)
    assert status["enabled"] is True and status["count"] == 0 and status["last_error"] is None
    assert status["poll_s"] == 0.5
    before = {u: recommend(srv, u, ALL) for u in (JAZZ_FAN, METAL_FAN)}
    assert not {"jazz-new", "metal-new"} & set(ids(before[JAZZ_FAN]))

    (ws.root / "new-items.csv").write_text(NEW_ITEMS)
    cli(ws, "items", "import", str(ws.root / "new-items.csv"))
    cli(ws, "items", "embed")
    cli(ws, "features", "materialize", "--incremental")
    wait_for("ranking the new items", lambda: extra_status(srv)["count"] == 2, srv)

    jazz, metal = ids(recommend(srv, JAZZ_FAN, 3)), ids(recommend(srv, METAL_FAN, 3))
    assert "jazz-new" in jazz and "metal-new" not in jazz, jazz
    assert "metal-new" in metal and "jazz-new" not in metal, metal
    for user, old in before.items():  # every known item keeps exactly its score
        now = recommend(srv, user, ALL)
        assert {"jazz-new", "metal-new"} <= set(ids(now))
        known = {r["item_id"]: r["score"] for r in now if not r["item_id"].endswith("-new")}
        assert known == {r["item_id"]: r["score"] for r in old}
    # exclusions and k on the extended catalogue
    assert "jazz-new" not in ids(recommend(srv, JAZZ_FAN, 3, exclude_items=["jazz-new"]))
    assert len(recommend(srv, JAZZ_FAN, 1)) == 1
    batch = srv.post({"user_ids": [JAZZ_FAN, METAL_FAN], "k": 3}, path="/recommend_batch")
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert ids(results[0]["items"]) == jazz and ids(results[1]["items"]) == metal

    status = extra_status(srv)
    assert status["count"] == 2 and status["last_error"] is None and status["refreshed_at"]


def test_a_session_gets_the_new_item_and_never_one_it_saw(served: Served) -> None:
    srv = served.server
    wait_for("ranking the new items", lambda: extra_status(srv)["count"] == 2, srv)
    session = [f"jazz-{k}" for k in range(6)]
    res = from_events(srv, session, 3)
    assert "jazz-new" in ids(res["items"]) and res["unknown_items"] == 0
    # an event on the new item: not a model input (unknown to the model), but seen
    seen = from_events(srv, [*session, "jazz-new"], ALL)
    assert seen["unknown_items"] == 1 and "jazz-new" not in ids(seen["items"])
    unmasked = from_events(srv, [*session, "jazz-new"], ALL, exclude_seen=False)
    assert "jazz-new" in ids(unmasked["items"])
    masked = from_events(srv, session, ALL, exclude_items=["jazz-new", "metal-new"])
    assert not {"jazz-new", "metal-new"} & set(ids(masked["items"]))


def _item_table(ws: Workspace) -> tuple[Path, str]:
    path = ws.path(ws.config.features.online_path)
    with sqlite3.connect(path) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    return path, next(n for n in names if n.endswith("item_text_v1"))


def test_an_online_store_failure_keeps_the_last_block_and_shows_in_status(
    served: Served,
) -> None:
    """The item view's online table disappears (a real SQLite failure, not a mock): the
    service keeps ranking the items it had and says why in /status; once the table is back
    and materialized, the error clears."""
    from seqrec.features.materialize import materialize
    from seqrec.features.repo import apply

    srv, ws = served.server, served.ws
    wait_for("ranking the new items", lambda: extra_status(srv)["count"] == 2, srv)
    path, table = _item_table(ws)
    with sqlite3.connect(path) as conn:
        conn.execute(f'DROP TABLE "{table}"')
    try:
        wait_for("reporting the failure", lambda: extra_status(srv)["last_error"] is not None, srv)
        status = extra_status(srv)
        assert status["count"] == 2 and "table" in status["last_error"]
        assert "jazz-new" in ids(recommend(srv, JAZZ_FAN, 3))  # the last block serves on
    finally:
        apply(ws)  # creates the item view's online table again
        materialize(ws)
    wait_for("recovering", lambda: extra_status(srv)["last_error"] is None, srv)
    assert extra_status(srv)["count"] == 2
    log = srv.log.read_text()
    assert log.count("extra items: refresh failed") == 1, "logged once per distinct error"


def test_an_id_only_model_reads_no_extra_items(served: Served) -> None:
    """The default (id-only) model: no block, nothing read, the request path as before."""
    from seqrec.pipeline import train_model
    from seqrec.recommend import Recommender

    tag = train_model(served.ws, "gpt2", epochs=1, seed=0, progress=False).tag
    rec = Recommender(served.ws, tag, device="cpu")
    assert rec.text_aware is False and rec.extra is None
    assert rec.refresh_extra_items() is False
    assert rec.extra_status() == {
        "enabled": False,
        "count": 0,
        "refreshed_at": None,
        "last_error": None,
    }
    assert len(rec.recommend(JAZZ_FAN, k=3)["items"]) == 3


def test_new_item_slots_give_cold_items_places_in_every_list(served: Served) -> None:
    """``[serve] new_item_slots = 2``: a jazz fan's top 3 keeps the jazz item it ranks itself
    and gets the metal item in the last place (the best cold item left); without slots, the
    model's own list. Both ranking paths (full scores; item factors in chunks) agree."""
    from seqrec.config import Workspace
    from seqrec.recommend import Query, Recommender

    srv, ws = served.server, served.ws
    if extra_status(srv)["count"] < 2:  # run on its own: import the new items here
        (ws.root / "new-items.csv").write_text(NEW_ITEMS)
        cli(ws, "items", "import", str(ws.root / "new-items.csv"))
        cli(ws, "items", "embed")
        cli(ws, "features", "materialize", "--incremental")
    wait_for("ranking the new items", lambda: extra_status(srv)["count"] == 2, srv)

    def rec(slots: int, chunk: int | None = None) -> Recommender:
        serve = ws.config.serve.model_copy(update={"new_item_slots": slots})
        if chunk is not None:
            serve = serve.model_copy(update={"topk_chunk_items": chunk})
        config = ws.config.model_copy(update={"serve": serve})
        return Recommender(Workspace(ws.root, config), served.tag, device="cpu")

    own = ids(rec(0).recommend(JAZZ_FAN, k=3)["items"])
    assert "jazz-new" in own and "metal-new" not in own, own
    slotted = rec(2).recommend(JAZZ_FAN, k=3)["items"]
    assert ids(slotted)[-1] == "metal-new" and "jazz-new" in ids(slotted), slotted
    assert [r["score"] for r in slotted] == sorted((r["score"] for r in slotted), reverse=True)
    chunked = rec(2, chunk=4)
    assert chunked.chunked
    assert ids(chunked.recommend(JAZZ_FAN, k=3)["items"]) == ids(slotted)
    # an excluded cold item gives its place to no one else cold: there is none left
    ex = ids(rec(2).recommend_many([Query(JAZZ_FAN, 3, True, ("metal-new",))])[0]["items"])
    assert "metal-new" not in ex and len(ex) == 3
    # k larger than the catalogue: every item is listed anyway, exactly once
    everything = ids(rec(2).recommend(METAL_FAN, k=ALL)["items"])
    assert len(everything) == len(set(everything)) and {"jazz-new", "metal-new"} <= set(everything)
