"""The jobs users run, as functions: train a model and store it; evaluate a stored model.

The CLI, the quickstart, the benchmarks and the tests call these; the CLI owns no logic.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec.config import Workspace
from seqrec.evaluation.classification import best_threshold, classification_metrics
from seqrec.evaluation.metrics import ranking_metrics
from seqrec.evaluation.ranking import rank_next_items, slotted_ranks
from seqrec.evaluation.topk import DEFAULT_CHUNK_ITEMS, pad_indices
from seqrec.features.sql import drop_unknown, event_positions
from seqrec.models import ItemText, ModelContext, ModelSpec, SeqModel, get_spec
from seqrec.text.fusion import wants_item_text
from seqrec.training import distributed
from seqrec.training.data import (
    ClassificationData,
    NextItemData,
    SequenceSet,
    StreamTarget,
    build_classification_data,
    build_next_item_data,
)
from seqrec.training.trainer import TrainSettings, pick_device, predict, train

Data = NextItemData | ClassificationData
#: the streamed training set's file in a run directory ([train] stream = true)
STREAM_FILE = "train.parquet"


@dataclass
class TrainOutcome:
    tag: str
    model: str
    task: str
    valid: dict[str, Any]
    best_epoch: int
    epochs_run: int
    seconds: float
    seconds_per_epoch: float
    run_dir: str | None = None
    resumed_from: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    preset: str = "default"
    #: trainer settings of the preset that seqrec.toml's [train] section overrode
    toml_overrides: list[str] = field(default_factory=list)
    #: the model's hyperparameters and the trainer settings it was trained with
    params: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    #: what the training data covered (:func:`data_stats`)
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_data(
    ws: Workspace,
    task: str,
    label: str | None,
    engine: Any = None,
    stream: StreamTarget | None = None,
    splits: tuple[str, ...] | None = None,
) -> Data:
    """The training data for ``task`` (``label`` is required for classification); with
    ``stream``, the training set is written to Parquet and streamed back. ``splits``
    (next-item): build only these, the others empty."""
    from seqrec.errors import SeqrecError

    if task == "classify":
        if not label:
            raise SeqrecError(
                "--task classify needs --label",
                hint="e.g. purchase-within:7d, churn:30d, next-event-type",
            )
        return build_classification_data(ws, label, engine, stream=stream)
    return build_next_item_data(ws, engine, stream=stream, splits=splits)


def stream_target(ws: Workspace, run_dir: Path) -> StreamTarget | None:
    """Where ``[train] stream = true`` puts the training set: ``train.parquet`` in the run
    directory, written by rank 0 (None when streaming is off)."""
    cfg = ws.config.train
    if not cfg.stream:
        return None
    return StreamTarget(
        run_dir / STREAM_FILE, cfg.stream_row_group, cfg.shuffle_buffer, distributed.is_main()
    )


def data_stats(data: Data, engine: Any) -> dict[str, Any]:
    """What ``data`` covers: ``users_seen`` (users in any split), ``events_seen`` (events in
    the database up to the evaluation cutoff), ``train_cutoff`` and ``eval_cutoff`` (the newest
    training and test example times, ISO 8601 UTC, or None)."""
    from datetime import UTC, datetime

    from sqlalchemy import func, select

    from seqrec.data.schema import events

    def newest(s: SequenceSet) -> int | None:
        return int(s.now.max()) if s.now is not None and len(s) else None

    parts = [np.asarray(p.user_ids, dtype=object) for p in (data.train, data.valid, data.test)]
    train_cut, eval_cut = newest(data.train), newest(data.test)
    if data.train_stream:  # one pass over the streamed training set
        stats = data.train_stream.stats()
        parts.append(stats.user_ids)
        train_cut = stats.newest_now
    users = np.unique(np.concatenate(parts))
    query = select(func.count()).select_from(events)
    if eval_cut is not None:
        query = query.where(events.c.ts_ms < (eval_cut + 1) * 1000)
    with engine.connect() as conn:
        n_events = int(conn.execute(query).scalar_one())

    def iso(t: int | None) -> str | None:
        return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()

    return {
        "users_seen": len(users),
        "events_seen": n_events,
        "train_cutoff": iso(train_cut),
        "eval_cutoff": iso(eval_cut),
    }


def validator(
    data: Data,
    settings: TrainSettings,
    chunk_items: int = DEFAULT_CHUNK_ITEMS,
    examples: Callable[[dict[str, float], np.ndarray], None] | None = None,
) -> Any:
    """The per-epoch validation function of the trainer for ``data``; next-item examples are
    ranked ``chunk_items`` items at a time (:mod:`seqrec.evaluation.ranking`). ``examples``,
    when given, is called after each validation with the scores and the per-example outputs
    they were computed from: each target's rank (next-item) or the class probabilities."""

    def validate(model: SeqModel, device: torch.device) -> dict[str, float]:
        batch_size = settings.eval_batch_size
        if isinstance(data, ClassificationData):
            out = predict(model, data.valid, device=device, batch_size=batch_size)
            m = classification_metrics(data.valid.labels, out["probs"])
            scores = {
                k: float(v) for k, v in m.items() if k in ("accuracy", "f1", "roc_auc", "pr_auc")
            }
            per_example = out["probs"]
        else:
            out = rank_next_items(
                model, data.valid, device=device, batch_size=batch_size, chunk_items=chunk_items
            )
            per_example = out.get("ranks", np.zeros(0, dtype=np.int64))
            scores = ranking_metrics(per_example, (10, 20))
        if examples is not None:
            examples(scores, np.asarray(per_example))
        return scores

    return validate


