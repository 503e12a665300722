"""The fast path (seqrec's ASGI layer) and BentoML's own endpoints answer alike.

Two real ``bentoml serve`` processes serve the same stored model from the same online store:
one with ``[serve] fast_path = true`` (the default), one with ``fast_path = false``. Every
request below goes to both; status, body and the model header must match.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_service
from test_service import Server, free_port, serve_env, serving

from seqrec.config import Workspace, load_workspace
from seqrec.testing import _merge

pytestmark = pytest.mark.integration


def _twin(ws: Workspace, root: Path) -> Workspace:
    """A workspace reading ``ws``'s events, online store and model store, with the fast path
    off: the same model and features answered through BentoML's own endpoints."""
    root.mkdir(parents=True)
    f = ws.config.features
    overrides = f"""
[events]
url = "sqlite:///{ws.root / "data" / "events.db"}"

[features]
repo_dir = "{ws.feature_repo}"
snapshot_dir = "{ws.path(f.snapshot_dir)}"
online_path = "{ws.path(f.online_path)}"
registry_path = "{ws.path(f.registry_path)}"

[models]
store = "{ws.model_store}"
"""
    text = _merge((ws.root / "seqrec.toml").read_text(), overrides)
    (root / "seqrec.toml").write_text(text.replace("fast_path = true", "fast_path = false"))
    twin = load_workspace(root)
    assert twin.config.serve.fast_path is False
    assert twin.events_url == ws.events_url
    return twin


@pytest.fixture(scope="module")
def pair(
    trained_ws: Workspace, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server]]:
    """(fast path server, BentoML path server), started side by side to halve the wait."""
    assert trained_ws.config.serve.fast_path is True
    tmp = tmp_path_factory.mktemp("parity")
    slow_ws = _twin(trained_ws, tmp / "bentoml-path")
    exe = str(Path(sys.executable).parent / "bentoml")
    cms = []
    for name, ws in (("fast", trained_ws), ("bentoml", slow_ws)):
        cmd = [exe, "serve", "seqrec.service:SeqrecService", "--host", "127.0.0.1"]
        env = serve_env(SEQREC_PROJECT=str(ws.root), SEQREC_MODEL="gpt2")
        cms.append(serving([*cmd, "--port", str(free_port())], env, tmp / f"{name}.log"))
    with contextlib.ExitStack() as stack:
        # a loaded machine starts two servers at once slowly: wait longer than the default
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        mp.setattr(test_service, "READY_TIMEOUT_S", max(test_service.READY_TIMEOUT_S, 300.0))
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(cm.__enter__) for cm in cms]
        started: list[Server] = []
        error: BaseException | None = None
        for cm, fut in zip(cms, futures, strict=True):
            exc = fut.exception()
            if exc is None:
                stack.push(cm.__exit__)
                started.append(fut.result())
            else:  # its own cleanup already ran; the other one is stopped by the stack
                error = error or exc
        if error is not None:
            raise error
        yield started[0], started[1]


@pytest.fixture(scope="module")
def known_user(trained_ws: Workspace) -> str:
    from seqrec.data.schema import make_engine
    from seqrec.features.sql import event_positions

    engine = make_engine(trained_ws.events_url)
    try:
        pos = event_positions(engine)
    finally:
        engine.dispose()
    return str(sorted(pos["user_id"].unique())[0])


def _normalise(body: Any) -> Any:
    """``feature_age_s`` is the age of the user's newest event at the moment of the request:
    two requests made milliseconds apart legitimately differ. Only its presence is compared
    (None for a fallback, a number otherwise); everything else must be identical."""
    if isinstance(body, dict):
        return {
            k: (None if v is None else "age") if k == "feature_age_s" else _normalise(v)
            for k, v in body.items()
        }
    if isinstance(body, list):
        return [_normalise(v) for v in body]
    return body


