"""The one shared trainer: every plugin's model trains and is evaluated here.

AdamW with linear warmup and linear decay, gradient clipping, early stopping on validation
NDCG@10 (the best epoch's weights are kept), seeded, device auto-selection (cuda, mps, cpu) with
bf16/fp16 autocast on cuda, batches sliced from pre-built tensors, a progress bar with loss and
throughput, and a JSONL log of every epoch.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from seqrec.evaluation.metrics import mask_scores, ranking_metrics, target_ranks
from seqrec.models import SeqModel
from seqrec.training.data import NextItemData, SequenceSet, iter_batches


@dataclass
class TrainSettings:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 5e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    grad_clip: float = 1.0
    patience: int = 5
    seed: int = 42
    device: str = "auto"
    num_threads: int = 0
    eval_batch_size: int = 512
    metric: str = "ndcg@10"


@dataclass
class TrainResult:
    best_epoch: int
    epochs_run: int
    valid: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    seconds_per_epoch: float = 0.0
    device: str = "cpu"


def pick_device(pref: str = "auto") -> torch.device:
    """cuda, then mps, then cpu (or the one asked for)."""
    if pref != "auto":
        return torch.device(pref)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


@torch.no_grad()
def rank_targets(
    model: SeqModel,
    data: SequenceSet,
    *,
    device: torch.device,
    batch_size: int = 512,
    exclude: Callable[[np.ndarray], torch.Tensor] | None = None,
    progress: bool = False,
    desc: str = "evaluate",
) -> np.ndarray:
    """0-based full-catalogue rank of every example's label."""
    model.eval()
    tensors = data.tensors(with_targets=False)
    ranks = []
    offset = 0
    for batch in tqdm(
        list(iter_batches(tensors, batch_size)), desc=desc, disable=not progress, leave=False
    ):
        n = len(batch.items)
        with autocast_for(device):
            scores = model.score(batch.to(device))
        mask = exclude(np.arange(offset, offset + n)).to(device) if exclude else None
        scores = mask_scores(scores, mask)
        assert batch.labels is not None
        ranks.append(target_ranks(scores, batch.labels.to(device)).cpu().numpy())
        offset += n
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)


def _lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


def train(
    model: SeqModel,
    data: NextItemData,
    settings: TrainSettings,
    *,
    progress: bool = True,
    log_path: Path | None = None,
) -> TrainResult:
    """Train ``model`` on ``data.train``, early-stopping on ``data.valid``; best weights kept."""
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    gen = seed_everything(settings.seed)
    device = pick_device(settings.device)
    model.to(device)
    train_t = data.train.tensors(with_targets=True)
    model.fit_statistics(train_t["items"], train_t["targets"])
    log = log_path.open("a") if log_path else None
    t_start = time.perf_counter()
    history: list[dict[str, Any]] = []

    def validate() -> dict[str, float]:
        ranks = rank_targets(model, data.valid, device=device, batch_size=settings.eval_batch_size)
        return ranking_metrics(ranks, (10, 20))

    if not model.trainable:
        valid = validate()
        history.append({"epoch": 0, **valid})
        return TrainResult(0, 0, valid, history, time.perf_counter() - t_start, 0.0, str(device))

    steps_per_epoch = math.ceil(len(data.train) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": settings.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=settings.lr,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(total, int(total * settings.warmup_ratio))
    )
    best_score, best_epoch, best_state, best_valid = -1.0, 0, None, {}
    bad_epochs = 0
    epoch_seconds = []
    epoch = 0
    for epoch in range(1, settings.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        total_loss, n_batches, n_seen = 0.0, 0, 0
        bar = tqdm(
            iter_batches(train_t, settings.batch_size, shuffle=True, generator=gen),
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{settings.epochs}",
            disable=not progress,
            leave=False,
            unit="batch",
        )
        for batch in bar:
            batch = batch.to(device)
            with autocast_for(device):
                loss = model.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            opt.step()
            sched.step()
            total_loss += float(loss.detach())
            n_batches += 1
            n_seen += len(batch.items)
            if n_batches % 10 == 0:
                elapsed = time.perf_counter() - t0
                bar.set_postfix(
                    loss=f"{total_loss / n_batches:.4f}", seq_s=f"{n_seen / elapsed:.0f}"
                )
        train_secs = time.perf_counter() - t0
        epoch_seconds.append(train_secs)
        valid = validate()
        record = {
            "epoch": epoch,
            "loss": total_loss / max(1, n_batches),
            "train_seconds": round(train_secs, 3),
            "lr": sched.get_last_lr()[0],
            **{f"valid_{k}": v for k, v in valid.items()},
        }
        history.append(record)
        if log:
            log.write(json.dumps(record) + "\n")
            log.flush()
        if progress:
            tqdm.write(
                f"epoch {epoch}: loss {record['loss']:.4f}  valid {settings.metric} "
                f"{valid[settings.metric]:.4f}  ({train_secs:.1f}s)"
            )
        if valid[settings.metric] > best_score:
            best_score, best_epoch, best_valid = valid[settings.metric], epoch, valid
            best_state = copy.deepcopy(model.state_dict())
            bad_epochs = 0
        else:
            bad_epochs += 1
            if bad_epochs >= settings.patience:
                break
    if log:
        log.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    secs = time.perf_counter() - t_start
    return TrainResult(
        best_epoch=best_epoch,
        epochs_run=epoch,
        valid=best_valid,
        history=history,
        seconds=round(secs, 3),
        seconds_per_epoch=round(float(np.mean(epoch_seconds)), 3) if epoch_seconds else 0.0,
        device=str(device),
    )
