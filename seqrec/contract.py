"""The model contract kit: what every model plugin must pass, from its own tests.

:func:`check_plugin` runs every check for a registered model; each check is also callable on its
own. A check that fails raises ``AssertionError`` naming the model, the task, what is wrong and
what to do, so a plugin's test fails with a message instead of a puzzle. The checks build tiny
models (30 items, sequences of 12) on CPU and take a few seconds in all.

Re-exported by :mod:`seqrec.testing`, where plugin tests import them from.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from seqrec.models import Batch, ModelContext, SeqModel

#: how far a request's scores may move with what it is batched with (relative, and absolute
#: in units of the row's largest score, at least 1: :func:`scores_close`): batch shapes change
#: how matrix products are blocked and summed, so the last bits differ between CPUs (and with
#: the batch), never more. A float32 dot product's rounding error scales with its operands,
#: not its result: a score near 0 in a row whose scores reach 3.5 moved by 1.5e-6 (a GRU)
BATCH_TOLERANCE = 1e-6

#: scores at least this large in magnitude are fills (padding, masked items: -1e9, a dtype's
#: minimum), not scores: :func:`scores_close` wants them equal and leaves them out of the scale
FILL_SCORE = 1e6


def scores_close(got: torch.Tensor, want: torch.Tensor, tol: float = BATCH_TOLERANCE) -> bool:
    """Whether ``got`` matches ``want`` (rows of scores, finite values alike) within ``tol``
    relative and ``tol`` times the row's largest finite score magnitude (at least 1)
    absolute; padding's and masked scores (inf, or fill values beyond :data:`FILL_SCORE`) must
    match exactly."""
    real = torch.isfinite(want) & (want.abs() < FILL_SCORE)
    if not torch.equal(real, torch.isfinite(got) & (got.abs() < FILL_SCORE)):
        return False
    if not torch.equal(got[~real], want[~real]):
        return False
    scale = torch.where(real, want.abs(), torch.zeros_like(want)).amax(-1, keepdim=True)
    bound = tol * scale.clamp(min=1.0) + tol * want.abs()
    return bool(((got - want).abs() <= bound)[real].all())


#: how far a TorchScript trace's scores may be from eager ones (relative and absolute): the
#: service's own check at startup, past which it serves the model eagerly
TRACE_TOLERANCE = 1e-3
#: the ranking depth at which padding (item index 0) must never appear
TOP_K = 10
#: the context every check builds its models with (classification: 3 classes)
N_ITEMS, N_TYPES, MAX_LEN, N_CLASSES = 30, 4, 12, 3


def _ctx(task: str, params: dict[str, Any] | None, n_items: int = N_ITEMS) -> ModelContext:
    from seqrec.models import ModelContext

    n_classes = N_CLASSES if task == "classify" else 0
    return ModelContext(n_items, N_TYPES, MAX_LEN, task, n_classes, dict(params or {}))


def _where(name: str, task: str, check: str) -> str:
    return f"{name}/{task}: {check}"


def random_batch(ctx: Any, batch_size: int = 8, seed: int = 0) -> Batch:
    """A left-padded batch with a learnable pattern (item i is followed by i + 1)."""
    from seqrec.models import Batch

    g = torch.Generator().manual_seed(seed)
    L, V = ctx.max_len, ctx.n_items
    starts = torch.randint(1, V, (batch_size, 1), generator=g)
    items = (starts + torch.arange(L)) % (V - 1) + 1
    lengths = torch.randint(2, L + 1, (batch_size,), generator=g)
    pad = torch.arange(L).unsqueeze(0) < (L - lengths).unsqueeze(1)
    items = items.masked_fill(pad, 0)
    types = torch.where(items > 0, 1 + (items % max(1, ctx.n_event_types - 1)), 0)
    times = torch.where(items > 0, 1_700_000_000 + torch.arange(L), 0)
    nxt = items[:, -1:] % (V - 1) + 1
    targets = torch.cat([items[:, 1:], nxt], dim=1).masked_fill(items == 0, 0)
    now = times[:, -1] + 3600 * torch.randint(1, 24 * 30, (batch_size,), generator=g)
    return Batch(items, types, times, targets=targets, labels=nxt.squeeze(1), now=now)


def _task_batch(ctx: ModelContext, batch_size: int = 8, seed: int = 0) -> Batch:
    batch = random_batch(ctx, batch_size, seed)
    if ctx.task == "classify":  # a label the sequence determines: its newest item mod 3
        batch.labels = batch.items[:, -1] % N_CLASSES
    return batch


def _train_steps(model: Any, batch: Any, steps: int = 30) -> None:
    """``steps`` AdamW steps on ``batch``; the model is left in eval mode."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def _eval_loss(model: Any, batch: Any) -> float:
    """The loss in eval mode (no dropout), averaged over four draws of what the loss draws
    itself (a cloze model's masks) from a fixed random stream, so a training-time regulariser
    does not make the check noisy; the caller's random state is left as it was."""
    model.eval()
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)
        return sum(float(model.loss(batch)) for _ in range(4)) / 4


