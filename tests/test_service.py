"""The BentoML service, served for real (``bentoml serve``), and the in-process Recommender."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from seqrec.config import Workspace

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def post(self, body: Any, path: str = "/recommend", **kw: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, timeout=30, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=30, **kw)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the server's whole process group (bentoml serve starts worker children)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
    # the leader may be gone while workers of its group linger
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@contextlib.contextmanager
def serving(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[Server]:
    """Run ``cmd`` (it must serve on ``--port``) in its own session until /readyz says 200."""
    port = cmd[cmd.index("--port") + 1]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{cmd[0]} exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"not ready after {READY_TIMEOUT_S:.0f}s:\n{log.read_text()[-5000:]}")
            time.sleep(0.5)
        yield Server(url, proc, log)
    finally:
        _stop(proc)


def serve_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SEQREC_PROJECT", "SEQREC_MODEL")}
    env["BENTOML_DO_NOT_TRACK"] = "True"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def server(trained_ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``bentoml serve seqrec.service:SeqrecService`` on a free port, started once."""
    exe = str(Path(sys.executable).parent / "bentoml")
    cmd = [exe, "serve", "seqrec.service:SeqrecService", "--host", "127.0.0.1"]
    env = serve_env(SEQREC_PROJECT=str(trained_ws.root), SEQREC_MODEL="gpt2")
    log = tmp_path_factory.mktemp("serve") / "bentoml.log"
    with serving([*cmd, "--port", str(free_port())], env, log) as srv:
        yield srv


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


@pytest.fixture(scope="module")
def recommender(trained_ws: Workspace) -> Any:
    from seqrec.recommend import Recommender

    return Recommender(trained_ws, "gpt2", device="cpu")


@pytest.fixture(scope="module")
def seen_items(recommender: Any, known_user: str) -> set[str]:
    """Item ids in the user's online sequence (what exclude_seen must never return)."""
    seq = recommender.lookup([known_user])["item_seq"][0]
    assert seq, "the known user has no online sequence"
    return {recommender.vocab[i] for i in seq}


def _check_ranking(res: dict[str, Any], k: int) -> list[str]:
    items = [r["item_id"] for r in res["items"]]
    scores = [r["score"] for r in res["items"]]
    assert len(items) == k
    assert len(set(items)) == k
    assert all(isinstance(s, float) for s in scores)
    assert scores == sorted(scores, reverse=True)
    return items


# -- the real server ------------------------------------------------------------------------------


def test_recommend_known_user(server: Server, known_user: str, seen_items: set[str]) -> None:
    resp = server.post({"user_id": known_user, "k": 5})
    assert resp.status_code == 200, resp.text
    res = resp.json()
    assert res["fallback"] is False
    assert res["model"].startswith("seqrec-gpt2:")
    items = _check_ranking(res, 5)
    assert not set(items) & seen_items  # exclude_seen defaults to true
    assert res["feature_age_s"] is not None


def test_recommend_default_k(server: Server, known_user: str) -> None:
    resp = server.post({"user_id": known_user})
    assert resp.status_code == 200, resp.text
    _check_ranking(resp.json(), 10)


def test_recommend_all_unseen(
    server: Server, known_user: str, seen_items: set[str], recommender: Any
) -> None:
    """With k larger than the catalogue, exactly the unseen items come back, once each."""
    resp = server.post({"user_id": known_user, "k": 1000, "exclude_seen": True})
    assert resp.status_code == 200, resp.text
    items = [r["item_id"] for r in resp.json()["items"]]
    catalogue = set(recommender.vocab[1:])
    assert set(items) == catalogue - seen_items
    assert len(items) == len(set(items))


def test_recommend_including_seen(server: Server, known_user: str) -> None:
    resp = server.post({"user_id": known_user, "k": 7, "exclude_seen": False})
    assert resp.status_code == 200, resp.text
    res = resp.json()
    assert res["fallback"] is False
    _check_ranking(res, 7)


