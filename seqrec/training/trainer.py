"""The one shared trainer: every plugin's model trains and is evaluated here.

AdamW with linear warmup and linear decay, gradient clipping, early stopping on a validation
metric (the best epoch's weights are kept; with ``ema_decay``, a moving average of the weights
is what is validated and kept), seeded determinism on CPU, device auto-selection
(cuda, mps, cpu) with bf16/fp16 autocast on cuda, batches sliced from pre-built tensors, a
progress bar with loss and throughput, a JSONL log of every epoch, and a checkpoint after every
epoch (weights as safetensors; optimizer, scheduler, RNG and early-stopping state beside them)
from which ``resume=True`` continues an interrupted run to the same result.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from seqrec.errors import SeqrecError
from seqrec.evaluation.metrics import mask_scores, target_ranks
from seqrec.faults import kill_point
from seqrec.models import Batch, SeqModel
from seqrec.progress import bar
from seqrec.training import distributed
from seqrec.training.checkpoint import read_state, read_weights
from seqrec.training.data import SequenceSet, iter_batches
from seqrec.training.stream import StreamedSet

STATE_FILE = "trainer_state.pt"
#: in a checkpoint with ``ema_decay`` set: the weight average, which is validated and kept as best
AVERAGED_WEIGHTS = "averaged.safetensors"
LAST_WEIGHTS = "last.safetensors"
BEST_WEIGHTS = "best.safetensors"
LOG_FILE = "log.jsonl"
#: in a run directory: the newest complete checkpoint (the files above: the averaged weights
#: only with ``ema_decay``)
CHECKPOINT_DIR = "checkpoint"
WRITING_DIR = "checkpoint.tmp"  # the next checkpoint while it is written
REPLACED_DIR = "checkpoint.old"  # the previous one while the next takes its place


@dataclass
class TrainSettings:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 5e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    grad_clip: float = 1.0
    patience: int = 5
    #: 0: off; else validate, keep and ship an exponential moving average of the weights,
    #: updated after every step with this decay (the trained weights go on training)
    ema_decay: float = 0.0
    seed: int = 42
    device: str = "auto"
    num_threads: int = 0
    eval_batch_size: int = 512
    metric: str = "ndcg@10"

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed (not epochs: a run may be extended)."""
        d = asdict(self)
        d.pop("epochs")
        d.pop("device")
        d.pop("num_threads")
        d.pop("eval_batch_size")
        if not d["ema_decay"]:  # checkpoints written before the setting existed resume
            d.pop("ema_decay")
        return d


@dataclass
class TrainResult:
    best_epoch: int
    epochs_run: int
    valid: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    seconds_per_epoch: float = 0.0
    device: str = "cpu"
    resumed_from: int = 0


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
def predict(
    model: SeqModel,
    data: SequenceSet,
    *,
    device: torch.device,
    batch_size: int = 512,
    exclude: Callable[[np.ndarray], torch.Tensor] | None = None,
    topk: int = 0,
    progress: bool = False,
    desc: str = "evaluate",
) -> dict[str, np.ndarray]:
    """Score every example. Next-item: 0-based full-catalogue rank of each label (``ranks``)
    and, with ``topk``, the top item indices (``topk``). Classification: class probabilities
    (``probs``)."""
    model.eval()
    tensors = data.tensors(with_targets=False)
    out: dict[str, list[np.ndarray]] = {"ranks": [], "topk": [], "probs": []}
    offset = 0
    n_batches = math.ceil(len(data) / batch_size)
    for batch in bar(
        iter_batches(tensors, batch_size),
        total=n_batches,
        desc=desc,
        disable=not progress,
        leave=False,
    ):
        n = len(batch.items)
        with autocast_for(device):
            scores = model.score(batch.to(device)).float()
        assert batch.labels is not None
        if model.ctx.task == "classify":
            out["probs"].append(torch.softmax(scores, dim=1).cpu().numpy())
        else:
            mask = exclude(np.arange(offset, offset + n)).to(device) if exclude else None
            scores = mask_scores(scores, mask)
            out["ranks"].append(target_ranks(scores, batch.labels.to(device)).cpu().numpy())
            if topk:
                out["topk"].append(torch.topk(scores, topk, dim=1).indices.cpu().numpy())
        offset += n
    return {k: np.concatenate(v) for k, v in out.items() if v}


