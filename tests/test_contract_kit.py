"""The contract kit (seqrec.testing.check_plugin and its checks): a good model passes every
check, and each check fails on a model broken in the one way that check is for."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from seqrec.errors import SeqrecError
from seqrec.hookspecs import hookimpl
from seqrec.models import Batch, ItemFactors, ModelContext, ModelSpec, SeqModel
from seqrec.plugins import get_plugin_manager
from seqrec.testing import (
    check_batch_independence,
    check_deterministic,
    check_left_padding,
    check_model_contract,
    check_padding_never_ranked,
    check_plugin,
    check_tasks,
    check_traceable,
    check_vocab_growth,
)

D = 16


class Bigram(SeqModel):
    """A good model: the next item from the newest one (input and output embeddings)."""

    def __init__(self, ctx: ModelContext):
        super().__init__(ctx)
        self.inp = nn.Embedding(ctx.n_items, D, padding_idx=0)
        self.outp = nn.Embedding(ctx.n_items, D)
        self.head = nn.Linear(D, ctx.n_classes) if ctx.task == "classify" else None

    def next_item_loss(self, batch: Batch) -> Tensor:
        assert batch.targets is not None
        sel = batch.targets > 0
        return self.item_loss(self.inp(batch.items)[sel], batch.targets[sel], self.outp.weight)

    def next_item_scores(self, batch: Batch) -> Tensor:
        scores = self.inp(batch.items[:, -1]) @ self.outp.weight.T
        scores[:, 0] = torch.finfo(scores.dtype).min
        return scores

    def class_logits(self, batch: Batch) -> Tensor:
        assert self.head is not None
        return self.head(self.inp(batch.items[:, -1]))


class MeanOfSlice(Bigram):
    """Broken for tracing: the slice length is read from the data as a Python int, so a
    trace keeps the length of the batch it was traced on."""

    def next_item_scores(self, batch: Batch) -> Tensor:
        n = int(batch.mask.sum(1).max())
        h = self.inp(batch.items[:, -n:]).mean(1)
        scores = h @ self.outp.weight.T
        scores[:, 0] = torch.finfo(scores.dtype).min
        return scores


class MeanOfSliceEager(MeanOfSlice):
    """The same model, declared not traceable: the service runs it eagerly."""

    traceable = False


class UnsavedScale(Bigram):
    """Broken for save/load: a random scale kept in a plain attribute, not a buffer."""

    def __init__(self, ctx: ModelContext):
        super().__init__(ctx)
        self.scale = 1.0 + torch.rand(())

    def next_item_scores(self, batch: Batch) -> Tensor:
        scores = self.inp(batch.items[:, -1]) @ self.outp.weight.T * self.scale
        scores[:, 0] = torch.finfo(scores.dtype).min
        return scores


class NumpyInit(Bigram):
    """Broken for determinism: initialised from numpy's global RNG, which no seed reaches."""

    def __init__(self, ctx: ModelContext):
        super().__init__(ctx)
        with torch.no_grad():
            self.outp.weight.copy_(torch.from_numpy(np.random.randn(ctx.n_items, D)))


class CountsWithPadding(SeqModel):
    """Broken for padding: a popularity count whose column 0 counts every padded position."""

    def __init__(self, ctx: ModelContext):
        super().__init__(ctx)
        self.counts: Tensor
        self.register_buffer("counts", torch.zeros(ctx.n_items))

    def fit_statistics(self, items: Tensor, targets: Tensor) -> None:
        self.counts.copy_(torch.bincount(targets.reshape(-1), minlength=self.ctx.n_items))

    def next_item_scores(self, batch: Batch) -> Tensor:
        return self.counts.expand(len(batch.items), -1).clone()


class Counts(CountsWithPadding):
    """The same count, padding excluded: it passes."""

    def next_item_scores(self, batch: Batch) -> Tensor:
        scores = super().next_item_scores(batch)
        scores[:, 0] = torch.finfo(scores.dtype).min
        return scores


class BatchNormalised(Bigram):
    """Broken for batch independence: scores centred on the batch's mean."""

    def next_item_scores(self, batch: Batch) -> Tensor:
        scores = self.inp(batch.items[:, -1]) @ self.outp.weight.T
        scores = scores - scores.mean(0, keepdim=True)
        scores[:, 0] = torch.finfo(scores.dtype).min
        return scores