def item_text_for(ws: Workspace, data: Data, engine: Any = None) -> ItemText:
    """The item text matrix a text-aware model of ``data`` is built with: the workspace's
    current embeddings for the vocabulary of ``data``, and which items have training events
    (the others are represented by their text alone)."""
    from seqrec.errors import SeqrecError
    from seqrec.text.features import item_text_matrix

    text = item_text_matrix(ws, n_items=data.n_items, engine=engine)
    if text.encoder is None or not text.mask.any():
        raise SeqrecError(
            "item_text=true needs item text embeddings, and this workspace has none"
            + ("" if text.encoder is None else " for the items of the training data"),
            hint="import item text with `seqrec items import FILE`, then encode it with "
            "`seqrec items embed`",
        )
    return ItemText(text.matrix, trained_items(data))


def trained_items(data: Data) -> np.ndarray:
    """[n_items] bool: the items with events in ``data``'s training split (inputs, or targets
    of next-item data); padding (0) counts as trained. The others are cold-start items."""
    trained = np.zeros(data.n_items, dtype=bool)
    if data.train_stream:
        stats = data.train_stream.stats()
        seen = np.flatnonzero(stats.item_counts)
        if isinstance(data, NextItemData):
            seen = np.concatenate([seen, np.flatnonzero(stats.label_counts)])
        trained[seen[seen < data.n_items]] = True
    trained[np.unique(data.train.items)] = True
    if isinstance(data, NextItemData):
        trained[data.train.labels[data.train.labels < data.n_items]] = True
    trained[0] = True
    return trained


def build_model(
    spec: ModelSpec,
    data: Data,
    task: str,
    params: dict[str, Any],
    seed: int,
    ws: Workspace | None = None,
    item_text: ItemText | None = None,
) -> SeqModel:
    """A fresh model of ``spec`` for ``data`` (class weights set for classification),
    prepared from ``ws`` when given (:meth:`SeqModel.prepare`). A text-aware model
    (``item_text=true``) gets ``item_text``, or the workspace's (:func:`item_text_for`)."""
    torch.manual_seed(seed)
    if item_text is None and ws is not None and wants_item_text({**spec.defaults, **params}):
        item_text = item_text_for(ws, data)
        torch.manual_seed(seed)
    ctx = ModelContext(
        n_items=data.n_items,
        n_event_types=data.n_event_types,
        max_len=data.max_len,
        task=task,
        n_classes=data.n_classes if isinstance(data, ClassificationData) else 0,
        params=params,
        text_dim=0 if item_text is None else int(item_text.matrix.shape[1]),
        item_text=item_text,
    )
    model = spec.make(ctx)
    if isinstance(data, ClassificationData):
        counts = data.train_label_counts().astype(np.float64)
        weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
        model.class_weights = torch.tensor(weights, dtype=torch.float32)
    if ws is not None:
        model.prepare(ws)
    return model