def _both(
    pair: tuple[Server, Server], path: str, content: bytes, ctype: str = "application/json"
) -> tuple[httpx.Response, httpx.Response]:
    headers = {"content-type": ctype}
    fast, slow = (
        httpx.post(f"{s.url}{path}", content=content, headers=headers, timeout=60) for s in pair
    )
    return fast, slow


def _assert_same(fast: httpx.Response, slow: httpx.Response) -> None:
    assert fast.status_code == slow.status_code, (fast.text[:800], slow.text[:800])
    # left out: date; server (BentoML's endpoints name themselves, see above); content-length
    # (feature_age_s may print with a different number of digits; the bodies are compared)
    skip = {"date", "server", "content-length"}
    assert {k: v for k, v in fast.headers.items() if k not in skip} == {
        k: v for k, v in slow.headers.items() if k not in skip
    }
    assert _normalise(fast.json()) == _normalise(slow.json())


def _json(body: Any) -> bytes:
    import json

    return json.dumps(body).encode()


# -- answers ---------------------------------------------------------------------------------


def test_each_server_takes_its_own_path(pair: tuple[Server, Server], known_user: str) -> None:
    """Only BentoML's endpoints add its ``server`` header: the fast path answers before them.
    That header is the one difference the comparisons below leave out."""
    fast, slow = (s.post({"user_id": known_user, "k": 2}) for s in pair)
    assert fast.status_code == slow.status_code == 200
    assert "server" not in fast.headers
    assert slow.headers["server"].startswith("BentoML")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/recommend", {"user_id": "KNOWN", "k": 5}, id="known-user"),
        pytest.param("/recommend", {"user_id": "KNOWN"}, id="default-k"),
        pytest.param(
            "/recommend",
            {"user_id": "KNOWN", "k": 7, "exclude_seen": False, "exclude_items": ["nope"]},
            id="include-seen-exclude-items",
        ),
        pytest.param("/recommend", {"user_id": "no-such-user", "k": 4}, id="unknown-user"),
        pytest.param("/recommend", {"user_id": "KNOWN", "k": 1000}, id="k-max-beyond-catalogue"),
        pytest.param("/recommend", {"user_id": "ü-ñ-\u2603", "k": 3}, id="unicode-user"),
        pytest.param(
            "/recommend_batch",
            {"user_ids": ["KNOWN", "no-such-user", "KNOWN"], "k": 3},
            id="batch",
        ),
        pytest.param(
            "/recommend_from_events",
            {
                "events": [
                    {"item_id": "ITEM", "event_type": "view"},
                    {"item_id": "not-an-item", "timestamp": 1_700_000_000.5},
                ],
                "k": 4,
            },
            id="events",
        ),
        pytest.param("/recommend_from_events", {"events": []}, id="no-events"),
    ],
)
def test_answers_match(
    pair: tuple[Server, Server], known_user: str, trained_ws: Workspace, path: str, body: Any
) -> None:
    from seqrec.recommend import Recommender

    item = Recommender(trained_ws, "gpt2", device="cpu").vocab[1]
    text = _json(body).decode().replace('"KNOWN"', _json(known_user).decode())
    text = text.replace('"ITEM"', _json(item).decode())
    fast, slow = _both(pair, path, text.encode())
    assert fast.status_code == 200, fast.text[:800]
    _assert_same(fast, slow)
    assert fast.headers["x-seqrec-model"].startswith("seqrec-gpt2:")


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "content"),
    [
        pytest.param("/recommend", b"{not json", id="invalid-json"),
        pytest.param("/recommend", b"", id="empty-body"),
        pytest.param("/recommend", b'{"user_id": "u",}', id="trailing-comma"),
        pytest.param("/recommend", b"null", id="null"),
        pytest.param("/recommend", b'["u"]', id="array"),
        pytest.param("/recommend", b'"u"', id="string"),
        pytest.param("/recommend", b"{}", id="missing-user-id"),
        pytest.param("/recommend", b'{"k": 3}', id="only-k"),
        pytest.param("/recommend", b'{"user_id": "u", "k": 0}', id="k=0"),
        pytest.param("/recommend", b'{"user_id": "u", "k": -1}', id="k<0"),
        pytest.param("/recommend", b'{"user_id": "u", "k": 1001}', id="k-over-max"),
        pytest.param("/recommend", b'{"user_id": "u", "k": 1000000000000}', id="huge-k"),
        pytest.param("/recommend", b'{"user_id": "u", "k": 1e400}', id="k-inf"),
        pytest.param("/recommend", b'{"user_id": "u", "k": "many"}', id="k-string"),
        pytest.param("/recommend", b'{"user_id": "u", "k": "3"}', id="k-numeric-string"),
        pytest.param("/recommend", b'{"user_id": "u", "k": 2.5}', id="k-float"),
        pytest.param("/recommend", b'{"user_id": "u", "k": 3.0}', id="k-integral-float"),
        pytest.param("/recommend", b'{"user_id": "u", "k": true}', id="k-bool"),
        pytest.param("/recommend", b'{"user_id": "u", "k": null}', id="k-null"),
        pytest.param("/recommend", b'{"user_id": 7}', id="user-id-int"),
        pytest.param("/recommend", b'{"user_id": ["a"]}', id="user-id-list"),
        pytest.param("/recommend", b'{"user_id": ""}', id="user-id-empty"),
        pytest.param("/recommend", b'{"user_id": "' + b"x" * 300 + b'"}', id="user-id-long"),
        pytest.param("/recommend", b'{"user_id": "u", "exclude_seen": "yes"}', id="bool-string"),
        pytest.param("/recommend", b'{"user_id": "u", "exclude_items": "i"}', id="excl-str"),
        pytest.param("/recommend", b'{"user_id": "u", "exclude_items": [1]}', id="excl-int"),
        pytest.param("/recommend", b'{"user_id": "u", "bogus": 1}', id="extra-field"),
        pytest.param("/recommend", b'{"user_id": "u", "bogus": 1, "k": 0}', id="extra-and-bad-k"),
        pytest.param("/recommend_batch", b"{}", id="batch-missing"),
        pytest.param("/recommend_batch", b'{"user_ids": []}', id="batch-empty"),
        pytest.param("/recommend_batch", b'{"user_ids": "u"}', id="batch-str"),
        pytest.param("/recommend_batch", b'{"user_ids": ["u"], "k": 0}', id="batch-k=0"),
        pytest.param(
            "/recommend_batch", b'{"user_ids": [' + b'"u",' * 256 + b'"u"]}', id="batch-too-many"
        ),
        pytest.param(
            "/recommend_from_events",
            b'{"events": [{"item_id": "a", "when": 1}]}',
            id="events-extra-field",
        ),
        pytest.param(
            "/recommend_from_events",
            b'{"events": [{"item_id": "a", "timestamp": -1}]}',
            id="events-negative-time",
        ),
        pytest.param("/recommend_from_events", b'{"events": "a"}', id="events-str"),
        pytest.param("/recommend_from_events", b"{}", id="events-missing"),
        pytest.param("/predict", b'{"user_id": "u"}', id="predict-next-item-model"),
        pytest.param("/predict", b'{"user_id": "u", "k": 3}', id="predict-extra-field"),
        pytest.param("/predict", b"{}", id="predict-missing"),
    ],
)
def test_refusals_match(pair: tuple[Server, Server], path: str, content: bytes) -> None:
    fast, slow = _both(pair, path, content)
    assert 400 <= fast.status_code < 500, fast.text[:800]
    assert "error" in fast.json()
    _assert_same(fast, slow)


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded"])
def test_non_json_content_type_matches(pair: tuple[Server, Server], ctype: str) -> None:
    fast, slow = _both(pair, "/recommend", b'{"user_id": "u"}', ctype)
    assert fast.status_code == 415
    _assert_same(fast, slow)


def test_servers_still_healthy(pair: tuple[Server, Server]) -> None:
    for s in pair:
        assert s.proc.poll() is None
        assert s.get("/readyz").status_code == 200
