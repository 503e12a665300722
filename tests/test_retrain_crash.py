"""Crash safety and the one-retrain-at-a-time lock, with real processes on both profiles.

`seqrec retrain` runs as a subprocess that SEQREC_KILL_AT kills (SIGKILL) right after it
recorded a step as begun: production must stay as it was, the history must say where it died,
and the next run must complete with exactly one production model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_retrain import _new_events
from test_runs import labelled, production_workspace

from seqrec import model_store
from seqrec.config import Workspace

SEQREC = str(Path(sys.executable).parent / "seqrec")


@pytest.fixture
def prod(profile_ws: Workspace) -> tuple[Workspace, str]:
    """A workspace (each profile) with gpt2 promoted to production, then new events."""
    tag = production_workspace(profile_ws)
    _new_events(profile_ws, n_users=20)
    return profile_ws, tag


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SEQREC_PROJECT", "SEQREC_KILL_AT")}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def _retrain_args(ws: Workspace, *more: str) -> list[str]:
    # min-gain -1: any candidate wins, so a completed run always promotes
    return [SEQREC, "retrain", "-p", str(ws.root), "--epochs", "1", "--min-gain", "-1", *more]


def _retrain(ws: Workspace, *more: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _retrain_args(ws, "--json", *more),
        capture_output=True,
        text=True,
        env=_env(**env),
        timeout=600,
    )


def _assert_one_production(ws: Workspace, tag: str) -> None:
    """The pointer names ``tag`` and it is the only model labelled stage=production."""
    from seqrec.promotion import production_tag

    assert production_tag(ws) == tag
    assert labelled(ws) == [tag]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("step", ["materialize", "train", "evaluate", "promote"])
def test_retrain_killed_at_a_step_keeps_production_and_the_next_run_completes(
    prod: tuple[Workspace, str], step: str
) -> None:
    from seqrec.runs import label_history, list_runs

    ws, before = prod
    models_before = {r["tag"] for r in model_store.list_models(ws.model_store)}
    killed = _retrain(ws, SEQREC_KILL_AT=step)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    _assert_one_production(ws, before)
    [run] = [r for r in list_runs(ws) if r["kind"] == "retrain"]
    assert run["status"] == "crashed" and run["step"] == step and run["decision"] is None
    assert f"died during step {step}" in run["error"]
    assert label_history(ws, run["id"]) == []
    # a candidate exists only once training finished, and then whole (an atomic save)
    added = {r["tag"] for r in model_store.list_models(ws.model_store)} - models_before
    assert len(added) == (1 if step in ("evaluate", "promote") else 0)
    for tag in added:
        assert model_store.load(tag, store=ws.model_store).info["init_from"]

    done = _retrain(ws)
    assert done.returncode == 0, done.stderr[-3000:]
    rep = json.loads(done.stdout.strip().splitlines()[-1])
    assert rep["promoted"] is True and rep["production"] == before
    _assert_one_production(ws, rep["candidate"])
    assert rep["candidate"] not in added  # the crashed run's candidate was not taken
    crashed, completed = sorted(
        (r for r in list_runs(ws) if r["kind"] == "retrain"), key=lambda r: r["id"]
    )
    assert crashed["status"] == "crashed" and crashed["step"] == step
    assert completed["status"] == "succeeded" and completed["decision"] == "promoted"
    [change] = label_history(ws, completed["id"])
    assert (change["old_tag"], change["new_tag"]) == (before, rep["candidate"])
    assert not Path(ws.path("runs") / "retrain" / f"gpt2-run{crashed['id']}").exists()


@pytest.mark.integration
def test_a_second_retrain_exits_75_while_the_lock_is_held_and_waits_with_wait(
    prod: tuple[Workspace, str],
) -> None:
    from seqrec.locking import job_lock
    from seqrec.runs import finish_run, list_runs, start_run

    ws, before = prod
    with job_lock(ws, "retrain"):
        holder = start_run(ws, "retrain", model="gpt2")  # what a running retrain records
        busy = _retrain(ws)
        assert busy.returncode == 75, busy.stderr[-3000:]
        assert f"another retrain holds the lock: run {holder} (host " in busy.stderr
        assert f"pid {os.getpid()}" in busy.stderr and "--wait" in busy.stderr
        assert "Traceback" not in busy.stderr

        waiting = subprocess.Popen(
            _retrain_args(ws, "--json", "--wait", "300"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        assert waiting.stderr is not None
        for line in waiting.stderr:  # it says so before it blocks
            if "waiting for the retrain lock" in line:
                break
        else:
            pytest.fail(f"the second retrain did not wait (exit {waiting.wait()})")
        finish_run(ws, holder, "succeeded")
    out, err = waiting.communicate(timeout=600)
    assert waiting.returncode == 0, err[-3000:]
    rep = json.loads(out.strip().splitlines()[-1])
    assert rep["promoted"] is True and rep["production"] == before
    _assert_one_production(ws, rep["candidate"])
    runs = sorted((r for r in list_runs(ws) if r["kind"] == "retrain"), key=lambda r: r["id"])
    assert [(r["id"], r["status"]) for r in runs] == [
        (holder, "succeeded"),
        (rep["run_id"], "succeeded"),
    ]


def test_the_lock_is_free_again_after_a_job_and_refused_while_held(ws: Workspace) -> None:
    from seqrec.errors import EX_TEMPFAIL, SeqrecError
    from seqrec.locking import job_lock

    busy_error = pytest.raises(SeqrecError, match="another retrain holds the lock")
    with job_lock(ws, "retrain"):
        with busy_error as busy, job_lock(ws, "retrain"):
            pass
        assert busy.value.exit_code == EX_TEMPFAIL
        with job_lock(ws, "other-job"):  # locks are per job name
            pass
    with job_lock(ws, "retrain"):
        pass


def test_a_staging_dir_left_by_a_killed_save_breaks_nothing(ws: Workspace) -> None:
    """A save killed midway leaves only a staging directory outside the model store."""
    from seqrec.features.repo import apply
    from seqrec.pipeline import train_model
    from seqrec.testing import load_synth

    dead = subprocess.Popen(["true"])
    dead.wait()
    import socket

    left = ws.model_store / ".staging" / f"{socket.gethostname()}-pid{dead.pid}-deadbeef"
    (left / "seqrec-gpt2" / "half").mkdir(parents=True)
    (left / "seqrec-gpt2" / "half" / "model.safetensors").write_bytes(b"\0" * 10)
    load_synth(ws, users=30, items=20)
    apply(ws)
    tag = train_model(ws, "popularity", progress=False).tag
    assert [r["tag"] for r in model_store.list_models(ws.model_store)] == [tag]
    assert not left.exists()  # a dead process's staging directory is cleared
    assert model_store.locate("popularity", ws.model_store)[0] == tag  # `latest` written