def default_run_dir(ws: Workspace, model: str, task: str, label: str | None, seed: int) -> Path:
    slug = f"{model}-{task}" + (f"-{label.replace(':', '')}" if label else "") + f"-seed{seed}"
    return ws.path("runs") / slug


def train_model(
    ws: Workspace,
    model_name: str,
    *,
    task: str = "next-item",
    label: str | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    params: dict[str, Any] | None = None,
    init_from: Path | None = None,
    resume: bool = False,
    run_dir: Path | None = None,
    progress: bool = True,
    data: Data | None = None,
    overrides: dict[str, Any] | None = None,
    preset: str | None = None,
    extra_info: dict[str, Any] | None = None,
) -> TrainOutcome:
    """Build the data, train ``model_name`` with the shared trainer, store it; returns the tag.

    With no ``params``/``overrides``/``preset`` this trains the model's defaults (its tuned
    preset); see :mod:`seqrec.presets` for what overrides what. ``extra_info`` is stored with
    the model's training info (what a caller such as retraining needs to read back).
    """
    from seqrec import model_store
    from seqrec.models import load_weights
    from seqrec.presets import resolve

    engine = ws.engine
    spec = get_spec(model_name)
    warm_from = init_from
    if init_from is not None and _pretrained_dir(spec, Path(init_from)):
        # a pretrained checkpoint, not a seqrec model: what the model fine-tunes from
        params = {**(params or {}), "checkpoint": str(Path(init_from).resolve())}
        warm_from = None
    resolved = resolve(
        ws,
        spec,
        preset=preset,
        params=params,
        overrides={
            **(overrides or {}),
            **{k: v for k, v in (("epochs", epochs), ("seed", seed)) if v is not None},
        },
    )
    settings = resolved.settings
    if task == "classify":
        settings.metric = "roc_auc"
    from seqrec.data.schema import require_schema
    from seqrec.monitoring.intake import max_event_id

    distributed.init(settings.device)  # under torch's launcher: join the process group
    require_schema(engine)  # an empty workspace: "import events first", not a SQL error
    events_max_id = max_event_id(engine)  # what "events since this model" counts from
    run_dir = run_dir or default_run_dir(ws, model_name, task, label, settings.seed)
    # rank 0, then each node's local rank 0, build (and cache) the features first
    with distributed.main_first():
        data = data or build_data(ws, task, label, engine, stream_target(ws, run_dir))
        model = build_model(spec, data, task, resolved.params, settings.seed, ws)
    if warm_from is not None:
        _init_from(model, warm_from, load_weights)
    result = train(
        model,
        data.train_stream or data.train.tensors(with_targets=task == "next-item"),
        validator(data, settings, ws.config.train.eval_chunk_items),
        settings,
        progress=progress,
        run_dir=run_dir,
        resume=resume,
    )
    metrics: dict[str, Any] = {"valid": result.valid, "history": result.history}
    extra: dict[str, Any] = {}
    if isinstance(data, ClassificationData):
        probs = predict(model, data.valid, device=pick_device(settings.device))["probs"]
        if data.n_classes == 2:
            extra["threshold"] = best_threshold(data.valid.labels, probs[:, 1])
        extra["class_names"] = data.class_names
        extra["label"] = data.label
        popularity = np.zeros(data.n_items)
    elif data.train_stream:
        popularity = data.train_stream.target_counts(data.n_items).astype(np.float64)
    else:
        targets = data.train.next_item_targets()
        popularity = np.bincount(targets[targets > 0], minlength=data.n_items).astype(np.float64)
    # rank 0 writes the model store; the other ranks wait for it and take its tag
    save = model_store.save if distributed.is_main() else _not_saved
    tag = save(
        model,
        engine=engine,
        plugin=spec.plugin,
        task=task,
        feature_service=ws.config.features.feature_service,
        metrics=metrics,
        popularity=popularity,
        store=ws.model_store,
        train_info={
            "settings": asdict(settings),
            "params": model.ctx.params,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "seconds": result.seconds,
            "seconds_per_epoch": result.seconds_per_epoch,
            "device": result.device,
            "data": data.summary(),
            "preset": resolved.preset,
            "preset_source": resolved.source,
            "init_from": str(init_from) if init_from else None,
            "events_max_id": events_max_id,
            **extra,
            **(extra_info or {}),
        },
    )
    tag = distributed.from_main(lambda: tag)
    return TrainOutcome(
        tag=tag,
        model=model_name,
        task=task,
        valid=result.valid,
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        seconds=result.seconds,
        seconds_per_epoch=result.seconds_per_epoch,
        run_dir=str(run_dir),
        resumed_from=result.resumed_from,
        data=data.summary(),
        preset=f"{resolved.preset} ({resolved.source})",
        toml_overrides=sorted(k for k, v in resolved.origin.items() if v == "seqrec.toml [train]"),
        params=dict(model.ctx.params),
        settings=asdict(settings),
        stats=data_stats(data, engine),
    )


