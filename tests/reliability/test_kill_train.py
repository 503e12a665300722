"""SIGKILL during `seqrec train`: `--resume` then ends exactly where an uninterrupted run with
the same seed does (weights, metrics, best epoch), and the history shows the killed run as
crashed.

The lstm plugin trains 2 epochs; the kill lands in the middle of epoch 2, after the checkpoint
of epoch 1.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from invariants import crashed_run_problems, seqrec, weights_problems
from safetensors.torch import load_file
from tiny import STEPS_PER_EPOCH, train_tiny

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
    assert weights_problems(_weights(resumed["tag"], ws), want, "the model's weights") == []
    got_last = load_file(str(run_dir / CHECKPOINT_DIR / LAST_WEIGHTS))
    assert weights_problems(got_last, last, "the last checkpoint's weights") == []
    assert crashed_run_problems(ws, killed["id"], "train") == []
    outcome(
        "SIGKILL during training, then --resume",
        "process killed",
        cases=1,
        result="killed mid-epoch 2; resumed weights and metrics equal to an uninterrupted "
        "run's (same seed); the killed run shown crashed",
        data_lost="none",
    )


class Killed(Exception):
    """A kill, in this process: raised at a kill point."""


def test_the_weights_check_catches_a_resume_that_reshuffles_from_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcome: Callable[..., None]
) -> None:
    """A checkpoint that does not keep the shuffling generator's state: the resumed epoch sees
    the batches in epoch 1's order, and ends with other weights. (A tiny model in this
    process, killed by an exception at its first step of epoch 2.)"""
    from seqrec.training import trainer

    class FreshShuffle(trainer.Checkpointer):
        def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            weights, state = super().load()
            fresh = torch.Generator().manual_seed(3)  # the run's seed: epoch 1's order again
            return weights, {**state, "gen_rng": fresh.get_state()}

    def killed_at(n: int) -> Callable[[str], None]:
        hits = Counter[str]()

        def kill_point(name: str) -> None:
            hits[name] += 1
            if name == "train.batch" and hits[name] == n:
                raise Killed(name)

        return kill_point

    def last(run_dir: Path) -> dict[str, torch.Tensor]:  # the best weights may be epoch 1's
        return load_file(str(run_dir / CHECKPOINT_DIR / LAST_WEIGHTS))

    train_tiny(tmp_path / "clean")
    want = last(tmp_path / "clean")
    for case in ("real", "broken"):
        run_dir = tmp_path / case
        with monkeypatch.context() as m:
            m.setattr(trainer, "kill_point", killed_at(STEPS_PER_EPOCH + 1))
            with pytest.raises(Killed):
                train_tiny(run_dir)
        with monkeypatch.context() as m:
            if case == "broken":
                m.setattr(trainer, "Checkpointer", FreshShuffle)
            train_tiny(run_dir, resume=True)
        problems = weights_problems(last(run_dir), want, "the last checkpoint's weights")
        if case == "real":
            assert problems == []
    assert len(problems) == 1 and "tensors differ" in problems[0], problems
    outcome(
        "broken variant: resume that does not restore the data order",
        "process killed",
        cases=1,
        result=f"the weights check catches it ({problems[0]})",
        data_lost="none",
    )
