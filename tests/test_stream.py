"""Training sets streamed from Parquet ([train] stream = true): every row once per epoch in a
seeded order, disjoint DDP shares with equal steps, reading memory bounded by the shuffle buffer
(not the file), clear errors for a missing or damaged file, and training that matches the
in-memory path.

Tolerance of the training comparison: a tiny lstm trained on the same data streamed and in
memory sees the batches in another order (the stream shuffles row groups and within a buffer),
so its validation metrics differ by the noise of the order, not by a bug: within
``METRIC_TOLERANCE`` (absolute) of ndcg@10 and hit@10 on the synthetic log's 120 users.
"""

from __future__ import annotations

import itertools
import math
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from seqrec.config import Workspace
from seqrec.errors import SeqrecError
from seqrec.features.repo import apply
from seqrec.models import ModelContext, get_spec
from seqrec.pipeline import STREAM_FILE, build_data, stream_target, train_model
from seqrec.testing import load_synth, make_workspace
from seqrec.training.data import SequenceSet
from seqrec.training.stream import StreamedSet, write_stream
from seqrec.training.trainer import TrainSettings, train

METRIC_TOLERANCE = 0.05
L = 6


def _set(n: int, seed: int = 0, start: int = 0) -> SequenceSet:
    """``n`` distinct rows: column 0 of ``times`` is the row's number (``start`` + i)."""
    rng = np.random.default_rng(seed)
    items = rng.integers(0, 40, (n, L))
    items[:, 0] = 0
    times = rng.integers(1, 10**9, (n, L))
    times[:, 0] = np.arange(start, start + n)
    return SequenceSet(
        user_ids=np.array([f"u{i % 17}" for i in range(start, start + n)], dtype=object),
        items=items,
        types=rng.integers(1, 4, (n, L)),
        times=times,
        labels=rng.integers(1, 40, n),
        loss_from=rng.integers(0, 3, n),
        now=rng.integers(1, 10**9, n),
    )


def _rows(batches: list[dict[str, torch.Tensor]]) -> Counter[tuple[int, ...]]:
    """The multiset of rows (every column of a row, flattened)."""
    cols = [torch.cat([b[k] for b in batches]) for k in ("items", "types", "times", "targets")]
    cols += [torch.cat([b[k] for b in batches])[:, None] for k in ("labels", "now")]
    return Counter(map(tuple, torch.cat(cols, dim=1).tolist()))


def _epoch(s: StreamedSet, batch: int, seed: int, rank: int = 0, size: int = 1) -> list:
    return [
        {"items": b.items, "types": b.types, "times": b.times, "targets": b.targets,
         "labels": b.labels, "now": b.now}
        for b in s.batches(batch, seed=seed, rank=rank, size=size)
    ]  # fmt: skip


def _order(batches: list[dict[str, torch.Tensor]]) -> list[int]:
    return torch.cat([b["times"][:, 0] for b in batches]).tolist()


@pytest.fixture
def whole() -> SequenceSet:
    return _set(1_003)


@pytest.fixture
def streamed(whole: SequenceSet, tmp_path: Path) -> StreamedSet:
    parts = [whole.subset(np.arange(a, min(a + 150, len(whole)))) for a in range(0, 1_003, 150)]
    return write_stream(tmp_path / "t.parquet", parts, L, row_group=100, shuffle_buffer=128)


def test_an_epoch_streams_every_row_of_the_in_memory_set_once(
    whole: SequenceSet, streamed: StreamedSet
) -> None:
    t = whole.tensors(with_targets=True)
    expected = _rows([{k: t[k] for k in ("items", "types", "times", "targets", "labels", "now")}])
    epoch = _epoch(streamed, 64, seed=3)
    assert _rows(epoch) == expected
    sizes = [len(b["labels"]) for b in epoch]
    assert sizes == [64] * 15 + [1_003 - 15 * 64]  # as iter_batches slices the tensors