def _not_saved(*args: Any, **kwargs: Any) -> str:
    """What a rank other than 0 does instead of saving the model: nothing."""
    return ""


def _pretrained_dir(spec: ModelSpec, directory: Path) -> bool:
    """Whether ``--init-from directory`` names a pretrained checkpoint for ``spec``: a model
    whose defaults have a ``checkpoint`` hyperparameter (it fine-tunes one) and a directory
    that is not a seqrec model."""
    from seqrec.models import CONTEXT_FILE

    return "checkpoint" in spec.defaults and not (directory / CONTEXT_FILE).is_file()


def _init_from(model: SeqModel, directory: Path, load_weights: Any) -> None:
    """Warm start from a local checkpoint directory (a stored model or a ``save_weights`` dir)."""
    from seqrec.errors import SeqrecError

    src = load_weights(Path(directory))
    if src.ctx.n_items > model.ctx.n_items:
        raise SeqrecError(f"checkpoint {directory} has a larger item vocabulary than the data")
    if model.grow_from(src.state_dict(), src.ctx) == 0:  # the model's rule for new items
        raise SeqrecError(
            f"checkpoint {directory} shares no weights with model '{model.spec_name}'"
        )


def seen_items(ws: Workspace, data: SequenceSet, n_items: int, split_offset: int) -> Any:
    """A function giving, for example indices, [b, E] indices of the items each user saw
    before (0 = none; an index list, not a [b, n_items] mask: the catalogue may be large).

    ``split_offset`` is how many events before the user's last one the target is (0 = test).
    """
    engine = ws.engine
    pos = event_positions(engine).sort_values(["user_id", "pos"])
    history: dict[str, np.ndarray] = {
        u: g["item_idx"].to_numpy() for u, g in pos.groupby("user_id", sort=False)
    }

    def seen(idx: np.ndarray) -> torch.Tensor:
        rows: list[list[int]] = []
        for i in idx:
            items = history.get(data.user_ids[i])
            if items is None:
                rows.append([])
                continue
            items = items[: len(items) - 1 - split_offset]
            rows.append(np.unique(items[items < n_items]).tolist())
        return pad_indices(rows)

    return seen


#: at most this many resampled indices are held at once by :func:`bootstrap_ci` (64 MiB)
BOOTSTRAP_CHUNK = 1 << 23


