"""Classifiers read the prediction time: the features of ``seqrec.now_features``, the plugins
that add them, and the traced form the service runs."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from seqrec.evaluation.classification import roc_auc
from seqrec.models import Batch, ModelContext, SeqModel, get_spec
from seqrec.now_features import HOUR, SCALE, NowFeatures, now_feature_names, now_features
from seqrec.recommend import _ScoreModule

T0 = 1_700_000_000


def _cols(n_types: int) -> dict[str, int]:
    return {name: i for i, name in enumerate(now_feature_names(n_types))}


def _row(n_types: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One left-padded row: types 1, 2, 1 at 40 days, 3 days and 2 hours before T0."""
    items = torch.tensor([[0, 0, 5, 6, 7]])
    types = torch.tensor([[0, 0, 1, 2, 1]])
    times = torch.tensor([[0, 0, T0 - 40 * 24 * HOUR, T0 - 3 * 24 * HOUR, T0 - 2 * HOUR]])
    return items, types, times


def test_now_features_measure_recency_and_counts_before_now() -> None:
    items, types, times = _row()
    f = now_features(items, types, times, torch.tensor([T0]), 3)[0]
    c = _cols(3)
    assert f.shape == (len(c),)
    assert f[c["now_known"]] == 1.0
    assert f[c["hours_since_newest"]] == pytest.approx(math.log1p(2) / SCALE)
    assert f[c["events"]] == pytest.approx(math.log1p(3) / SCALE)
    assert f[c["events_1d"]] == pytest.approx(math.log1p(1) / SCALE)
    assert f[c["events_7d"]] == pytest.approx(math.log1p(2) / SCALE)
    assert f[c["events_30d"]] == pytest.approx(math.log1p(2) / SCALE)
    assert f[c["span_hours"]] == pytest.approx(math.log1p(40 * 24 - 2) / SCALE, rel=1e-5)
    assert f[c["type1_events"]] == pytest.approx(math.log1p(2) / SCALE)
    assert f[c["type1_hours_since_newest"]] == pytest.approx(math.log1p(2) / SCALE)
    assert f[c["type2_hours_since_newest"]] == pytest.approx(math.log1p(72) / SCALE)


def test_now_features_ignore_left_padding_and_empty_rows_are_zero() -> None:
    items, types, times = _row()
    now = torch.tensor([T0])
    wide = [torch.nn.functional.pad(x, (6, 0)) for x in (items, types, times)]
    assert torch.equal(now_features(items, types, times, now, 3), now_features(*wide, now, 3))
    empty = torch.zeros((1, 5), dtype=torch.long)
    assert not now_features(empty, empty, empty, now, 3).any()


def test_unknown_now_is_flagged_and_taken_as_the_newest_event() -> None:
    items, types, times = _row()
    c = _cols(3)
    f = now_features(items, types, times, None, 3)[0]
    assert f[c["now_known"]] == 0.0 and f[c["hours_since_newest"]] == 0.0
    at_newest = now_features(items, types, times, times[:, -1], 3)[0]
    assert torch.equal(f[1:], at_newest[1:])


def test_a_type_never_seen_has_zero_count_and_zero_recency() -> None:
    items, _, times = _row()
    types = torch.ones_like(items) * (items > 0)
    f = now_features(items, types, times, torch.tensor([T0]), 3)[0]
    c = _cols(3)
    assert f[c["type2_events"]] == 0.0 and f[c["type2_hours_since_newest"]] == 0.0
    assert torch.isfinite(f).all()


@pytest.mark.parametrize("name", ["lstm", "gpt2", "bert"])
def test_builtin_classifiers_read_now_by_default_and_not_without_the_option(name: str) -> None:
    torch.manual_seed(0)
    items, types, times = _row()
    batch = Batch(items=items, types=types, times=times, now=torch.tensor([T0]))
    later = Batch(items=items, types=types, times=times, now=torch.tensor([T0 + 30 * 24 * HOUR]))
    ctx = ModelContext(n_items=10, n_event_types=3, max_len=8, task="classify", n_classes=2)
    model = get_spec(name).make(ctx).eval()
    assert model.reads_now
    with torch.no_grad():
        assert not torch.allclose(model.score(batch), model.score(later))
    off = get_spec(name).make(replace(ctx, params={"now_features": False}))
    assert not off.reads_now and off.now_emb is None
    with torch.no_grad():
        assert torch.equal(off.eval().score(batch), off.score(later))


@pytest.mark.parametrize("name", ["lstm", "gpt2", "bert"])
def test_models_saved_before_the_option_build_without_it(name: str) -> None:
    """A stored context lacks ``now_features``: the model builds without it (its weights have
    no such layer), though new models have it on by default."""
    spec = get_spec(name)
    old = {k: v for k, v in spec.defaults.items() if k != "now_features"}
    old |= {"loss": "full", "num_negatives": 8, "repeat_bias": False}
    ctx = ModelContext(
        n_items=10, n_event_types=3, max_len=8, task="classify", n_classes=2, params=old
    )
    assert spec.build(ctx).now_emb is None


