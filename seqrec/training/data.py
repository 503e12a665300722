"""Training sets from the feature store, point in time, as pre-built tensors.

Next-item, leave-one-out (RecBole's protocol): per user with n >= 3 events in total order, event n
is the test target, event n-1 the validation target, events 2..n-2 the training targets. Each
example is an entity row ``(user_id, t - 1us)`` where ``t`` is the target event's order time, so
Feast's inclusive join returns exactly the events before the target (ties on the timestamp are
ordered by import order). Training targets are covered by non-overlapping windows of L: the
window ending before target k predicts every position inside it (causal models) and k itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from sqlalchemy import Engine, func, select

from seqrec.config import Workspace
from seqrec.data.schema import event_types, items
from seqrec.errors import SeqrecError
from seqrec.features.readers import historical
from seqrec.features.snapshots import ensure_snapshot
from seqrec.features.sql import event_positions, left_pad
from seqrec.models import Batch

if TYPE_CHECKING:
    from seqrec.training.stream import StreamedSet

#: entity rows per feature join when the training set is streamed to Parquet
STREAM_CHUNK_ROWS = 50_000


def next_item_targets(
    items: np.ndarray, labels: np.ndarray, loss_from: np.ndarray | None = None
) -> np.ndarray:
    """[N, L]: the item after each position of ``items`` [N, L] (``labels`` [N] after the
    last); 0 at padding and at columns before ``loss_from`` [N] (None: none masked)."""
    targets = np.concatenate([items[:, 1:], labels[:, None]], axis=1)
    targets[items == 0] = 0
    if loss_from is not None:
        cols = np.arange(targets.shape[1])[None, :]
        targets[cols < loss_from[:, None]] = 0
    return targets


@dataclass
class SequenceSet:
    """N examples: left-padded [N, L] inputs plus a label per example."""

    user_ids: np.ndarray  # [N] object
    items: np.ndarray  # [N, L] int64
    types: np.ndarray  # [N, L] int64
    times: np.ndarray  # [N, L] int64 epoch seconds
    labels: np.ndarray  # [N] target item (next-item) or class index
    loss_from: np.ndarray | None = None  # [N] first column whose target is trained on
    now: np.ndarray | None = None  # [N] int64 epoch seconds of the example (its cutoff)

    def __len__(self) -> int:
        return len(self.labels)

    def next_item_targets(self) -> np.ndarray:
        """[N, L]: the item after each position (the label after the last); 0 at padding."""
        return next_item_targets(self.items, self.labels, self.loss_from)

    def tensors(self, with_targets: bool) -> dict[str, torch.Tensor]:
        out = {
            "items": torch.from_numpy(self.items),
            "types": torch.from_numpy(self.types),
            "times": torch.from_numpy(self.times),
            "labels": torch.from_numpy(self.labels),
        }
        if with_targets:
            out["targets"] = torch.from_numpy(self.next_item_targets())
        if self.now is not None:
            out["now"] = torch.from_numpy(self.now)
        return out

    def subset(self, idx: np.ndarray) -> SequenceSet:
        return SequenceSet(
            self.user_ids[idx],
            self.items[idx],
            self.types[idx],
            self.times[idx],
            self.labels[idx],
            None if self.loss_from is None else self.loss_from[idx],
            None if self.now is None else self.now[idx],
        )


def iter_batches(
    tensors: dict[str, torch.Tensor],
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[Batch]:
    """Batches sliced from pre-built tensors (no per-example Python work)."""
    n = len(tensors["items"])
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield Batch(
            items=tensors["items"][idx],
            types=tensors["types"][idx],
            times=tensors["times"][idx],
            targets=tensors["targets"][idx] if "targets" in tensors else None,
            labels=tensors["labels"][idx],
            now=tensors["now"][idx] if "now" in tensors else None,
        )


@dataclass
class NextItemData:
    """The leave-one-out split, plus what a model is built from."""

    train: SequenceSet
    valid: SequenceSet
    test: SequenceSet
    n_items: int
    n_event_types: int
    max_len: int
    #: the training set in Parquet, streamed ([train] stream = true); ``train`` is then empty
    train_stream: StreamedSet | None = None

    def summary(self) -> dict[str, int]:
        s = self.train_stream
        return {
            "train_examples": len(s) if s else len(self.train),
            "train_positions": (
                s.stats().positions if s else int((self.train.next_item_targets() > 0).sum())
            ),
            "valid_users": len(self.valid),
            "test_users": len(self.test),
            "items": self.n_items - 1,
        }


def vocab_sizes(engine: Engine) -> tuple[int, int]:
    """(item vocab size, event-type vocab size), both including padding index 0."""
    with engine.connect() as conn:
        n_items = conn.execute(select(func.max(items.c.item_idx))).scalar() or 0
        n_types = conn.execute(select(func.max(event_types.c.type_idx))).scalar() or 0
    return int(n_items) + 1, int(n_types) + 1


def leave_one_out_entities(
    positions: pd.DataFrame, max_len: int, stride: int | None = None
) -> pd.DataFrame:
    """Entity rows (user_id, event_timestamp, label, split, loss_from) for leave-one-out.

    Training windows end every ``stride`` events (default: ``max_len``, no overlap). With a
    smaller stride windows overlap so every target sees up to ``max_len - stride`` more events
    of context; each target is still trained on once: a window's targets before column
    ``loss_from`` are left to the earlier window that already covers them.
    """
    stride = min(stride or max_len, max_len)
    p = positions
    has_eval = p["n"] >= 3
    split = np.full(len(p), "", dtype=object)
    split[(has_eval & (p["pos"] == p["n"])).to_numpy()] = "test"
    split[(has_eval & (p["pos"] == p["n"] - 1)).to_numpy()] = "valid"
    last_train = np.where(has_eval, p["n"] - 2, p["n"])
    gap = last_train - p["pos"].to_numpy()
    is_train = (p["pos"].to_numpy() >= 2) & (gap >= 0) & (gap % stride == 0)
    split[is_train & (split == "")] = "train"
    keep = split != ""
    ent = pd.DataFrame(
        {
            "user_id": p["user_id"].to_numpy()[keep],
            "event_timestamp": pd.to_datetime(
                p["order_us"].to_numpy()[keep] - 1, unit="us", utc=True
            ),
            "label": p["item_idx"].to_numpy()[keep],
            "split": split[keep],
        }
    )
    # every training window but each user's earliest trains on its last ``stride`` targets only
    train = ent["split"] == "train"
    first = ent[train].groupby("user_id")["event_timestamp"].transform("min")
    ent["loss_from"] = 0
    ent.loc[train, "loss_from"] = np.where(
        ent.loc[train, "event_timestamp"] == first, 0, max_len - stride
    )
    ent["row_id"] = np.arange(len(ent))
    return ent


def _to_set(df: pd.DataFrame, max_len: int) -> SequenceSet:
    return SequenceSet(
        user_ids=df["user_id"].to_numpy(dtype=object),
        items=left_pad(df["item_seq"].tolist(), max_len),
        types=left_pad(df["type_seq"].tolist(), max_len),
        times=left_pad(df["ts_seq"].tolist(), max_len),
        labels=df["label"].to_numpy(dtype=np.int64),
        loss_from=df["loss_from"].to_numpy(dtype=np.int64) if "loss_from" in df else None,
        now=_epoch_seconds(df["event_timestamp"]),
    )


def concat_sets(sets: list[SequenceSet]) -> SequenceSet:
    """One SequenceSet of ``sets``' rows, in order (at least one set)."""
    if len(sets) == 1:
        return sets[0]

    def cat(name: str) -> Any:
        cols = [getattr(x, name) for x in sets]
        return None if any(c is None for c in cols) else np.concatenate(cols)

    return SequenceSet(
        *(cat(f) for f in ("user_ids", "items", "types", "times", "labels", "loss_from", "now"))
    )


