"""Feature-store-driven retraining: refresh features, warm-start a candidate from the production
model, compare both on the newest window, promote by label or keep.

One run (``seqrec retrain``):

1. **Features.** Incremental materialization brings the online store up to the newest events,
   so the service that will load the model reads the same sequences it was trained on.
2. **Production.** The model carrying the production label (``stage=production`` by default).
   With none, the run trains from scratch and the first model that beats the popularity ranking
   becomes production.
3. **Candidate.** The same model, task and label, trained on the training set at the new
   cutoff, warm-started from production's weights (grown item vocabulary: known rows kept).
4. **Comparison.** Both models on the same held-out window: each user's newest event. That is
   the newest data, which neither model has trained on. Production cannot rank items newer than
   itself: those targets count as misses for it (the staleness the run measures).
5. **Decision.** Promote when the candidate's metric is at least production's plus
   ``min_gain``: the candidate gets the production label, the old model gets
   ``stage=archived``. Labels change only after both evaluations succeeded, so a failed run
   leaves production as it was. Every run writes a JSON report under ``runs/retrain/``.

A running service keeps the model it loaded; restart it (or roll the replicas) to serve a
promoted model. ``seqrec serve --model stage=production`` always starts the current one.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from seqrec.config import Workspace
from seqrec.errors import SeqrecError
from seqrec.models import PRESET_TRAIN_KEYS

#: the metric a retraining run compares, by task (higher is better)
DEFAULT_METRIC = {"next-item": "ndcg@10", "classify": "roc_auc"}


@dataclass
class RetrainReport:
    """What a retraining run did and why (also written as JSON under ``runs/retrain/``)."""

    started: str
    production: str | None
    candidate: str
    task: str
    metric: str
    production_score: float | None
    candidate_score: float
    baseline_score: float | None
    min_gain: float
    promoted: bool
    reason: str
    materialized_users: int | None
    seconds: float
    evaluations: dict[str, Any] = field(default_factory=dict)
    report_path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _parse_selector(selector: str) -> tuple[str, str]:
    key, sep, value = selector.partition("=")
    if not sep or not key.strip() or not value.strip() or "," in selector:
        raise SeqrecError(
            f"bad production label '{selector}'", hint="use one key=value, e.g. stage=production"
        )
    return key.strip(), value.strip()


def find_production(ws: Workspace, selector: str) -> str | None:
    """The newest stored model carrying the label ``selector`` (key=value), or None."""
    from seqrec import model_store

    key, value = _parse_selector(selector)
    for row in model_store.list_models(ws.model_store):  # newest first
        if row["labels"].get(key) == value:
            return str(row["tag"])
    return None


def _score(metrics: dict[str, Any], metric: str, tag: str) -> float:
    if metric not in metrics:
        known = sorted(k for k, v in metrics.items() if isinstance(v, float))
        raise SeqrecError(f"metric '{metric}' not measured for {tag}", hint=f"one of: {known}")
    return float(metrics[metric])


def retrain(
    ws: Workspace,
    *,
    production_label: str = "stage=production",
    model_name: str | None = None,
    task: str | None = None,
    label: str | None = None,
    metric: str | None = None,
    min_gain: float = 0.0,
    epochs: int | None = None,
    seed: int | None = None,
    promote: bool = True,
    materialize: bool = True,
    progress: bool = True,
) -> RetrainReport:
    """One retraining run (see the module docstring); returns what it decided."""
    from seqrec import model_store
    from seqrec.commands.serve import set_labels
    from seqrec.features import store as feature_store
    from seqrec.pipeline import build_data, evaluate_model, train_model

    t0 = time.perf_counter()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    key, value = _parse_selector(production_label)

    materialized = None
    if materialize:
        materialized = feature_store.materialize(ws, incremental=True).users_written

    production = find_production(ws, production_label)
    init_from: Path | None = None
    prod_params: dict[str, Any] = {}
    prod_train: dict[str, Any] = {}
    if production is not None:
        stored = model_store.load(production, store=ws.model_store)
        prod_task = stored.info.get("task", "next-item")
        if task is not None and task != prod_task:
            raise SeqrecError(
                f"production model {production} is a {prod_task} model, not {task}",
                hint="retrain keeps production's task; drop --task or label another model",
            )
        task = prod_task
        label = label or stored.info.get("label")
        spec_name = stored.model.spec_name
        if model_name is not None and model_name != spec_name:
            raise SeqrecError(
                f"production model {production} is '{spec_name}', not '{model_name}'",
                hint="a candidate warm-starts from production: drop --model, or train the "
                "other model with `seqrec train` and label it",
            )
        model_name = spec_name
        init_from = stored.path
        # the candidate is production's configuration (its preset and any options), retrained
        prod_params = _known_params(spec_name, stored.info.get("params") or {})
        prod_train = {
            k: v for k, v in (stored.info.get("settings") or {}).items() if k in PRESET_TRAIN_KEYS
        }
        del stored
    task = task or "next-item"
    model_name = model_name or ws.config.models.default
    metric = metric or DEFAULT_METRIC[task]

    data = build_data(ws, task, label)
    run_dir = ws.path("runs") / "retrain" / f"{model_name}-{started.replace(':', '')}"
    out = train_model(
        ws,
        model_name,
        task=task,
        label=label,
        epochs=epochs,
        seed=seed,
        params=prod_params or None,
        overrides=prod_train or None,
        init_from=init_from,
        run_dir=run_dir,
        progress=progress,
        data=data,
    )
    candidate = out.tag

    def evaluate(tag: str) -> dict[str, Any]:
        return evaluate_model(ws, tag, ks=(10, 20), data=data, progress=False, ci=False)

    evaluations = {"candidate": evaluate(candidate)}
    cand_score = _score(evaluations["candidate"], metric, candidate)
    prod_score = base_score = None
    if production is not None:
        evaluations["production"] = prod_eval = evaluate(production)
        prod_score = _score(prod_eval, metric, production)
        n_all, n_known = evaluations["candidate"].get("users"), prod_eval.get("users")
        if task == "next-item" and n_all and n_known is not None and n_known < n_all:
            # targets newer than production are misses for it (it cannot rank them): over the
            # same window as the candidate, a mean metric scales by the share it could score
            prod_score *= n_known / n_all
            prod_eval["window_users"] = n_all
            prod_eval[f"{metric}_over_window"] = prod_score
        better = cand_score >= prod_score + min_gain
        reason = (
            f"candidate {metric} {cand_score:.4f} vs production {prod_score:.4f} "
            f"(needs +{min_gain:g}): " + ("better" if better else "not better, production kept")
        )
    elif task == "next-item":
        # no production yet: the first model must at least beat the popularity ranking
        base = _popularity_baseline(ws, data, metric)
        base_score = base
        better = cand_score >= base + min_gain
        reason = (
            f"no model labelled {production_label}; candidate {metric} {cand_score:.4f} vs "
            f"popularity {base:.4f}: " + ("better" if better else "not better, nothing promoted")
        )
    else:
        better = True
        reason = f"no model labelled {production_label}: the first candidate becomes production"

    promoted = bool(better and promote)
    if better and not promote:
        reason += " (--no-promote: labels unchanged)"
    if promoted:
        set_labels(ws, candidate, {key: value})
        if production is not None:
            set_labels(ws, production, {key: "archived" if key == "stage" else ""})
    else:
        set_labels(ws, candidate, {"retrain": "rejected" if not better else "not-promoted"})

    report = RetrainReport(
        started=started,
        production=production,
        candidate=candidate,
        task=task,
        metric=metric,
        production_score=prod_score,
        candidate_score=cand_score,
        baseline_score=base_score,
        min_gain=min_gain,
        promoted=promoted,
        reason=reason,
        materialized_users=materialized,
        seconds=round(time.perf_counter() - t0, 1),
        evaluations=evaluations,
    )
    path = ws.path("runs") / "retrain" / f"report-{started.replace(':', '')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    report.report_path = str(path)
    path.write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return report


def _popularity_baseline(ws: Workspace, data: Any, metric: str) -> float:
    """``metric`` of the training popularity ranking on the same held-out window."""
    import numpy as np

    from seqrec.evaluation.metrics import ranking_metrics

    targets = data.train.next_item_targets()
    pop = np.bincount(targets[targets > 0], minlength=data.n_items).astype(np.float64)
    pop[0] = -np.inf
    order = np.argsort(-pop, kind="stable")
    rank_of = np.empty(len(order), dtype=np.int64)
    rank_of[order] = np.arange(len(order))
    ranks = rank_of[np.asarray(data.test.labels)]
    ks = tuple(sorted({10, 20, int(metric.split("@")[1]) if "@" in metric else 10}))
    return _score(dict(ranking_metrics(ranks, ks)), metric, "popularity")


def _known_params(model: str, params: dict[str, Any]) -> dict[str, Any]:
    """Production's hyperparameters that the installed plugin still accepts."""
    from seqrec.models import COMMON_PARAMS, get_spec

    spec = get_spec(model)
    return {k: v for k, v in params.items() if k in spec.defaults or k in COMMON_PARAMS}