def _numpy_rng_state() -> tuple[Any, ...]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return (
        str(kind),
        torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        int(pos),
        int(has_gauss),
        float(cached),
    )


def _rng_state() -> dict[str, Any]:
    """This process's torch, numpy and Python RNG states, as a checkpoint holds them."""
    return {
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": _numpy_rng_state(),
        "python_rng": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`_rng_state` saved."""
    torch.set_rng_state(state["torch_rng"])
    kind, keys, pos, has_gauss, cached = state["numpy_rng"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python_rng"])


def _check_world_size(
    state: dict[str, Any], world: distributed.World | None, run_dir: Path | None
) -> None:
    """A checkpoint resumes with the number of processes that wrote it."""
    was, now = state.get("world_size", 1), world.size if world else 1
    if was != now:
        raise SeqrecError(
            f"cannot resume: the checkpoint in {run_dir} was written by {was} training "
            f"process(es), this run has {now}",
            hint=f"resume with --nproc {was}, or rerun without --resume to start over",
        )


def _lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or, where the OS allows, a directory) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # directories cannot be opened on some systems
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ties(model: SeqModel) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(each storage of the state dict once, by its first name; every other name of a tied
    weight -> that first name). safetensors stores each storage once."""
    seen: dict[int, str] = {}
    out: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    for k, v in model.state_dict().items():
        ptr = v.data_ptr()
        if ptr in seen and v.numel():
            tied[k] = seen[ptr]
            continue
        seen[ptr] = k
        out[k] = v
    return out, tied


def _state_dict(model: SeqModel) -> dict[str, torch.Tensor]:
    return _ties(model)[0]


def _load_state(model: SeqModel, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Load weights written from :func:`_state_dict` into ``model``, strictly: the same
    names (tied weights under their first name) and shapes, or a :class:`SeqrecError`."""
    want, tied = _ties(model)
    problems = {
        "missing": sorted(set(want) - set(tensors)),
        "unexpected": sorted(set(tensors) - set(want)),
        "shape differs": sorted(
            k for k in set(want) & set(tensors) if want[k].shape != tensors[k].shape
        ),
    }
    if any(problems.values()):
        what = "; ".join(
            f"{kind}: {', '.join(keys[:5])}" + (" ..." if len(keys) > 5 else "")
            for kind, keys in problems.items()
            if keys
        )
        raise SeqrecError(
            f"checkpoint {source} does not fit model '{model.spec_name or type(model).__name__}'"
            f" ({what})",
            hint="it was written for another model or configuration; rerun without --resume "
            "to start over",
        )
    model.load_state_dict({**tensors, **{k: tensors[first] for k, first in tied.items()}})


class Checkpointer:
    """Per-epoch checkpoints in ``run_dir``: ``checkpoint/`` holds the newest complete one
    (last weights, best weights, the weight average with ``ema_decay``, trainer state).

    A checkpoint is written into ``checkpoint.tmp/``; then the previous one is renamed to
    ``checkpoint.old/``, the new one to ``checkpoint/``, and the old one removed. A kill at any
    point leaves a state :meth:`recover` turns back into one complete checkpoint (weights and
    trainer state always of the same epoch)."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        self.current = run_dir / CHECKPOINT_DIR
        run_dir.mkdir(parents=True, exist_ok=True)
        self.recover()

    def recover(self) -> None:
        """Finish (or undo) a save a kill interrupted, and remove its leftovers."""
        writing, replaced = self.dir / WRITING_DIR, self.dir / REPLACED_DIR
        if not self.current.exists() and replaced.exists():
            # killed between the two renames: the new checkpoint was complete before the old
            # one moved away (if it is gone too, the old one is the newest complete one)
            os.replace(writing if writing.exists() else replaced, self.current)
        for leftover in (writing, replaced):
            if leftover.exists():
                shutil.rmtree(leftover)

    @property
    def exists(self) -> bool:
        return (self.current / STATE_FILE).is_file()

    def clear(self) -> None:
        """Forget the checkpoint (a run that starts over)."""
        if self.current.exists():
            shutil.rmtree(self.current)

    def save(
        self,
        model: SeqModel,
        state: dict[str, Any],
        best_changed: bool,
        averaged: SeqModel | None = None,
    ) -> None:
        """Write the checkpoint: ``model``'s weights (to resume from), ``averaged``'s where
        the run keeps a weight average (then the best weights are the average's)."""
        writing = self.dir / WRITING_DIR
        if writing.exists():
            shutil.rmtree(writing)
        writing.mkdir()
        last, best = writing / LAST_WEIGHTS, writing / BEST_WEIGHTS
        save_file(_cpu_weights(model), str(last))
        scored = last
        if averaged is not None:
            scored = writing / AVERAGED_WEIGHTS
            save_file(_cpu_weights(averaged), str(scored))
        kill_point("checkpoint.write")
        if best_changed:
            _link_or_copy(scored, best)
        elif (self.current / BEST_WEIGHTS).is_file():
            _link_or_copy(self.current / BEST_WEIGHTS, best)
        torch.save(state, writing / STATE_FILE)
        for path in (*writing.iterdir(), writing):
            _fsync(path)
        replaced, previous = self.dir / REPLACED_DIR, self.current.exists()
        if previous:
            os.replace(self.current, replaced)
            kill_point("checkpoint.swap")
        os.replace(writing, self.current)
        _fsync(self.dir)
        if previous:
            shutil.rmtree(replaced)

    def averaged(self) -> dict[str, torch.Tensor] | None:
        """The weight average of the newest checkpoint, if the run keeps one."""
        path = self.current / AVERAGED_WEIGHTS
        return read_weights(path) if path.is_file() else None

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(last weights, trainer state); a damaged file is a SeqrecError naming it."""
        state = read_state(self.current / STATE_FILE)
        return read_weights(self.current / LAST_WEIGHTS), state

    @property
    def best_path(self) -> Path:
        return self.current / BEST_WEIGHTS

    def best(self) -> dict[str, torch.Tensor] | None:
        return read_weights(self.best_path) if self.best_path.is_file() else None


def _cpu_weights(model: SeqModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in _state_dict(model).items()}


_Tensors = tuple[Tensor, ...] | list[Tensor]


def ema_with_warmup(decay: float) -> Callable[[_Tensors, _Tensors, Tensor | int], None]:
    """AveragedModel's update: after ``n`` averaged steps, ``avg += (1 - d) * (w - avg)`` with
    ``d = min(decay, n / (n + 1))``, i.e. the plain mean of the steps so far until that
    reaches ``decay`` (after ``1 / (1 - decay)`` steps), then an exponential moving average. A
    short run does not ship mostly its first step's weights."""

    @torch.no_grad()
    def update(averaged: _Tensors, current: _Tensors, n_averaged: Tensor | int) -> None:
        n = float(n_averaged)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, n / (n + 1.0)))

    return update


