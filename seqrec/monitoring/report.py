"""The HTML report of one training or retraining run: a self-contained folder (``index.html``
and the PNG plots it links relatively) under ``<workspace>/reports/run-<id>/`` by default.

Sections: the run (decision and reason), learning curves of its candidate, the metric across
retrains, the candidate on the test window (NDCG@10 by history length and catalogue coverage;
label balance and calibration for classifiers) and drift. A piece that is missing or fails is a
note in the report, never an error of the report.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.exc import DBAPIError

from seqrec.config import Workspace
from seqrec.errors import SeqrecError, log_caught
from seqrec.monitoring import plots
from seqrec.monitoring.drift import DriftResult

log = logging.getLogger(__name__)

#: what a report section fails with when its input is missing or damaged (a model gone, a file
#: not JSON, the database down); anything else is a bug, logged with its traceback
SECTION_FAILURES: tuple[type[BaseException], ...] = (SeqrecError, OSError, ValueError, DBAPIError)

#: history-length buckets (events before the target) of NDCG@10, inclusive; None = open
BUCKETS: list[tuple[int, int | None]] = [(1, 4), (5, 9), (10, 19), (20, 49), (50, None)]
#: runs read for the metric across retrains
HISTORY_LIMIT = 200


def esc(value: Any) -> str:
    """``value`` as text safe inside HTML elements and quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def _json(value: Any) -> Any:
    """A JSON column as Python (drivers return dicts or strings)."""
    if isinstance(value, str | bytes):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def load_run(ws: Workspace, run_id: int | None) -> dict[str, Any]:
    """The run ``run_id`` (default: the newest) from the workspace's run history."""
    from seqrec import runs

    if run_id is None:
        rows = runs.list_runs(ws, limit=1)
        if not rows:
            raise SeqrecError(
                "no runs recorded in this workspace",
                hint="`seqrec train` or `seqrec retrain` records one; `seqrec runs` lists them",
            )
        return dict(rows[0])
    try:
        run = runs.get_run(ws, run_id)
    except (KeyError, LookupError):
        run = None
    if not run:
        raise SeqrecError(f"no run {run_id}", hint="`seqrec runs` lists the recorded runs")
    return dict(run)


def candidate_tag(run: dict[str, Any]) -> str | None:
    """The model the run trained (its candidate)."""
    details = _json(run.get("details")) or {}
    return run.get("candidate_tag") or details.get("tag") or details.get("candidate")


def build_report(ws: Workspace, run_id: int | None = None, out_dir: Path | None = None) -> Path:
    """Write the report of run ``run_id`` (default: the newest); returns its ``index.html``."""
    run = load_run(ws, run_id)
    out = Path(out_dir) if out_dir else ws.path("reports") / f"run-{run['id']}"
    out.mkdir(parents=True, exist_ok=True)
    sections: list[tuple[str, Callable[[], str]]] = [
        ("Learning curves", lambda: learning_section(ws, run, out)),
        ("Metric across retrains", lambda: history_section(ws, run, out)),
        ("Candidate on the test window", lambda: evaluation_section(ws, run, out)),
        ("Drift", lambda: drift_section(run, out)),
    ]
    body = [header_section(run)]
    for title, make in sections:
        try:
            content = make()
        except Exception as exc:  # a broken piece is a note, the rest of the report stands
            log_caught(log, exc, SECTION_FAILURES, "report section %r failed", title)
            content = note(f"not available: {type(exc).__name__}: {exc}")
        body.append(f"<section><h2>{esc(title)}</h2>\n{content}</section>")
    path = out / "index.html"
    path.write_text(_page(f"seqrec run {run['id']}", "\n".join(body)), encoding="utf-8")
    return path


def header_section(run: dict[str, Any]) -> str:
    decision = run.get("decision") or "none"
    rows = [
        ("run", run.get("id")),
        ("kind", run.get("kind")),
        ("model", run.get("model")),
        ("task", run.get("task")),
        ("label", run.get("label")),
        ("status", run.get("status")),
        ("started", run.get("started_at")),
        ("finished", run.get("finished_at")),
        ("candidate", candidate_tag(run)),
        ("production", run.get("production_tag")),
        ("metric", run.get("metric")),
    ]
    table = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows if v)
    error = run.get("error")
    err = f'<p class="error">error: {esc(error)}</p>' if error else ""
    return (
        f"<h1>Run {esc(run.get('id'))}: {esc(run.get('kind'))} of {esc(run.get('model'))}</h1>\n"
        f'<div class="decision-box">Decision: <strong id="decision">{esc(decision)}</strong>'
        f'<p id="reason">{esc(run.get("reason") or "no reason recorded")}</p></div>\n'
        f"{err}<table>{table}</table>"
    )


