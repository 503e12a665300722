"""Training sets bigger than memory: written once to Parquet in row groups, read back as
shuffled batches without ever holding the whole set.

Write: :class:`StreamWriter` appends :class:`~seqrec.training.data.SequenceSet` parts (the
feature build writes one chunk of users at a time) as row groups of ``row_group`` rows.

Read: :meth:`StreamedSet.batches` yields one epoch of the trainer's batches. The row groups come
in an order drawn from the epoch's seed; their rows pass through a shuffle buffer of
``shuffle_buffer`` rows (a row leaves it for a random slot's newcomer), so memory holds the
buffer, about one row group and one batch, whatever the file's size. The same seed gives the
same batches; every row comes exactly once per epoch.

Under DDP each rank reads a disjoint share of the row groups (when the file has fewer row groups
than ranks, every row group is split into one slice of rows per rank) and every rank takes the
same number of steps, ``ceil(N / batch_size)``, as the in-memory path: a rank's share is spread
over those steps in batches of about ``batch_size / world size`` rows.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from seqrec.errors import SeqrecError
from seqrec.models import Batch
from seqrec.training.data import SequenceSet, next_item_targets

#: rows per Parquet row group: 8,192 windows of 50 are about 10 MB of int64 columns
DEFAULT_ROW_GROUP = 8_192
#: rows the reader shuffles among
DEFAULT_SHUFFLE_BUFFER = 65_536
FORMAT = b"seqrec-sequences-1"
_SEQ = ("items", "types", "times")

Rows = dict[str, np.ndarray]  # column -> [n, L] or [n]


def _damaged(path: Path, exc: BaseException) -> SeqrecError:
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    return SeqrecError(
        f"training stream {path} cannot be read: {reason}",
        hint="it is rewritten by the next `seqrec train` with [train] stream = true; "
        "delete it if it was damaged",
    )


class StreamWriter:
    """Appends SequenceSet parts to a Parquet file as row groups of ``row_group`` rows.

    The file appears at ``path`` on :meth:`close` (written beside it, then renamed), so a
    reader never sees a half-written one."""

    def __init__(self, path: Path, max_len: int, row_group: int = DEFAULT_ROW_GROUP):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.max_len, self.row_group = max_len, max(1, row_group)
        self._pending: list[Rows] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._has_now: bool | None = None

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is not None:
            self.abort()

    def append(self, part: SequenceSet) -> None:
        """Add ``part``'s rows; full row groups are written at once."""
        if not len(part):
            return
        has_now = part.now is not None
        if self._has_now is None:
            self._has_now = has_now
        elif self._has_now != has_now:
            raise ValueError("every part of a stream has example times, or none has")
        n = len(part)
        rows: Rows = {
            "user_id": np.asarray(part.user_ids).astype(str),
            "items": part.items,
            "types": part.types,
            "times": part.times,
            "labels": np.asarray(part.labels, dtype=np.int64),
            "loss_from": (
                np.zeros(n, dtype=np.int64) if part.loss_from is None else part.loss_from
            ),
        }
        if has_now:
            assert part.now is not None
            rows["now"] = part.now
        self._pending.append(rows)
        self._pending_rows += n
        while self._pending_rows >= self.row_group:
            self._flush(self.row_group)

    def _flush(self, n: int) -> None:
        cat = {k: np.concatenate([p[k] for p in self._pending]) for k in self._pending[0]}
        self._write({k: v[:n] for k, v in cat.items()})
        rest = {k: v[n:] for k, v in cat.items()}
        self._pending = [rest] if len(rest["labels"]) else []
        self._pending_rows -= n

    def _write(self, rows: Rows) -> None:
        L = self.max_len
        cols = {
            "user_id": pa.array(rows["user_id"], pa.string()),
            **{
                k: pa.FixedSizeListArray.from_arrays(
                    pa.array(np.ascontiguousarray(rows[k], dtype=np.int64).reshape(-1)), L
                )
                for k in _SEQ
            },
            "labels": pa.array(rows["labels"], pa.int64()),
            "loss_from": pa.array(rows["loss_from"], pa.int64()),
        }
        if "now" in rows:
            cols["now"] = pa.array(rows["now"], pa.int64())
        table = pa.table(cols)
        if self._writer is None:
            meta = {b"seqrec.format": FORMAT, b"seqrec.max_len": str(L).encode()}
            schema = table.schema.with_metadata(meta)
            self.tmp.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.tmp, schema)
        self._writer.write_table(table, row_group_size=len(table))

    def close(self, **read_options: Any) -> StreamedSet:
        """Write what is left, put the file in place and open it (``read_options`` go to
        :class:`StreamedSet`)."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        if self._writer is None:
            raise SeqrecError("the training set is empty: nothing to stream")
        self._writer.close()
        os.replace(self.tmp, self.path)
        return StreamedSet(self.path, **read_options)

    def abort(self) -> None:
        """Drop what was written."""
        if self._writer is not None:
            self._writer.close()
        self.tmp.unlink(missing_ok=True)


def write_stream(
    path: Path, parts: Any, max_len: int, row_group: int = DEFAULT_ROW_GROUP, **read: Any
) -> StreamedSet:
    """Every SequenceSet of the iterable ``parts`` written to ``path``; the set, opened."""
    with StreamWriter(path, max_len, row_group) as w:
        for part in parts:
            w.append(part)
        return w.close(**read)


@dataclass
class StreamStats:
    """What one pass over a stream counts (for statistics models, summaries, class weights)."""

    target_counts: np.ndarray  # [max target + 1] next-item targets per item (0 = none)
    label_counts: np.ndarray  # [max label + 1]
    item_counts: np.ndarray  # [max item + 1] occurrences in the input sequences
    positions: int  # trained-on next-item targets
    newest_now: int | None  # the newest example time, epoch seconds
    user_ids: np.ndarray  # distinct users


class StreamedSet:
    """A training set in a Parquet file, read as batches (see the module docstring).

    ``with_targets``: batches carry next-item ``targets`` (as ``SequenceSet.tensors(True)``).
    A missing, damaged or foreign file is a SeqrecError naming it.
    """

    def __init__(
        self,
        path: Path,
        *,
        with_targets: bool = True,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    ):
        self.path = Path(path)
        self.with_targets = with_targets
        self.shuffle_buffer = max(1, shuffle_buffer)
        if not self.path.is_file():
            raise SeqrecError(
                f"training stream {self.path} does not exist",
                hint="train with [train] stream = true to write it",
            )
        try:
            meta = pq.read_metadata(self.path)
        except (pa.ArrowException, OSError) as exc:
            raise _damaged(self.path, exc) from None
        kv = meta.metadata or {}
        if kv.get(b"seqrec.format") != FORMAT:
            raise SeqrecError(
                f"training stream {self.path} is not a seqrec training stream "
                "(its Parquet metadata lacks seqrec.format)",
            )
        self.max_len = int(kv[b"seqrec.max_len"])
        self.has_now = "now" in meta.schema.names
        self.group_rows = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self._stats: StreamStats | None = None

    def __len__(self) -> int:
        return sum(self.group_rows)

    # reading

    def _open(self) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as exc:
            raise _damaged(self.path, exc) from None

    def _read(self, pf: pq.ParquetFile, group: int, *, users: bool = False) -> Rows:
        """Row group ``group``'s columns as arrays (``users``: with ``user_id``); a damaged
        file is a SeqrecError naming it."""
        cols = ["items", "types", "times", "labels", "loss_from"] + (
            ["now"] if self.has_now else []
        )
        if users:
            cols.append("user_id")
        try:
            table = pf.read_row_group(group, columns=cols)
            out: Rows = {}
            for k in cols:
                col = table.column(k).combine_chunks()
                if k in _SEQ:
                    col = col.flatten()
                    out[k] = col.to_numpy().reshape(-1, self.max_len)
                else:
                    out[k] = col.to_numpy(zero_copy_only=k != "user_id")  # strings: objects
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise _damaged(self.path, exc) from None
        return out

    def chunks(self) -> Iterator[Rows]:
        """Every row group's rows, in file order."""
        pf = self._open()
        for g in range(len(self.group_rows)):
            yield self._read(pf, g)

    def stats(self) -> StreamStats:
        """Counts over the whole set, in one streaming pass (cached)."""
        if self._stats is None:
            targets = np.zeros(1, dtype=np.int64)
            labels = np.zeros(1, dtype=np.int64)
            inputs = np.zeros(1, dtype=np.int64)
            users: set[str] = set()
            newest: int | None = None
            pf = self._open()
            for g in range(len(self.group_rows)):
                rows = self._read(pf, g, users=True)
                t = next_item_targets(rows["items"], rows["labels"], rows["loss_from"])
                targets = _add(targets, np.bincount(t[t > 0]))
                labels = _add(labels, np.bincount(rows["labels"].clip(min=0)))
                inputs = _add(inputs, np.bincount(rows["items"].reshape(-1).clip(min=0)))
                if self.has_now and len(rows["now"]):
                    top = int(rows["now"].max())
                    newest = top if newest is None else max(newest, top)
                users.update(rows["user_id"].tolist())
            positions = int(targets[1:].sum())
            self._stats = StreamStats(
                targets, labels, inputs, positions, newest, np.array(sorted(users), dtype=object)
            )
        return self._stats

    def target_counts(self, n_items: int) -> np.ndarray:
        """[n_items]: how often each item is a trained-on target (0 = padding, counted 0), as
        ``np.bincount(targets[targets > 0], minlength=n_items)`` of the in-memory set."""
        return _fit(self.stats().target_counts, n_items)

    def label_counts(self, n: int) -> np.ndarray:
        """[n]: examples per label."""
        return _fit(self.stats().label_counts, n)

    def head(self, n: int) -> Batch:
        """The first ``n`` rows (of the first row group) as a batch."""
        rows = next(self.chunks())
        return self._batch({k: v[:n].copy() for k, v in rows.items()})  # writable

    def _batch(self, rows: Rows) -> Batch:
        targets = None
        if self.with_targets:
            targets = torch.from_numpy(
                next_item_targets(rows["items"], rows["labels"], rows["loss_from"])
            )
        return Batch(
            items=torch.from_numpy(rows["items"]),
            types=torch.from_numpy(rows["types"]),
            times=torch.from_numpy(rows["times"]),
            targets=targets,
            labels=torch.from_numpy(rows["labels"]),
            now=torch.from_numpy(rows["now"]) if self.has_now else None,
        )

    # one epoch

    def shares(self, seed: int, size: int) -> list[list[tuple[int, int, int]]]:
        """Each rank's units ``(row group, slice, slices)``, in its reading order: the row
        groups (or, with fewer row groups than ranks, ``size`` slices of each) in an order
        drawn from ``seed``, dealt to the ranks in turn."""
        parts = 1 if len(self.group_rows) >= size else size
        units = [(g, p, parts) for g in range(len(self.group_rows)) for p in range(parts)]
        order = np.random.default_rng([seed, 0]).permutation(len(units))
        return [[units[i] for i in order[r::size]] for r in range(size)]

    def _unit_rows(self, unit: tuple[int, int, int]) -> int:
        g, p, parts = unit
        q, m = divmod(self.group_rows[g], parts)
        return q + (p < m)

    def steps(self, batch_size: int) -> int:
        """Steps of one epoch (every rank's): ``ceil(N / batch_size)``."""
        return math.ceil(len(self) / batch_size)

    def batches(
        self, batch_size: int, *, seed: int, rank: int = 0, size: int = 1
    ) -> Iterator[Batch]:
        """Rank ``rank`` of ``size``'s batches of one epoch, shuffled by ``seed``.

        With one process: ``ceil(N / batch_size)`` batches of ``batch_size`` (the last one
        short) holding every row once. With several: this rank's share, over the same number
        of steps, in batches of about ``batch_size / size``."""
        mine = self.shares(seed, size)[rank]
        have = sum(self._unit_rows(u) for u in mine)
        if have == 0:
            raise SeqrecError(
                f"training stream {self.path} has {len(self)} rows, too few for {size} "
                "training processes",
                hint="train with fewer processes (--nproc)",
            )
        local = max(1, batch_size // size + (rank < batch_size % size))
        sizes = _batch_sizes(have, self.steps(batch_size), local)
        rng = np.random.default_rng([seed, 1, rank])
        rows = _shuffled(self._units(mine), min(self.shuffle_buffer, have), rng)
        for part in _rebatch(rows, sizes):
            yield self._batch(part)

    def _units(self, units: list[tuple[int, int, int]]) -> Iterator[Rows]:
        pf = self._open()
        for g, p, parts in units:
            rows = self._read(pf, g)
            if parts > 1:
                n = len(rows["labels"])
                q, m = divmod(n, parts)
                start = p * q + min(p, m)
                stop = start + q + (p < m)
                rows = {k: v[start:stop] for k, v in rows.items()}
            yield rows


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(b) > len(a):
        a = np.concatenate([a, np.zeros(len(b) - len(a), dtype=a.dtype)])
    a[: len(b)] += b
    return a


def _fit(counts: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.int64)
    k = min(n, len(counts))
    out[:k] = counts[:k]
    return out


def _batch_sizes(rows: int, steps: int, local: int) -> list[int]:
    """``steps`` batch sizes summing to ``rows``: full batches of ``local`` and a short last
    one where that takes exactly ``steps`` batches (always so for one process), else ``rows``
    spread evenly (sizes differ by one; a 0 repeats the previous row)."""
    if (steps - 1) * local < rows <= steps * local:
        return [local] * (steps - 1) + [rows - (steps - 1) * local]
    q, m = divmod(rows, steps)
    return [q + 1] * m + [q] * (steps - m)


def _shuffled(chunks: Iterator[Rows], capacity: int, rng: np.random.Generator) -> Iterator[Rows]:
    """The rows of ``chunks`` through a shuffle buffer of ``capacity`` rows: it fills first;
    then each incoming row takes a random slot whose row is emitted; at the end the rest comes
    out in random order. Emits pieces of about a chunk's size."""
    buf: Rows = {}
    filled = 0
    for chunk in chunks:
        n = len(chunk["labels"])
        if not buf:
            buf = {k: np.empty((capacity, *v.shape[1:]), v.dtype) for k, v in chunk.items()}
        take = min(capacity - filled, n)
        for k, v in chunk.items():
            buf[k][filled : filled + take] = v[:take]
        filled += take
        start = take
        while start < n:
            r = min(n - start, capacity)
            slots = rng.choice(capacity, r, replace=False)
            yield {k: b[slots] for k, b in buf.items()}
            for k, b in buf.items():
                b[slots] = chunk[k][start : start + r]
            start += r
    if filled:
        perm = rng.permutation(filled)
        yield {k: b[:filled][perm] for k, b in buf.items()}


def _rebatch(pieces: Iterator[Rows], sizes: list[int]) -> Iterator[Rows]:
    """Batches of ``sizes`` rows cut from ``pieces`` (each row copied once); a size 0 is the
    previous batch's last row again."""
    queue: deque[Rows] = deque()
    have, offset = 0, 0  # rows queued; rows of queue[0] already used
    last: Rows = {}
    for size in sizes:
        if size == 0:
            yield last
            continue
        while have < size:
            piece = next(pieces)
            queue.append(piece)
            have += len(piece["labels"])
        parts: list[Rows] = []
        need = size
        while need:
            head = queue[0]
            n = len(head["labels"]) - offset
            k = min(n, need)
            parts.append({c: v[offset : offset + k] for c, v in head.items()})
            need -= k
            if k == n:
                queue.popleft()
                offset = 0
            else:
                offset += k
        have -= size
        out = (
            parts[0]
            if len(parts) == 1
            else {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
        )
        out = {c: np.ascontiguousarray(v) for c, v in out.items()}
        last = {c: v[-1:] for c, v in out.items()}
        yield out