def _epoch_seconds(ts: pd.Series) -> np.ndarray:
    """Entity times (UTC, one microsecond before the cutoff) -> [N] int64 epoch seconds of the
    cutoff, floored like the event times of ``ts_seq``."""
    us = (pd.to_datetime(ts, utc=True) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(1, "us")
    return np.asarray((us.to_numpy(dtype=np.int64) + 1) // 1_000_000, dtype=np.int64)


@dataclass(frozen=True)
class StreamTarget:
    """Where and how a streamed training set is written ([train] stream = true).

    ``write``: build and write it (rank 0); else open the file rank 0 wrote."""

    path: Path
    row_group: int
    shuffle_buffer: int
    write: bool = True


def join_sets(
    ws: Workspace,
    entities: pd.DataFrame,
    max_len: int,
    stream: StreamTarget | None,
    *,
    with_targets: bool,
    check: bool = True,
) -> tuple[dict[str, SequenceSet], StreamedSet | None]:
    """The train/valid/test sets of ``entities`` (column ``split``) through the point-in-time
    join. With ``stream``, the training rows are joined :data:`STREAM_CHUNK_ROWS` at a time and
    appended to a Parquet file, so they never sit in memory together; ``"train"`` is then
    empty and the StreamedSet reads them. ``check``: the join returns every entity row."""
    from seqrec.training.stream import StreamedSet, StreamWriter

    def join(ent: pd.DataFrame) -> pd.DataFrame:
        if not len(ent) and stream is not None:
            return ent.assign(item_seq=[], type_seq=[], ts_seq=[])
        joined = historical(ws, ent).sort_values("row_id").reset_index(drop=True)
        if check and len(joined) != len(ent):
            raise SeqrecError(f"feature join returned {len(joined)} rows for {len(ent)} entities")
        return joined

    is_train = entities["split"] == "train"
    splits = ("train", "valid", "test")
    pieces: dict[str, list[SequenceSet]] = {s: [] for s in splits}
    in_memory = entities if stream is None else entities[~is_train]
    for start in range(0, max(len(in_memory), 1), STREAM_CHUNK_ROWS):
        # a chunk at a time: the join's list columns never hold every row at once
        joined = join(in_memory.iloc[start : start + STREAM_CHUNK_ROWS])
        for s in splits:
            pieces[s].append(_to_set(joined[joined["split"] == s], max_len))
    parts = {s: concat_sets(pieces[s]) for s in splits}
    if stream is None:
        return parts, None
    read: dict[str, Any] = {"with_targets": with_targets, "shuffle_buffer": stream.shuffle_buffer}
    if not stream.write:
        return parts, StreamedSet(stream.path, **read)
    train = entities[is_train]
    with StreamWriter(stream.path, max_len, stream.row_group) as writer:
        for start in range(0, len(train), STREAM_CHUNK_ROWS):
            writer.append(_to_set(join(train.iloc[start : start + STREAM_CHUNK_ROWS]), max_len))
        return parts, writer.close(**read)


def build_next_item_data(
    ws: Workspace,
    engine: Engine | None = None,
    stride: int | None = None,
    stream: StreamTarget | None = None,
    splits: tuple[str, ...] | None = None,
) -> NextItemData:
    """Leave-one-out train/valid/test sets through Feast's point-in-time join; with
    ``stream``, the training set goes to Parquet (:func:`join_sets`). ``splits``: build only
    these (the others are empty), e.g. ``("test",)`` to evaluate."""
    engine = engine or ws.engine
    ensure_snapshot(ws, engine)
    max_len = ws.config.features.max_len
    stride = min(stride or ws.config.train.window_stride or max_len, max_len)
    if ws.is_spark:  # positions computed by Spark over the exported events
        from seqrec.features.spark.training import event_positions as spark_positions

        positions = spark_positions(ws, stride)
    else:
        positions = event_positions(engine, stride)
    entities = leave_one_out_entities(positions, max_len, stride)
    if splits is not None:
        entities = entities[entities["split"].isin(splits)]
    if (splits is None or "train" in splits) and not (entities["split"] == "train").any():
        raise SeqrecError(
            "not enough events to train: every user needs at least 3 events for leave-one-out"
        )
    parts, streamed = join_sets(ws, entities, max_len, stream, with_targets=True)
    n_items, n_types = vocab_sizes(engine)
    return NextItemData(
        parts["train"], parts["valid"], parts["test"], n_items, n_types, max_len, streamed
    )


@dataclass
class ClassificationData:
    """Time-split classification sets (features strictly before each cutoff)."""

    train: SequenceSet
    valid: SequenceSet
    test: SequenceSet
    n_items: int
    n_event_types: int
    max_len: int
    n_classes: int
    class_names: list[str]
    label: str
    #: the training set in Parquet, streamed ([train] stream = true); ``train`` is then empty
    train_stream: StreamedSet | None = None

    def train_label_counts(self) -> np.ndarray:
        """[n_classes] training examples per class."""
        if self.train_stream:
            return self.train_stream.label_counts(self.n_classes)
        return np.bincount(self.train.labels, minlength=self.n_classes)

    def summary(self) -> dict[str, Any]:
        counts = self.train_label_counts().tolist()
        return {
            "label": self.label,
            "train_examples": len(self.train_stream) if self.train_stream else len(self.train),
            "valid_examples": len(self.valid),
            "test_examples": len(self.test),
            "train_class_counts": counts,
            "items": self.n_items - 1,
        }


def build_classification_data(
    ws: Workspace,
    label_text: str,
    engine: Engine | None = None,
    train_cutoffs: int = 4,
    stream: StreamTarget | None = None,
) -> ClassificationData:
    """Classification sets for ``label_text`` via Feast's point-in-time join; with
    ``stream``, the training set goes to Parquet (:func:`join_sets`)."""
    from seqrec.training.labels import entity_frame, event_type_names, parse_label

    engine = engine or ws.engine
    label = parse_label(label_text)
    ensure_snapshot(ws, engine)
    max_len = ws.config.features.max_len
    if ws.is_spark:  # labels computed by Spark over the exported events
        from seqrec.features.spark.training import entity_frame as spark_entities
        from seqrec.features.sql import purchase_idx

        entities = spark_entities(ws, label, purchase_idx(engine), train_cutoffs)
    else:
        entities = entity_frame(engine, label, train_cutoffs)
    parts, streamed = join_sets(ws, entities, max_len, stream, with_targets=False, check=False)
    n_items, n_types = vocab_sizes(engine)
    if label.binary:
        names = ["no", "yes"] if label.kind == "purchase-within" else ["stays", "churns"]
    else:
        names = event_type_names(engine)
    for split, part in parts.items():
        if len(part) == 0 and not (split == "train" and streamed):
            raise SeqrecError(f"no {split} examples for label '{label_text}'")
    train_labels = (
        np.flatnonzero(streamed.label_counts(len(names))) if streamed else parts["train"].labels
    )
    if len(np.unique(train_labels)) < 2:
        raise SeqrecError(
            f"label '{label_text}' has a single class in the training data",
            hint="choose another horizon or label",
        )
    return ClassificationData(
        parts["train"],
        parts["valid"],
        parts["test"],
        n_items,
        n_types,
        max_len,
        len(names),
        names,
        label_text,
        streamed,
    )
