"""The example third-party plugin examples/seqrec-itemknn, used the way a user would use it.

It is not part of `make install`: the test installs it from its own directory into a private
target directory (never the shared venv), puts that directory on PYTHONPATH for the commands
it runs, and drives the real command line: `seqrec plugins`, `seqrec plugin check`, `seqrec
init`, synthetic events, `seqrec train --model itemknn`, `seqrec evaluate`, a real `seqrec
serve` answering over HTTP, and the example's own test suite.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import test_service
from test_service import free_port, serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "seqrec-itemknn"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example installed as a user would, into its own target directory."""
    target = tmp_path_factory.mktemp("itemknn") / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    cmd += ["--no-deps", "--no-build-isolation", "--no-index", "--target", str(target)]
    proc = subprocess.run([*cmd, str(EXAMPLE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


def user_env(site: Path, **extra: str) -> dict[str, str]:
    """This process's environment as a user's shell would have it, plus the install target on
    PYTHONPATH (no workspace, model or model store chosen by the test session)."""
    drop = ("SEQREC_PROJECT", "SEQREC_MODEL", "SEQREC_LOAD_PLUGINS", "BENTOML_HOME")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    env["BENTOML_DO_NOT_TRACK"] = "True"
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def seqrec(site: Path, *args: str, cwd: Path = REPO) -> str:
    """Run ``seqrec ARGS`` with the example on PYTHONPATH; its stdout (fails on exit != 0)."""
    proc = subprocess.run(
        [str(BIN / "seqrec"), *args], cwd=cwd, env=user_env(site), capture_output=True, text=True
    )
    assert proc.returncode == 0, f"seqrec {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def last_json(out: str) -> dict[str, Any]:
    return dict(json.loads(out.strip().splitlines()[-1]))


def test_the_example_installs_into_its_target_only(site: Path) -> None:
    assert (site / "seqrec_itemknn" / "model.py").is_file()
    assert list(site.glob("seqrec_itemknn-*.dist-info/entry_points.txt"))
    assert importlib.util.find_spec("seqrec_itemknn") is None  # the shared venv: untouched
    proc = subprocess.run(
        [sys.executable, "-c", "import seqrec_itemknn; print(seqrec_itemknn.__file__)"],
        cwd=REPO,
        env=user_env(site),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_relative_to(site)


def test_seqrec_plugins_and_models_list_itemknn(site: Path) -> None:
    plugins = {p["name"]: p for p in json.loads(seqrec(site, "plugins", "--json"))}
    knn = plugins["itemknn"]
    assert knn["error"] is None
    assert (knn["version"], knn["hooks"]) == ("0.1.0", ["register_models"])
    assert {"gpt2", "markov", "popularity"} <= set(plugins)  # loaded beside the others
    assert "itemknn" in seqrec(site, "models")


def test_seqrec_plugin_check_passes_the_installed_example(site: Path) -> None:
    out = seqrec(site, "plugin", "check", "itemknn")
    assert "FAIL" not in out and out.count("ok ") >= 8  # one line per check of the kit


@pytest.fixture(scope="module")
def workspace(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`seqrec init` + a small synthetic log, features applied and online."""
    root = tmp_path_factory.mktemp("itemknn-ws") / "ws"
    seqrec(site, "init", str(root))
    seqrec(
        site, "events", "synth", "--users", "120", "--items", "60", "--seed", "3", "-p", str(root)
    )
    seqrec(site, "features", "apply", "-p", str(root))
    seqrec(site, "features", "materialize", "-p", str(root))
    return root


@pytest.fixture(scope="module")
def itemknn_tag(site: Path, workspace: Path) -> str:
    out = last_json(seqrec(site, "train", "--model", "itemknn", "-p", str(workspace), "--json"))
    assert out["epochs_run"] == 0  # counted once by the trainer, no gradient epochs
    return str(out["tag"])


@pytest.mark.slow
def test_train_and_evaluate_itemknn_from_the_command_line(
    site: Path, workspace: Path, itemknn_tag: str
) -> None:
    assert itemknn_tag.startswith("seqrec-itemknn:")
    res = last_json(seqrec(site, "evaluate", itemknn_tag, "-p", str(workspace), "--json"))
    assert res["tag"] == itemknn_tag and res["users"] == 120
    assert 0 < res["ndcg@10"] <= res["recall@10"] <= 1


@pytest.mark.slow
def test_seqrec_serve_recommends_with_itemknn_over_http(
    site: Path, workspace: Path, itemknn_tag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `seqrec serve` and then BentoML's worker import every installed plugin (transformers
    # among them) before the first /readyz: give a loaded machine more than the usual 90 s
    monkeypatch.setattr(test_service, "READY_TIMEOUT_S", 300.0)
    cmd = [str(BIN / "seqrec"), "serve", "-p", str(workspace), "--model", itemknn_tag]
    with serving([*cmd, "--port", str(free_port())], user_env(site), tmp_path / "serve.log") as srv:
        resp = srv.post({"user_id": "u000001", "k": 5})
        assert resp.status_code == 200, resp.text
        body = resp.json()
    assert body["model"] == itemknn_tag
    assert body["fallback"] is False  # a known user, scored by the model
    items = [r["item_id"] for r in body["items"]]
    assert len(set(items)) == 5 and all(i.startswith("i") for i in items)
    assert f"serving {itemknn_tag}" in (tmp_path / "serve.log").read_text()


@pytest.mark.slow
def test_the_examples_own_tests_pass_against_the_installed_copy(site: Path) -> None:
    tests = EXAMPLE / "tests"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
        cwd=REPO,
        env=user_env(site),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