def test_recommend_unknown_user_falls_back(server: Server, recommender: Any) -> None:
    resp = server.post({"user_id": "no-such-user-xyz", "k": 4})
    assert resp.status_code == 200, resp.text
    res = resp.json()
    assert res["fallback"] is True
    assert res["model"].startswith("seqrec-gpt2:")
    assert res["feature_age_s"] is None
    items = _check_ranking(res, 4)
    assert items == [r["item_id"] for r in recommender.popular(4)]  # training popularity order


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"user_id": "u", "k": 0}, id="k=0"),
        pytest.param({"user_id": "u", "k": -3}, id="k<0"),
        pytest.param({"user_id": "u", "k": 1001}, id="k-too-big"),
        pytest.param({"user_id": "u", "k": 3, "bogus": 1}, id="extra-field"),
        pytest.param({"user_id": "x" * 100_000}, id="100k-user-id"),
        pytest.param({"user_id": ""}, id="empty-user-id"),
        pytest.param({"k": 3}, id="no-user-id"),
        pytest.param({"user_id": ["a"]}, id="user-id-list"),
        pytest.param({"user_id": "u", "k": "many"}, id="k-string"),
        pytest.param(["u"], id="not-an-object"),
        pytest.param({"user_id": "u", "k": 10**9}, id="k=1e9"),
        pytest.param({"user_id": "u", "k": 2.5}, id="k-float"),
        pytest.param({"user_id": "u", "exclude_seen": "yes"}, id="exclude-seen-string"),
        pytest.param({"user_id": "u", "exclude_items": ["i"] * 1001}, id="too-many-excludes"),
        pytest.param({"user_id": "u", "exclude_items": ["x" * 300]}, id="long-exclude-id"),
    ],
)
def test_bad_requests_are_4xx(server: Server, body: Any) -> None:
    resp = server.post(body)
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:500])
    assert "error" in resp.text


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/recommend", {"user_id": "u", "k": 0}, "k"),
        ("/recommend", {"user_id": "u", "k": 10**9}, "k"),
        ("/recommend", {"user_id": "u", "bogus": 1}, "bogus"),
        ("/recommend", {"user_id": "x" * 100_000}, "user_id"),
        ("/recommend_batch", {"user_ids": ["a"] * 257}, "user_ids"),
        ("/recommend_batch", {"user_ids": []}, "user_ids"),
        ("/recommend_from_events", {"events": [{"item_id": "a", "when": 1}]}, "when"),
        ("/recommend_from_events", {"events": [{"item_id": "a"}] * 1001}, "events"),
        ("/predict", {"user_id": "u", "k": 3}, "k"),
    ],
)
def test_error_names_the_field(server: Server, path: str, body: Any, field: str) -> None:
    resp = server.post(body, path)
    assert resp.status_code == 400, resp.text[:500]
    detail = resp.json()["detail"]
    assert any(field in [str(p) for p in d["loc"]] for d in detail), detail


def test_body_size_limit(server: Server) -> None:
    def post(content: bytes | Iterator[bytes]) -> httpx.Response:
        headers = {"content-type": "application/json"}
        return httpx.post(f"{server.url}/recommend", content=content, headers=headers, timeout=30)

    resp = post(b'{"user_id": "u", "exclude_items": [' + b'"i",' * 400_000 + b'"i"]}')
    assert resp.status_code == 413, resp.text[:300]
    assert "larger than" in resp.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        yield b'{"user_id": "u", "exclude_items": ['
        for _ in range(200):
            yield b'"i",' * 2000
        yield b'"i"]}'

    resp = post(chunks())
    assert resp.status_code == 413, resp.text[:300]

    def small() -> Iterator[bytes]:  # chunked, within the limit: answered
        yield b'{"user_id": '
        yield b'"nobody", "k": 2}'

    resp = post(small())
    assert resp.status_code == 200, resp.text[:300]
    assert len(resp.json()["items"]) == 2


