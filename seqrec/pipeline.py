"""The jobs users run, as functions: train a model and store it; evaluate a stored model.

The CLI, the quickstart and the tests call these; they own no logic of their own.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from seqrec.config import Workspace
from seqrec.data.schema import make_engine
from seqrec.evaluation.metrics import ranking_metrics
from seqrec.features.sql import event_positions
from seqrec.models import ModelContext, get_spec
from seqrec.training.data import NextItemData, SequenceSet, build_next_item_data
from seqrec.training.trainer import TrainSettings, pick_device, rank_targets, train


def settings_from(ws: Workspace, **overrides: Any) -> TrainSettings:
    base = ws.config.train.model_dump()
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainSettings(**base)


@dataclass
class TrainOutcome:
    tag: str
    model: str
    valid: dict[str, float]
    best_epoch: int
    epochs_run: int
    seconds: float
    seconds_per_epoch: float
    data: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_model(
    ws: Workspace,
    model_name: str,
    *,
    epochs: int | None = None,
    seed: int | None = None,
    params: dict[str, Any] | None = None,
    progress: bool = True,
    data: NextItemData | None = None,
) -> TrainOutcome:
    """Build the leave-one-out data, train ``model_name``, store it; returns the tag."""
    from seqrec import model_store

    engine = make_engine(ws.events_url)
    spec = get_spec(model_name)
    settings = settings_from(ws, epochs=epochs, seed=seed)
    data = data or build_next_item_data(ws, engine)
    hyper = {**ws.config.hyperparams.get(model_name, {}), **(params or {})}
    torch.manual_seed(settings.seed)
    ctx = ModelContext(
        n_items=data.n_items, n_event_types=data.n_event_types, max_len=data.max_len, params=hyper
    )
    model = spec.make(ctx)
    log_dir = ws.path("logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"train-{model_name}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    result = train(model, data, settings, progress=progress, log_path=log_path)
    targets = data.train.next_item_targets()
    popularity = np.bincount(targets[targets > 0], minlength=data.n_items).astype(np.float64)
    metrics = {"valid": result.valid, "history": result.history}
    tag = model_store.save(
        model,
        engine=engine,
        plugin=spec.plugin,
        task="next-item",
        feature_service=ws.config.features.feature_service,
        metrics=metrics,
        popularity=popularity,
        train_info={
            "settings": asdict(settings),
            "params": model.ctx.params,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "seconds": result.seconds,
            "seconds_per_epoch": result.seconds_per_epoch,
            "device": result.device,
            "data": data.summary(),
        },
    )
    return TrainOutcome(
        tag=tag,
        model=model_name,
        valid=result.valid,
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        seconds=result.seconds,
        seconds_per_epoch=result.seconds_per_epoch,
        data=data.summary(),
    )


def seen_items_mask(ws: Workspace, data: SequenceSet, n_items: int, split_offset: int) -> Any:
    """A function giving, for example indices, [b, n_items] bool of items the user saw before.

    ``split_offset`` is how many events before the user's last one the target is (0 = test).
    """
    engine = make_engine(ws.events_url)
    pos = event_positions(engine).sort_values(["user_id", "pos"])
    history: dict[str, np.ndarray] = {
        u: g["item_idx"].to_numpy() for u, g in pos.groupby("user_id", sort=False)
    }

    def mask(idx: np.ndarray) -> torch.Tensor:
        out = torch.zeros((len(idx), n_items), dtype=torch.bool)
        for row, i in enumerate(idx):
            seen = history.get(data.user_ids[i])
            if seen is None:
                continue
            upto = len(seen) - 1 - split_offset
            out[row, torch.from_numpy(seen[:upto])] = True
        return out

    return mask


def evaluate_model(
    ws: Workspace,
    ref: str,
    *,
    ks: tuple[int, ...] = (10, 20),
    exclude_seen: bool = False,
    split: str = "test",
    progress: bool = True,
    data: NextItemData | None = None,
) -> dict[str, Any]:
    """Full-ranking metrics of a stored model on the leave-one-out test (or valid) targets."""
    from seqrec import model_store

    device = pick_device(ws.config.train.device)
    stored = model_store.load(ref, device=device)
    data = data or build_next_item_data(ws)
    examples = data.test if split == "test" else data.valid
    exclude = (
        seen_items_mask(ws, examples, stored.model.ctx.n_items, 0 if split == "test" else 1)
        if exclude_seen
        else None
    )
    n_model = stored.model.ctx.n_items
    if data.n_items > n_model:
        # items new since training cannot be scored; clamp them out of the inputs
        examples = _clip_vocab(examples, n_model)
    t0 = time.perf_counter()
    ranks = rank_targets(
        stored.model,
        examples,
        device=device,
        batch_size=ws.config.train.eval_batch_size,
        exclude=exclude,
        progress=progress,
    )
    out: dict[str, Any] = ranking_metrics(ranks, ks)
    out.update(
        {
            "users": len(examples),
            "tag": stored.tag,
            "split": split,
            "exclude_seen": exclude_seen,
            "seconds": round(time.perf_counter() - t0, 3),
        }
    )
    return out


def _clip_vocab(s: SequenceSet, n_items: int) -> SequenceSet:
    items = np.where(s.items < n_items, s.items, 0)
    labels = np.where(s.labels < n_items, s.labels, 0)
    keep = labels > 0
    return SequenceSet(s.user_ids[keep], items[keep], s.types[keep], s.times[keep], labels[keep])
