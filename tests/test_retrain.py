"""Retraining: features refreshed, candidate warm-started from production, both compared on the
newest window, labels moved only when the candidate wins."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from seqrec import model_store
from seqrec.config import Workspace
from seqrec.errors import SeqrecError
from seqrec.testing import load_synth, make_workspace


def _labels(ws: Workspace, tag: str) -> dict[str, str]:
    row = next(r for r in model_store.list_models(ws.model_store) if r["tag"] == tag)
    return dict(row["labels"])


def _new_events(ws: Workspace, n_users: int = 40) -> None:
    """Each of ``n_users`` users views two more items, one of them new to the catalogue."""
    from sqlalchemy import func, select

    from seqrec.data.importers import RawEvent
    from seqrec.data.schema import events, make_engine

    engine = make_engine(ws.events_url)
    with engine.connect() as conn:
        last = conn.execute(select(func.max(events.c.ts_ms))).scalar_one()
        users = [r[0] for r in conn.execute(select(events.c.user_id).distinct().limit(n_users))]
    rows = []
    for i, u in enumerate(users):
        for j, item in enumerate((f"brand-new-{i % 3}", f"i{(i * 7) % 50}")):
            rows.append(RawEvent(u, item, int(last) + 60_000 * (1 + 2 * i + j), "view", None))
    engine.dispose()
    from seqrec.testing import import_rows

    import_rows(ws, rows, "test:new-events")


@pytest.fixture
def prod_ws(tmp_path: Path) -> tuple[Workspace, str]:
    """A workspace with gpt2 trained, online and labelled stage=production."""
    from seqrec.commands.serve import set_labels
    from seqrec.features.materialize import materialize
    from seqrec.features.repo import apply
    from seqrec.pipeline import train_model

    ws = make_workspace(tmp_path / "ws")
    load_synth(ws, users=80, items=50)
    apply(ws)
    materialize(ws)
    tag = train_model(ws, "gpt2", epochs=1, progress=False).tag
    set_labels(ws, tag, {"stage": "production"})
    return ws, tag


def test_retrain_promotes_a_better_candidate(prod_ws: tuple[Workspace, str]) -> None:
    from seqrec.retrain import find_production, retrain

    ws, prod = prod_ws
    _new_events(ws)
    rep = retrain(ws, min_gain=-1.0, epochs=1, progress=False)  # any candidate is "better"
    assert rep.production == prod and rep.candidate != prod
    assert rep.promoted and "better" in rep.reason
    assert rep.metric == "ndcg@10" and rep.production_score is not None
    assert rep.materialized_users is not None and rep.materialized_users >= 40  # incremental
    # labels moved: the candidate serves, the old model is archived
    assert find_production(ws, "stage=production") == rep.candidate
    assert _labels(ws, prod)["stage"] == "archived"
    # warm start from production's stored weights, on the grown vocabulary
    cand = model_store.load(rep.candidate, store=ws.model_store)
    old = model_store.load(prod, store=ws.model_store)
    assert cand.info["init_from"] == str(old.path)
    assert cand.model.ctx.n_items > old.model.ctx.n_items  # brand-new items are in the vocab
    # both were scored on the same window; the report is on disk
    evals = rep.evaluations
    assert evals["candidate"]["users"] == evals["production"]["window_users"] > 0
    assert evals["production"]["users"] < evals["production"]["window_users"]  # new targets
    saved = json.loads(Path(rep.report_path).read_text())
    assert saved["candidate"] == rep.candidate and saved["promoted"] is True


def test_retrain_keeps_production_when_the_candidate_is_not_better(
    prod_ws: tuple[Workspace, str],
) -> None:
    from seqrec.retrain import find_production, retrain

    ws, prod = prod_ws
    _new_events(ws)
    rep = retrain(ws, min_gain=1.0, epochs=1, progress=False)  # NDCG cannot gain 1.0
    assert not rep.promoted and "production kept" in rep.reason
    assert find_production(ws, "stage=production") == prod
    assert _labels(ws, prod)["stage"] == "production"
    assert _labels(ws, rep.candidate)["retrain"] == "rejected"
    assert "stage" not in _labels(ws, rep.candidate)


def test_retrain_without_production_beats_popularity_first(tmp_path: Path) -> None:
    from seqrec.features.repo import apply
    from seqrec.retrain import retrain

    ws = make_workspace(tmp_path / "ws")
    load_synth(ws, users=60, items=40)
    apply(ws)
    rep = retrain(ws, min_gain=-1.0, epochs=1, progress=False, materialize=False)
    assert rep.production is None and rep.baseline_score is not None
    assert rep.promoted and "popularity" in rep.reason
    assert _labels(ws, rep.candidate)["stage"] == "production"


def test_warm_retrain_fine_tunes_a_share_of_the_from_scratch_epochs(tmp_path: Path) -> None:
    """A warm start trains ``warm_start_share`` of the from-scratch epochs with no warmup, and
    a retrain of a warm-started production counts from the same from-scratch schedule (the
    budget does not shrink run after run)."""
    from seqrec import runs
    from seqrec.commands.serve import set_labels
    from seqrec.features.repo import apply
    from seqrec.pipeline import train_model
    from seqrec.retrain import retrain

    ws = make_workspace(tmp_path / "ws", "[train]\nwarm_start_share = 0.3\n")
    load_synth(ws, users=60, items=40)
    apply(ws)
    # from scratch: 7 epochs with patience 7 (all of them run)
    tag = train_model(ws, "gpt2", progress=False, overrides={"epochs": 7, "patience": 7}).tag
    set_labels(ws, tag, {"stage": "production"})
    epochs = []
    for _ in range(2):
        _new_events(ws, n_users=20)
        rep = retrain(ws, min_gain=-1.0, progress=False, materialize=False)
        assert rep.promoted
        info = model_store.load(rep.candidate, store=ws.model_store).info
        assert info["settings"]["warmup_ratio"] == 0.0
        assert info["full_schedule_epochs"] == 7
        epochs.append(info["epochs_run"])
        run = runs.get_run(ws, rep.run_id)
        assert run["config"]["warm_start"] == {"epochs": 3, "of": 7}  # ceil(0.3 * 7)
    assert epochs == [3, 3]


def test_retrain_of_a_model_saved_before_the_weight_average_trains_without_it(
    prod_ws: tuple[Workspace, str],
) -> None:
    """Production's configuration is retrained as it was: a model whose stored settings
    predate ``ema_decay`` trained without the average, so its candidate does too (not with
    gpt2's newer default)."""
    from seqrec.retrain import retrain

    ws, tag = prod_ws
    stored = model_store.load(tag, store=ws.model_store)
    assert stored.info["settings"]["ema_decay"] == 0.995  # gpt2's default today
    info_file = stored.path / "seqrec.json"
    info = json.loads(info_file.read_text())
    del info["settings"]["ema_decay"]
    info_file.write_text(json.dumps(info))
    _new_events(ws, n_users=20)
    rep = retrain(ws, min_gain=-1.0, progress=False, materialize=False)
    candidate = model_store.load(rep.candidate, store=ws.model_store).info
    assert candidate["settings"]["ema_decay"] == 0.0


def test_retrain_rejects_bad_requests(prod_ws: tuple[Workspace, str]) -> None:
    from seqrec.retrain import retrain

    ws, _ = prod_ws
    with pytest.raises(SeqrecError, match="bad production label"):
        retrain(ws, production_label="production", progress=False)
    with pytest.raises(SeqrecError, match="not 'lstm'"):
        retrain(ws, model_name="lstm", progress=False, materialize=False)
    with pytest.raises(SeqrecError, match="not classify"):
        retrain(ws, task="classify", progress=False, materialize=False)


def test_retrain_command(prod_ws: tuple[Workspace, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from seqrec.cli import build_cli

    for name in ("SEQREC_PROJECT", "BENTOML_HOME"):  # the CLI sets them: undone after the test
        monkeypatch.setenv(name, os.environ.get(name, ""))
        if not os.environ[name]:
            monkeypatch.delenv(name)
    ws, prod = prod_ws
    _new_events(ws, n_users=10)
    args = ["retrain", "--no-promote", "--epochs", "1", "--json", "--project", str(ws.root)]
    result = CliRunner().invoke(build_cli(), args)
    assert result.exit_code == 0, result.output
    rep = json.loads(result.output)
    assert rep["production"] == prod and rep["promoted"] is False
    assert _labels(ws, prod)["stage"] == "production"  # --no-promote: nothing moved
    bad = CliRunner().invoke(build_cli(), ["retrain", "--production", "x", "--project", ws.root])
    assert bad.exit_code == 2 and "bad production label" in bad.output  # a user error


def test_retrain_keeps_what_production_was_built_with_for_options_it_predates(
    prod_ws: tuple[Workspace, str],
) -> None:
    """A production model whose stored hyperparameters predate ``transition_bias`` (and
    ``now_features``) had no offsets: its candidate has none either, though gpt2's defaults
    now turn both on and the workspace does too (``[hyperparams.gpt2]``); production's own
    configuration wins."""
    from seqrec.config import load_workspace
    from seqrec.retrain import retrain

    ws, tag = prod_ws
    stored = model_store.load(tag, store=ws.model_store)
    info_file = stored.path / "seqrec.json"
    info = json.loads(info_file.read_text())
    info["params"].pop("transition_bias", None)
    info["params"].pop("now_features", None)
    info_file.write_text(json.dumps(info))
    toml = ws.root / "seqrec.toml"
    toml.write_text(toml.read_text() + "\n[hyperparams.gpt2]\ntransition_bias = true\n")
    ws = load_workspace(ws.root)
    assert ws.config.hyperparams["gpt2"]["transition_bias"] is True
    _new_events(ws, n_users=20)
    rep = retrain(ws, min_gain=-1.0, epochs=1, progress=False, materialize=False)
    candidate = model_store.load(rep.candidate, store=ws.model_store)
    assert candidate.info["params"]["transition_bias"] is False
    assert candidate.info["params"]["now_features"] is False
    assert candidate.model.transitions is None