class ItemsAlongColumns(Bigram):
    """Broken for vocabulary growth: output embeddings stored [d, n_items], items along the
    columns, so a warm start cannot keep the known items' rows."""

    def __init__(self, ctx: ModelContext):
        super().__init__(ctx)
        self.outp_t = nn.Parameter(torch.randn(D, ctx.n_items) * 0.1)

    def next_item_loss(self, batch: Batch) -> Tensor:
        assert batch.targets is not None
        sel = batch.targets > 0
        return self.item_loss(self.inp(batch.items)[sel], batch.targets[sel], self.outp_t.T)

    def next_item_scores(self, batch: Batch) -> Tensor:
        scores = self.inp(batch.items[:, -1]) @ self.outp_t
        scores[:, 0] = torch.finfo(scores.dtype).min
        return scores


class ColumnPositions(Bigram):
    """Broken for left padding: a position embedding indexed by the column, so the same
    events score differently behind more padding."""

    def __init__(self, ctx: ModelContext):
        super().__init__(ctx)
        self.pos = nn.Embedding(ctx.max_len, D)

    def next_item_scores(self, batch: Batch) -> Tensor:
        last = batch.items.shape[1] - 1
        h = self.inp(batch.items[:, -1]) + self.pos.weight[last]
        scores = h @ self.outp.weight.T
        scores[:, 0] = torch.finfo(scores.dtype).min
        return scores


class PackedGRU(Bigram):
    """Broken for rows of only padding: packs sequences by length, and a length of 0 fails."""

    def __init__(self, ctx: ModelContext):
        super().__init__(ctx)
        self.gru = nn.GRU(D, D, batch_first=True)

    def next_item_scores(self, batch: Batch) -> Tensor:
        lengths = batch.mask.sum(1)
        right = torch.stack([row.roll(int(n)) for row, n in zip(batch.items, lengths, strict=True)])
        packed = nn.utils.rnn.pack_padded_sequence(
            self.inp(right), lengths, batch_first=True, enforce_sorted=False
        )
        h = self.gru(packed)[1][-1]
        scores = h @ self.outp.weight.T
        scores[:, 0] = torch.finfo(scores.dtype).min
        return scores


class NextItemOnly(Bigram):
    """Broken for its declared tasks: registered for classify, without class_logits."""

    class_logits = SeqModel.class_logits


class FactorsWithoutTheOutputRows(Bigram):
    """Broken factors: ``next_item_factors`` hands out the input embeddings as the item rows,
    so chunked top-k and ANN would rank by other scores than ``next_item_scores``."""

    def next_item_factors(self, batch: Batch) -> ItemFactors:
        return ItemFactors(self.inp(batch.items[:, -1]), self.inp.weight)


BOTH = ("next-item", "classify")
MODELS: dict[str, tuple[Callable[[ModelContext], SeqModel], tuple[str, ...]]] = {
    "good": (Bigram, BOTH),
    "untraceable": (MeanOfSlice, ("next-item",)),
    "eager": (MeanOfSliceEager, ("next-item",)),
    "unsaved": (UnsavedScale, ("next-item",)),
    "numpy-init": (NumpyInit, BOTH),
    "counts-padding": (CountsWithPadding, ("next-item",)),
    "counts": (Counts, ("next-item",)),
    "batch-normalised": (BatchNormalised, ("next-item",)),
    "items-along-columns": (ItemsAlongColumns, ("next-item",)),
    "next-item-only": (NextItemOnly, BOTH),
    "column-positions": (ColumnPositions, ("next-item",)),
    "packed-gru": (PackedGRU, ("next-item",)),
    "wrong-factors": (FactorsWithoutTheOutputRows, ("next-item",)),
}


class KitModels:
    @hookimpl
    def register_models(self, register: Callable[[ModelSpec], None]) -> None:
        for name, (build, tasks) in MODELS.items():
            register(ModelSpec(name=name, build=build, tasks=tasks))


