"""Hot reload: a running service swaps in a newly promoted model without failing a request.

A real ``seqrec serve --model stage=production`` (polling every 0.5 s) answers a steady stream
of requests while a second model is labelled; a broken model is refused while the old one
keeps answering; ``POST /admin/reload`` wants its own token. The swap itself (memory of the old
model freed, a NaN model refused, a refused tag not retried) is also checked in-process.
"""

from __future__ import annotations

import re
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_service import Server, free_port, serve_env, serving

from seqrec.config import Workspace

pytestmark = pytest.mark.integration

ADMIN = "admin-token-for-tests"
SELECTOR = "stage=production"
DEADLINE_S = 120.0


@dataclass(frozen=True)
class Models:
    ws: Workspace
    old: str  # labelled stage=production when the server starts
    new: str  # promoted during the test


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """A workspace with two tiny GPT-2s trained on the same events (seeds 0 and 1)."""
    from seqrec.commands.serve import set_labels
    from seqrec.features.materialize import materialize
    from seqrec.features.repo import apply
    from seqrec.pipeline import train_model
    from seqrec.plugins import reset_plugin_manager
    from seqrec.testing import load_synth, make_workspace

    root = tmp_path_factory.mktemp("hot-reload") / "ws"
    ws = make_workspace(root, "[serve]\nreload_poll_s = 0.5\n")
    load_synth(ws, users=80, items=40)
    apply(ws)
    materialize(ws)
    reset_plugin_manager()
    old = train_model(ws, "gpt2", epochs=1, seed=0, progress=False).tag
    new = train_model(ws, "gpt2", epochs=1, seed=1, progress=False).tag
    set_labels(ws, old, {"stage": "production"})
    return Models(ws, old, new)


