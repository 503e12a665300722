"""Drift (PSI) and the HTML run report, on real workspaces and run history."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from seqrec.config import Workspace
from seqrec.errors import SeqrecError
from seqrec.monitoring.drift import (
    DriftResult,
    categorical_drift,
    compute_drift,
    continuous_drift,
    popularity_deciles,
    psi,
)


def test_psi_is_zero_for_identical_and_large_for_shifted_distributions() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0.0, 1.0, 5000)
    assert psi(np.array([5, 3, 2]), np.array([50, 30, 20])) == pytest.approx(0.0, abs=1e-12)
    assert continuous_drift("x", ref, ref.copy(), 0.2).psi == pytest.approx(0.0, abs=1e-9)
    same = continuous_drift("x", ref, rng.normal(0.0, 1.0, 5000), 0.2)
    assert same.psi < 0.05 and not same.flagged
    shifted = continuous_drift("x", ref, rng.normal(1.0, 1.0, 5000), 0.2)
    assert shifted.psi > 0.5 and shifted.flagged
    assert len(shifted.bins) == 10 and sum(shifted.reference) == pytest.approx(1.0)
    # categories: one the reference never saw gets the epsilon floor, not a division by zero
    cat = categorical_drift("t", np.array([1] * 90 + [2] * 10), np.array([3] * 50 + [1] * 50), 0.2)
    assert cat.bins == ["1", "2", "3"] and cat.flagged and np.isfinite(cat.psi)
    # small windows get fewer quantile bins (sampling noise), at least two
    assert len(continuous_drift("x", ref[:60], ref[60:120], 0.2).bins) == 2


def test_popularity_deciles_rank_reference_items() -> None:
    ref = np.array([1] * 50 + [2] * 30 + [3] * 5 + [4])  # item 5 never seen, 0 is padding
    dec = popularity_deciles(ref, n_items=6)
    assert dec[1] == 0 and dec[4] > dec[3] > dec[2] > dec[1]
    assert dec[5] == 10 and dec[0] == 10


def test_drift_result_round_trips_through_json() -> None:
    r = DriftResult(
        threshold=0.1, features=[continuous_drift("x", np.arange(100), np.arange(100) + 50, 0.1)]
    )
    d = r.to_dict()
    assert d["flagged"] is True and d["psi"]["x"] > 0.1
    back = DriftResult.from_dict(d)
    assert back.psi() == r.psi() and back.flagged and back.threshold == 0.1


def _run(ws: Workspace, **fields: object) -> int:
    from seqrec import runs

    rid = runs.start_run(ws, "train", **fields)
    runs.finish_run(ws, rid, "succeeded")
    return rid


def _gpt2(ws: Workspace) -> str:
    from seqrec import model_store

    return next(r["tag"] for r in model_store.list_models(ws.model_store) if "gpt2" in r["tag"])


def test_report_of_a_trained_workspace(trained_ws: Workspace, tmp_path: Path) -> None:
    from seqrec.monitoring.report import build_report

    tag = _gpt2(trained_ws)
    odd = '<script>alert("x")</script> & gpt2'
    rid = _run(
        trained_ws,
        model=odd,
        task="next-item",
        label="a<b>&c",
        candidate_tag=tag,
        reason="trained <fine> & stored",
    )
    index = build_report(trained_ws, rid, tmp_path / "rep")
    assert index == tmp_path / "rep" / "index.html"
    text = index.read_text()
    pngs = {p.name for p in index.parent.glob("*.png")}
    assert {"learning_curves.png", "ndcg_by_length.png"} <= pngs
    for name in pngs:
        assert f'src="{name}"' in text  # relative: the folder is self-contained
        assert (index.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every piece of run text is escaped
    assert "<script>" not in text and "&lt;script&gt;alert(&quot;x&quot;)" in text
    assert "a&lt;b&gt;&amp;c" in text and "trained &lt;fine&gt; &amp; stored" in text
    assert 'id="decision">none<' in text
    # missing pieces are notes: no retrain history, no drift on a train run
    assert "no retrain runs" in text and "no drift recorded" in text
    for bucket in ("1-4", "5-9", "10-19", "20-49", "50+"):
        assert f"<td>{bucket}</td>" in text
    assert 'id="coverage">0.' in text or 'id="coverage">1.' in text


def test_report_defaults_and_unknown_run(
    trained_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from seqrec.cli import build_cli
    from seqrec.monitoring.report import build_report

    rid = _run(trained_ws, model="gpt2", task="next-item", candidate_tag=_gpt2(trained_ws))
    index = build_report(trained_ws)  # newest run, default folder
    assert index == trained_ws.path("reports") / f"run-{rid}" / "index.html" and index.exists()
    with pytest.raises(SeqrecError, match="no run"):
        build_report(trained_ws, 10**9)
    for name in ("SEQREC_PROJECT", "BENTOML_HOME"):  # the CLI sets them: undone after the test
        monkeypatch.setenv(name, os.environ.get(name, ""))
        if not os.environ[name]:
            monkeypatch.delenv(name)
    root = str(trained_ws.root)
    bad = CliRunner().invoke(build_cli(), ["report", str(10**9), "--project", root])
    assert bad.exit_code != 0 and "no run" in bad.output
    out = trained_ws.root / "rep-cli"
    ok = CliRunner().invoke(build_cli(), ["report", str(rid), "--out", str(out), "--project", root])
    assert ok.exit_code == 0, ok.output
    assert (out / "index.html").exists()


def test_report_without_runs_is_a_clear_error(ws: Workspace) -> None:
    from seqrec.monitoring.report import build_report

    with pytest.raises(SeqrecError, match="no runs recorded"):
        build_report(ws)


def _shifted_events(ws: Workspace, per_user: int = 3) -> None:
    """Every user does ``per_user`` more events, all of a new type on items new to the
    catalogue: the newest window differs from the training window in types and items."""

    from sqlalchemy import func, select

    from seqrec.data.importers import RawEvent
    from seqrec.data.schema import events, make_engine

    engine = make_engine(ws.events_url)
    with engine.connect() as conn:
        last = conn.execute(select(func.max(events.c.ts_ms))).scalar_one()
        users = [r[0] for r in conn.execute(select(events.c.user_id).distinct())]
    rows = [
        RawEvent(
            u, f"fresh-{(i + j) % 7}", int(last) + 1000 * (i * per_user + j + 1), "refund", None
        )
        for i, u in enumerate(users)
        for j in range(per_user)
    ]
    engine.dispose()
    from seqrec.testing import import_rows

    import_rows(ws, rows, "test:shifted")


@pytest.fixture
def small_ws(tmp_path: Path) -> Workspace:
    from seqrec.features.materialize import materialize
    from seqrec.features.repo import apply
    from seqrec.testing import load_synth, make_workspace

    w = make_workspace(tmp_path / "ws")
    load_synth(w, users=80, items=50)
    apply(w)
    materialize(w)
    return w


def test_drift_flags_a_shifted_newest_window(small_ws: Workspace) -> None:
    from seqrec.pipeline import build_data

    before = compute_drift(build_data(small_ws, "next-item", None))
    assert set(before.psi()) == {"sequence_length", "event_type", "item_popularity"}
    assert before.psi()["event_type"] < 0.2 and before.psi()["item_popularity"] < 0.2
    _shifted_events(small_ws)
    after = compute_drift(build_data(small_ws, "next-item", None))
    assert after.flagged
    assert after.psi()["event_type"] > 1.0 and after.psi()["item_popularity"] > 1.0
    pop = next(f for f in after.features if f.name == "item_popularity")
    assert pop.bins[-1] == "unseen" and pop.current[-1] > 0.5


def test_report_of_a_classifier(small_ws: Workspace, tmp_path: Path) -> None:
    from seqrec import runs
    from seqrec.monitoring.drift import drift_for_model
    from seqrec.monitoring.report import build_report
    from seqrec.pipeline import build_data, train_model

    label = "purchase-within:7d"
    tag = train_model(small_ws, "gpt2", task="classify", label=label, epochs=1, progress=False).tag
    drift = drift_for_model(small_ws, build_data(small_ws, "classify", label), tag)
    assert drift.error is None and "score" in drift.psi()
    rid = runs.start_run(small_ws, "train", model="gpt2", task="classify", label=label)
    runs.finish_run(small_ws, rid, "succeeded", candidate_tag=tag, drift=drift.to_dict())
    index = build_report(small_ws, rid, tmp_path / "rep")
    text = index.read_text()
    for png in ("label_balance.png", "calibration.png", "learning_curves.png", "drift.png"):
        assert (index.parent / png).exists() and f'src="{png}"' in text
    assert "ROC-AUC" in text and 'id="drift-status"' in text


def test_retrain_records_drift_and_reports_it(small_ws: Workspace, tmp_path: Path) -> None:
    from seqrec import runs
    from seqrec.commands.serve import set_labels
    from seqrec.monitoring.report import build_report
    from seqrec.pipeline import train_model
    from seqrec.retrain import retrain

    prod = train_model(small_ws, "gpt2", epochs=1, progress=False).tag
    set_labels(small_ws, prod, {"stage": "production"})
    _shifted_events(small_ws)
    rep = retrain(small_ws, min_gain=-1.0, epochs=1, progress=False, drift_threshold=0.25)
    assert rep.run_id is not None and rep.drift is not None
    run = runs.get_run(small_ws, rep.run_id)
    assert run["drift_flagged"] is True and run["drift"]["threshold"] == 0.25
    psi = run["drift"]["psi"]
    assert set(psi) == {"sequence_length", "event_type", "item_popularity", "score"}
    assert psi["event_type"] > 0.25 and psi["item_popularity"] > 0.25
    index = build_report(small_ws, rep.run_id, tmp_path / "rep")
    text = index.read_text()
    assert f'id="decision">{run["decision"]}<' in text
    assert 'class="flagged"' in text and "Drift flagged" in text
    for png in ("drift.png", "metric_history.png", "learning_curves.png", "ndcg_by_length.png"):
        assert (index.parent / png).exists() and f'src="{png}"' in text


def test_a_drift_failure_never_fails_the_retrain(
    small_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from seqrec import runs
    from seqrec.monitoring import drift
    from seqrec.retrain import retrain

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("drift exploded")

    monkeypatch.setattr(drift, "compute_drift", broken)
    rep = retrain(small_ws, min_gain=-1.0, epochs=1, progress=False, materialize=False)
    run = runs.get_run(small_ws, rep.run_id)
    assert run["status"] == "succeeded" and run["decision"] == "promoted"
    assert "drift exploded" in run["drift"]["error"] and run["drift_flagged"] is None


def test_report_of_a_cli_train_run(small_ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from click.testing import CliRunner

    from seqrec.cli import build_cli

    for name in ("SEQREC_PROJECT", "BENTOML_HOME"):  # the CLI sets them: undone after the test
        monkeypatch.setenv(name, os.environ.get(name, ""))
        if not os.environ[name]:
            monkeypatch.delenv(name)
    root = str(small_ws.root)
    train = ["train", "--model", "gpt2", "--epochs", "1", "--json", "--project", root]
    assert CliRunner().invoke(build_cli(), train).exit_code == 0
    res = CliRunner().invoke(build_cli(), ["report", "--json", "--project", root])
    assert res.exit_code == 0, res.output
    index = Path(json.loads(res.output.strip().splitlines()[-1])["path"])
    assert index.parent.parent == small_ws.path("reports") and index.parent.name.startswith("run-")
    text = index.read_text()
    assert "learning_curves.png" in text and "ndcg_by_length.png" in text