def test_next_item_models_do_not_build_now_features() -> None:
    model = get_spec("gpt2").make(ModelContext(n_items=10, n_event_types=3, max_len=8))
    assert model.now_emb is None and not model.reads_now


def test_the_traced_score_takes_now_as_an_input() -> None:
    """The service traces a model that reads ``now`` with the request time as a fourth
    input: the trace must follow ``now``, not keep the example's as a constant."""
    torch.manual_seed(0)
    ctx = ModelContext(n_items=10, n_event_types=3, max_len=5, task="classify", n_classes=2)
    model = get_spec("lstm").make(ctx).eval()
    items, types, times = _row()
    wrapper = _ScoreModule(model).eval()
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, (items, types, times, torch.tensor([T0])))
        for now in (T0, T0 + 5 * HOUR, T0 + 50 * 24 * HOUR):
            at = torch.tensor([now])
            eager = model.score(Batch(items=items, types=types, times=times, now=at))
            torch.testing.assert_close(traced(items, types, times, at), eager)


def test_a_classifier_learns_a_label_only_now_can_tell() -> None:
    """Churn-like labels from the time since the newest event alone (the events themselves are
    the same for both classes): with the option the classifier separates them, without it
    it cannot do better than chance."""
    g = torch.Generator().manual_seed(0)
    n, L = 512, 6
    items = torch.randint(1, 20, (n, L), generator=g)
    types = torch.randint(1, 3, (n, L), generator=g)
    times = T0 + torch.arange(L) * 3600 + torch.zeros((n, 1), dtype=torch.long)
    idle_days = torch.rand(n, generator=g) * 20
    now = times[:, -1] + (idle_days * 24 * HOUR).long()
    labels = (idle_days > 10).long()

    def auc(now_features_on: bool) -> float:
        torch.manual_seed(0)
        ctx = ModelContext(
            n_items=20,
            n_event_types=3,
            max_len=L,
            task="classify",
            n_classes=2,
            params={"now_features": now_features_on, "d_model": 16, "hidden": 16},
        )
        model = get_spec("lstm").make(ctx)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        train = slice(0, 384)
        for _ in range(150):
            opt.zero_grad()
            batch = Batch(
                items[train], types[train], times[train], labels=labels[train], now=now[train]
            )
            model.loss(batch).backward()
            opt.step()
        model.eval()
        test = slice(384, n)
        with torch.no_grad():
            probs = torch.softmax(
                model.score(Batch(items[test], types[test], times[test], now=now[test])), 1
            ).numpy()
        return roc_auc(labels[test].numpy(), probs)

    assert auc(True) > 0.95
    assert abs(auc(False) - 0.5) < 0.15


def test_now_feature_embedding_is_finite_for_far_apart_times() -> None:
    """Epoch seconds decades apart (and a now before the events: clock skew) stay finite."""
    emb = NowFeatures(3, 8)
    items, types, _ = _row()
    times = torch.tensor([[0, 0, 1, 2, T0]])
    for now in (T0 * 2, 5, T0):
        out = emb(items, types, times, torch.tensor([now]))
        assert torch.isfinite(out).all()
    assert np.isfinite(now_features(items, types, times, torch.tensor([5]), 3).numpy()).all()


def test_absent_params_are_what_stored_models_were_built_with() -> None:
    """Retraining keeps production's configuration: a stored lstm without ``cell`` and
    ``now_features`` was an LSTM without the prediction time."""
    spec = get_spec("lstm")
    stored = {k: v for k, v in spec.defaults.items() if k not in ("cell", "now_features")}
    assert spec.absent_params(stored) == {"cell": "lstm", "now_features": False}
    assert spec.absent_params(dict(spec.defaults)) == {}


def test_absent_means_must_name_options_the_model_has() -> None:
    from seqrec.errors import SeqrecError
    from seqrec.models import ModelSpec

    with pytest.raises(SeqrecError, match="absent_means names options it does not have: kind"):
        ModelSpec(name="m", build=lambda ctx: None, defaults={"d": 1}, absent_means={"kind": 0})  # type: ignore[arg-type,return-value]


def _state_dropout_model(p: float) -> SeqModel:
    torch.manual_seed(0)
    ctx = ModelContext(
        n_items=10,
        n_event_types=3,
        max_len=8,
        task="classify",
        n_classes=2,
        params={"state_dropout": p, "now_norm": False},  # the embedding alone: no batch stats
    )
    return get_spec("gpt2").make(ctx)