def _stored_json(ws: Workspace, tag: str, name: str) -> Any:
    from seqrec import model_store

    _, path = model_store.locate(tag, ws.model_store)
    return json.loads((path / name).read_text())


def learning_section(ws: Workspace, run: dict[str, Any], out: Path) -> str:
    tag = candidate_tag(run)
    if not tag:
        return note("the run stored no model")
    history = (_stored_json(ws, tag, "metrics.json") or {}).get("history") or []
    if not history:
        return note(f"{tag} has no per-epoch history")
    metric = (_stored_json(ws, tag, "seqrec.json").get("settings") or {}).get("metric", "")
    key = f"valid_{metric}"
    epochs = [int(h.get("epoch", i)) for i, h in enumerate(history)]
    loss = [float(h["loss"]) for h in history]
    valid = [h.get(key) for h in history]
    plots.learning_curves(epochs, loss, valid, metric, out / "learning_curves.png")
    return _img("learning_curves.png", f"training loss and validation {metric} of {tag}")


def history_section(ws: Workspace, run: dict[str, Any], out: Path) -> str:
    from seqrec import runs

    rows = [r for r in runs.list_runs(ws, limit=HISTORY_LIMIT) if r.get("kind") == "retrain"]
    same = [
        r for r in rows if r.get("model") == run.get("model") and r.get("task") == run.get("task")
    ]
    if not same:
        return note("no retrain runs of this model and task yet")
    same.sort(key=lambda r: (str(r.get("started_at") or ""), r.get("id") or 0))
    metric = run.get("metric") or next((r["metric"] for r in same if r.get("metric")), "")
    series: dict[str, list[float | None]] = {"candidate": [], "production": [], "baseline": []}
    table = []
    for r in same:
        vals = {name: _metric(_json(r.get(f"{name}_metrics")), metric) for name in series}
        for name, v in vals.items():
            series[name].append(v)
        cells = "".join(f"<td>{_num(vals[n])}</td>" for n in series)
        mark = ' class="current"' if r.get("id") == run.get("id") else ""
        table.append(
            f"<tr{mark}><td>{esc(r.get('id'))}</td><td>{esc(r.get('started_at'))}</td>"
            f"{cells}<td>{esc(r.get('decision'))}</td></tr>"
        )
    series = {k: v for k, v in series.items() if any(x is not None for x in v)}
    if not series:
        return note(f"no {metric} recorded in the retrain runs")
    labels = [str(r.get("id")) for r in same]
    plots.metric_across_runs(labels, series, metric, out / "metric_history.png")
    head = "<tr><th>run</th><th>started</th><th>candidate</th><th>production</th>"
    head += "<th>popularity</th><th>decision</th></tr>"
    return _img("metric_history.png", f"{metric} across retrains") + (
        f"<table>{head}{''.join(table)}</table>"
    )


def _metric(metrics: Any, metric: str) -> float | None:
    """``metric`` from a run's metrics; production's over the whole window when recorded
    (targets newer than it count as misses, as the decision compared)."""
    if not isinstance(metrics, dict):
        return None
    value = metrics.get(f"{metric}_over_window", metrics.get(metric))
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def evaluation_section(ws: Workspace, run: dict[str, Any], out: Path) -> str:
    from seqrec.pipeline import evaluate_model

    tag = candidate_tag(run)
    if not tag:
        return note("the run stored no model to evaluate")
    res = evaluate_model(ws, tag, ks=(10,), progress=False, ci=False, per_user=True)
    intro = note(f"{tag} on the current test window ({res['users']} examples)")
    if res.get("task") == "classify":
        return intro + classifier_section(ws, tag, res, out)
    return intro + ranking_section(ws, res, out)


def history_lengths(ws: Workspace, user_ids: np.ndarray) -> np.ndarray:
    """Events before each user's test target (their newest event), uncapped."""
    from seqrec.features.sql import event_positions

    engine = ws.engine
    n = event_positions(engine).groupby("user_id")["n"].max()
    return n.reindex(list(user_ids)).fillna(1).to_numpy(dtype=np.int64) - 1


