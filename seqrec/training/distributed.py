"""Data-parallel training (PyTorch DDP) for the shared trainer.

``seqrec train --nproc N`` starts N copies of ``seqrec train`` through torch's own launcher
(:func:`launch`, ``torch.distributed.run``); ``torchrun ... -m seqrec train`` does the same
across nodes. Each copy reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment
the launcher sets and joins the process group (:func:`init`): gloo on CPU, nccl on CUDA.

What every rank does (the trainer and :func:`seqrec.pipeline.train_model` call these):

- builds the same training tensors (rank 0 first, then each node's local rank 0:
  :func:`main_first`) and trains on its shard of every batch (:func:`shard_batches`):
  ``batch_size`` is the effective batch, each rank takes ``batch_size / N`` of it, so the
  steps, the learning-rate schedule and the data of a step are those of one process;
- computes its loss through :class:`~torch.nn.parallel.DistributedDataParallel`
  (:func:`wrap`), which averages the gradients;
- takes the validation metrics rank 0 computed (:func:`from_main`), so every rank makes the
  same early-stopping decision and stops together.

Rank 0 alone writes checkpoints and the model store; the others wait at a barrier. Outside a
launcher every function here is a no-op or runs its argument directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from seqrec.errors import SeqrecError
from seqrec.models import DATA_BUFFERS, Batch, SeqModel

T = TypeVar("T")

#: the variables torch's launcher sets in each worker
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place in the process group."""

    rank: int
    size: int
    local_rank: int


def launched() -> bool:
    """Whether torch's launcher started this process (its variables are set)."""
    return all(k in os.environ for k in LAUNCH_ENV)


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def active() -> bool:
    """Whether this process is in a process group (after :func:`init`)."""
    dist = _dist()
    return bool(dist.is_available() and dist.is_initialized())


def world() -> World | None:
    """This rank and the world size, or None outside a process group."""
    if not active():
        return None
    dist = _dist()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def rank() -> int:
    """This process's rank: from the process group, else the launcher's ``RANK``, else 0."""
    w = world()
    return w.rank if w else int(os.environ.get("RANK", 0) or 0)


def is_main() -> bool:
    """Whether this process is rank 0 (or not distributed at all)."""
    return rank() == 0


def _use_cuda(device_pref: str) -> bool:
    return torch.cuda.is_available() and device_pref in ("auto", "cuda")


