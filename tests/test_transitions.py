"""The learned transition bias (``transition_bias=true``, seqrec.transitions): exact successor
counts (in memory, chunked and streamed alike), each training position's own transition left
out of its features, scores that equal the factored and chunked ranking, a save/load round trip
that resizes the counts, a warm start that refits them instead of copying, and a table that
learns to trust counted successors on a log that follows them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from seqrec.errors import SeqrecError
from seqrec.evaluation.topk import chunked_topk
from seqrec.models import (
    Batch,
    ModelContext,
    get_spec,
    load_weights,
    newest_distance,
    save_weights,
)
from seqrec.training.data import SequenceSet
from seqrec.training.stream import write_stream
from seqrec.training.trainer import TrainSettings, train
from seqrec.transitions import COUNT_BUCKETS, PairCounter, TransitionBias

V = 12


def _pairs(seed: int = 0, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, n), rng.integers(0, V, n)


def test_successor_counts_match_a_plain_count_with_the_top_cut_and_totals() -> None:
    prev, nxt = _pairs()
    counter = PairCounter(V)
    counter.add(prev, nxt)
    ptr, item, count, total = counter.table(top=3)
    real = (prev > 0) & (nxt > 0)
    expected = Counter(zip(prev[real].tolist(), nxt[real].tolist(), strict=True))
    for i in range(V):
        mine = sorted(
            ((c, j) for (a, j), c in expected.items() if a == i), key=lambda t: (-t[0], t[1])
        )
        expected_row = mine[:3]
        row = slice(ptr[i], ptr[i + 1])
        got = list(zip(count[row].tolist(), item[row].tolist(), strict=True))
        assert got == [(float(c), j) for c, j in expected_row], i
        assert total[i] == sum(c for c, _ in mine)  # cut-off successors still count
    assert item[-1] == 0 and count[-1] == 0  # the sentinel


def test_counting_in_chunks_equals_counting_at_once() -> None:
    prev, nxt = _pairs(n=1_000)
    once = PairCounter(V)
    once.add(prev, nxt)
    chunked = PairCounter(V)
    for a in range(0, 1_000, 97):
        chunked.add(prev[a : a + 97], nxt[a : a + 97])
    for x, y in zip(once.table(), chunked.table(), strict=True):
        assert np.array_equal(x, y)


def _expected(bias: TransitionBias, count: int, total: int) -> float:
    a, s = bias.table[min(int(np.log2(count)), COUNT_BUCKETS - 1)].tolist()
    return a + s * float(np.log2(count / total))


def test_a_training_position_leaves_its_own_transition_out() -> None:
    bias = TransitionBias(V)
    # 1 -> 2 once, 1 -> 3 three times: four transitions out of item 1
    bias.fit(torch.tensor([[1, 1, 1, 1]]), torch.tensor([[2, 3, 3, 3]]))
    with torch.no_grad():
        bias.table.copy_(torch.arange(COUNT_BUCKETS * 2).view_as(bias.table) + 1.0)
    prev = torch.tensor([1, 1])
    cols, vals = bias.offsets(prev)  # serving: every count
    row = dict(zip(cols[0].tolist(), vals[0].tolist(), strict=False))
    assert row[3] == pytest.approx(_expected(bias, 3, 4))
    assert row[2] == pytest.approx(_expected(bias, 1, 4))
    cols, vals = bias.offsets(prev, targets=torch.tensor([2, 3]))
    first = dict(zip(cols[0].tolist(), vals[0].tolist(), strict=False))
    second = dict(zip(cols[1].tolist(), vals[1].tolist(), strict=False))
    # target 2: its one count is its own, so no offset; 1 -> 3 is now 3 of 3
    assert 2 not in first and first[3] == pytest.approx(_expected(bias, 3, 3))
    # target 3: 2 of 3 left; 1 -> 2 is 1 of 3
    assert second[3] == pytest.approx(_expected(bias, 2, 3))
    assert second[2] == pytest.approx(_expected(bias, 1, 3))
    # an item with no successors (or padding) gets none
    cols, vals = bias.offsets(torch.tensor([0, 5]))
    assert not vals.any() and not cols.any()


def _model(**params: object) -> tuple[torch.nn.Module, ModelContext]:
    ctx = ModelContext(
        n_items=V, n_event_types=3, max_len=6, params={"transition_bias": True, **params}
    )
    return get_spec("gpt2").make(ctx), ctx


def _batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, V, (8, 6), generator=g)
    items[:2, :2] = 0  # left padding
    targets = torch.cat([items[:, 1:], torch.randint(1, V, (8, 1), generator=g)], 1)
    targets[items == 0] = 0
    times = torch.arange(6).expand(8, 6) * 60 + 1
    return Batch(items, torch.ones_like(items), times * (items > 0), targets)


def _fitted() -> tuple[torch.nn.Module, Batch]:
    """A gpt2 with the transition bias, its counts fitted on ``_batch()``, a random table."""
    torch.manual_seed(0)
    model, _ = _model()
    batch = _batch()
    model.fit_statistics(batch.items, batch.targets)
    with torch.no_grad():
        model.transitions.table.normal_()
    return model, batch


def test_scores_factors_and_chunked_topk_agree_with_the_transition_offsets() -> None:
    model, batch = _fitted()
    with torch.no_grad():
        model.repeat_bias.normal_()  # an item may be both seen and a successor: both add
    model.eval()
    with torch.no_grad():
        full = model.score(batch)
        f = model.next_item_factors(batch)
        plain = f.hidden @ f.items.T
        top = chunked_topk(f.hidden, f.items, 5, history=f.history, repeat=f.repeat, chunk_items=4)
    # the offsets land on the newest item's counted successors, and only there
    cols, vals = model.transitions.offsets(batch.items[:, -1])
    rep = model.repeat_scores(batch.items, newest_distance(batch.items))
    both = (cols[:, :, None] == batch.items[:, None, :]) & (cols[:, :, None] > 0)
    assert both.any()  # the case is there
    expected = plain.scatter_add(1, cols, vals).scatter_add(1, batch.items, rep)
    assert torch.allclose(full[:, 1:], expected[:, 1:], atol=1e-5)
    assert torch.allclose(top.scores, full.topk(5).values, atol=1e-5)


def test_a_saved_model_loads_its_counts_whatever_their_size(tmp_path: Path) -> None:
    model, batch = _fitted()
    model.eval()
    save_weights(model, tmp_path / "m")
    loaded = load_weights(tmp_path / "m")
    assert loaded.transitions.succ_item.shape == model.transitions.succ_item.shape
    with torch.no_grad():
        assert torch.equal(loaded.score(batch), model.score(batch))


def test_a_warm_start_refits_the_counts_and_keeps_the_learned_table() -> None:
    torch.manual_seed(0)
    old, _ = _model()
    old.fit_statistics(_batch(0).items, _batch(0).targets)
    with torch.no_grad():
        old.transitions.table.fill_(2.0)
    new, ctx = _model()
    new.grow_from(old.state_dict(), ctx)
    assert torch.equal(new.transitions.table, old.transitions.table)
    assert new.transitions.succ_item.shape == (1,)  # counts are data: not copied
    other = _batch(1)
    new.fit_statistics(other.items, other.targets)
    pairs = PairCounter(V)
    pairs.add(other.items.numpy(), other.targets.numpy())
    assert np.array_equal(new.transitions.succ_item.numpy(), pairs.table()[1])


def test_a_streamed_training_set_fits_the_same_counts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 300
    items = rng.integers(0, V, (n, 6))
    whole = SequenceSet(
        user_ids=np.array([f"u{i}" for i in range(n)], dtype=object),
        items=items,
        types=np.ones((n, 6), dtype=np.int64),
        times=np.tile(np.arange(1, 7), (n, 1)),
        labels=rng.integers(1, V, n),
        loss_from=rng.integers(0, 3, n),
    )
    parts = [whole.subset(np.arange(a, min(a + 70, n))) for a in range(0, n, 70)]
    streamed = write_stream(tmp_path / "t.parquet", parts, 6, row_group=50, shuffle_buffer=64)
    settings = TrainSettings(epochs=0, seed=0)
    a, _ = _model()
    b, _ = _model()
    t = whole.tensors(with_targets=True)
    train(a, t, lambda m, d: {"ndcg@10": 0.0}, settings, progress=False)
    train(b, streamed, lambda m, d: {"ndcg@10": 0.0}, settings, progress=False)
    for name in ("succ_ptr", "succ_item", "succ_count", "succ_total"):
        assert torch.equal(getattr(a.transitions, name), getattr(b.transitions, name)), name


def test_the_table_learns_to_trust_successors_the_log_follows() -> None:
    """Items follow a fixed successor 80% of the time: trained, the followed successors get a
    clearly positive offset, well above the items that followed by chance."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    succ = rng.permutation(np.arange(1, V))
    seqs = np.zeros((64, 6), dtype=np.int64)
    seqs[:, 0] = rng.integers(1, V, 64)
    for t in range(1, 6):
        follow = rng.random(64) < 0.8
        seqs[:, t] = np.where(follow, succ[seqs[:, t - 1] - 1], rng.integers(1, V, 64))
    items = torch.from_numpy(seqs[:, :-1])
    targets = torch.from_numpy(seqs[:, 1:])
    batch = Batch(items, torch.ones_like(items), torch.arange(1, 6).expand(64, 5) * 60, targets)
    model, _ = _model(dropout=0.0)
    model.fit_statistics(items, targets)
    model.train()
    opt = torch.optim.Adam(model.transitions.parameters(), lr=0.1)
    for _ in range(40):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    # followed successors get a positive offset, well above the items that followed by chance
    with torch.no_grad():
        cols, vals = model.transitions.offsets(torch.arange(1, V))
    follow = torch.from_numpy(succ)[:, None] == cols
    chance = (cols > 0) & ~follow
    assert follow.sum(1).eq(1).all()  # each followed successor was counted
    assert vals[follow].mean() > 0.5 and vals[follow].mean() > vals[chance].mean() + 1.0, vals