def _fit(model: SeqModel, batch: Batch, steps: int) -> None:
    """Train ``model`` a little: gradient steps, or its statistics for a counting model."""
    if model.ctx.task == "next-item":  # as the trainer does, before any step
        assert batch.targets is not None
        model.fit_statistics(batch.items, batch.targets)
    if model.trainable:
        _train_steps(model, batch, steps)
    model.eval()


def _round_trip(model: Any, batch: Any, name: str) -> None:
    from seqrec.models import load_weights, save_weights

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        save_weights(model, path)
        loaded = load_weights(path)
        with torch.no_grad():
            assert torch.equal(model.score(batch), loaded.score(batch)), (
                f"{name}: save/load round trip changes the scores: keep every tensor the "
                "scores depend on in a parameter or a buffer (register_buffer), and rebuild "
                "everything else from ctx alone"
            )


def check_tasks(name: str, params: dict[str, Any] | None = None) -> None:
    """Every task the spec declares is implemented: the model builds for it, ``loss`` and
    ``score`` run, the scores have that task's width (n_items or n_classes), and a row of only
    padding scores without an error."""
    from seqrec.models import TASKS, Batch, get_spec

    spec = get_spec(name)
    assert spec.tasks and set(spec.tasks) <= set(TASKS), f"{name}: tasks {spec.tasks!r}"
    methods = {"next-item": "next_item_loss and next_item_scores", "classify": "class_logits"}
    for task in spec.tasks:
        torch.manual_seed(0)
        model = spec.make(_ctx(task, params))
        batch = _task_batch(model.ctx)
        try:
            if model.trainable:
                model.train()
                model.loss(batch)
            _fit(model, batch, steps=0)  # a counting model fits its statistics instead
            with torch.no_grad():
                scores = model.eval().score(batch)
        except NotImplementedError as exc:
            raise AssertionError(
                f"{_where(name, task, 'declared task not implemented')}: {exc}; implement "
                f"{methods[task]}, or drop '{task}' from the ModelSpec's tasks"
            ) from None
        width = N_CLASSES if task == "classify" else N_ITEMS
        assert tuple(scores.shape) == (len(batch.items), width), (
            f"{_where(name, task, 'score shape')}: {tuple(scores.shape)}, expected "
            f"{(len(batch.items), width)}"
        )
        empty = [t.clone() for t in (batch.items, batch.types, batch.times)]
        for t in empty:
            t[0] = 0  # the service fills batches up to a warmed-up size with such rows
        try:
            with torch.no_grad():
                model.score(Batch(*empty))
        except Exception as exc:
            raise AssertionError(
                f"{_where(name, task, 'a row of only padding fails')}: {type(exc).__name__}: "
                f"{exc}; score such rows without failing (their scores are discarded)"
            ) from None