@pytest.fixture(scope="module")
def server(models: Models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``seqrec serve --model stage=production`` with an admin token."""
    exe = str(Path(sys.executable).parent / "seqrec")
    cmd = [exe, "serve", "-p", str(models.ws.root), "--model", SELECTOR, "--port", str(free_port())]
    log = tmp_path_factory.mktemp("hot-reload-serve") / "seqrec-serve.log"
    with serving(cmd, serve_env(SEQREC_ADMIN_TOKEN=ADMIN), log) as srv:
        yield srv


# -- helpers --------------------------------------------------------------------------------------


def label(ws: Workspace, tag: str, *pairs: str) -> None:
    """``seqrec label TAG key=value ...`` through the CLI (``key=`` removes the label)."""
    from click.testing import CliRunner

    from seqrec.cli import build_cli

    result = CliRunner().invoke(build_cli(), ["label", "-p", str(ws.root), tag, *pairs])
    assert result.exit_code == 0, result.output


def reload_status(server: Server) -> dict[str, Any]:
    resp = server.get("/status")
    assert resp.status_code == 200, resp.text
    return dict(resp.json()["reload"])


def wait_for(what: str, check: Callable[[], bool], server: Server) -> None:
    """Wait until ``check()`` holds (a generous deadline, no timing asserted)."""
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} after {DEADLINE_S:.0f}s:\n{server.log.read_text()[-4000:]}")
        time.sleep(0.1)


def promote_new(models: Models, server: Server) -> None:
    """Move ``stage=production`` from the old model to the new one (a no-op once done) and
    wait until the server follows it."""
    if reload_status(server)["model"] != models.new:
        label(models.ws, models.new, SELECTOR)
        label(models.ws, models.old, "stage=")
    wait_for("serving the new model", lambda: reload_status(server)["model"] == models.new, server)


def metric(server: Server, name: str, **labels: str) -> float:
    text = server.get("/metrics").text
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{name}\{{{re.escape(sel)}\}} (\S+)$", text, re.M)
    assert found, f"{name}{{{sel}}} not in /metrics"
    return float(found.group(1))


def admin_reload(server: Server, token: str | None = ADMIN, body: Any = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(f"{server.url}/admin/reload", json=body, headers=headers, timeout=120)


@dataclass
class Traffic:
    """Threads posting requests back to back, recording which model answered each."""

    server: Server
    known_user: str
    item: str
    answers: list[list[tuple[str, int, list[str], str | None]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def requests(self) -> list[tuple[str, dict[str, Any]]]:
        return [
            ("/recommend", {"user_id": self.known_user, "k": 5}),
            ("/recommend", {"user_id": "nobody-at-all", "k": 3}),  # the popularity fallback
            ("/recommend_batch", {"user_ids": [self.known_user, "nobody-at-all"], "k": 2}),
            ("/recommend_from_events", {"events": [{"item_id": self.item}], "k": 2}),
        ]

    def run(self, lane: list[tuple[str, int, list[str], str | None]]) -> None:
        with httpx.Client(base_url=self.server.url, timeout=60) as client:
            i = 0
            while not self.stop.is_set():
                path, body = self.requests()[i % 4]
                i += 1
                try:
                    resp = client.post(path, json=body)
                except httpx.TransportError as exc:
                    lane.append((path, -1, [repr(exc)], None))
                    continue
                data = resp.json() if resp.status_code == 200 else {}
                tags = [r["model"] for r in data.get("results", [data])] if data else []
                lane.append((path, resp.status_code, tags, resp.headers.get("x-seqrec-model")))
                time.sleep(0.005)  # a steady stream, leaving CPU to the server

    def start(self, n: int = 2) -> None:
        for _ in range(n):
            lane: list[tuple[str, int, list[str], str | None]] = []
            self.answers.append(lane)
            t = threading.Thread(target=self.run, args=(lane,), daemon=True)
            self.threads.append(t)
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def answered_after(self, tag: str, n: int) -> bool:
        """Every thread got at least ``n`` answers after its first one from ``tag``."""
        for lane in self.answers:
            firsts = [i for i, a in enumerate(lane) if tag in a[2]]
            if not firsts or len(lane) - firsts[0] <= n:
                return False
        return True


def known_user(ws: Workspace) -> str:
    from seqrec.data.schema import make_engine
    from seqrec.features.sql import event_positions

    engine = make_engine(ws.events_url)
    try:
        return str(sorted(event_positions(engine)["user_id"].unique())[0])
    finally:
        engine.dispose()


def store_copy(ws: Workspace, tag: str, nan_weights: bool = False) -> str:
    """A new stored model with ``tag``'s weights (NaN everywhere with ``nan_weights``)."""
    import numpy as np
    import torch

    from seqrec import model_store
    from seqrec.data.schema import make_engine

    src = model_store.load(tag, store=ws.model_store)
    if nan_weights:
        with torch.no_grad():
            for p in src.model.parameters():
                p.fill_(float("nan"))
    engine = make_engine(ws.events_url)
    try:
        return model_store.save(
            src.model,
            engine=engine,
            plugin="gpt2",
            task=src.model.ctx.task,
            feature_service=ws.config.features.feature_service,
            metrics={},
            popularity=np.asarray(src.popularity),
            train_info={},
            store=ws.model_store,
        )
    finally:
        engine.dispose()


# -- the real server ------------------------------------------------------------------------------


@pytest.mark.slow
def test_promotion_swaps_the_model_under_load_with_no_failed_request(
    models: Models, server: Server
) -> None:
    from seqrec import model_store

    assert reload_status(server)["model"] == models.old
    item = model_store.load(models.old, store=models.ws.model_store).vocab[1]
    traffic = Traffic(server, known_user(models.ws), item)
    traffic.start()
    try:
        wait_for("answering", lambda: all(len(lane) >= 8 for lane in traffic.answers), server)
        label(models.ws, models.new, SELECTOR)
        label(models.ws, models.old, "stage=")
        wait_for("answered by the new model", lambda: traffic.answered_after(models.new, 8), server)
    finally:
        traffic.finish()

    for lane in traffic.answers:
        assert lane, "a traffic thread sent nothing"
        bad = [a for a in lane if a[1] != 200]
        assert not bad, f"{len(bad)} of {len(lane)} requests failed: {bad[:5]}"
        for path, _, tags, header in lane:
            assert len(set(tags)) == 1 and tags[0] in (models.old, models.new), (path, tags)
            assert header == tags[0], (path, header, tags)  # X-Seqrec-Model names the same tag
        served = [tags[0] for _, _, tags, _ in lane]
        switch = served.index(models.new)
        assert set(served[:switch]) == {models.old}
        assert set(served[switch:]) == {models.new}, "an old answer after a new one"

    status = reload_status(server)
    assert status["model"] == models.new and status["following"] == SELECTOR
    assert status["last_attempt"]["ok"] is True and status["last_attempt"]["by"] == "poll"
    assert status["last_error"] is None and status["reloads"] >= 1
    assert metric(server, "seqrec_model_reloads_total", result="ok") >= 1
    assert metric(server, "seqrec_model_info", tag=models.new) == 1
    assert metric(server, "seqrec_model_info", tag=models.old) == 0


def test_admin_reload_wants_the_admin_token(models: Models, server: Server) -> None:
    for token in (None, "wrong-token", "Bearer " + ADMIN):
        resp = admin_reload(server, token)
        assert resp.status_code == 401, resp.text
        assert resp.headers["www-authenticate"] == "Bearer"
    assert server.get("/admin/reload").status_code == 405
    resp = admin_reload(server, body={"model": models.old, "bogus": 1})
    assert resp.status_code == 400 and resp.json()["detail"][0]["loc"] == ["bogus"]


def test_admin_reload_pins_a_named_tag_then_follows_the_selector_again(
    models: Models, server: Server
) -> None:
    promote_new(models, server)  # done already when the (slow) promotion test ran first
    resp = admin_reload(server, body={"model": models.old})
    assert resp.status_code == 200, resp.text
    assert resp.json()["reloaded"] is True and resp.json()["model"] == models.old
    status = reload_status(server)
    assert status["following"] is None and status["poll_s"] == 0  # pinned: no polling
    res = server.post({"user_id": "nobody", "k": 2})
    assert res.json()["model"] == models.old and res.headers["x-seqrec-model"] == models.old

    resp = admin_reload(server)  # no body: the startup selector, followed again
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == models.new
    assert reload_status(server)["following"] == SELECTOR
    assert admin_reload(server).json()["reloaded"] is False  # already serving it


def test_broken_model_is_refused_once_and_the_old_one_keeps_serving(
    models: Models, server: Server
) -> None:
    serving_tag = reload_status(server)["model"]
    failed_before = metric(server, "seqrec_model_reloads_total", result="failed")
    broken = store_copy(models.ws, serving_tag)
    from seqrec import model_store

    _, path = model_store.locate(broken, models.ws.model_store)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated: it cannot load
    label(models.ws, broken, SELECTOR)

    wait_for("refused", lambda: reload_status(server)["refused_tag"] == broken, server)
    status = reload_status(server)
    assert status["model"] == serving_tag
    assert broken in status["last_error"] and status["last_attempt"]["ok"] is False
    assert metric(server, "seqrec_model_reloads_total", result="failed") == failed_before + 1
    res = server.post({"user_id": "nobody", "k": 2})
    assert res.status_code == 200 and res.json()["model"] == serving_tag

    polls = status["polls"]  # the selector still names it: not tried again on later polls
    wait_for("polled again", lambda: reload_status(server)["polls"] >= polls + 3, server)
    assert reload_status(server)["failures"] == status["failures"]

    resp = admin_reload(server)  # an admin reload asks again, and is refused again
    assert resp.status_code == 422 and broken in resp.json()["error"], resp.text
    assert resp.json()["model"] == serving_tag
    resp = admin_reload(server, body={"model": "gpt2:nosuchversion"})
    assert resp.status_code == 422 and "nosuchversion" in resp.json()["error"], resp.text
    status = reload_status(server)
    assert status["model"] == serving_tag and "nosuchversion" in status["last_error"]
    assert metric(server, "seqrec_model_reloads_total", result="failed") == failed_before + 3
    assert server.post({"user_id": "nobody", "k": 2}).json()["model"] == serving_tag

    label(models.ws, broken, "stage=")
    label(models.ws, serving_tag, SELECTOR)
    wait_for("forgetting the refusal", lambda: reload_status(server)["refused_tag"] is None, server)
    assert reload_status(server)["model"] == serving_tag


def test_pinned_tag_without_admin_token_polls_nothing_and_answers_403(
    models: Models, tmp_path: Path
) -> None:
    """Started with a tag (as a Bento is, its model in BentoML's own store): no polling; with
    no admin token set, /admin/reload says how to turn it on."""
    exe = str(Path(sys.executable).parent / "bentoml")
    cmd = [exe, "serve", "seqrec.service:SeqrecService", "--host", "127.0.0.1"]
    env = serve_env(
        SEQREC_PROJECT=str(models.ws.root),
        SEQREC_MODEL=models.old,
        SEQREC_MODEL_STORE="bentoml",
        BENTOML_HOME=str(models.ws.model_store),
    )
    env.pop("SEQREC_ADMIN_TOKEN", None)
    with serving([*cmd, "--port", str(free_port())], env, tmp_path / "pinned.log") as srv:
        resp = admin_reload(srv, token=ADMIN)
        assert resp.status_code == 403, resp.text
        assert "SEQREC_ADMIN_TOKEN" in resp.json()["error"]
        status = reload_status(srv)
        assert status["model"] == models.old
        assert status["following"] is None and status["poll_s"] == 0
        res = srv.post({"user_id": "nobody", "k": 2})
        assert res.json()["model"] == models.old and res.headers["x-seqrec-model"] == models.old


# -- the swap, in-process -------------------------------------------------------------------------


def test_swap_frees_the_old_model_and_refuses_nan_weights_once(models: Models) -> None:
    import gc

    from seqrec.commands.serve import set_labels
    from seqrec.errors import SeqrecError
    from seqrec.recommend import ModelReloader, Recommender, resolve_model_ref

    ws, store, lane = models.ws, models.ws.model_store, "lane"
    holder = types.SimpleNamespace(recommender=Recommender(ws, models.old, device="cpu"))
    reloader = ModelReloader(
        holder,
        threading.Lock(),
        lambda tag, serving: Recommender(ws, tag, device="cpu", share_store_with=serving),
        lambda ref: resolve_model_ref(ref, store),
        f"{lane}=inproc",
    )
    set_labels(ws, models.new, {lane: "inproc"})
    first = weakref.ref(holder.recommender)
    gc.collect()
    gc.freeze()  # as the service does after startup
    try:
        assert reloader.poll() is True
    finally:
        gc.unfreeze()
    assert holder.recommender.tag == models.new
    assert first() is None, "the swapped-out model is still in memory"

    nan = store_copy(ws, models.new, nan_weights=True)
    set_labels(ws, nan, {lane: "inproc"})  # the newest with the label
    assert reloader.poll() is False
    status = reloader.status()
    assert status["refused_tag"] == nan and status["failures"] == 1
    assert "non-finite scores" in status["last_error"]
    assert holder.recommender.tag == models.new
    assert reloader.poll() is False and reloader.poll() is False  # not tried again
    assert reloader.status()["failures"] == 1 and reloader.polls == 4
    with pytest.raises(SeqrecError, match="non-finite scores"):
        reloader.reload()  # asked for: tried again
    assert reloader.status()["failures"] == 2 and holder.recommender.tag == models.new

    for tag in (nan, models.new):
        set_labels(ws, tag, {lane: ""})
    set_labels(ws, models.old, {lane: "inproc"})
    assert reloader.poll() is True  # the selector moved on
    assert holder.recommender.tag == models.old and reloader.status()["refused_tag"] is None
