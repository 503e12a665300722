"""The gbdt plugin: contract, features, seeded fit, exact round trip, and the whole path
(``seqrec train``/``evaluate`` through the CLI, then the serving logic) on a real workspace."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from seqrec_gbdt.features import feature_names, sequence_features

from seqrec.config import Workspace
from seqrec.errors import SeqrecError
from seqrec.models import ModelContext, get_spec, load_weights, save_weights
from seqrec.testing import check_model_contract, load_synth, make_workspace
from seqrec.training.trainer import TrainSettings, train

T0 = 1_700_000_000
DAY = 86_400


def test_gbdt_passes_the_model_contract() -> None:
    check_model_contract("gbdt")


def test_gbdt_refuses_next_item_with_a_clear_error() -> None:
    ctx = ModelContext(n_items=10, n_event_types=3, max_len=5, task="next-item")
    with pytest.raises(SeqrecError, match="does not support task 'next-item'") as err:
        get_spec("gbdt").make(ctx)
    assert "classify" in str(err.value)


def test_features_of_a_known_sequence() -> None:
    """Recency, windowed counts, gaps and per-type counts of one hand-made sequence."""
    items = np.array([[0, 0, 4, 5, 4]])
    types = np.array([[0, 0, 1, 2, 1]])
    times = np.array([[0, 0, T0, T0 + 100, T0 + 400]])
    pop = np.log1p(np.array([0, 0, 0, 0, 9.0, 3.0]))
    now = np.array([T0 + 400 + 2 * DAY])
    row = dict(
        zip(feature_names(3), sequence_features(items, types, times, now, 3, pop)[0], strict=True)
    )
    assert row["events"] == 3 and row["recency_s"] == 2 * DAY
    assert (row["events_1d"], row["events_7d"]) == (0, 3)
    assert (row["gap_min_s"], row["gap_max_s"], row["gap_last_s"]) == (100, 300, 300)
    assert row["gap_mean_s"] == 200 and row["span_s"] == 400
    assert (row["type1_count"], row["type2_count"]) == (2, 1)
    assert row["type2_recency_s"] == 2 * DAY + 300
    assert row["last_type"] == 1 and row["last_item_repeated"] == 1
    assert row["pop_last"] == pytest.approx(np.log1p(9.0))
    assert row["distinct_share"] == pytest.approx(2 / 3)
    no_now = sequence_features(items, types, times, None, 3, pop)[0]
    assert np.isnan(no_now[feature_names(3).index("recency_s")])


def _tensors(n: int = 600, seed: int = 0) -> dict[str, torch.Tensor]:
    """Sequences whose label is 'the newest event is older than 3 days' at two cutoffs."""
    g = torch.Generator().manual_seed(seed)
    L = 8
    now = torch.where(torch.arange(n) % 2 == 0, T0 + 30 * DAY, T0 + 40 * DAY)
    recency = torch.randint(0, 6 * DAY, (n,), generator=g)
    gaps = torch.randint(60, DAY, (n, L), generator=g)
    times = (now - recency)[:, None] - gaps.flip(1).cumsum(1).flip(1) + gaps[:, -1:]
    items = torch.randint(1, 30, (n, L), generator=g)
    lengths = torch.randint(2, L + 1, (n,), generator=g)
    pad = torch.arange(L)[None, :] < (L - lengths)[:, None]
    items = items.masked_fill(pad, 0)
    return {
        "items": items,
        "types": torch.randint(1, 3, (n, L), generator=g).masked_fill(pad, 0),
        "times": times.masked_fill(pad, 0),
        "labels": (recency > 3 * DAY).long(),
        "now": now,
    }


def _fit(seed: int) -> Any:
    model = get_spec("gbdt").make(
        ModelContext(n_items=30, n_event_types=3, max_len=8, task="classify", n_classes=2)
    )
    data = _tensors()
    train(model, data, lambda m, d: {"roc_auc": 0.0}, TrainSettings(seed=seed), progress=False)
    return model


def _probs(model: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    from seqrec.models import Batch

    batch = Batch(
        items=tensors["items"], types=tensors["types"], times=tensors["times"], now=tensors["now"]
    )
    with torch.no_grad():
        return torch.softmax(model.score(batch), dim=1)


def test_fit_learns_a_learnable_label_and_round_trips_exactly(tmp_path: Path) -> None:
    from seqrec.evaluation.classification import classification_metrics

    model = _fit(seed=1)
    test = _tensors(seed=7)
    probs = _probs(model, test)
    auc = classification_metrics(test["labels"].numpy(), probs.numpy())["roc_auc"]
    assert auc > 0.9
    save_weights(model, tmp_path / "m")
    loaded = load_weights(tmp_path / "m")
    assert torch.equal(_probs(loaded, test), probs)
    assert loaded.booster.numel() > 0 and type(loaded).traceable is False


def test_fit_is_deterministic_for_a_seed() -> None:
    a, b = _fit(seed=3), _fit(seed=3)
    assert torch.equal(a.booster, b.booster)
    assert torch.equal(_probs(a, _tensors(seed=9)), _probs(b, _tensors(seed=9)))


# -- the whole path on a synthetic workspace -------------------------------------------------------

LABEL = "churn:7d"


def _cli(*args: Any) -> Result:
    from seqrec.cli import build_cli

    return CliRunner().invoke(build_cli(), [str(a) for a in args])


@pytest.fixture(scope="module")
def gbdt_ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workspace, dict[str, Any]]]:
    """400 synthetic users, features online, ``seqrec train --model gbdt`` run once."""
    from seqrec.features.materialize import materialize
    from seqrec.features.repo import apply

    ws = make_workspace(tmp_path_factory.mktemp("gbdt") / "ws")
    load_synth(ws, users=400, items=60)
    apply(ws)
    materialize(ws)
    saved = {k: os.environ.get(k) for k in ("SEQREC_PROJECT", "BENTOML_HOME")}
    try:  # the CLI writes these into os.environ
        args = ["train", "--model", "gbdt", "--task", "classify", "--label", LABEL]
        result = _cli(*args, "--seed", 0, "--json", "--project", ws.root)
        assert result.exit_code == 0, result.output
        yield ws, json.loads(result.stdout)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_seqrec_train_and_evaluate_gbdt_beat_chance(
    gbdt_ws: tuple[Workspace, dict[str, Any]],
) -> None:
    ws, trained = gbdt_ws
    assert trained["tag"].startswith("seqrec-gbdt:") and trained["epochs_run"] == 0
    result = _cli("evaluate", trained["tag"], "--json", "--project", ws.root)
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)
    assert res["label"] == LABEL and res["examples"] >= 100
    assert res["roc_auc"] > 0.7  # recency makes churn learnable; chance is 0.5


def test_seqrec_train_gbdt_next_item_fails_with_a_clear_error(
    gbdt_ws: tuple[Workspace, dict[str, Any]],
) -> None:
    ws, _ = gbdt_ws
    result = _cli("train", "--model", "gbdt", "--project", ws.root)
    assert result.exit_code != 0
    assert "does not support task 'next-item'" in result.output


def test_served_gbdt_answers_predict_eagerly(
    gbdt_ws: tuple[Workspace, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    from seqrec.recommend import Recommender

    ws, trained = gbdt_ws
    assert ws.config.serve.trace  # tracing is on, and skipped for a model that is not traceable
    with caplog.at_level(logging.WARNING, logger="seqrec.serve"):
        rec = Recommender(ws, trained["tag"], device="cpu")
    assert rec._traced is None and "tracing failed" not in caplog.text
    user = "u000001"
    known, cold = rec.predict_many([user, "nobody"])
    assert known["fallback"] is False and known["model"] == trained["tag"]
    assert set(known["probabilities"]) == {"stays", "churns"}
    assert sum(known["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert cold["fallback"] is True