def test_the_order_is_the_seeds_and_differs_across_seeds(streamed: StreamedSet) -> None:
    a, again, b = (_order(_epoch(streamed, 64, seed=s)) for s in (3, 3, 4))
    assert a == again
    assert a != b and sorted(a) == sorted(b)
    # rows are shuffled within the buffer: few neighbours in the epoch are neighbours in the file
    assert sum(y == x + 1 for x, y in itertools.pairwise(a)) < len(a) // 20


@pytest.mark.parametrize("size", [2, 3, 16])
def test_ranks_read_disjoint_shares_of_the_set_in_equal_steps(
    streamed: StreamedSet, size: int
) -> None:
    """Shares by row group (11 groups; 16 ranks split each group in 16 slices)."""
    epochs = [_epoch(streamed, 64, seed=9, rank=r, size=size) for r in range(size)]
    assert {len(e) for e in epochs} == {math.ceil(1_003 / 64)}
    rows = [r for e in epochs for r in _order(e)]
    if size < 16:  # no rank needed to repeat a row for an empty batch
        assert sorted(rows) == list(range(1_003))
    assert set(rows) == set(range(1_003))
    shares = [set(_order(e)) for e in epochs]
    assert sum(map(len, shares)) == 1_003  # disjoint
    assert all(len(b["labels"]) <= math.ceil(64 / size) + 100 for e in epochs for b in e)


def test_streaming_statistics_match_the_in_memory_set(
    whole: SequenceSet, streamed: StreamedSet
) -> None:
    targets = whole.next_item_targets()
    counts = np.bincount(targets[targets > 0], minlength=40)
    assert np.array_equal(streamed.target_counts(40), counts)
    stats = streamed.stats()
    assert stats.positions == int((targets > 0).sum())
    assert stats.newest_now == int(whole.now.max())  # type: ignore[union-attr]
    assert sorted(stats.user_ids) == sorted(set(whole.user_ids))


def _peak_bytes(path: Path, n: int, buffer: int) -> int:
    """Peak traced memory of one streamed epoch of an ``n``-row file (written in parts)."""
    parts = (_set(min(500, n - a), seed=a, start=a) for a in range(0, n, 500))
    s = write_stream(path, parts, L, row_group=128, shuffle_buffer=buffer)
    tracemalloc.start()
    try:
        for batch in s.batches(32, seed=0):
            del batch
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_reading_memory_grows_with_the_buffer_not_the_file(tmp_path: Path) -> None:
    row = (3 * L + 3) * 8  # bytes of one row's int64 columns
    small = _peak_bytes(tmp_path / "a.parquet", 2_000, 256)
    large = _peak_bytes(tmp_path / "b.parquet", 20_000, 256)
    # buffer + a row group in flight + its emitted copy + a batch and its targets, with room
    bound = (256 + 4 * 128 + 2 * 32) * row * 2
    assert large <= bound < 20_000 * row // 2
    assert large <= small * 1.25
    bigger_buffer = _peak_bytes(tmp_path / "c.parquet", 20_000, 4_096)
    assert bigger_buffer > 4_096 * row > large


def test_a_missing_stream_is_an_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(SeqrecError, match=r"training stream .*nowhere\.parquet does not exist"):
        StreamedSet(tmp_path / "nowhere.parquet")


