"""``seqrec train``, ``seqrec evaluate`` and ``seqrec models`` through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from seqrec.cli import build_cli
from seqrec.config import Workspace

METRICS = ("recall", "ndcg", "mrr")


def invoke(*args: Any) -> Result:
    return CliRunner().invoke(build_cli(), [str(a) for a in args])


@pytest.fixture(autouse=True)
def _restore_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI writes SEQREC_PROJECT (and maybe BENTOML_HOME) into os.environ: undo that."""
    for name in ("SEQREC_PROJECT", "BENTOML_HOME"):
        had = name in os.environ
        monkeypatch.setenv(name, os.environ.get(name, ""))
        if not had:
            monkeypatch.delenv(name)
    yield


@pytest.fixture(scope="module")
def trained_pop(trained_ws: Workspace) -> Iterator[tuple[Result, dict[str, Any]]]:
    """``seqrec train --model popularity --json`` once; the model it stores is deleted after."""
    from seqrec import model_store

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEQREC_PROJECT", os.environ.get("SEQREC_PROJECT", ""))
        result = invoke("train", "--model", "popularity", "--json", "--project", trained_ws.root)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    yield result, payload
    model_store.delete(payload["tag"], trained_ws.model_store)


def test_train_json_prints_one_object(trained_pop: tuple[Result, dict[str, Any]]) -> None:
    result, payload = trained_pop
    assert result.stdout.count("\n") == 1  # one line: the JSON object, nothing else
    assert isinstance(payload, dict)
    assert payload["tag"].startswith("seqrec-popularity:")
    for key in ("ndcg@10", "recall@10", "mrr@10"):
        assert 0.0 <= payload[key] <= 1.0
    assert payload["ndcg@10"] > 0  # popularity beats nothing on the synthetic data
    assert payload["epochs_run"] == 0  # no gradient training for popularity
    assert {"best_epoch", "seconds", "seconds_per_epoch"} <= set(payload)


def test_evaluate_json_with_ks(
    trained_ws: Workspace, trained_pop: tuple[Result, dict[str, Any]]
) -> None:
    tag = trained_pop[1]["tag"]
    result = invoke("evaluate", tag, "--json", "--k", "5,10", "--project", trained_ws.root)
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)
    assert res["tag"] == tag
    assert res["split"] == "test"
    assert res["exclude_seen"] is False
    assert res["users"] == 120
    for m in METRICS:
        for k in (5, 10):
            assert 0.0 <= res[f"{m}@{k}"] <= 1.0
        assert res[f"{m}@10"] >= res[f"{m}@5"]
    assert "recall@20" not in res


def test_evaluate_exclude_seen(trained_ws: Workspace) -> None:
    result = invoke(
        "evaluate", "popularity", "--json", "--exclude-seen", "--k", "10", "-p", trained_ws.root
    )
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)
    assert res["exclude_seen"] is True
    assert res["tag"].startswith("seqrec-popularity:")
    assert 0.0 <= res["ndcg@10"] <= res["recall@10"] <= 1.0
    assert res["users"] == 120


def test_evaluate_default_model_valid_split_table(trained_ws: Workspace) -> None:
    result = invoke("evaluate", "--split", "valid", "--k", "10", "-p", trained_ws.root)
    assert result.exit_code == 0, result.output
    assert "seqrec-gpt2:" in result.stdout  # models.default = gpt2
    assert "valid users" in result.stdout


def test_evaluate_unknown_model(trained_ws: Workspace) -> None:
    result = invoke("evaluate", "nosuchmodel", "--project", trained_ws.root)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: no stored model 'seqrec-nosuchmodel:latest'")
    assert "seqrec train" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


@pytest.mark.parametrize("ks", ["0", "a,b", ","])
def test_evaluate_bad_k(trained_ws: Workspace, ks: str) -> None:
    result = invoke("evaluate", "popularity", "--k", ks, "-p", trained_ws.root)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: --k")


def test_train_unknown_model_lists_registered(trained_ws: Workspace) -> None:
    result = invoke("train", "--model", "nosuch", "--json", "--project", trained_ws.root)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: no model named 'nosuch'")
    assert "gpt2" in result.stderr and "popularity" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_models_json() -> None:
    result = invoke("models", "--json")
    assert result.exit_code == 0, result.output
    by_name = {m["name"]: m for m in json.loads(result.stdout)}
    assert {"gpt2", "popularity"} <= set(by_name)
    assert "next-item" in by_name["gpt2"]["tasks"]
    assert by_name["popularity"]["tasks"] == ["next-item"]
    assert by_name["gpt2"]["plugin"] == "gpt2"
    assert by_name["popularity"]["plugin"] == "popularity"
    assert "n_layer" in by_name["gpt2"]["defaults"]


def test_models_table() -> None:
    result = invoke("models")
    assert result.exit_code == 0, result.output
    assert "gpt2" in result.stdout and "popularity" in result.stdout