def bootstrap_chunks(n_boot: int, n: int, budget: int = BOOTSTRAP_CHUNK) -> list[int]:
    """How many resamples of ``n`` values each step of :func:`bootstrap_ci` draws: as many as
    fit ``budget`` indices (at least one), summing to ``n_boot``."""
    per = max(1, budget // max(1, n))
    return [min(per, n_boot - i) for i in range(0, n_boot, per)]


def bootstrap_ci(
    values: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    budget: int = BOOTSTRAP_CHUNK,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of per-user ``values``.

    Resamples are drawn a chunk at a time (:func:`bootstrap_chunks`), so memory stays near
    ``budget`` indices whatever ``n_boot * len(values)`` is; the draws, and so the interval,
    are those of drawing every resample at once."""
    if len(values) == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = np.concatenate(
        [
            values[rng.integers(0, len(values), size=(b, len(values)))].mean(axis=1)
            for b in bootstrap_chunks(n_boot, len(values), budget)
        ]
    )
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def evaluate_model(
    ws: Workspace,
    ref: str,
    *,
    ks: tuple[int, ...] = (10, 20),
    exclude_seen: bool = False,
    split: str = "test",
    progress: bool = True,
    data: Data | None = None,
    dump_topk: Path | None = None,
    ci: bool = True,
    per_user: bool = False,
    new_item_slots: int = 0,
    sample_users: int | None = None,
) -> dict[str, Any]:
    """Metrics of a stored model on the test (or valid) split of the current events.

    ``sample_users``: evaluate a uniform random sample of that many examples (seeded: the same
    sample for the same data), every one still ranked over the whole catalogue; the metrics
    then estimate the full split's, and ``out["sampled_from"]`` says of how many.

    ``new_item_slots`` (next-item): of every top-k list, up to that many places go to
    cold-start items (no events in the training split), the best of them by the model's
    score (:mod:`seqrec.evaluation.slots`); recall, NDCG and MRR are of those lists.

    With ``per_user``, ``out["per_user"]`` holds numpy arrays per example (not JSON): the
    ``user_ids`` and, next-item, the ``ranks`` and ``topk`` items; classification, the
    ``labels`` and class ``probs``."""
    from seqrec import model_store
    from seqrec.errors import SeqrecError

    if new_item_slots and dump_topk is not None:
        raise SeqrecError(
            "--dump-topk writes the model's own lists: run it without --new-item-slots"
        )
    if not 0 <= new_item_slots <= min(ks):
        raise SeqrecError(
            f"new-item slots must be between 0 and the smallest k ({min(ks)}), got {new_item_slots}"
        )
    device = pick_device(ws.config.train.device)
    stored = model_store.load(ref, device=device, store=ws.model_store)
    task = stored.info.get("task", "next-item")
    if data is None:  # the split evaluated (and the training split, to find cold items)
        needed = (split, "train") if new_item_slots else (split,)
        data = build_data(ws, task, stored.info.get("label"), splits=needed)
    examples = data.test if split == "test" else data.valid
    sampled_from = None
    if sample_users is not None:
        if sample_users < 1:
            raise SeqrecError(f"--sample-users must be at least 1, got {sample_users}")
        if len(examples) > sample_users:
            sampled_from = len(examples)
            pick = np.random.default_rng(0).choice(len(examples), sample_users, replace=False)
            examples = examples.subset(np.sort(pick))
    t0 = time.perf_counter()
    out: dict[str, Any]
    if task == "classify":
        if _newer_than(data, stored.model.ctx):  # items new since training: unknown to it
            examples = _clip_vocab(examples, stored.model.ctx, targets=False)
        probs = predict(stored.model, examples, device=device, progress=progress)["probs"]
        out = classification_metrics(examples.labels, probs, stored.info.get("threshold"))
        out["class_names"] = stored.info.get("class_names")
        out["label"] = stored.info.get("label")
        if per_user:
            out["per_user"] = {
                "user_ids": examples.user_ids,
                "labels": examples.labels,
                "probs": probs,
            }
    else:
        n_model = stored.model.ctx.n_items
        if _newer_than(data, stored.model.ctx):  # items new since training cannot be scored
            examples = _clip_vocab(examples, stored.model.ctx)
        exclude = (
            seen_items(ws, examples, n_model, 0 if split == "test" else 1) if exclude_seen else None
        )
        res = rank_next_items(
            stored.model,
            examples,
            device=device,
            batch_size=ws.config.train.eval_batch_size,
            exclude=exclude,
            topk=max(ks),
            chunk_items=ws.config.train.eval_chunk_items,
            progress=progress,
        )
        # no example left (every target newer than the model): nothing ranked, all misses
        ranks = res.get("ranks", np.zeros(0, dtype=np.int64))
        topk = res.get("topk", np.zeros((0, max(ks)), dtype=np.int64))
        by_k = {k: ranks for k in ks}  # per cutoff: each target's place (>= k: not listed)
        if new_item_slots > 0:
            cold = ~trained_items(data)[:n_model]
            by_k = slotted_ranks(
                stored.model,
                examples,
                device=device,
                cold=cold,
                ks=ks,
                slots=new_item_slots,
                batch_size=ws.config.train.eval_batch_size,
                exclude=exclude,
                progress=progress,
            )
        out = {}
        for k in ks:
            out.update(ranking_metrics(by_k[k], [k]))
        intervals: dict[str, tuple[float, float]] = {}
        for k in ks:
            out[f"coverage@{k}"] = float(len(np.unique(topk[:, :k])) / max(1, n_model - 1))
            if ci:
                hit = by_k[k] < k
                ndcg = np.where(hit, 1.0 / np.log2(by_k[k] + 2.0), 0.0)
                intervals[f"ndcg@{k}_ci95"] = bootstrap_ci(ndcg)
                intervals[f"recall@{k}_ci95"] = bootstrap_ci(hit.astype(np.float64))
        out.update(intervals)
        if per_user:
            out["per_user"] = {"user_ids": examples.user_ids, "ranks": ranks, "topk": topk}
        if dump_topk is not None:
            vocab = stored.vocab
            with Path(dump_topk).open("w") as fh:
                for u, target, row in zip(examples.user_ids, examples.labels, topk, strict=True):
                    rec = {
                        "user_id": str(u),
                        "target": vocab[int(target)],
                        "topk": [vocab[int(j)] for j in row],
                    }
                    fh.write(json.dumps(rec) + "\n")
    out.update(
        {
            "users": len(examples),
            "tag": stored.tag,
            "task": task,
            "split": split,
            "exclude_seen": exclude_seen,
            **({"new_item_slots": new_item_slots} if new_item_slots else {}),
            **({"sampled_from": sampled_from} if sampled_from is not None else {}),
            "seconds": round(time.perf_counter() - t0, 3),
        }
    )
    return out


def _newer_than(data: Data, ctx: ModelContext) -> bool:
    """Whether ``data`` has items or event types the model of ``ctx`` does not know."""
    return data.n_items > ctx.n_items or data.n_event_types > ctx.n_event_types


def _clip_vocab(s: SequenceSet, ctx: ModelContext, targets: bool = True) -> SequenceSet:
    """``s`` as the model of ``ctx`` is served it: input events whose item it does not know
    are dropped and the rest left-padded again (:func:`drop_unknown`, as serving does); with
    ``targets`` (next-item), examples whose target it does not know are dropped too (it cannot
    rank them). ``s`` itself is not changed."""
    items, types, times = s.items.copy(), s.types.copy(), s.times.copy()
    drop_unknown(items, types, times, ctx.n_items, ctx.n_event_types)
    if not targets:
        return SequenceSet(s.user_ids, items, types, times, s.labels, now=s.now)
    keep = (s.labels > 0) & (s.labels < ctx.n_items)
    return SequenceSet(s.user_ids[keep], items[keep], types[keep], times[keep], s.labels[keep])