def test_a_model_without_the_transition_bias_refuses_the_param() -> None:
    ctx = ModelContext(n_items=V, n_event_types=3, max_len=6, params={"transition_bias": True})
    with pytest.raises(SeqrecError, match="transition_bias"):
        get_spec("markov").make(ctx)


@pytest.mark.parametrize("model", ["gpt2", "lstm", "bert"])
def test_models_with_the_transition_bias_pass_every_check_of_the_plugin_kit(model: str) -> None:
    from seqrec.contract import check_plugin

    check_plugin(model, {"transition_bias": True})


def test_a_fitted_model_traces_to_the_same_scores_on_other_batches() -> None:
    """The service traces ``score`` once at startup: the successor lookup must not be baked in
    for the batch it was traced on."""
    model, batch = _fitted()
    model.eval()

    class Score(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, items: torch.Tensor, types: torch.Tensor, times: torch.Tensor):  # type: ignore[no-untyped-def]
            return self.model.score(Batch(items, types, times))

    wrapper = Score().eval()
    with torch.inference_mode():
        traced = torch.jit.trace(wrapper, (batch.items[:2], batch.types[:2], batch.times[:2]))
        other = _batch(3)
        want = wrapper(other.items, other.types, other.times)
        got = traced(other.items, other.types, other.times)
    assert torch.allclose(want[:, 1:], got[:, 1:], atol=1e-5)


