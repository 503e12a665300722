"""The micro-batcher under real concurrency: a real ``bentoml serve``, many users at once.

Each user is first asked alone (one request at a time: batches of one). Then all of them
together, from as many threads: the batcher coalesces requests into batches of more than one
(seen in the ``seqrec_batch_size`` histogram on /metrics), and every user still gets exactly
the answer they got alone.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_service
from test_service import Server, free_port, serve_env, serving

from seqrec.config import Workspace

pytestmark = pytest.mark.integration

#: concurrent requests per round (the batcher's default micro_batch is 64)
CLIENTS = 72
#: rounds of CLIENTS concurrent requests at most, until one batch of more than one is seen
MAX_ROUNDS = 5


@pytest.fixture(scope="module")
def server(trained_ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    exe = str(Path(sys.executable).parent / "bentoml")
    cmd = [exe, "serve", "seqrec.service:SeqrecService", "--host", "127.0.0.1"]
    env = serve_env(SEQREC_PROJECT=str(trained_ws.root), SEQREC_MODEL="gpt2")
    log = tmp_path_factory.mktemp("batcher") / "bentoml.log"
    with pytest.MonkeyPatch.context() as mp:  # a loaded machine starts a server slowly
        mp.setattr(test_service, "READY_TIMEOUT_S", max(test_service.READY_TIMEOUT_S, 300.0))
        with serving([*cmd, "--port", str(free_port())], env, log) as srv:
            mp.undo()
            yield srv


@pytest.fixture(scope="module")
def users(trained_ws: Workspace) -> list[str]:
    """CLIENTS distinct users: known ones (model answers) and a few unknown (fallback)."""
    from seqrec.data.schema import make_engine
    from seqrec.features.sql import event_positions

    engine = make_engine(trained_ws.events_url)
    try:
        known = sorted(str(u) for u in event_positions(engine)["user_id"].unique())
    finally:
        engine.dispose()
    picked = known[: CLIENTS - 8] + [f"nobody-{i}" for i in range(8)]
    assert len(set(picked)) == CLIENTS, f"only {len(known)} known users"
    return picked


def _batch_sizes(server: Server) -> tuple[float, float, float]:
    """``seqrec_batch_size`` so far: (model calls, calls for exactly one request, requests)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = ones = scored = None
    for family in text_string_to_metric_families(server.get("/metrics").text):
        if family.name != "seqrec_batch_size":
            continue
        for sample in family.samples:
            if sample.name == "seqrec_batch_size_count":
                total = sample.value
            elif sample.name == "seqrec_batch_size_sum":
                scored = sample.value
            elif sample.name == "seqrec_batch_size_bucket" and float(sample.labels["le"]) == 1:
                ones = sample.value
    assert None not in (total, ones, scored), "no seqrec_batch_size histogram on /metrics"
    assert total is not None and ones is not None and scored is not None
    return total, ones, scored


def _ask(server: Server, user: str) -> dict[str, Any]:
    resp = server.post({"user_id": user, "k": 5})
    assert resp.status_code == 200, resp.text[:500]
    body: dict[str, Any] = resp.json()
    return body


def _together(server: Server, users: list[str]) -> dict[str, dict[str, Any]]:
    """One request per user, all threads released at once; {user: answer}."""
    barrier = threading.Barrier(len(users))
    answers: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []
    limits = httpx.Limits(max_connections=len(users))
    with httpx.Client(base_url=server.url, timeout=120, limits=limits) as client:

        def one(user: str) -> None:
            try:
                barrier.wait()
                resp = client.post("/recommend", json={"user_id": user, "k": 5})
                assert resp.status_code == 200, resp.text[:500]
                answers[user] = resp.json()
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(u,)) for u in users]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return answers


def _same_answer(alone: dict[str, Any], batched: dict[str, Any]) -> None:
    """The same items in the same order with the same scores (up to float noise from the
    batch's shape), the same model and fallback flag. ``feature_age_s`` is measured at
    request time, so only its presence is compared."""
    assert [i["item_id"] for i in batched["items"]] == [i["item_id"] for i in alone["items"]]
    assert [i["score"] for i in batched["items"]] == pytest.approx(
        [i["score"] for i in alone["items"]], rel=1e-4, abs=1e-6
    )
    assert (batched["model"], batched["fallback"]) == (alone["model"], alone["fallback"])
    assert (batched["feature_age_s"] is None) == (alone["feature_age_s"] is None)


def test_concurrent_requests_are_batched_and_answer_as_alone(
    server: Server, users: list[str]
) -> None:
    calls0, ones0, scored0 = _batch_sizes(server)
    alone = {u: _ask(server, u) for u in users}  # one at a time: batches of one
    assert sum(not a["fallback"] for a in alone.values()) == CLIENTS - 8
    calls1, ones1, scored1 = _batch_sizes(server)
    assert calls1 - calls0 == ones1 - ones0 == scored1 - scored0 == CLIENTS

    rounds = 0
    while rounds < MAX_ROUNDS:
        answers = _together(server, users)
        rounds += 1
        assert sorted(answers) == sorted(users)
        for u in users:
            _same_answer(alone[u], answers[u])
        calls, ones, scored = _batch_sizes(server)
        if calls - ones > calls1 - ones1:  # a model call for more than one request
            break
    assert calls - ones > calls1 - ones1, f"{rounds} rounds of {CLIENTS} requests never batched"
    # every request was scored exactly once, in fewer model calls than requests
    assert scored - scored1 == rounds * CLIENTS
    assert calls - calls1 < rounds * CLIENTS