@pytest.mark.parametrize(
    "ctype", ["multipart/form-data", "text/plain", "application/x-www-form-urlencoded"]
)
def test_non_json_body_is_415(server: Server, ctype: str) -> None:
    resp = httpx.post(
        f"{server.url}/recommend",
        content=b'{"user_id": "u"}',
        headers={"content-type": ctype},
        timeout=30,
    )
    assert resp.status_code == 415, resp.text[:300]
    assert "application/json" in resp.json()["error"]


def test_recommend_exclude_items(server: Server, known_user: str) -> None:
    first = server.post({"user_id": known_user, "k": 3}).json()
    drop = [first["items"][0]["item_id"], "not-an-item"]
    resp = server.post({"user_id": known_user, "k": 3, "exclude_items": drop})
    assert resp.status_code == 200, resp.text
    items = _check_ranking(resp.json(), 3)
    assert drop[0] not in items
    assert items[:2] == [r["item_id"] for r in first["items"][1:]]
    cold = server.post({"user_id": "nobody-x", "k": 3, "exclude_items": drop}).json()
    assert cold["fallback"] is True and drop[0] not in [r["item_id"] for r in cold["items"]]


def test_recommend_batch(server: Server, known_user: str) -> None:
    users = ["nobody-1", known_user, "nobody-2"]
    resp = server.post({"user_ids": users, "k": 4}, "/recommend_batch")
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert [r["fallback"] for r in results] == [True, False, True]
    single = server.post({"user_id": known_user, "k": 4}).json()
    assert [r["item_id"] for r in results[1]["items"]] == [r["item_id"] for r in single["items"]]
    for r in results:
        _check_ranking(r, 4)


def test_recommend_from_events(
    server: Server, known_user: str, recommender: Any, seen_items: set[str]
) -> None:
    session = sorted(seen_items)[:3]
    events = [{"item_id": i, "event_type": "view"} for i in session]
    events.insert(1, {"item_id": "no-such-item", "timestamp": 1_700_000_000.5})
    resp = server.post({"events": events, "k": 5}, "/recommend_from_events")
    assert resp.status_code == 200, resp.text
    res = resp.json()
    assert res["fallback"] is False and res["unknown_items"] == 1
    items = _check_ranking(res, 5)
    assert not set(items) & set(session)  # exclude_seen: the session's own items

    resp = server.post({"events": [{"item_id": "nope"}], "k": 2}, "/recommend_from_events")
    res = resp.json()
    assert res["fallback"] is True and res["unknown_items"] == 1
    assert [r["item_id"] for r in res["items"]] == [r["item_id"] for r in recommender.popular(2)]
    resp = server.post({"events": [], "k": 2}, "/recommend_from_events")
    assert resp.status_code == 200 and resp.json()["fallback"] is True


def test_predict_needs_a_classifier(server: Server) -> None:
    resp = server.post({"user_id": "u"}, "/predict")
    assert resp.status_code == 400
    assert "next-item model" in resp.text and "/recommend" in resp.text