def test_models_stored_json(
    trained_ws: Workspace, trained_pop: tuple[Result, dict[str, Any]]
) -> None:
    result = invoke("models", "--stored", "--json", "--project", trained_ws.root)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    tags = [r["tag"] for r in rows]
    assert trained_pop[1]["tag"] in tags
    assert any(t.startswith("seqrec-gpt2:") for t in tags)
    assert sum(t.startswith("seqrec-popularity:") for t in tags) >= 2  # fixture's + this one
    assert all(t.startswith("seqrec-") for t in tags)
    created = [r["created"] for r in rows]
    assert created == sorted(created, reverse=True)  # newest first
    row = next(r for r in rows if r["tag"] == trained_pop[1]["tag"])
    assert row["labels"] == {"model": "popularity", "task": "next-item", "plugin": "popularity"}
    assert row["valid"]["ndcg@10"] == pytest.approx(trained_pop[1]["ndcg@10"])


def test_models_stored_table(trained_ws: Workspace) -> None:
    result = invoke("models", "--stored", "-p", trained_ws.root)
    assert result.exit_code == 0, result.output
    assert "seqrec-gpt2" in result.stdout


@pytest.mark.slow
def test_evaluate_json_real_process_stdout_is_clean(trained_ws: Workspace) -> None:
    """In a real process nothing else (Feast, tqdm, logging, warnings) reaches stdout."""
    env = {k: v for k, v in os.environ.items() if k != "SEQREC_PROJECT"}
    exe = Path(sys.executable).parent / "seqrec"
    proc = subprocess.run(
        [str(exe), "evaluate", "gpt2", "--json", "--k", "10", "--project", str(trained_ws.root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1, proc.stdout
    res = json.loads(proc.stdout)
    assert res["tag"].startswith("seqrec-gpt2:")
    assert set(res) >= {"ndcg@10", "recall@10", "mrr@10", "users"}


@pytest.mark.parametrize("command", [("train", "--model", "lstm"), ("retrain",)])
def test_training_a_workspace_with_no_events_says_import_events_first(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    ws = tmp_path / "empty"
    assert invoke("init", ws).exit_code == 0
    result = invoke(*command, "--project", ws)
    assert result.exit_code != 0
    assert "no table(s) events" in result.output
    assert "seqrec events import" in result.output
    assert "Traceback" not in result.output and "OperationalError" not in result.output


def test_an_unreachable_events_database_is_one_error_line_without_sqlalchemy_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from seqrec.testing import free_port

    ws = tmp_path / "pg"
    assert invoke("init", ws, "--profile", "postgres-redis").exit_code == 0
    monkeypatch.setenv("SEQREC_PG_URL", f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    result = invoke("train", "--model", "lstm", "--project", ws)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "events database unreachable" in lines[0] and "Connection refused" in lines[0]
    assert "sqlalche.me" not in result.output and "Traceback" not in result.output


def test_evaluate_on_a_sample_of_users_ranks_them_as_the_full_evaluation_does(
    trained_ws: Workspace,
) -> None:
    from seqrec.pipeline import evaluate_model

    full = evaluate_model(trained_ws, "popularity", ks=(10,), progress=False, per_user=True)
    part = evaluate_model(
        trained_ws, "popularity", ks=(10,), progress=False, per_user=True, sample_users=50
    )
    assert part["users"] == 50 and part["sampled_from"] == full["users"] == 120
    where = {u: i for i, u in enumerate(full["per_user"]["user_ids"])}
    picked = [where[u] for u in part["per_user"]["user_ids"]]
    assert len(set(picked)) == 50
    assert np.array_equal(part["per_user"]["ranks"], full["per_user"]["ranks"][picked])
    result = invoke(
        "evaluate",
        "popularity",
        "--json",
        "--k",
        "10",
        "--sample-users",
        "50",
        "-p",
        trained_ws.root,
    )
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)
    assert res["sampled_from"] == 120 and res["ndcg@10"] == pytest.approx(part["ndcg@10"])
    # more than there are: every user, no "sampled_from"
    assert "sampled_from" not in evaluate_model(
        trained_ws, "popularity", ks=(10,), progress=False, sample_users=500
    )
    bad = invoke("evaluate", "popularity", "--sample-users", "0", "-p", trained_ws.root)
    assert bad.exit_code == 2 and "--sample-users" in bad.output


def test_evaluation_builds_only_the_split_it_scores_and_gets_the_same_metrics(
    trained_ws: Workspace,
) -> None:
    from seqrec.pipeline import build_data, evaluate_model

    part = build_data(trained_ws, "next-item", None, splits=("test",))
    assert len(part.train) == 0 and len(part.valid) == 0 and len(part.test) == 120
    full = build_data(trained_ws, "next-item", None)
    assert np.array_equal(part.test.items, full.test.items)
    for split in ("test", "valid"):
        own = evaluate_model(trained_ws, "gpt2", ks=(10,), split=split, progress=False, ci=False)
        given = evaluate_model(
            trained_ws, "gpt2", ks=(10,), split=split, progress=False, ci=False, data=full
        )
        assert own["users"] == given["users"] > 0
        for key in ("ndcg@10", "recall@10", "mrr@10"):
            assert own[key] == pytest.approx(given[key], abs=1e-9), (split, key)