@pytest.fixture(autouse=True)
def _kit_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process-wide manager (fresh per test) with only the defaults and these models."""
    monkeypatch.setenv("SEQREC_LOAD_PLUGINS", "")
    get_plugin_manager().register(KitModels(), name="kit")
    yield


def test_good_model_passes_every_check() -> None:
    check_plugin("good")


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(SeqrecError, match="no model named 'nosuch'"):
        check_plugin("nosuch")


def test_check_plugin_names_the_failed_check_and_plugin() -> None:
    with pytest.raises(AssertionError, match=r"check_traceable failed for model 'untraceable' "):
        check_plugin("untraceable")


def test_traceable_fails_when_the_trace_differs_from_eager() -> None:
    with pytest.raises(AssertionError, match="traced scores differ from eager") as exc:
        check_traceable("untraceable")
    assert "traceable = False" in str(exc.value)  # the way out is named


def test_traceable_passes_a_model_declared_not_traceable() -> None:
    check_traceable("eager")


def test_round_trip_fails_for_state_outside_parameters_and_buffers() -> None:
    with pytest.raises(AssertionError, match="save/load round trip changes the scores"):
        check_model_contract("unsaved")


def test_contract_fails_for_item_factors_that_do_not_give_the_scores() -> None:
    with pytest.raises(AssertionError, match=r"next_item_factors.*are not"):
        check_model_contract("wrong-factors")


def test_deterministic_fails_for_numpy_initialisation() -> None:
    with pytest.raises(AssertionError, match="not deterministic under a seed"):
        check_deterministic("numpy-init")


def test_declared_task_without_implementation_fails() -> None:
    with pytest.raises(AssertionError, match=r"next-item-only/classify: declared task not"):
        check_tasks("next-item-only")
    check_tasks("good")  # both tasks implemented


def test_tasks_fails_when_a_row_of_only_padding_breaks_score() -> None:
    with pytest.raises(AssertionError, match="a row of only padding fails: RuntimeError"):
        check_tasks("packed-gru")


def test_padding_fails_when_column_zero_ranks() -> None:
    with pytest.raises(AssertionError, match="padding is ranked") as exc:
        check_padding_never_ranked("counts-padding")
    assert "finfo" in str(exc.value)
    check_padding_never_ranked("counts")


def test_batch_independence_fails_for_batch_dependent_scores() -> None:
    with pytest.raises(AssertionError, match="batch-normalised/next-item row"):
        check_batch_independence("batch-normalised")


def test_left_padding_fails_for_positions_counted_from_the_column() -> None:
    with pytest.raises(AssertionError, match="scores depend on left padding"):
        check_left_padding("column-positions")


def test_vocab_growth_fails_when_items_are_not_the_first_dimension() -> None:
    with pytest.raises(AssertionError, match="outp_t: known rows not kept"):
        check_vocab_growth("items-along-columns")


def test_every_check_runs_each_declared_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """check_plugin builds the model for every task the spec declares."""
    built: list[str] = []

    def build(ctx: ModelContext) -> SeqModel:
        built.append(ctx.task)
        return Bigram(ctx)

    monkeypatch.setitem(MODELS, "spy", (build, BOTH))
    get_plugin_manager().unregister(name="kit")
    get_plugin_manager().register(KitModels(), name="kit")
    check_plugin("spy")
    assert {"next-item", "classify"} <= set(built)
    assert built.count("classify") >= 5  # tasks, contract, determinism, trace, batch, growth


def test_scores_close_allows_rounding_in_units_of_the_rows_largest_score() -> None:
    from seqrec.contract import scores_close

    low = torch.finfo(torch.float32).min
    want = torch.tensor([[low, 5.0, -0.3, 2.0]])
    assert scores_close(want + torch.tensor([[0.0, 0.0, 2e-6, 0.0]]), want)  # < 1e-6 x 5
    assert not scores_close(want + torch.tensor([[0.0, 0.0, 1e-4, 0.0]]), want)
    small = torch.tensor([[low, 0.5, -0.3]])  # the scale is at least 1
    assert not scores_close(small + torch.tensor([[0.0, 0.0, 2e-6]]), small)
    padding_scored = want.clone()
    padding_scored[0, 0] = 0.0
    assert not scores_close(padding_scored, want)