def check_model_contract(name: str, params: dict[str, Any] | None = None) -> None:
    """The contract every model plugin must pass (call it from the plugin's own tests).

    For each task the model declares: it is registered and builds; scores have the right shape
    and are finite; a next-item model that gives item factors (``next_item_factors``) gives
    factors whose scores are its scores; a few optimiser steps on a learnable pattern reduce
    the loss by 30% (the eval-mode loss before against after); save/load through safetensors
    gives identical scores.
    """
    from seqrec.models import get_spec

    spec = get_spec(name)
    for task in spec.tasks:
        torch.manual_seed(0)
        model = spec.make(_ctx(task, params))
        assert model.spec_name == name
        batch = _task_batch(model.ctx)
        model.eval()
        if task == "next-item":  # as the trainer does first (counts, samplers)
            assert batch.targets is not None
            model.fit_statistics(batch.items, batch.targets)
        offsets = getattr(model, "transitions", None)
        if offsets is not None:  # the transition bias must reach the scores and the factors
            with torch.no_grad():
                plain = model.score(batch)
                offsets.table.normal_()
        with torch.no_grad():
            scores = model.score(batch)
        if offsets is not None:
            assert not torch.equal(plain, scores), (
                f"{name}/{task}: transition_bias is on but its offsets never reach the scores; "
                "build them with self.score_offsets(batch.items, newest_distance(batch.items))"
            )
        width = N_CLASSES if task == "classify" else N_ITEMS
        assert tuple(scores.shape) == (8, width), (
            f"{name}/{task}: score shape {tuple(scores.shape)}"
        )
        assert torch.isfinite(scores[:, 1:]).all(), f"{name}/{task}: non-finite scores"
        if task == "next-item":
            with torch.no_grad():
                factors = model.next_item_factors(batch)
            if factors is not None:  # chunked top-k and ANN rank by these, not by the scores
                torch.testing.assert_close(
                    factors.scores()[:, 1:].float(),
                    scores[:, 1:].float(),
                    rtol=1e-4,
                    atol=1e-4,
                    msg=lambda m: (
                        f"{name}/next-item: next_item_factors(batch).scores() are not "
                        f"next_item_scores(batch): {m}"
                    ),
                )
        if model.trainable:
            before = _eval_loss(model, batch)
            _train_steps(model, batch)
            after = _eval_loss(model, batch)
            assert after < 0.7 * before, (
                f"{name}/{task}: loss did not decrease ({before:.3f} -> {after:.3f})"
            )
        _round_trip(model, batch, f"{name}/{task}")


def check_padding_never_ranked(
    name: str, params: dict[str, Any] | None = None, k: int = TOP_K
) -> None:
    """Next-item: score column 0 (item index 0, padding) is strictly below the ``k``-th best
    real item in every row, for a fresh model and a trained one (a counting model: once
    fitted), for sequences of one event up to ``max_len``. (The evaluator and the service mask column 0 themselves; anything else
    reading raw scores relies on this.)"""
    from seqrec.models import get_spec

    spec = get_spec(name)
    if "next-item" not in spec.tasks:
        return
    torch.manual_seed(0)
    model = spec.make(_ctx("next-item", params)).eval()
    batch = random_batch(model.ctx, batch_size=8)
    batch.items[0, :-1] = 0  # one row of a single event
    for state in ("fresh", "trained") if model.trainable else ("fitted",):
        if state != "fresh":
            _fit(model, random_batch(model.ctx, batch_size=16, seed=1), steps=10)
        with torch.no_grad():
            scores = model.score(batch).float()
        kth = scores[:, 1:].topk(min(k, N_ITEMS - 1), dim=1).values[:, -1]
        bad = ~(scores[:, 0] < kth)  # NaN in column 0 counts as ranked
        assert not bad.any(), (
            f"{_where(name, 'next-item', 'padding is ranked')}: score column 0 (padding) is "
            f"in the top {k} of {int(bad.sum())} of {len(bad)} rows ({state} model); set it "
            "below every item, e.g. scores[:, 0] = torch.finfo(scores.dtype).min"
        )