def test_status_metrics_openapi(server: Server) -> None:
    status = server.get("/status").json()
    assert status["model"].startswith("seqrec-gpt2:")
    assert status["online_store"] == "ok" and status["degraded"] is False
    assert status["device"] == "cpu"
    metrics = server.get("/metrics").text
    assert "seqrec_online_store_up 1.0" in metrics
    assert 'seqrec_fallbacks_total{reason="unknown_user"}' in metrics
    assert "bentoml_service_request_total" in metrics
    assert "bentoml_service_request_duration_seconds" in metrics
    spec = server.get("/docs.json").json()
    for path in ("/recommend", "/recommend_batch", "/recommend_from_events", "/predict"):
        assert path in spec["paths"], path
    body = spec["paths"]["/recommend"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["additionalProperties"] is False
    assert server.get("/livez").status_code == 200


def test_schemathesis_finds_no_5xx(server: Server, tmp_path: Path) -> None:
    """Property-based requests from the published OpenAPI spec: never a server error."""
    exe = str(Path(sys.executable).parent / "schemathesis")
    proc = subprocess.run(
        [
            exe,
            "run",
            f"{server.url}/docs.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "30",
            "--seed",
            "7",
            "--generation-deterministic",
            "--request-timeout",
            "30",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_invalid_json_is_4xx(server: Server) -> None:
    resp = httpx.post(
        f"{server.url}/recommend",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert 400 <= resp.status_code < 500, resp.text[:500]


def test_server_still_healthy(server: Server) -> None:
    """After the bad requests above, the server is up and answers."""
    assert server.proc.poll() is None
    assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200
    resp = server.post({"user_id": "whoever", "k": 1})
    assert resp.status_code == 200 and len(resp.json()["items"]) == 1


# -- in process -----------------------------------------------------------------------------------


def test_recommender_batch_order_and_fallback(
    recommender: Any, known_user: str, seen_items: set[str]
) -> None:
    users = ["nobody-1", known_user, "nobody-2", known_user]
    out = recommender.recommend_batch(users, k=3)
    assert len(out) == len(users)
    assert [r["fallback"] for r in out] == [True, False, True, False]
    assert out[1] == out[3]  # same user, same answer
    for r in out:
        assert r["model"].startswith("seqrec-gpt2:")
        _check_ranking(r, 3)
    assert not {i["item_id"] for i in out[1]["items"]} & seen_items

    pair = recommender.recommend_batch([known_user, "nobody-1"], k=3)
    assert [r["fallback"] for r in pair] == [False, True]
    # batch composition must not change a user's answer (scores up to float noise)
    assert [i["item_id"] for i in pair[0]["items"]] == [i["item_id"] for i in out[1]["items"]]
    assert [i["score"] for i in pair[0]["items"]] == pytest.approx(
        [i["score"] for i in out[1]["items"]], rel=1e-4
    )
    assert pair[1]["items"] == out[0]["items"]


def test_items_newer_than_the_model_are_skipped(recommender: Any) -> None:
    """Online sequences may hold items added after training: they are dropped (as
    /recommend_from_events does), not scored as padding in the middle of the sequence."""
    from seqrec.features.sql import left_pad
    from seqrec.recommend import Query

    n, width = recommender.n_items, recommender.max_len

    def arrays(seq: list[int], times: list[int]) -> tuple[Any, Any, Any]:
        return (
            left_pad([seq], width),
            left_pad([[1] * len(seq)], width),
            left_pad([times], width),
        )

    t = [1_700_000_000 + 60 * i for i in range(4)]
    with_new = recommender._rank(*arrays([3, 5, n + 4, 7], t), [Query("x", 5)])
    without = recommender._rank(*arrays([3, 5, 7], [t[0], t[1], t[3]]), [Query("x", 5)])
    assert with_new == without
    only_new = arrays([n + 1, n + 2], t[:2])
    assert not recommender._known(*only_new)[0]  # nothing known left: the caller falls back


def test_recommender_single_matches_batch(recommender: Any, known_user: str) -> None:
    single = recommender.recommend(known_user, k=5, exclude_seen=False)
    batch = recommender.recommend_batch([known_user], k=5, exclude_seen=False)[0]
    assert single["items"] == batch["items"]
    assert single["fallback"] is False


# -- seqrec serve ---------------------------------------------------------------------------------


def test_seqrec_serve_command_line() -> None:
    from seqrec.commands.serve import serve_command

    cmd = serve_command(Path("/w"), "seqrec-gpt2:abc", "127.0.0.1", 4321)
    assert Path(cmd[0]).name == "bentoml"
    assert cmd[1:] == [
        "serve",
        "seqrec.service:SeqrecService",
        "--host",
        "127.0.0.1",
        "--port",
        "4321",
    ]


def test_seqrec_serve_unknown_model(trained_ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from seqrec.cli import build_cli

    monkeypatch.setenv("SEQREC_PROJECT", str(trained_ws.root))  # the CLI overwrites it: restore
    result = CliRunner().invoke(build_cli(), ["serve", "--model", "nosuch", "-p", trained_ws.root])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: no stored model 'seqrec-nosuch:latest'")


@pytest.mark.slow
def test_seqrec_serve(trained_ws: Workspace, tmp_path: Path) -> None:
    """``seqrec serve`` execs bentoml for the workspace's default model (latest version)."""
    exe = str(Path(sys.executable).parent / "seqrec")
    cmd = [exe, "serve", "--project", str(trained_ws.root), "--port", str(free_port())]
    log = tmp_path / "seqrec-serve.log"
    with serving(cmd, serve_env(), log) as srv:
        resp = srv.post({"user_id": "nobody", "k": 2})
        assert resp.status_code == 200, resp.text
        assert resp.json()["model"].startswith("seqrec-gpt2:")
        assert len(resp.json()["items"]) == 2
    assert "serving seqrec-gpt2:" in log.read_text()


# -- a classifier, behind a bearer token, through `seqrec serve --port` ---------------------------

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def classifier_ws(trained_ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace reading ``trained_ws``'s online features that stores an (untrained) GPT-2
    purchase classifier in its own model store: enough to exercise /predict end to end."""
    import numpy as np

    from seqrec import model_store
    from seqrec.config import load_workspace
    from seqrec.data.schema import make_engine
    from seqrec.models import ModelContext, get_spec

    root = tmp_path_factory.mktemp("classifier") / "ws"
    root.mkdir()
    f = trained_ws.config.features
    (root / "seqrec.toml").write_text(
        f"[features]\nmax_len = {f.max_len}\n"
        f'repo_dir = "{trained_ws.feature_repo}"\n'
        f'online_path = "{trained_ws.path(f.online_path)}"\n'
        f'registry_path = "{trained_ws.path(f.registry_path)}"\n'
        '\n[models]\nstore = "models"\n'
        # this server answers through BentoML's own endpoints, the other one the fast path
        "\n[serve]\nfast_path = false\n"
    )
    ws = load_workspace(root)
    spec = get_spec("gpt2")
    ref = model_store.load("gpt2", store=trained_ws.model_store).model.ctx
    ctx = ModelContext(
        n_items=ref.n_items,
        n_event_types=ref.n_event_types,
        max_len=ref.max_len,
        task="classify",
        n_classes=2,
        params={**spec.defaults},
    )
    engine = make_engine(trained_ws.events_url)
    try:
        model_store.save(
            spec.make(ctx),
            engine=engine,
            plugin="gpt2",
            task="classify",
            feature_service=f.feature_service,
            metrics={},
            popularity=np.zeros(ref.n_items),
            train_info={"class_names": ["no", "yes"], "label": "purchase-within:7d"},
            store=ws.model_store,
        )
    finally:
        engine.dispose()
    return ws


@pytest.fixture(scope="module")
def secured(classifier_ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    exe = str(Path(sys.executable).parent / "seqrec")
    cmd = [exe, "serve", "--project", str(classifier_ws.root), "--port", str(free_port())]
    log = tmp_path_factory.mktemp("secured") / "seqrec-serve.log"
    with serving(cmd, serve_env(SEQREC_API_TOKEN=TOKEN), log) as srv:
        yield srv


def test_token_guards_every_endpoint_but_health(secured: Server) -> None:
    good = {"Authorization": f"Bearer {TOKEN}"}
    for bad in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        resp = secured.post({"user_id": "u"}, "/predict", headers=bad)
        assert resp.status_code == 401, resp.text
        assert "bearer token" in resp.json()["error"]
        assert resp.headers["www-authenticate"] == "Bearer"
        for path in ("/metrics", "/status", "/docs.json"):
            assert secured.get(path, headers=bad).status_code == 401, path
    for path in ("/livez", "/readyz"):
        assert secured.get(path).status_code == 200, path
    assert secured.get("/status", headers=good).json()["task"] == "classify"
    assert secured.get("/metrics", headers=good).status_code == 200


def test_predict(secured: Server, known_user: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    res = secured.post({"user_id": known_user}, "/predict", headers=auth).json()
    assert res["fallback"] is False and res["model"].startswith("seqrec-gpt2:")
    assert set(res["probabilities"]) == {"no", "yes"}
    assert sum(res["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    cold = secured.post({"user_id": "nobody"}, "/predict", headers=auth).json()
    assert cold["fallback"] is True and cold["probabilities"] == {"no": 0.5, "yes": 0.5}
    resp = secured.post({"user_id": known_user}, "/recommend", headers=auth)
    assert resp.status_code == 400 and "classify model" in resp.text
    resp = secured.post({"user_id": known_user, "k": 3}, "/predict", headers=auth)
    assert resp.status_code == 400 and resp.json()["detail"][0]["loc"] == ["k"]  # BentoML's


def test_a_served_classifier_scores_at_the_request_time(classifier_ws: Workspace) -> None:
    """The built-in classifiers read the prediction time (now_features): the service's traced
    model takes the request time as an input, and scores as the eager model does at it."""
    import numpy as np
    import torch

    from seqrec.models import Batch
    from seqrec.recommend import Recommender

    rec = Recommender(classifier_ws, "gpt2", device="cpu")
    assert rec.model.reads_now and rec._traced is not None
    items = np.zeros((2, rec.max_len), dtype=np.int64)
    items[:, -3:] = [[3, 4, 5], [6, 7, 8]]
    types = (items > 0).astype(np.int64)
    times = np.where(items > 0, 1_700_000_000 + np.arange(rec.max_len) * 60, 0)
    soon, later = (times[:, -1] + h * 3600 for h in (1, 24 * 40))
    at_soon = rec._scores(items.copy(), types.copy(), times.copy(), soon)
    at_later = rec._scores(items.copy(), types.copy(), times.copy(), later)
    assert not torch.allclose(at_soon, at_later)
    batch = Batch(
        *(torch.from_numpy(a) for a in (items, types, times)), now=torch.from_numpy(later)
    )
    with torch.no_grad():
        eager = rec.model.score(batch).float()
    torch.testing.assert_close(at_later, eager, rtol=1e-4, atol=1e-4)


# -- startup failures and the Bento ---------------------------------------------------------------


@pytest.mark.slow
def test_model_that_fails_to_load_stops_startup(trained_ws: Workspace, tmp_path: Path) -> None:
    """`bentoml serve` itself (not only `seqrec serve`) stops, with the reason in its log."""
    exe = str(Path(sys.executable).parent / "bentoml")
    port = str(free_port())
    env = serve_env(SEQREC_PROJECT=str(trained_ws.root), SEQREC_MODEL="no-such-model")
    log = tmp_path / "fail.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [exe, "serve", "seqrec.service:SeqrecService", "--host", "127.0.0.1", "--port", port],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        proc.wait(timeout=READY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server kept running:\n{log.read_text()[-3000:]}")
    finally:
        _stop(proc)
    text = log.read_text()
    assert "cannot start, the model did not load" in text
    assert "no stored model 'seqrec-no-such-model:latest'" in text


@pytest.mark.slow
def test_build_and_serve_the_bento(trained_ws: Workspace, tmp_path: Path) -> None:
    import json

    from seqrec.commands.serve import set_labels

    set_labels(trained_ws, "gpt2", {"stage": "production"})
    seqrec = str(Path(sys.executable).parent / "seqrec")
    env = serve_env(BENTOML_HOME=str(trained_ws.model_store))
    proc = subprocess.run(
        [seqrec, "build", "-p", str(trained_ws.root), "--model", "stage=production", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    bento = Path(out["path"])
    assert (bento / "src" / "seqrec_ws" / "feature_repo" / "feature_store.yaml").is_file()
    reqs = (bento / "env" / "python" / "requirements.txt").read_text().split()
    assert all("==" in r for r in reqs) and any(r.startswith("torch==") for r in reqs)
    exe = str(Path(sys.executable).parent / "bentoml")
    cmd = [exe, "serve", out["bento"], "--host", "127.0.0.1", "--port", str(free_port())]
    with serving(cmd, env, tmp_path / "bento.log") as srv:
        res = srv.post({"user_id": "nobody", "k": 2}).json()
        assert res["model"] == out["model"] and len(res["items"]) == 2
