"""SIGKILL during `seqrec train`: `--resume` then ends exactly where an uninterrupted run with
the same seed does (weights, metrics, best epoch), and the history shows the killed run as
crashed.

The lstm plugin trains 2 epochs; the kills land in the middle of epoch 2 (after a checkpoint of
epoch 1) and between the two renames that put epoch 2's checkpoint in place.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from invariants import crashed_run_problems, seqrec
from safetensors.torch import load_file

from seqrec import model_store
from seqrec.config import Workspace
from seqrec.training.trainer import CHECKPOINT_DIR, LAST_WEIGHTS, STATE_FILE

EPOCHS = 2


def _train(ws: Workspace, run_dir: Path, *more: str, kill_at: str | None = None) -> dict:
    args = ["train", "-m", "lstm", "--epochs", str(EPOCHS), "--seed", "0", "--json"]
    args += ["-p", str(ws.root), "--run-dir", str(run_dir), *more]
    proc = seqrec(*args, kill_at=kill_at, plugins="lstm")
    return {} if kill_at else json.loads(proc.stdout.strip().splitlines()[-1])


def _weights(tag: str, ws: Workspace) -> dict[str, torch.Tensor]:
    return model_store.load(tag, store=ws.model_store).model.state_dict()


def test_sigkill_during_training_then_resume_equals_an_uninterrupted_run(
    ws: Workspace, outcome: Callable[..., None]
) -> None:
    from seqrec.features.repo import apply
    from seqrec.runs import find_runs
    from seqrec.testing import load_synth

    load_synth(ws, users=80, items=40)
    apply(ws)
    clean_dir = ws.root / "run-clean"
    clean = _train(ws, clean_dir)
    state = torch.load(clean_dir / CHECKPOINT_DIR / STATE_FILE, weights_only=True)
    steps = state["scheduler"]["last_epoch"] // EPOCHS  # optimizer steps per epoch
    want = _weights(clean["tag"], ws)
    last = load_file(str(clean_dir / CHECKPOINT_DIR / LAST_WEIGHTS))
    cases = [f"train.batch:{steps + steps // 2 + 1}", "checkpoint.swap:1"]
    for i, point in enumerate(cases):
        run_dir = ws.root / f"run-{i}"
        _train(ws, run_dir, kill_at=point)
        [killed] = [r for r in find_runs(ws, kind="train") if r["status"] == "running"]
        resumed = _train(ws, run_dir, "--resume")
        assert resumed["resumed_from"] == (1 if point.startswith("train.") else EPOCHS), point
        for key in ("ndcg@10", "recall@10", "mrr@10", "best_epoch", "epochs_run"):
            assert resumed[key] == clean[key], (point, key)
        got = _weights(resumed["tag"], ws)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), point
        got_last = load_file(str(run_dir / CHECKPOINT_DIR / LAST_WEIGHTS))
        assert all(torch.equal(got_last[k], last[k]) for k in last), point
        assert crashed_run_problems(ws, killed["id"], "train") == []
    outcome(
        "SIGKILL during training, then --resume",
        "process killed",
        cases=len(cases),
        result="killed mid-epoch 2 and mid-checkpoint swap; resumed weights and metrics "
        "equal to an uninterrupted run's (same seed); killed runs shown crashed",
        data_lost="none",
    )