def device(device_pref: str = "auto") -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` where CUDA is available and wanted, else cpu."""
    if _use_cuda(device_pref):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init(device_pref: str = "auto") -> World | None:
    """Join the process group the launcher described (once): nccl where this rank trains on
    CUDA, gloo on CPU. A no-op (None) outside a launcher."""
    if not launched():
        return None
    if not active():
        dev = device(device_pref)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        try:
            _dist().init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        except (RuntimeError, ValueError) as exc:
            raise SeqrecError(
                f"cannot join the training process group at "
                f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}: {exc}",
                hint="check --rdzv-endpoint / --master-addr and that every node reaches it",
            ) from None
    return world()


def shutdown() -> None:
    """Leave the process group (if this process joined one)."""
    if active():
        _dist().destroy_process_group()


@contextmanager
def _with_peers(what: str) -> Iterator[None]:
    """A collective that fails because another rank stopped (a crash, a user error there) is
    one line naming this rank, not a transport traceback."""
    try:
        yield
    except RuntimeError as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0].split(". ")[0][:200]
        raise SeqrecError(
            f"rank {rank()}: {what} failed, another training process stopped ({reason})",
            hint="the first failing process's error is printed above",
        ) from None


def barrier() -> None:
    """Wait until every rank gets here (no-op outside a process group)."""
    if active():
        dist = _dist()
        with _with_peers("waiting for the other ranks"):
            if dist.get_backend() == "nccl":
                dist.barrier(device_ids=[torch.cuda.current_device()])
            else:
                dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """The block in three turns, a barrier between them: rank 0 first (it may write caches,
    such as the feature snapshot), then the first process of every other node (``LOCAL_RANK``
    0: it brings that node's copy up to date where the nodes do not share it), then the rest.
    Every rank passes both barriers."""
    w = world()
    turn = 0 if w is None or w.rank == 0 else 1 if w.local_rank == 0 else 2
    for step in range(3):
        if step == turn:
            yield
        if w is not None and step < 2:
            barrier()


def from_main(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 and its (picklable) result given to every rank."""
    if not active():
        return fn()
    box: list[Any] = [fn() if is_main() else None]
    with _with_peers("receiving from rank 0"):
        _dist().broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[no-any-return]


def all_gather(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (``[obj]`` outside a process group)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * _dist().get_world_size()
    with _with_peers("gathering from every rank"):
        _dist().all_gather_object(out, obj)
    return out


def all_sum(values: list[float], on: torch.device) -> list[float]:
    """Each of ``values`` summed over the ranks."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=on)
    with _with_peers("summing over the ranks"):
        _dist().all_reduce(t)
    return [float(v) for v in t.tolist()]


def broadcast_weights(model: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers."""
    if active():
        with _with_peers("receiving rank 0's weights"):
            for t in model.state_dict().values():
                _dist().broadcast(t, src=0)


class _Loss(nn.Module):
    """``forward(batch)`` = ``model.loss(batch)``: DDP synchronises what runs in forward."""

    def __init__(self, model: SeqModel):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model.loss(batch)


def unused_parameters(model: SeqModel, sample: Batch) -> list[str]:
    """The trainable parameters ``model.loss(sample)`` leaves without a gradient. The probe
    leaves no trace: RNG states, buffers, gradients and the train/eval mode are as they were."""
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    cuda = [sample.items.device.index or 0] if sample.items.device.type == "cuda" else []
    was_training = model.training
    model.train()
    with torch.random.fork_rng(devices=cuda):
        model.loss(sample).backward()
    model.train(was_training)
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for k, b in model.named_buffers():
            b.copy_(buffers[k])
    return unused


def wrap(model: SeqModel, on: torch.device, sample: Batch) -> Callable[[Batch], torch.Tensor]:
    """``model.loss`` through DistributedDataParallel (gradients averaged over the ranks;
    rank 0's weights given to all). Parameters a plugin's loss leaves unused (as it does on
    ``sample``, a batch on ``on``) are allowed."""
    from torch.nn.parallel import DistributedDataParallel

    module = _Loss(model)
    # data buffers (item text, the transition bias's counts) are fitted alike on every rank
    # from the same data: never re-sent from rank 0 on each step (they grow with the data)
    data = [name for name, _ in module.named_buffers() if name.rsplit(".", 1)[-1] in DATA_BUFFERS]
    if data:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, data)
    ddp = DistributedDataParallel(
        module,
        device_ids=[on.index] if on.type == "cuda" else None,
        find_unused_parameters=bool(unused_parameters(model, sample)),
    )
    return ddp  # type: ignore[no-any-return]


def shard_batches(
    tensors: dict[str, torch.Tensor],
    batch_size: int,
    generator: torch.Generator,
    rank: int,
    size: int,
) -> Iterator[Batch]:
    """This rank's share of each shuffled batch of ``batch_size`` examples.

    Every rank draws the same order from ``generator`` (seeded alike), so the shares of a step
    are one batch of a single process and the union over an epoch is the whole set; every rank
    takes the same number of steps, ``ceil(N / batch_size)``. Shares differ by one example at
    most; a rank whose share of a short last batch would be empty repeats one of its examples.
    """
    n = len(tensors["items"])
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        part = idx.tensor_split(size)[rank]
        if not len(part):
            part = idx[rank % len(idx) :][:1]
        yield Batch(
            items=tensors["items"][part],
            types=tensors["types"][part],
            times=tensors["times"][part],
            targets=tensors["targets"][part] if "targets" in tensors else None,
            labels=tensors["labels"][part],
            now=tensors["now"][part] if "now" in tensors else None,
        )


def launch(nproc: int, args: list[str]) -> None:
    """Run ``python -m seqrec ARGS`` in ``nproc`` processes on this machine through torch's
    launcher (standalone rendezvous on a free local port); a failed rank is a SeqrecError."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torch_run

    try:
        torch_run(["--standalone", f"--nproc-per-node={nproc}", "-m", "seqrec", *args])
    except ChildFailedError as exc:
        failed_rank, failure = exc.get_first_failure()
        code = failure.exitcode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        raise SeqrecError(
            f"distributed training failed: rank {failed_rank} {how}",
            hint="the first failing process's error is printed above; after a crash, "
            "--resume continues from the last checkpoint",
        ) from None
