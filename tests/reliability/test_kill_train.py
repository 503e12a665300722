"""SIGKILL during `seqrec train`: `--resume` then ends exactly where an uninterrupted run with
the same seed does (weights, metrics, best epoch), and the history shows the killed run as
crashed.

The lstm plugin trains 2 epochs; the kill lands in the middle of epoch 2, after the checkpoint
of epoch 1.
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
    from seqrec.pipeline import train_model
    from seqrec.runs import find_runs
    from seqrec.testing import load_synth

    load_synth(ws, users=80, items=40)
    apply(ws)
    clean_dir = ws.root / "run-clean"  # the uninterrupted run, in this process
    out = train_model(ws, "lstm", epochs=EPOCHS, seed=0, run_dir=clean_dir, progress=False)
    clean = {
        **out.valid,
        "tag": out.tag,
        "best_epoch": out.best_epoch,
        "epochs_run": out.epochs_run,
    }
    state = torch.load(clean_dir / CHECKPOINT_DIR / STATE_FILE, weights_only=True)
    steps = state["scheduler"]["last_epoch"] // EPOCHS  # optimizer steps per epoch
    want = _weights(clean["tag"], ws)
    last = load_file(str(clean_dir / CHECKPOINT_DIR / LAST_WEIGHTS))
    # mid-epoch 2, after epoch 1's checkpoint (kills inside a checkpoint's writes and renames:
    # tests/test_checkpoint.py, in process)
    point = f"train.batch:{steps + steps // 2 + 1}"
    run_dir = ws.root / "run-killed"
    _train(ws, run_dir, kill_at=point)
    [killed] = [r for r in find_runs(ws, kind="train") if r["status"] == "running"]
    resumed = _train(ws, run_dir, "--resume")
    assert resumed["resumed_from"] == 1
    for key in ("ndcg@10", "recall@10", "mrr@10", "best_epoch", "epochs_run"):
        assert resumed[key] == clean[key], key
    got = _weights(resumed["tag"], ws)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    got_last = load_file(str(run_dir / CHECKPOINT_DIR / LAST_WEIGHTS))
    assert all(torch.equal(got_last[k], last[k]) for k in last)
    assert crashed_run_problems(ws, killed["id"], "train") == []
    outcome(
        "SIGKILL during training, then --resume",
        "process killed",
        cases=1,
        result="killed mid-epoch 2; resumed weights and metrics equal to an uninterrupted "
        "run's (same seed); the killed run shown crashed",
        data_lost="none",
    )