def weight_average(model: SeqModel, decay: float) -> AveragedModel | None:
    """A moving average of ``model``'s parameters (torch's AveragedModel, updated with
    :func:`ema_with_warmup`), or None for ``decay`` 0. Its buffers (statistics and data such
    as item text, not weights) are ``model``'s own tensors, shared, not copies."""
    if not decay:
        return None
    averaged = AveragedModel(model, multi_avg_fn=ema_with_warmup(decay), use_buffers=False)
    _share_buffers(averaged.module, model)
    return averaged


def _share_buffers(copy: nn.Module, live: nn.Module) -> None:
    for mine, theirs in zip(copy.modules(), live.modules(), strict=True):
        for name, buf in theirs._buffers.items():
            mine._buffers[name] = buf


def averaged_module(averaged: AveragedModel) -> SeqModel:
    """The averaged weights, as a model to validate, checkpoint and ship."""
    return cast(SeqModel, averaged.module)


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` with ``src``'s content: a hard link where the file system allows, else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _sample(train_tensors: dict[str, torch.Tensor] | StreamedSet) -> Batch:
    """Two training examples (DDP's probe for parameters the loss leaves unused)."""
    if isinstance(train_tensors, StreamedSet):
        return train_tensors.head(2)
    return next(iter_batches(train_tensors, 2))


def _fit_streamed(model: SeqModel, source: StreamedSet) -> None:
    """What ``fit_statistics`` / ``fit_classifier`` do, from streaming passes: the negative
    sampler of ``loss = "sampled_logq"`` from the target counts, the transition bias's
    counts. A model that fits its own statistics or classifier from the whole training set
    (popularity, markov, gbdt) cannot be given it without loading it: a SeqrecError."""
    from seqrec.losses import NegativeSampler
    from seqrec.training.data import next_item_targets
    from seqrec.transitions import PairCounter

    method = "fit_statistics" if source.with_targets else "fit_classifier"
    if getattr(type(model), method) is not getattr(SeqModel, method):
        raise SeqrecError(
            f"model '{model.spec_name or type(model).__name__}' fits {method[4:]} from the "
            "whole training set in memory, which [train] stream = true does not load",
            hint="train it with [train] stream = false (it takes no gradient steps, so its "
            "memory is the training set's, whatever the streaming)",
        )
    if source.with_targets and model.ctx.params.get("loss") == "sampled_logq":
        counts = torch.from_numpy(source.target_counts(model.ctx.n_items))
        model.negative_sampler = NegativeSampler.from_counts(counts)
    if source.with_targets and model.transitions is not None:
        pairs = PairCounter(model.ctx.n_items)
        for rows in source.chunks():
            pairs.add(
                rows["items"], next_item_targets(rows["items"], rows["labels"], rows["loss_from"])
            )
        model.transitions.fit_counted(pairs)


def train(
    model: SeqModel,
    train_tensors: dict[str, torch.Tensor] | StreamedSet,
    validate: Callable[[SeqModel, torch.device], dict[str, float]],
    settings: TrainSettings,
    *,
    progress: bool = True,
    run_dir: Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train ``model`` on ``train_tensors``; ``validate`` scores it after every epoch.

    ``train_tensors`` are the in-memory tensors (``SequenceSet.tensors``) or a
    :class:`~seqrec.training.stream.StreamedSet` read from Parquet batch by batch (each epoch
    shuffled by a seed drawn from the trainer's generator).

    Early-stops on ``settings.metric`` (higher is better) and restores the best weights. With
    ``run_dir``, checkpoints after every epoch; ``resume`` continues from the last one.
    Non-gradient models fit once first (``fit_statistics`` for next-item, ``fit_classifier``
    for classification); one without trainable parameters is then validated once, no epochs.

    In a process group (:mod:`seqrec.training.distributed`) every rank trains on its shard of
    each batch through DDP, rank 0 validates, checkpoints and resumes for all.
    """
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    gen = seed_everything(settings.seed)
    world = distributed.world()
    if world:  # dropout and other model randomness differ by rank; the data order does not
        torch.manual_seed(settings.seed + world.rank)
        progress = progress and world.rank == 0
    device = distributed.device(settings.device) if world else pick_device(settings.device)
    model.to(device)
    if isinstance(train_tensors, StreamedSet):
        _fit_streamed(model, train_tensors)
    elif "targets" in train_tensors:
        model.fit_statistics(train_tensors["items"], train_tensors["targets"])
    elif model.ctx.task == "classify":
        model.fit_classifier(train_tensors)
    t_start = time.perf_counter()
    main = distributed.is_main()
    ckpt = Checkpointer(run_dir) if run_dir and main else None
    log = (run_dir / LOG_FILE) if run_dir and main else None

    if not model.trainable:
        valid = distributed.from_main(lambda: validate(model, device))
        return TrainResult(
            0, 0, valid, [{"epoch": 0, **valid}], time.perf_counter() - t_start, 0.0, str(device)
        )

    if isinstance(train_tensors, StreamedSet):
        n = len(train_tensors)
    else:
        n = len(train_tensors["items"])
    steps_per_epoch = math.ceil(n / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    averaged = weight_average(model, settings.ema_decay)
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            # offset tables (the transition bias) are fitted, not regularised, like repeat_bias
            plain = p.ndim < 2 or "norm" in name.lower() or name.startswith("transitions.")
            (no_decay if plain else decay).append(p)
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
    best_score, best_epoch, best_valid = -math.inf, 0, {}
    bad_epochs, start_epoch = 0, 1
    history: list[dict[str, Any]] = []
    epoch_seconds: list[float] = []

    state: dict[str, Any] | None = None
    if resume and ckpt and ckpt.exists:
        weights, state = ckpt.load()
        if state["settings"] != settings.fingerprint():
            raise SeqrecError(
                f"cannot resume: the checkpoint in {run_dir} was made with other settings",
                hint="rerun without --resume to start over",
            )
        _check_world_size(state, world, run_dir)
        _load_state(model, weights, ckpt.current / LAST_WEIGHTS)
        if averaged is not None:
            saved = ckpt.averaged()
            if saved is None:
                raise SeqrecError(
                    f"cannot resume: the checkpoint in {run_dir} has no weight average",
                    hint="rerun without --resume to start over",
                )
            _load_state(averaged_module(averaged), saved, ckpt.current / AVERAGED_WEIGHTS)
    if world:  # rank 0's checkpoint, for every rank
        state = distributed.from_main(lambda: state)
        if state is not None:
            distributed.broadcast_weights(model)
            if averaged is not None:
                distributed.broadcast_weights(averaged_module(averaged))
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["gen_rng"])
        rank_rng = state.get("rank_rng")  # per rank where several processes wrote it
        _set_rng_state(rank_rng[world.rank] if world and rank_rng else state)
        best_score, best_epoch, best_valid = (
            state["best_score"],
            state["best_epoch"],
            state["best_valid"],
        )
        bad_epochs, history = state["bad_epochs"], state["history"]
        if averaged is not None:
            averaged.n_averaged.fill_(state["averaged_steps"])
        epoch_seconds = [h["train_seconds"] for h in history]
        start_epoch = state["epoch"] + 1
        if state.get("stopped"):
            start_epoch = settings.epochs + 1
        if log:  # the epochs of the checkpoint (one run past it, then killed, is redone)
            log.write_text("".join(json.dumps(r) + "\n" for r in history))
    else:
        if ckpt:
            ckpt.clear()
        if log and log.exists():
            log.unlink()
    resumed_from = start_epoch - 1
    step_loss = (
        distributed.wrap(model, device, _sample(train_tensors).to(device)) if world else model.loss
    )

    epoch = start_epoch - 1
    for epoch in range(start_epoch, settings.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        total_loss, n_batches, n_seen = 0.0, 0, 0
        batches: Iterator[Batch]
        if isinstance(train_tensors, StreamedSet):  # the epoch's order from the generator
            seed = int(torch.randint(0, 2**62, (1,), generator=gen))
            batches = train_tensors.batches(
                settings.batch_size,
                seed=seed,
                rank=world.rank if world else 0,
                size=world.size if world else 1,
            )
        elif world:
            batches = distributed.shard_batches(
                train_tensors, settings.batch_size, gen, world.rank, world.size
            )
        else:
            batches = iter_batches(train_tensors, settings.batch_size, shuffle=True, generator=gen)
        pbar = bar(
            batches,
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{settings.epochs}",
            disable=not progress,
            leave=False,
            unit="batch",
        )
        for batch in pbar:
            batch = batch.to(device)
            with autocast_for(device):
                loss = step_loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip:
                for group in model.clip_groups():
                    torch.nn.utils.clip_grad_norm_(group, settings.grad_clip)
            opt.step()
            sched.step()
            if averaged is not None:
                averaged.update_parameters(model)
            kill_point("train.batch")
            if world:
                kill_point(f"train.batch.rank{world.rank}")
            total_loss += float(loss.detach())
            n_batches += 1
            n_seen += len(batch.items)
            if n_batches % 10 == 0:
                pbar.set_postfix(
                    loss=f"{total_loss / n_batches:.4f}",
                    seq_s=f"{n_seen / (time.perf_counter() - t0):.0f}",
                )
        train_secs = time.perf_counter() - t0
        epoch_seconds.append(train_secs)
        if world:  # the epoch's loss and examples over all ranks
            sums = distributed.all_sum([total_loss, n_batches, n_seen], device)
            total_loss, n_batches, n_seen = sums[0], int(sums[1]), int(sums[2])
        scored = model if averaged is None else averaged_module(averaged)
        valid = distributed.from_main(functools.partial(validate, scored, device))
        record = {
            "epoch": epoch,
            "loss": total_loss / max(1, n_batches),
            "train_seconds": round(train_secs, 3),
            "sequences_per_s": round(n_seen / train_secs, 1) if train_secs else 0.0,
            "lr": sched.get_last_lr()[0],
            **{f"valid_{k}": v for k, v in valid.items()},
        }
        history.append(record)
        if log:
            with log.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
        if progress:
            pbar.write(
                f"epoch {epoch}: loss {record['loss']:.4f}  valid {settings.metric} "
                f"{valid[settings.metric]:.4f}  ({train_secs:.1f}s)"
            )
        improved = valid[settings.metric] > best_score
        if improved:
            best_score, best_epoch, best_valid, bad_epochs = valid[settings.metric], epoch, valid, 0
        else:
            bad_epochs += 1
        stop = bad_epochs >= settings.patience
        # every rank's RNG state (model randomness differs by rank), gathered on all ranks
        rank_rng = distributed.all_gather(_rng_state()) if world and run_dir else None
        if ckpt:
            ckpt.save(
                model,
                {
                    "epoch": epoch,
                    "settings": settings.fingerprint(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "gen_rng": gen.get_state(),
                    **_rng_state(),
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "best_valid": best_valid,
                    "bad_epochs": bad_epochs,
                    "history": history,
                    "stopped": stop,
                    "world_size": world.size if world else 1,
                    "rank_rng": rank_rng,
                    "averaged_steps": int(averaged.n_averaged) if averaged is not None else 0,
                },
                best_changed=improved,
                averaged=None if averaged is None else scored,
            )
        if world and run_dir:
            distributed.barrier()  # the other ranks wait for rank 0's checkpoint
        if improved and not run_dir:
            best_in_memory = {k: v.detach().clone() for k, v in scored.state_dict().items()}
        if stop:
            break
    if ckpt:
        best = ckpt.best()
        if best is not None:
            _load_state(model, best, ckpt.best_path)
    elif best_epoch and not run_dir:
        model.load_state_dict(best_in_memory)
    if world and run_dir:
        distributed.broadcast_weights(model)  # rank 0's best weights
    model.eval()
    return TrainResult(
        best_epoch=best_epoch,
        epochs_run=max(epoch, resumed_from),
        valid=best_valid,
        history=history,
        seconds=round(time.perf_counter() - t_start, 3),
        seconds_per_epoch=round(float(np.mean(epoch_seconds)), 3) if epoch_seconds else 0.0,
        device=str(device),
        resumed_from=resumed_from,
    )
