"""Feature-store-driven retraining: refresh features, warm-start a candidate from the production
model, compare both on the newest window, promote it or keep production.

One run (``seqrec retrain``), recorded step by step in the run history (:mod:`seqrec.runs`):

1. **Features** (step ``materialize``). Incremental materialization brings the online store up
   to the newest events, so the service that will load the model reads the same sequences it
   was trained on.
2. **Production.** The model the production pointer names (``stage=production`` by default;
   :mod:`seqrec.promotion`). With none, the run trains from scratch and the first model that
   beats the popularity ranking becomes production.
3. **Candidate** (step ``train``). The same model, task and label, trained on the training set
   at the new cutoff, warm-started from production's weights (grown item vocabulary: known rows
   kept). A warm start fine-tunes on a short schedule (:func:`warm_schedule`): a share of the
   from-scratch epochs (``[train] warm_start_share``), no warmup, the learning rate decaying to
   zero over them.
4. **Comparison** (step ``evaluate``). Both models on the same held-out window: each user's
   newest event. That is the newest data, which neither model has trained on. Production cannot
   rank items newer than itself: those targets count as misses for it (the staleness the run
   measures).
5. **Decision** (step ``promote``). The intake check (:mod:`seqrec.monitoring.intake`) first:
   when the item-to-item transitions of the events imported since production's training
   agree with the earlier ones less than ``min_intake_agreement`` (shuffled or re-keyed ids),
   the candidate is rejected whatever its metric. Otherwise promote when the candidate's metric is at least
   production's plus ``min_gain``: one transaction moves the pointer to the candidate (then the
   BentoML labels follow: the candidate gets the production label, the old model
   ``stage=archived``). Nothing moves before both evaluations succeeded, so a run that fails or
   dies at any step leaves production as it was. Every run writes a JSON report under
   ``runs/retrain/``.

One retrain at a time per workspace (:func:`seqrec.locking.job_lock`); a run that finds the
lock held exits 75 unless it was told to wait. A service picks up a promoted model as
docs/deployment.md describes; ``seqrec serve --model stage=production`` always starts the
current one.

Exit codes of ``seqrec retrain``: 0 the run completed (promoted or not: ``promoted`` in the
report says which), 2 a user or configuration error, 75 another retrain holds the lock
(EX_TEMPFAIL: try again later), 1 the run failed.

Testing hook: ``SEQREC_KILL_AT=<step>`` kills the process (SIGKILL) right after it recorded
that step as begun (:func:`seqrec.runs.begin_step`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from seqrec.config import Workspace
from seqrec.errors import SeqrecError, log_caught
from seqrec.labels import one_selector
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
    run_id: int | None = None
    run_dir: str = ""
    #: PSI of the newest window against the training window (seqrec.monitoring.drift)
    drift: dict[str, Any] | None = None
    #: the events since production's training against the earlier ones
    #: (seqrec.monitoring.intake); None without a production model that recorded its events
    intake: dict[str, Any] | None = None
    #: the newest event id when the run began: the next run's intake windows split there
    events_max_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_production(ws: Workspace, selector: str) -> str | None:
    """The model the production pointer ``selector`` (key=value) names, or None (a workspace
    without a pointer yet: the newest stored model carrying that label)."""
    from seqrec.promotion import production_tag

    one_selector(selector)
    return production_tag(ws, selector)


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
    wait: float | None = None,
    drift_threshold: float | None = None,
    min_intake_agreement: float | None = None,
) -> RetrainReport:
    """One retraining run (see the module docstring); returns what it decided.

    ``wait``: seconds to wait for another retrain's lock (None: fail at once, exit code 75;
    ``math.inf``: until it is free). The run is recorded in the run history either way."""
    from seqrec import runs
    from seqrec.locking import job_lock
    from seqrec.promotion import repair_labels

    one_selector(production_label)  # a user mistake fails before anything is recorded
    with job_lock(ws, "retrain", wait):
        runs.mark_crashed(ws, kinds=("retrain",))  # we hold the lock: none of them runs
        _forget_crashed(ws)
        repair_labels(ws, production_label)  # a run killed mid-promotion left them stale
        run_id = runs.start_run(ws, "retrain", task=task, label=label, model=model_name)
        try:
            report = _retrain(
                ws,
                run_id,
                production_label=production_label,
                model_name=model_name,
                task=task,
                label=label,
                metric=metric,
                min_gain=min_gain,
                epochs=epochs,
                seed=seed,
                promote=promote,
                materialize=materialize,
                progress=progress,
                drift_threshold=drift_threshold,
                min_intake_agreement=min_intake_agreement,
            )
        except BaseException as exc:
            runs.fail_run(ws, run_id, exc)
            raise
        runs.finish_run(ws, run_id, "succeeded", details=report.to_dict())
        return report


def _forget_crashed(ws: Workspace) -> None:
    """Remove the checkpoints of crashed retrain runs (a retrain never resumes them)."""
    import shutil

    from seqrec.runs import find_runs

    root = (ws.path("runs") / "retrain").resolve()
    for run in find_runs(ws, kind="retrain", status="crashed"):
        run_dir = (run.get("details") or {}).get("run_dir")
        if run_dir and Path(run_dir).resolve().parent == root and Path(run_dir).exists():
            shutil.rmtree(run_dir, ignore_errors=True)


def _retrain(
    ws: Workspace,
    run_id: int,
    *,
    production_label: str,
    model_name: str | None,
    task: str | None,
    label: str | None,
    metric: str | None,
    min_gain: float,
    epochs: int | None,
    seed: int | None,
    promote: bool,
    materialize: bool,
    progress: bool,
    drift_threshold: float | None = None,
    min_intake_agreement: float | None = None,
) -> RetrainReport:
    from seqrec import model_store, runs
    from seqrec.features.materialize import materialize as materialize_online
    from seqrec.pipeline import build_data, data_stats, evaluate_model, train_model
    from seqrec.promotion import promote as move_pointer

    t0 = time.perf_counter()
    started = datetime.now(UTC).isoformat(timespec="seconds")

    runs.begin_step(ws, run_id, "materialize")
    materialized = None
    if materialize:
        materialized = materialize_online(ws, incremental=True).users_written

    runs.begin_step(ws, run_id, "train")
    production = find_production(ws, production_label)
    init_from: Path | None = None
    prod_params: dict[str, Any] = {}
    prod_train: dict[str, Any] = {}
    vocab_before = None
    full_epochs: int | None = None
    prod_events_max_id: int | None = None
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
        vocab_before = stored.model.ctx.n_items - 1
        prod_events_max_id = stored.info.get("events_max_id")
        # the candidate is production's configuration (its preset and any options), retrained
        prod_params = _known_params(spec_name, stored.info.get("params") or {})
        stored_settings = stored.info.get("settings") or {}
        prod_train = {k: v for k, v in stored_settings.items() if k in PRESET_TRAIN_KEYS}
        if stored_settings:  # a model saved before the weight average existed trained without
            prod_train.setdefault("ema_decay", 0.0)
        stored_params = stored.info.get("params") or {}
        if stored_params:  # options production predates: what it was built with instead
            from seqrec.models import get_spec

            prod_params.update(get_spec(spec_name).absent_params(stored_params))
        # the from-scratch schedule production descends from (a warm model records it)
        full_epochs = stored.info.get("full_schedule_epochs") or prod_train.get("epochs")
        del stored
    task = task or "next-item"
    model_name = model_name or ws.config.models.default
    metric = metric or DEFAULT_METRIC[task]
    # a directory of its own per run: a killed run's checkpoints never meet the next run's
    run_dir = ws.path("runs") / "retrain" / f"{model_name}-run{run_id}"
    engine = ws.engine
    from seqrec.monitoring.intake import max_event_id

    newest_event = max_event_id(engine)
    runs.update_run(
        ws,
        run_id,
        model=model_name,
        task=task,
        label=label,
        metric=metric,
        production_tag=production,
        vocab_before=vocab_before,
        # the newest event this run judges: the next run's intake windows start after it
        details={"run_dir": str(run_dir), "events_max_id": newest_event},
    )
    intake = _intake(ws, engine, prod_events_max_id, min_intake_agreement, run_id)
    data = build_data(ws, task, label, engine)
    runs.update_run(ws, run_id, vocab_after=data.n_items - 1, **data_stats(data, engine))
    warm: dict[str, Any] | None = None
    if init_from is not None and full_epochs:
        warm = warm_schedule(int(full_epochs), ws.config.train.warm_start_share)
        prod_train = {**prod_train, **warm}
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
        extra_info={"full_schedule_epochs": full_epochs} if warm else None,
    )
    candidate = out.tag
    runs.update_run(
        ws,
        run_id,
        candidate_tag=candidate,
        preset=out.preset,
        seed=out.settings.get("seed"),
        config={"params": out.params, "settings": out.settings}
        | ({"warm_start": {"epochs": out.settings["epochs"], "of": full_epochs}} if warm else {}),
    )

    runs.begin_step(ws, run_id, "evaluate")

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
        if intake is not None and intake.refused:
            better = False
            reason = (
                f"{intake.describe()}: the new events do not follow the item-to-item "
                f"patterns of the earlier ones (item ids shuffled or re-keyed upstream?), so "
                f"no candidate trained on them is promoted ({reason.split(':')[0]}); check "
                "the import, or rerun with --min-intake-agreement 0 to skip the check"
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
    decision = (
        "rejected"
        if intake is not None and intake.refused
        else "promoted"
        if promoted
        else "not-promoted"
        if better
        else "kept"
        if production is not None
        else "rejected"
    )
    runs.update_run(
        ws,
        run_id,
        candidate_metrics=evaluations["candidate"],
        production_metrics=evaluations.get("production"),
        baseline_metrics=None if base_score is None else {metric: base_score},
        reason=reason,
    )

    drift = _drift(ws, run_id, data, production or candidate, drift_threshold)

    runs.begin_step(ws, run_id, "promote")
    if promoted:
        # one transaction: pointer, label_changes row and this run's decision
        move_pointer(ws, candidate, production_label, run_id=run_id, reason=reason)
    else:
        runs.update_run(ws, run_id, decision=decision)
        retrain_label = f"retrain={'rejected' if not better else 'not-promoted'}"
        _label_candidate(ws, candidate, retrain_label, run_id, reason)

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
        run_id=run_id,
        run_dir=str(run_dir),
        drift=drift,
        intake=None if intake is None else intake.to_dict(),
        events_max_id=newest_event,
    )
    path = ws.path("runs") / "retrain" / f"report-{started.replace(':', '')}-run{run_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    report.report_path = str(path)
    path.write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return report


def warm_schedule(full_epochs: int, share: float) -> dict[str, Any]:
    """Trainer settings of a warm-started candidate: ``share`` of the from-scratch schedule's
    ``full_epochs`` (at least 1) and no warmup, so the trainer's linear decay takes the learning
    rate from its peak to zero within them.

    A trained model needs a short annealed fine-tune, not the from-scratch schedule again: on
    the replayed slices of bench/retrain.py, 20% of the epochs reaches the cold model's NDCG@10
    in about a quarter of its time, where production's full schedule at a near-constant
    learning rate stopped early on a worse model."""
    return {"epochs": max(1, math.ceil(share * full_epochs)), "warmup_ratio": 0.0}


def _intake(ws: Workspace, engine: Any, since: int | None, limit: float | None, run_id: int) -> Any:
    """The intake check of the events since production's (None: production recorded none),
    in the windows that the earlier retrain runs since then each looked at."""
    from seqrec import runs
    from seqrec.monitoring.intake import DEFAULT_MIN_AGREEMENT, check_intake

    if since is None:
        return None
    cuts = [
        int(seen)
        for r in runs.find_runs(ws, kind="retrain")
        if r["id"] != run_id
        and isinstance(seen := (r.get("details") or {}).get("events_max_id"), int)
        and seen > since
    ]
    limit = DEFAULT_MIN_AGREEMENT if limit is None else limit
    return check_intake(engine, int(since), limit, cuts=cuts)


def _drift(
    ws: Workspace, run_id: int, data: Any, tag: str, threshold: float | None
) -> dict[str, Any]:
    """Record the drift of the newest window (scores of ``tag``) in the run; monitoring only:
    a failure is logged and recorded as the drift JSON's ``error``, never raised."""
    import logging

    from sqlalchemy.exc import DBAPIError

    from seqrec import runs
    from seqrec.monitoring.drift import DEFAULT_THRESHOLD, DRIFT_FAILURES, drift_for_model

    log = logging.getLogger(__name__)
    flagged: bool | None = None
    try:
        limit = DEFAULT_THRESHOLD if threshold is None else threshold
        result = drift_for_model(ws, data, tag, limit)
        out = result.to_dict()
        flagged = None if result.error and not result.features else result.flagged
    except Exception as exc:
        log_caught(log, exc, DRIFT_FAILURES, "drift not computed")
        out = {"threshold": threshold, "features": [], "error": f"{type(exc).__name__}: {exc}"}
    try:
        runs.update_run(ws, run_id, drift=out, drift_flagged=flagged)
    except Exception as exc:  # the database down: the run's own record says so later
        log_caught(log, exc, (SeqrecError, DBAPIError), "drift not recorded")
    return out


def _label_candidate(ws: Workspace, tag: str, selector: str, run_id: int, reason: str) -> None:
    """Label a candidate that was not promoted (``retrain=rejected``), recorded."""
    from seqrec.labels import set_labels
    from seqrec.runs import record_label_change, tables

    key, value = one_selector(selector)
    set_labels(ws, tag, {key: value})
    with tables(ws).begin() as conn:
        record_label_change(conn, selector, None, tag, run_id=run_id, reason=reason)


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
