"""Request limits of the service: body size (413), per-client rate (429 with Retry-After), CORS
off unless configured, and request bodies kept out of the log."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import test_service
from test_service import Server, free_port, serve_env, serving

from seqrec.config import ServeConfig, Workspace
from seqrec.serving.ratelimit import RateLimiter, retry_after
from seqrec.testing import load_synth, make_workspace


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_asks_to_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)  # one token comes back every 0.5 s
    assert limiter.take("b") == 0.0  # buckets are per client
    clock.now += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0


def test_bucket_refills_up_to_the_burst_only() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 2, clock=clock)
    clock.now += 1000
    assert [limiter.take("a") > 0 for _ in range(3)] == [False, False, True]


def test_forgotten_clients_start_with_a_full_bucket() -> None:
    limiter = RateLimiter(0.001, 1, max_clients=2, clock=Clock())
    assert limiter.take("a") == 0.0 and limiter.take("a") > 0
    limiter.take("b"), limiter.take("c")  # "a" is the least recently seen: dropped
    assert limiter.take("a") == 0.0


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert [retry_after(w) for w in (0.01, 1.0, 1.2, 30.5)] == ["1", "1", "2", "31"]


def test_defaults_size_limit_on_rate_limit_off() -> None:
    serve = ServeConfig()
    assert serve.max_body_bytes == 1_048_576
    assert serve.rate_limit_per_s == 0


# -- against a real `seqrec serve` --------------------------------------------------------------

LIMITED = """
[serve]
max_body_bytes = 2048
rate_limit_per_s = 0.01
rate_limit_burst = 3
"""


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Workspace]]:
    from seqrec.features.materialize import materialize
    from seqrec.features.repo import apply
    from seqrec.pipeline import train_model

    ws = make_workspace(tmp_path_factory.mktemp("limits") / "ws", LIMITED)
    load_synth(ws, users=40, items=20)
    apply(ws)
    materialize(ws)
    train_model(ws, "popularity", progress=False)
    exe = str(Path(sys.executable).parent / "seqrec")
    cmd = [exe, "serve", "-p", str(ws.root), "--model", "popularity", "--port", str(free_port())]
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(test_service, "READY_TIMEOUT_S", 300.0)  # a loaded machine starts slowly
        with serving(cmd, serve_env(), log) as srv:
            yield srv, ws


@pytest.mark.integration
def test_served_limits(limited: tuple[Server, Workspace]) -> None:
    """One test, in order: the rate limit's buckets are shared by every request of this client."""
    server, _ = limited
    marker = "payload-marker-" + "x" * 40
    # 1. too large: 413 with a JSON error (one token spent)
    big = server.post({"user_id": "u", "exclude_items": [marker] * 200})
    assert big.status_code == 413
    assert "2048 bytes" in big.json()["error"]
    # 2. CORS off: no Access-Control-Allow-Origin for a cross-origin request (one token)
    ok = server.post({"user_id": marker, "k": 3}, headers={"Origin": "https://evil.example"})
    assert ok.status_code == 200
    assert "access-control-allow-origin" not in ok.headers
    # 3. the burst (3) is spent: 429 with Retry-After and a JSON error
    server.post({"user_id": "u2", "k": 3})
    limited_answer = server.post({"user_id": "u3", "k": 3})
    assert limited_answer.status_code == 429
    assert int(limited_answer.headers["retry-after"]) >= 1
    assert "too many requests" in limited_answer.json()["error"]
    assert server.get("/livez").status_code == 200  # probes are exempt
    assert server.get("/readyz").status_code == 200
    # 4. request bodies are not logged
    assert marker not in server.log.read_text()


@pytest.mark.integration
def test_preflight_gets_no_cors_headers(limited: tuple[Server, Workspace]) -> None:
    server, _ = limited
    answer = httpx.options(
        f"{server.url}/livez",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=30,
    )
    assert "access-control-allow-origin" not in answer.headers