def check_deterministic(name: str, params: dict[str, Any] | None = None, seed: int = 0) -> None:
    """Two builds under the same ``torch.manual_seed`` have identical weights and scores, and
    stay identical through a few training steps under the same seed: the seed of ``seqrec
    train --seed`` reproduces a model."""
    from seqrec.models import get_spec

    spec = get_spec(name)
    for task in spec.tasks:
        where = _where(name, task, "not deterministic under a seed")
        hint = (
            "draw every random number from torch's RNG (not numpy's, Python's random or the "
            "clock), which the trainer seeds"
        )
        runs = []
        for _ in range(2):
            torch.manual_seed(seed)
            model = spec.make(_ctx(task, params)).eval()
            batch = _task_batch(model.ctx)
            with torch.no_grad():
                fresh = model.score(batch)
            torch.manual_seed(seed + 1)
            _fit(model, batch, steps=3)
            with torch.no_grad():
                trained = model.score(batch)
            runs.append((model.state_dict(), fresh, trained))
        (state_a, fresh_a, trained_a), (state_b, fresh_b, trained_b) = runs
        differ = [k for k in state_a if not torch.equal(state_a[k], state_b.get(k, state_a[k]))]
        assert set(state_a) == set(state_b), f"{where}: the two builds have different tensors"
        assert torch.equal(fresh_a, fresh_b), f"{where}: two builds score differently; {hint}"
        assert torch.equal(trained_a, trained_b) and not differ, (
            f"{where}: after training, {', '.join(differ) or 'the scores'} differ; {hint}"
        )


def _examples(
    ctx: ModelContext, batch: int, n_real: int, seed: int, with_now: bool = False
) -> tuple[Any, ...]:
    """(items, types, times) [batch, max_len]: ``n_real`` newest events, the rest padding;
    ``with_now``: and a prediction time [batch] hours after each row's newest event (a model
    that reads it is served with the request time as a fourth input)."""
    g = torch.Generator().manual_seed(seed)
    shape, real = (batch, ctx.max_len), (batch, n_real)
    items = torch.zeros(shape, dtype=torch.long)
    types = torch.zeros(shape, dtype=torch.long)
    times = torch.zeros(shape, dtype=torch.long)
    items[:, -n_real:] = torch.randint(1, ctx.n_items, real, generator=g)
    types[:, -n_real:] = torch.randint(1, max(2, ctx.n_event_types), real, generator=g)
    times[:, -n_real:] = 1_700_000_000 + torch.arange(n_real) * 60
    if with_now:
        return items, types, times, times[:, -1] + 3 * 3600 * torch.arange(1, batch + 1)
    return items, types, times


class ScoreModule(torch.nn.Module):
    """``model.score`` over plain tensors, the form ``torch.jit.trace`` takes: the service
    traces this, and :func:`check_traceable` checks it."""

    def __init__(self, model: SeqModel):
        super().__init__()
        self.model = model

    def forward(
        self,
        items: torch.Tensor,
        types: torch.Tensor,
        times: torch.Tensor,
        now: torch.Tensor | None = None,
    ) -> Any:
        from seqrec.models import Batch

        return self.model.score(Batch(items=items, types=types, times=times, now=now))


