"""Run history, the production pointer and their commands, on both profiles: `seqrec train` and
`seqrec retrain` record runs, `seqrec runs` shows them, promotion moves one pointer."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from test_retrain import _new_events

from seqrec import model_store
from seqrec.config import Workspace
from seqrec.testing import load_synth

PROD = "stage=production"


def production_workspace(ws: Workspace) -> str:
    """Synthetic events online, gpt2 trained (1 epoch) and promoted; returns its tag."""
    from seqrec.features.materialize import materialize
    from seqrec.features.repo import apply
    from seqrec.pipeline import train_model
    from seqrec.promotion import promote

    load_synth(ws, users=60, items=40)
    apply(ws)
    materialize(ws)
    tag = train_model(ws, "gpt2", epochs=1, seed=0, progress=False).tag
    promote(ws, tag, "stage=production", reason="test setup")
    return tag


def labelled(ws: Workspace, selector: str = "stage=production") -> list[str]:
    """Every stored model carrying the BentoML label ``selector``."""
    key, _, value = selector.partition("=")
    return [
        r["tag"] for r in model_store.list_models(ws.model_store) if r["labels"].get(key) == value
    ]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Invoke the CLI in-process; the environment it sets is undone after the test."""
    from seqrec.cli import build_cli

    for name in ("SEQREC_PROJECT", "BENTOML_HOME"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
        if not os.environ[name]:
            monkeypatch.delenv(name)

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(build_cli(), [str(a) for a in args])

    yield invoke


def test_train_and_retrain_commands_record_runs_that_runs_shows(
    profile_ws: Workspace, cli: Any
) -> None:
    from seqrec.features.materialize import materialize
    from seqrec.features.repo import apply
    from seqrec.promotion import production_tag

    ws = profile_ws
    load_synth(ws, users=60, items=40)
    apply(ws)
    materialize(ws)
    p = ("--project", ws.root)
    res = cli("train", "--model", "gpt2", "--epochs", "1", "--seed", "0", "--json", *p)
    assert res.exit_code == 0, res.output
    first = json.loads(res.output)["tag"]
    res = cli("label", first, "stage=production", *p)
    assert res.exit_code == 0, res.output
    assert production_tag(ws) == first and labelled(ws) == [first]

    _new_events(ws, n_users=20)
    res = cli("retrain", "--epochs", "1", "--min-gain", "-1", "--json", *p)
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["promoted"] is True and rep["production"] == first
    assert production_tag(ws) == rep["candidate"] and labelled(ws) == [rep["candidate"]]

    res = cli("runs", "--json", *p)
    assert res.exit_code == 0, res.output
    retrain_run, train_run = json.loads(res.output)  # newest first
    assert train_run["kind"] == "train" and train_run["status"] == "succeeded"
    assert train_run["step"] == "done" and train_run["decision"] is None
    assert train_run["model"] == "gpt2" and train_run["candidate_tag"] == first
    assert train_run["seed"] == 0 and train_run["config"]["settings"]["epochs"] == 1
    for run in (train_run, retrain_run):
        assert run["host"] and run["pid"] and run["finished_at"] >= run["started_at"]
        assert run["events_seen"] > 0 and run["users_seen"] == 60
        assert run["train_cutoff"] < run["eval_cutoff"]
        assert run["duration_s"] >= 0 and run["peak_rss_mb"] > 10
        assert run["task"] == "next-item" and run["preset"]

    assert retrain_run["kind"] == "retrain" and retrain_run["id"] == rep["run_id"]
    assert retrain_run["status"] == "succeeded" and retrain_run["step"] == "done"
    assert retrain_run["decision"] == "promoted" and "better" in retrain_run["reason"]
    assert retrain_run["production_tag"] == first
    assert retrain_run["candidate_tag"] == rep["candidate"]
    cand = model_store.load(rep["candidate"], store=ws.model_store).model.ctx.n_items
    assert retrain_run["vocab_before"] == 40 and retrain_run["vocab_after"] == cand - 1 > 40
    assert retrain_run["metric"] == "ndcg@10"
    assert retrain_run["candidate_metrics"]["ndcg@10"] == rep["candidate_score"]
    assert retrain_run["production_metrics"]["users"] > 0
    assert retrain_run["details"]["candidate"] == rep["candidate"]

    res = cli("runs", "show", retrain_run["id"], "--json", *p)
    assert res.exit_code == 0, res.output
    shown = json.loads(res.output)
    assert shown["id"] == retrain_run["id"] and shown["decision"] == "promoted"
    [change] = shown["label_changes"]
    assert change["selector"] == "stage=production"
    assert (change["old_tag"], change["new_tag"]) == (first, rep["candidate"])

    table = cli("runs", *p)
    assert table.exit_code == 0 and "retrain" in table.output and "promoted" in table.output
    text = cli("runs", "show", train_run["id"], *p)
    assert text.exit_code == 0 and first in text.output


def test_runs_show_of_an_unknown_id_is_a_clear_error_with_exit_2(ws: Workspace, cli: Any) -> None:
    res = cli("runs", "show", "999", "--project", ws.root)
    assert res.exit_code == 2
    assert "no run with id 999" in res.output and "seqrec runs" in res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)