def test_the_offsets_are_fitted_on_top_and_leave_the_models_gradients_alone() -> None:
    """The model trains as it would without the transition bias: the same weights get the same
    gradients; the table gets its own."""
    batch = _batch()
    torch.manual_seed(0)
    with_tb, _ = _model(dropout=0.0)
    torch.manual_seed(0)
    plain = get_spec("gpt2").make(
        ModelContext(
            n_items=V,
            n_event_types=3,
            max_len=6,
            params={"dropout": 0.0, "transition_bias": False},
        )
    )
    with_tb.fit_statistics(batch.items, batch.targets)
    with torch.no_grad():
        with_tb.transitions.table.normal_()
    with_tb.loss(batch).backward()
    plain.loss(batch).backward()
    grads = dict(plain.named_parameters())
    for name, p in with_tb.named_parameters():
        if name.startswith("transitions."):
            assert p.grad is not None and p.grad.abs().sum() > 0
            continue
        other = grads[name].grad
        assert (p.grad is None) == (other is None), name
        if p.grad is not None:
            assert torch.allclose(p.grad, other, atol=1e-6), name


def test_the_trainer_steps_the_models_weights_as_if_the_offsets_were_not_there() -> None:
    """Gradient clipping (tight here, so that it acts) is per group: the offsets' gradients
    never rescale the model's steps, so its weights end where a model without the transition
    bias ends."""
    rng = np.random.default_rng(0)
    n = 64
    whole = SequenceSet(
        user_ids=np.array([f"u{i}" for i in range(n)], dtype=object),
        items=rng.integers(1, V, (n, 6)),
        types=np.ones((n, 6), dtype=np.int64),
        times=np.tile(np.arange(1, 7) * 60, (n, 1)),
        labels=rng.integers(1, V, n),
    )
    settings = TrainSettings(epochs=2, batch_size=16, seed=0, grad_clip=0.01, patience=5)
    ends = []
    for params in ({"transition_bias": True}, {"transition_bias": False}):
        torch.manual_seed(0)
        ctx = ModelContext(n_items=V, n_event_types=3, max_len=6, params=params)
        model = get_spec("gpt2").make(ctx)
        train(model, whole.tensors(with_targets=True), lambda m, d: {"ndcg@10": 0.0}, settings)
        ends.append({k: v for k, v in model.state_dict().items() if "transitions" not in k})
        if params["transition_bias"]:
            assert model.transitions is not None and model.transitions.table.abs().sum() > 0
    assert ends[0].keys() == ends[1].keys()
    for k in ends[0]:
        assert torch.equal(ends[0][k], ends[1][k]), k


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_sparse_offset_loss_equals_the_dense_cross_entropy_and_its_gradient(
    smoothing: float,
) -> None:
    from seqrec.losses import sparse_offset_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 20, generator=g) * 3
    targets = torch.randint(0, 20, (6,), generator=g)
    cols = torch.stack([torch.randperm(20, generator=g)[:5] for _ in range(6)])
    cols[0, 0] = targets[0]  # a target with an offset
    valid = torch.ones_like(cols, dtype=torch.bool)
    valid[1, 3:] = False  # empty slots: they point anywhere (here a repeated column)
    cols[1, 3:] = cols[1, 0]
    offsets = (torch.randn(6, 5, generator=g) * 4).requires_grad_()
    dense = logits.scatter_add(1, cols, offsets * valid)
    want = torch.nn.functional.cross_entropy(dense, targets, label_smoothing=smoothing)
    (want_grad,) = torch.autograd.grad(want, offsets)
    got = sparse_offset_cross_entropy(logits, targets, cols, offsets, valid, smoothing)
    (got_grad,) = torch.autograd.grad(got, offsets)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(got_grad, want_grad, atol=1e-6)


def test_a_training_position_sees_the_top_successors_of_the_counts_without_its_own() -> None:
    """top = 1. Item 1 was followed by 3 twice, 5 twice and 4 once: 3 is shown (ties go to the
    lower index). A position whose own transition is 1 -> 3 sees 5 instead (3 is down to 1);
    one whose own is 1 -> 5, or 1 -> 4, still sees 3."""
    bias = TransitionBias(V, top=1)
    bias.fit(torch.tensor([[1, 1, 1, 1, 1]]), torch.tensor([[3, 5, 3, 5, 4]]))
    with torch.no_grad():
        bias.table[:, 0] = 1.0  # every counted successor: offset 1
        bias.table[:, 1] = 0.0

    def shown(targets: torch.Tensor | None) -> list[list[int]]:
        cols, vals = bias.offsets(torch.tensor([1, 1, 1]), targets)
        return [
            [c for c, v in zip(r, w, strict=True) if v]
            for r, w in zip(cols.tolist(), vals.tolist(), strict=True)
        ]

    assert shown(None) == [[3], [3], [3]]
    assert shown(torch.tensor([3, 5, 4])) == [[5], [3], [3]]