def check_traceable(name: str, params: dict[str, Any] | None = None) -> None:
    """The service runs ``score`` as a TorchScript trace: for each task, a trace taken on one
    batch matches eager scores (within :data:`TRACE_TOLERANCE`) on batches of other sizes and
    paddings, as the service checks at startup. A model class that sets ``traceable = False``
    is served eagerly and passes."""
    from seqrec.models import get_spec

    spec = get_spec(name)
    for task in spec.tasks:
        torch.manual_seed(0)
        model = spec.make(_ctx(task, params)).eval()
        if not type(model).traceable:
            continue
        where = _where(name, task, "score is not traceable")
        hint = (
            "compute it from tensor operations only (no .item(), int(tensor), numpy or "
            "branches on values), or set traceable = False on the model class (the service "
            "then runs it eagerly, about 3x slower per request on CPU)"
        )
        wrapper = ScoreModule(model).eval()
        try:
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")  # TracerWarnings: the comparison decides
                traced = torch.jit.trace(
                    wrapper, _examples(model.ctx, 2, MAX_LEN, 0, model.reads_now)
                )
        except Exception as exc:
            raise AssertionError(
                f"{where}: torch.jit.trace failed ({type(exc).__name__}: {exc}); {hint}"
            ) from None
        for b, n in ((1, MAX_LEN), (3, MAX_LEN // 3), (5, 1)):
            x = _examples(model.ctx, b, n, b, model.reads_now)
            with torch.inference_mode():
                want, got = wrapper(*x).float(), traced(*x).float()
            finite = torch.isfinite(want)
            same = torch.equal(finite, torch.isfinite(got)) and torch.allclose(
                want[finite], got[finite], rtol=TRACE_TOLERANCE, atol=TRACE_TOLERANCE
            )
            assert same, f"{where}: traced scores differ from eager (batch {b}, {n} events); {hint}"


def check_vocab_growth(name: str, params: dict[str, Any] | None = None) -> None:
    """Warm starting after the item vocabulary grew (``seqrec retrain``), for each task:
    every tensor that did not grow is kept, and one that grew keeps the known items' rows
    (padding row 0 among them) while the new items' rows keep the fresh initialisation; the
    grown model scores new items. Rows after the items (special tokens) are the plugin's to
    test."""
    from seqrec import models
    from seqrec.models import get_spec

    spec = get_spec(name)
    n_old, n_new = N_ITEMS, N_ITEMS + 10
    for task in spec.tasks:
        torch.manual_seed(0)
        old = spec.make(_ctx(task, params, n_old))
        batch = _task_batch(old.ctx)
        if old.trainable:  # weights unlike any fresh initialisation
            if task == "next-item":  # data buffers too (the transition bias's counts)
                assert batch.targets is not None
                old.fit_statistics(batch.items, batch.targets)
            _train_steps(old, batch, steps=3)
        torch.manual_seed(1)
        new = spec.make(_ctx(task, params, n_new))
        fresh = {k: v.clone() for k, v in new.state_dict().items()}
        assert new.grow_from(old.state_dict(), old.ctx) > 0, f"{name}/{task}: nothing used"
        got = new.state_dict()
        for k, v in old.state_dict().items():
            where = f"{name}/{task}: {k}"
            if k.rsplit(".", 1)[-1] in models.DATA_BUFFERS:  # the current data's: not copied
                assert torch.equal(got[k], fresh[k]), f"{where}: a data buffer was copied"
                continue
            if got[k].shape == v.shape:
                assert torch.equal(got[k], v), f"{where} not kept"
            else:
                assert torch.equal(got[k][:n_old], v[:n_old]), f"{where}: known rows not kept"
                assert torch.equal(got[k][n_old:n_new], fresh[k][n_old:n_new]), (
                    f"{where}: new items' rows are not freshly initialised"
                )
        grown = random_batch(new.ctx, seed=1)
        with torch.no_grad():
            scores = new.eval().score(grown)
        assert torch.isfinite(scores[:, 1:]).all(), f"{name}/{task}: non-finite after growing"


def check_batch_independence(name: str, params: dict[str, Any] | None = None) -> None:
    """What serving promises (it batches concurrent requests): for each task, every row of a
    batch of different sequences (lengths 1 to max_len, two of them equal) scores as it does
    alone, within :data:`BATCH_TOLERANCE`."""
    from seqrec.models import Batch, ModelContext, get_spec

    spec = get_spec(name)
    for task in spec.tasks:
        torch.manual_seed(0)
        ctx = ModelContext(300, 4, 12, task, 3 if task == "classify" else 0, dict(params or {}))
        model = spec.make(ctx).eval()
        items = torch.randint(1, 300, (6, 12), generator=torch.Generator().manual_seed(1))
        for row, n in enumerate((12, 1, 5, 11, 7, 7)):
            items[row, : 12 - n] = 0
        items[5] = items[4]
        types = torch.where(items > 0, 1 + items % 3, 0)
        times = torch.where(items > 0, 1_700_000_000 + torch.arange(12) * 600, 0)
        now = times[:, -1] + 3600 * torch.arange(1, 7)
        with torch.no_grad():
            together = model.score(Batch(items, types, times, now=now)).float()
            for r in range(len(items)):
                one = slice(r, r + 1)
                alone = model.score(Batch(items[one], types[one], times[one], now=now[one]))
                got, want = together[one], alone.float()
                if not scores_close(got, want):
                    raise AssertionError(
                        f"{name}/{task} row {r}: scores differ in a batch and alone beyond "
                        f"BATCH_TOLERANCE ({BATCH_TOLERANCE:g} relative and of the row's "
                        "largest score), or padding/masked scores differ"
                    )


def check_left_padding(name: str, params: dict[str, Any] | None = None) -> None:
    """How much left padding a sequence has never changes its scores: for each task, every
    row scores the same (within :data:`BATCH_TOLERANCE`) at ``max_len`` columns and with only
    its own events, no padding at all. The service relies on it: eagerly it drops the columns
    that are padding in every row of a batch; traced, it pads every row to ``max_len``."""
    from seqrec.models import Batch, get_spec

    spec = get_spec(name)
    for task in spec.tasks:
        torch.manual_seed(0)
        model = spec.make(_ctx(task, params)).eval()
        batch = _task_batch(model.ctx, batch_size=6, seed=2)
        with torch.no_grad():
            full = model.score(Batch(batch.items, batch.types, batch.times, now=batch.now))
            full = full.float()
            for r, n in enumerate(batch.mask.sum(1).tolist()):
                own = slice(MAX_LEN - n, MAX_LEN)
                one = [t[r : r + 1, own] for t in (batch.items, batch.types, batch.times)]
                assert batch.now is not None
                alone = model.score(Batch(one[0], one[1], one[2], now=batch.now[r : r + 1]))
                alone = alone.float()
                assert scores_close(full[r : r + 1], alone), (
                    f"{_where(name, task, 'scores depend on left padding')}: row {r} ({n} "
                    f"events) scores differently with {MAX_LEN - n} padding columns than with "
                    "none; count positions from the real events (e.g. batch.mask.cumsum(1)), "
                    "not from the column index, and keep padding out of every sum and mean"
                )


#: what :func:`check_plugin` runs, in order (each takes the model name and its params)
CHECKS = (
    check_tasks,
    check_model_contract,
    check_padding_never_ranked,
    check_deterministic,
    check_traceable,
    check_left_padding,
    check_batch_independence,
    check_vocab_growth,
)


def check_plugin(name: str, params: dict[str, Any] | None = None) -> None:
    """Every check of the kit for the registered model ``name`` (with hyperparameters
    ``params`` over its defaults), for every task its spec declares: the declared tasks are
    implemented; shapes, learning and the save/load round trip (:func:`check_model_contract`);
    padding never ranked; determinism under a seed; the TorchScript trace matches eager (or
    the model says ``traceable = False``); scores independent of left padding and of the
    rest of the batch; vocabulary growth."""
    from seqrec.models import get_spec

    spec = get_spec(name)  # not registered: a SeqrecError naming the registered models
    for check in CHECKS:
        try:
            check(name, params)
        except AssertionError as exc:
            raise AssertionError(
                f"{check.__name__} failed for model '{name}' (plugin '{spec.plugin}'): {exc}"
            ) from None
