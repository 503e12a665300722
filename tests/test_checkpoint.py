"""Checkpoints: one set of files per epoch, put in place atomically, loaded strictly.

A kill is simulated by raising from the file operation it would interrupt: nothing after it
runs, as after a SIGKILL (tests/test_training.py kills a real training process too).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from seqrec.errors import SeqrecError
from seqrec.models import Batch, ModelContext, SeqModel
from seqrec.training.trainer import (
    AVERAGED_WEIGHTS,
    BEST_WEIGHTS,
    CHECKPOINT_DIR,
    LAST_WEIGHTS,
    LOG_FILE,
    REPLACED_DIR,
    WRITING_DIR,
    TrainSettings,
    train,
)

EPOCHS = 3


class TiedBag(SeqModel):
    """A tiny next-item model whose output layer is tied to its item embeddings, with dropout
    (so resuming needs the RNG state too)."""

    def __init__(self, ctx: ModelContext):
        super().__init__(ctx)
        self.emb = nn.Embedding(ctx.n_items, 8, padding_idx=0)
        self.mix = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(8, ctx.n_items, bias=False)
        self.out.weight = self.emb.weight

    def _hidden(self, items: Tensor) -> Tensor:
        return self.drop(torch.tanh(self.mix(self.emb(items))))

    def next_item_loss(self, batch: Batch) -> Tensor:
        assert batch.targets is not None
        sel = batch.targets > 0
        logits = self.out(self._hidden(batch.items)[sel])
        return nn.functional.cross_entropy(logits, batch.targets[sel])

    def next_item_scores(self, batch: Batch) -> Tensor:
        return self.out(self._hidden(batch.items)[:, -1])


def _data() -> dict[str, Tensor]:
    """48 sequences of 6 items; item i is followed by i + 1."""
    items = torch.randint(1, 20, (48, 6), generator=torch.Generator().manual_seed(0))
    targets = items % 19 + 1
    return {
        "items": items,
        "types": torch.ones_like(items),
        "times": torch.zeros_like(items),
        "targets": targets,
        "labels": targets[:, -1],
    }


def _run(run_dir: Path, resume: bool = False, ema_decay: float = 0.0) -> dict[str, Tensor]:
    """Train a fresh TiedBag for EPOCHS epochs in ``run_dir``; its final (best) weights."""
    torch.manual_seed(0)
    model = TiedBag(ModelContext(n_items=20, n_event_types=2, max_len=6))
    return _train(model, run_dir, resume, ema_decay, EPOCHS)


def _train(
    model: TiedBag, run_dir: Path | None, resume: bool, ema_decay: float, epochs: int
) -> dict[str, Tensor]:
    tensors = _data()
    probe = Batch(
        items=tensors["items"][:8], types=tensors["types"][:8], times=tensors["times"][:8]
    )

    def validate(m: SeqModel, device: torch.device) -> dict[str, float]:
        with torch.no_grad():  # changes every epoch: the best epoch is not always the last
            return {"ndcg@10": float(m.score(probe)[:, 1].sin().sum())}

    settings = TrainSettings(
        epochs=epochs, batch_size=16, patience=10, seed=3, device="cpu", ema_decay=ema_decay
    )
    train(model, tensors, validate, settings, progress=False, run_dir=run_dir, resume=resume)
    assert model.out.weight is model.emb.weight  # still tied after loading
    return {k: v.clone() for k, v in model.state_dict().items()}


class Killed(BaseException):
    """The process dies here."""


@pytest.fixture
def file_ops(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int | None], list[str]]]:
    """Count the checkpoint's file operations (writes, renames, removals); ``kill_at(n)``
    makes the n-th one (1-based) never happen, and nothing after it."""
    ops: list[str] = []
    state: dict[str, int | None] = {"kill": None}

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def op(*args: Any, **kwargs: Any) -> Any:
            # torch.save(obj, path): the directory written into; else the path renamed/removed
            target = Path(args[1]).parent if name == "torch.save" else Path(args[0])
            if target.name in (CHECKPOINT_DIR, WRITING_DIR, REPLACED_DIR):
                ops.append(f"{name} {target.name}")
                if state["kill"] == len(ops):
                    raise Killed(ops[-1])
            return fn(*args, **kwargs)

        return op

    monkeypatch.setattr(os, "replace", wrap("replace", os.replace))
    monkeypatch.setattr(shutil, "rmtree", wrap("rmtree", shutil.rmtree))
    monkeypatch.setattr(torch, "save", wrap("torch.save", torch.save))

    def kill_at(n: int | None) -> list[str]:
        ops.clear()
        state["kill"] = n
        return ops

    yield kill_at


@pytest.mark.parametrize("ema_decay", [0.0, 0.9], ids=["raw-weights", "weight-average"])
def test_a_kill_at_any_step_of_a_checkpoint_resumes_to_the_uninterrupted_result(
    tmp_path: Path, file_ops: Callable[[int | None], list[str]], ema_decay: float
) -> None:
    ops = file_ops(None)
    want = _run(tmp_path / "straight", ema_decay=ema_decay)
    steps = list(ops)
    # first epoch: write, rename into place; later ones also rename the old one away, remove it
    assert steps[:2] == ["torch.save checkpoint.tmp", "replace checkpoint.tmp"]
    assert steps[2:6] == [
        "torch.save checkpoint.tmp",
        "replace checkpoint",
        "replace checkpoint.tmp",
        "rmtree checkpoint.old",
    ]
    for n in range(1, len(steps) + 1):
        run_dir = tmp_path / f"killed-{n}"
        file_ops(n)
        with pytest.raises(Killed):
            _run(run_dir, ema_decay=ema_decay)
        file_ops(None)
        got = _run(run_dir, resume=True, ema_decay=ema_decay)
        assert got.keys() == want.keys()
        for k in want:
            assert torch.equal(got[k], want[k]), f"killed at {steps[n - 1]} (step {n}): {k}"
        assert not (run_dir / WRITING_DIR).exists() and not (run_dir / REPLACED_DIR).exists()
        log = [json.loads(x)["epoch"] for x in (run_dir / LOG_FILE).read_text().splitlines()]
        assert log == list(range(1, EPOCHS + 1))


def test_a_half_written_checkpoint_is_ignored(tmp_path: Path) -> None:
    want = _run(tmp_path / "straight")
    run_dir = tmp_path / "run"
    _run(run_dir)
    (run_dir / WRITING_DIR).mkdir()
    (run_dir / WRITING_DIR / LAST_WEIGHTS).write_bytes(b"half")
    got = _run(run_dir, resume=True)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not (run_dir / WRITING_DIR).exists()


def test_a_checkpoint_with_a_missing_or_unexpected_weight_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _run(run_dir)
    path = run_dir / CHECKPOINT_DIR / LAST_WEIGHTS
    weights = load_file(str(path))
    assert "out.weight" not in weights  # tied: stored once, as emb.weight
    save_file({k: v for k, v in weights.items() if k != "mix.bias"}, str(path))
    with pytest.raises(SeqrecError, match=r"does not fit .*missing: mix\.bias"):
        _run(run_dir, resume=True)
    save_file({**weights, "extra.weight": torch.zeros(2)}, str(path))
    with pytest.raises(SeqrecError, match=r"unexpected: extra\.weight"):
        _run(run_dir, resume=True)
    save_file({**weights, "mix.bias": torch.zeros(3)}, str(path))
    with pytest.raises(SeqrecError, match=r"shape differs: mix\.bias"):
        _run(run_dir, resume=True)


class Recording(TiedBag):
    """TiedBag that records its weights each time the trainer asks for a loss (the weights
    after the previous optimizer step)."""

    def __init__(self, ctx: ModelContext):
        super().__init__(ctx)
        self.seen: list[dict[str, Tensor]] = []

    def next_item_loss(self, batch: Batch) -> Tensor:
        self.seen.append({k: v.detach().clone() for k, v in self.state_dict().items()})
        return super().next_item_loss(batch)


def test_with_ema_decay_the_kept_weights_are_the_running_mean_then_the_moving_average(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model = Recording(ModelContext(n_items=20, n_event_types=2, max_len=6))
    decay = 0.6
    got = _train(model, tmp_path / "run", resume=False, ema_decay=decay, epochs=1)
    # 48 sequences in batches of 16: 3 steps; the weights after steps 1 and 2 are what the
    # next loss saw, after step 3 the checkpoint's last weights
    assert len(model.seen) == 3
    last = load_file(str(tmp_path / "run" / CHECKPOINT_DIR / LAST_WEIGHTS))
    w1, w2, w3 = model.seen[1], model.seen[2], {**model.seen[0], **last}
    for k in ("emb.weight", "mix.weight", "mix.bias"):
        # the mean of steps 1-2 (1/2 < decay), then the moving average (2/3 > decay)
        want = decay * (0.5 * w1[k] + 0.5 * w2[k]) + (1 - decay) * w3[k]
        assert torch.allclose(got[k], want, atol=1e-6), k
        assert not torch.allclose(got[k], w3[k], atol=1e-4), f"{k} is the last step's"
    best = load_file(str(tmp_path / "run" / CHECKPOINT_DIR / BEST_WEIGHTS))
    averaged = load_file(str(tmp_path / "run" / CHECKPOINT_DIR / AVERAGED_WEIGHTS))
    assert all(torch.equal(best[k], averaged[k]) for k in averaged)


def test_with_ema_decay_a_run_without_checkpoints_keeps_the_same_average(
    tmp_path: Path,
) -> None:
    want = _run(tmp_path / "run", ema_decay=0.9)
    torch.manual_seed(0)
    model = TiedBag(ModelContext(n_items=20, n_event_types=2, max_len=6))
    got = _train(model, None, resume=False, ema_decay=0.9, epochs=EPOCHS)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_run_with_a_weight_average_does_not_resume_one_without(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _run(run_dir)
    with pytest.raises(SeqrecError, match="other settings"):
        _run(run_dir, resume=True, ema_decay=0.9)
    _run(run_dir, ema_decay=0.9)
    with pytest.raises(SeqrecError, match="other settings"):
        _run(run_dir, resume=True)