def test_a_damaged_stream_is_an_error_naming_the_file(
    streamed: StreamedSet, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all" * 10)
    with pytest.raises(SeqrecError, match=r"training stream .*garbage\.parquet cannot be read"):
        StreamedSet(garbage)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(streamed.path.read_bytes()[:-100])
    with pytest.raises(SeqrecError, match=r"truncated\.parquet cannot be read"):
        StreamedSet(truncated)
    # damaged data pages behind an intact footer: the error comes while reading
    data = bytearray(streamed.path.read_bytes())
    data[200:4_000] = bytes(3_800)
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(bytes(data))
    with pytest.raises(SeqrecError, match=r"damaged\.parquet cannot be read"):
        list(StreamedSet(damaged).batches(64, seed=0))


def test_a_damaged_user_id_column_is_an_error_naming_the_file_in_statistics(
    tmp_path: Path,
) -> None:
    """Only the user_id column's pages are damaged: batches never read it, statistics do."""
    import pyarrow.parquet as pq

    s = write_stream(tmp_path / "t.parquet", [_set(300)], L, row_group=100)
    chunk = pq.read_metadata(s.path).row_group(0).column(0)
    assert chunk.path_in_schema == "user_id"
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(s.path.read_bytes())
    data[start : start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    damaged = tmp_path / "users-damaged.parquet"
    damaged.write_bytes(bytes(data))
    stream = StreamedSet(damaged)
    assert sum(len(b.labels) for b in stream.batches(64, seed=0)) == 300
    with pytest.raises(SeqrecError, match=r"users-damaged\.parquet cannot be read"):
        stream.stats()


def test_a_parquet_file_that_is_not_a_stream_is_refused(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), other)
    with pytest.raises(SeqrecError, match=r"other\.parquet is not a seqrec training stream"):
        StreamedSet(other)


def test_a_statistics_model_is_refused_with_a_stream(streamed: StreamedSet) -> None:
    model = get_spec("popularity").make(ModelContext(n_items=40, n_event_types=4, max_len=L))
    with pytest.raises(SeqrecError, match=r"popularity.*stream = true"):
        train(model, streamed, lambda m, d: {"ndcg@10": 0.0}, TrainSettings(epochs=1))


# end to end: the feature build writes the stream, the trainer reads it


@pytest.fixture(scope="module")
def synth_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """120 users, 60 items; lstm trained in memory and streamed (small row groups, buffer)."""
    ws = make_workspace(tmp_path_factory.mktemp("stream") / "ws", "[train]\nnum_threads = 1\n")
    load_synth(ws, users=120, items=60)
    apply(ws)
    return ws


def _streaming(ws: Workspace) -> Workspace:
    """``ws`` with [train] stream = true (small row groups and buffer), same directory."""
    train = ws.config.train.model_copy(
        update={"stream": True, "shuffle_buffer": 64, "stream_row_group": 32}
    )
    return Workspace(ws.root, ws.config.model_copy(update={"train": train}))


def test_a_streamed_build_summarises_like_the_in_memory_one(
    synth_ws: Workspace, tmp_path: Path
) -> None:
    memory = build_data(synth_ws, "next-item", None)
    stream_ws = _streaming(synth_ws)
    target = stream_target(stream_ws, tmp_path)
    assert target is not None and target.path == tmp_path / STREAM_FILE
    streamed = build_data(stream_ws, "next-item", None, stream=target)
    assert streamed.train_stream is not None and len(streamed.train) == 0
    assert streamed.summary() == memory.summary()
    assert len(streamed.train_stream.group_rows) > 3
    assert np.array_equal(streamed.valid.items, memory.valid.items)
    t = memory.train.tensors(with_targets=True)
    rows = _rows([{k: t[k] for k in ("items", "types", "times", "targets", "labels", "now")}])
    assert _rows(_epoch(streamed.train_stream, 32, seed=0)) == rows


def test_a_streamed_lstm_validates_close_to_the_in_memory_one(synth_ws: Workspace) -> None:
    common = {"epochs": 4, "seed": 3, "progress": False, "overrides": {"batch_size": 32}}
    memory = train_model(synth_ws, "lstm", run_dir=synth_ws.root / "runs" / "mem", **common)
    stream_ws = _streaming(synth_ws)
    run_dir = stream_ws.root / "runs" / "stream"
    streamed = train_model(stream_ws, "lstm", run_dir=run_dir, **common)
    assert (run_dir / STREAM_FILE).is_file()
    assert streamed.data == memory.data and streamed.stats == memory.stats
    for metric in ("ndcg@10", "recall@10"):
        assert abs(streamed.valid[metric] - memory.valid[metric]) <= METRIC_TOLERANCE, metric
    again = train_model(stream_ws, "lstm", run_dir=stream_ws.root / "runs" / "again", **common)
    assert again.valid == streamed.valid  # the same seed, the same run
