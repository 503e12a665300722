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

    def post(self, body: Any, **kw: Any) -> httpx.Response:
        return httpx.post(f"{self.url}/recommend", json=body, timeout=30, **kw)


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
    ],
)
def test_bad_requests_are_4xx(server: Server, body: Any) -> None:
    resp = server.post(body)
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:500])


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