def test_retrain_user_errors_exit_2(ws: Workspace, cli: Any) -> None:
    res = cli("retrain", "--production", "production", "--project", ws.root)
    assert res.exit_code == 2 and "bad production label" in res.output


def test_a_run_whose_process_died_is_shown_as_crashed_at_its_step(ws: Workspace) -> None:
    from seqrec.runs import begin_step, get_run, list_runs, start_run, update_run

    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is gone (and not reused this soon)
    run_id = start_run(ws, "retrain", model="gpt2")
    begin_step(ws, run_id, "evaluate")
    update_run(ws, run_id, pid=dead.pid)
    [row] = list_runs(ws)
    assert row["id"] == run_id and row["status"] == "crashed" and row["step"] == "evaluate"
    assert f"process {dead.pid}" in row["error"] and get_run(ws, run_id)["status"] == "crashed"


def test_production_tag_falls_back_to_labels_until_a_pointer_exists(ws: Workspace) -> None:
    """An older workspace has labels only; once promoted, the pointer is the truth."""
    from seqrec.commands.serve import set_labels
    from seqrec.features.repo import apply
    from seqrec.pipeline import train_model
    from seqrec.promotion import production_tag, promote
    from seqrec.recommend import resolve_model_ref
    from seqrec.runs import label_history

    load_synth(ws, users=30, items=20)
    apply(ws)
    gpt2, pop = (train_model(ws, "popularity", progress=False).tag for _ in range(2))
    set_labels(ws, gpt2, {"team": "a"})
    assert production_tag(ws, "team=a") == gpt2  # no pointer row: the labelled model
    assert resolve_model_ref("team=a", ws.model_store, ws=ws) == gpt2

    old = promote(ws, pop, "team=a", reason="test")
    assert old == gpt2 and production_tag(ws, "team=a") == pop
    assert labelled(ws, "team=a") == [pop]  # mirrored: the old model lost the label
    set_labels(ws, gpt2, {"team": "a"})  # a stale label (as a crash before the mirror leaves)
    assert production_tag(ws, "team=a") == pop  # the pointer wins
    assert resolve_model_ref("team=a", ws.model_store, ws=ws) == pop
    change = label_history(ws)[-1]
    assert (change["selector"], change["old_tag"], change["new_tag"]) == ("team=a", gpt2, pop)


def test_label_command_promotes_through_the_pointer_and_withdraws_it(
    ws: Workspace, cli: Any
) -> None:
    from seqrec.errors import SeqrecError
    from seqrec.features.repo import apply
    from seqrec.pipeline import train_model
    from seqrec.promotion import production_tag
    from seqrec.recommend import resolve_model_ref
    from seqrec.runs import label_history

    load_synth(ws, users=30, items=20)
    apply(ws)
    a, b = (train_model(ws, "popularity", progress=False).tag for _ in range(2))
    for tag in (a, b):
        res = cli("label", tag, "stage=production", "team=x", "--project", ws.root)
        assert res.exit_code == 0, res.output
    assert production_tag(ws) == b and labelled(ws) == [b]
    assert labelled(ws, "stage=archived") == [a] and len(labelled(ws, "team=x")) == 2
    res = cli("label", b, "stage=staging", "--project", ws.root)  # production withdrawn
    assert res.exit_code == 0, res.output
    assert production_tag(ws) is None and labelled(ws) == []
    with pytest.raises(SeqrecError, match="withdrawn"):
        resolve_model_ref("stage=production", ws.model_store, ws=ws)
    moves = [(c["old_tag"], c["new_tag"]) for c in label_history(ws) if c["selector"] == PROD]
    assert moves == [(None, a), (a, b), (b, None)]
    assert ("stage=staging", b) in {(c["selector"], c["new_tag"]) for c in label_history(ws)}


def test_retrain_exits_1_when_the_events_database_is_down(tmp_path: Path) -> None:
    """A store outage is transient (exit 1: a scheduler retries), not a configuration error."""
    import sys

    from seqrec.testing import make_workspace

    ws = make_workspace(
        tmp_path / "ws",
        '[events]\nurl = "postgresql+psycopg://postgres@127.0.0.1:1/test"\n',
        "postgres-redis",
    )
    env = {k: v for k, v in os.environ.items() if k not in ("SEQREC_PG_URL", "SEQREC_EVENTS_URL")}
    proc = subprocess.run(
        [sys.executable, "-m", "seqrec.cli", "retrain", "--project", str(ws.root), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "events database unreachable" in proc.stderr
    assert "Traceback" not in proc.stderr