def test_state_dropout_drops_whole_sequence_states_in_training_only() -> None:
    """With ``state_dropout`` p, a training example's sequence state is either dropped
    entirely (what is left is the prediction-time embedding) or scaled by 1 / (1 - p); in eval
    mode the state is added unchanged."""
    model = _state_dropout_model(0.5)
    n = 400
    items, types, times = (x.expand(n, -1) for x in _row())
    batch = Batch(items=items, types=types, times=times, now=torch.full((n,), T0))
    h = torch.randn(n, model.now_emb.inp.out_features)
    with torch.no_grad():
        now_part = model.now_emb(items, types, times, batch.now)
        model.train()
        torch.manual_seed(1)
        out = model.with_now(h, batch)
        dropped = torch.isclose(out, now_part, atol=1e-6).all(1)
        kept = torch.isclose(out, 2 * h + now_part, atol=1e-5).all(1)
        assert (dropped | kept).all()
        assert 0.4 < dropped.float().mean() < 0.6
        model.eval()
        torch.testing.assert_close(model.with_now(h, batch), h + now_part)


def test_state_dropout_zero_adds_the_state_unchanged_in_training() -> None:
    model = _state_dropout_model(0.0).train()
    items, types, times = _row()
    batch = Batch(items=items, types=types, times=times, now=torch.tensor([T0]))
    h = torch.randn(1, model.now_emb.inp.out_features)
    with torch.no_grad():
        torch.testing.assert_close(
            model.with_now(h, batch), h + model.now_emb(items, types, times, batch.now)
        )


@pytest.mark.parametrize("bad", [1.0, -0.1, "half", True])
def test_a_state_dropout_outside_zero_to_one_is_a_clear_error(bad: object) -> None:
    from seqrec.errors import SeqrecError

    with pytest.raises(SeqrecError, match="state_dropout must be a number in \\[0, 1\\)"):
        _state_dropout_model(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["lstm", "gpt2", "bert"])
def test_classifiers_stored_before_state_dropout_retrain_without_it(name: str) -> None:
    spec = get_spec(name)
    assert spec.defaults["state_dropout"] == 0.5
    stored = {k: v for k, v in spec.defaults.items() if k != "state_dropout"}
    assert spec.absent_params(stored)["state_dropout"] == 0.0


def test_now_norm_standardises_the_features_by_batch_in_training() -> None:
    """In training each feature column is standardised over the batch before the MLP (mean 0,
    variance 1 per column that varies); at inference the running averages are used, so a
    row's embedding does not depend on the rest of its batch."""
    emb = NowFeatures(3, 8, norm=True)
    assert emb.norm is not None
    g = torch.Generator().manual_seed(0)
    n = 64
    items = torch.randint(1, 9, (n, 5), generator=g)
    types = torch.randint(1, 3, (n, 5), generator=g)
    times = T0 + torch.sort(torch.randint(0, 40 * 24 * HOUR, (n, 5), generator=g), 1).values
    now = times[:, -1] + torch.randint(0, 30 * 24 * HOUR, (n,), generator=g)
    seen: list[torch.Tensor] = []
    emb.norm.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    emb.train()
    emb(items, types, times, now)
    out = seen[-1]
    feats = now_features(items, types, times, now, 3)
    varies = feats.std(0) > 1e-6
    var = feats.var(0, unbiased=False)
    zeros = torch.zeros(int(varies.sum()))
    torch.testing.assert_close(out.mean(0)[varies], zeros, atol=1e-5, rtol=0)
    # unit variance up to BatchNorm's eps: var / (var + eps)
    want = (var / (var + emb.norm.eps))[varies]
    torch.testing.assert_close(out.var(0, unbiased=False)[varies], want, atol=1e-4, rtol=0)
    emb.eval()
    with torch.no_grad():
        alone = emb(items[:1], types[:1], times[:1], now[:1])
        together = emb(items, types, times, now)[:1]
    torch.testing.assert_close(alone, together)


def test_a_training_batch_of_one_example_uses_the_running_statistics() -> None:
    """A batch of one has no batch statistics (the last batch of an epoch can be one
    example): it is standardised by the running averages instead of failing."""
    emb = NowFeatures(3, 8, norm=True).train()
    items, types, times = _row()
    out = emb(items, types, times, torch.tensor([T0]))
    assert out.shape == (1, 8) and torch.isfinite(out).all()
    out.sum().backward()


@pytest.mark.parametrize("name", ["lstm", "gpt2", "bert"])
def test_classifiers_stored_before_now_norm_build_and_retrain_without_it(name: str) -> None:
    spec = get_spec(name)
    assert spec.defaults["now_norm"] is True
    stored = {k: v for k, v in spec.defaults.items() if k != "now_norm"}
    assert spec.absent_params(stored)["now_norm"] is False
    stored |= {"loss": "full", "num_negatives": 8, "repeat_bias": False}
    ctx = ModelContext(
        n_items=10, n_event_types=3, max_len=8, task="classify", n_classes=2, params=stored
    )
    model = spec.build(ctx)
    assert model.now_emb is not None and model.now_emb.norm is None
    assert not any(k.startswith("now_emb.norm") for k in model.state_dict())