def bucket_label(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else f"{lo}-{hi}"


def ranking_section(ws: Workspace, res: dict[str, Any], out: Path) -> str:
    per = res["per_user"]
    ranks = np.asarray(per["ranks"], dtype=np.float64)
    if not len(ranks):
        return note("no test examples")
    ndcg = np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0)
    lengths = history_lengths(ws, per["user_ids"])
    labels, values, counts = [], [], []
    for lo, hi in BUCKETS:
        m = (lengths >= lo) & (lengths <= (hi if hi is not None else np.iinfo(np.int64).max))
        labels.append(bucket_label(lo, hi))
        values.append(float(ndcg[m].mean()) if m.any() else 0.0)
        counts.append(int(m.sum()))
    plots.bars(
        labels,
        values,
        out / "ndcg_by_length.png",
        title="NDCG@10 by history length (events before the target)",
        ylabel="NDCG@10",
        notes=[f"n={c}" for c in counts],
    )
    rows = "".join(
        f"<tr><td>{esc(b)}</td><td>{c}</td><td>{_num(v) if c else ''}</td></tr>"
        for b, v, c in zip(labels, values, counts, strict=True)
    )
    cov = res.get("coverage@10")
    summary = (
        f'<p>NDCG@10 <span id="ndcg">{res["ndcg@10"]:.4f}</span>; catalogue coverage@10 '
        f'<span id="coverage">{_num(cov)}</span> (share of items in at least one test '
        "user's top 10)</p>"
    )
    return (
        summary
        + _img("ndcg_by_length.png", "NDCG@10 by history-length bucket")
        + f"<table><tr><th>history length</th><th>users</th><th>NDCG@10</th></tr>{rows}</table>"
    )


def classifier_section(ws: Workspace, tag: str, res: dict[str, Any], out: Path) -> str:
    per = res["per_user"]
    y = np.asarray(per["labels"], dtype=np.int64)
    probs = np.asarray(per["probs"], dtype=np.float64)
    if not len(y):
        return note("no test examples")
    n_classes = probs.shape[1]
    names = [str(c) for c in (res.get("class_names") or range(n_classes))]
    test = np.bincount(y, minlength=n_classes)[:n_classes]
    info = _stored_json(ws, tag, "seqrec.json")
    train_counts = (info.get("data") or {}).get("train_class_counts")
    groups = {"test": (test / max(1, test.sum())).tolist()}
    if train_counts and len(train_counts) == n_classes:
        tc = np.asarray(train_counts, dtype=np.float64)
        groups = {"train": (tc / max(1.0, tc.sum())).tolist(), **groups}
    plots.grouped_bars(names, groups, out / "label_balance.png", title="Label balance")
    if n_classes == 2:
        p, hit, what = probs[:, 1], (y == 1), f"P({names[1]})"
    else:
        p, hit, what = probs.max(axis=1), probs.argmax(axis=1) == y, "top-class probability"
    bins = np.minimum((p * 10).astype(np.int64), 9)
    pred, obs, cnt = [], [], []
    for b in range(10):
        m = bins == b
        if m.any():
            pred.append(float(p[m].mean()))
            obs.append(float(hit[m].mean()))
            cnt.append(int(m.sum()))
    plots.reliability(pred, obs, cnt, out / "calibration.png")
    auc = res.get("roc_auc")
    return (
        f"<p>ROC-AUC {esc(_num(auc) if auc == auc else 'n/a')}; calibration of {esc(what)}</p>"
        + _img("label_balance.png", "label balance, train and test")
        + _img("calibration.png", "reliability diagram")
    )


def drift_section(run: dict[str, Any], out: Path) -> str:
    raw = _json(run.get("drift"))
    if not raw:
        return note("no drift recorded for this run (seqrec retrain measures it)")
    result = DriftResult.from_dict(raw)
    parts = []
    if result.error:
        parts.append(f'<p class="error">drift failed: {esc(result.error)}</p>')
    if not result.features:
        return "".join(parts) or note("no drift features recorded")
    flagged = result.flagged
    parts.append(
        f'<p id="drift-status" class="{"flagged" if flagged else "ok"}">'
        + (
            f"Drift flagged: a PSI above {result.threshold:g}"
            if flagged
            else f"No feature above the PSI threshold {result.threshold:g}"
        )
        + "</p>"
    )
    plots.drift_psi(
        [f.name for f in result.features],
        [f.psi for f in result.features],
        result.threshold,
        out / "drift.png",
    )
    parts.append(_img("drift.png", "PSI per feature"))
    rows = "".join(
        f'<tr class="{"flagged" if f.flagged else ""}"><td>{esc(f.name)}</td>'
        f"<td>{f.psi:.4f}</td><td>{result.threshold:g}</td>"
        f"<td>{'DRIFT' if f.flagged else 'ok'}</td><td>{f.n_reference}</td><td>{f.n_current}</td></tr>"
        for f in result.features
    )
    parts.append(
        "<table><tr><th>feature</th><th>PSI</th><th>threshold</th><th>flag</th>"
        f"<th>reference n</th><th>newest n</th></tr>{rows}</table>"
    )
    return "".join(parts)


def _img(src: str, alt: str) -> str:
    return f'<img src="{esc(src)}" alt="{esc(alt)}">'


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 980px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
img { display: block; max-width: 100%; margin: 0.5em 0; }
.note { color: #666; font-style: italic; }
.error { color: #a00; }
.decision-box { background: #f3f6fa; border-left: 4px solid #369; padding: 0.5em 1em; }
tr.flagged, p.flagged { background: #fdd; color: #900; font-weight: bold; }
tr.current { background: #ffc; }
"""


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
