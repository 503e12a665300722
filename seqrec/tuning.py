"""``seqrec tune``: hyperparameter search with Optuna over a plugin's declared search space.

Each trial trains the model with the shared trainer on the same training set (built once) and
reports the validation metric (NDCG@10 for next-item, ROC-AUC for classification) after every
epoch, so Optuna's median pruner stops unpromising trials early. The study is stored in the
workspace's events database (Optuna's RDB storage), so a killed run resumes where it stopped:
trials counted towards ``--trials`` are the finished and pruned ones, and a trial that was
running when the process died is retried once with the same parameters. A new study's first
trial is the configuration ``seqrec train`` uses today (where it lies in the search space). The
best trial becomes a workspace preset (``presets/<model>.json``) that ``seqrec train --preset
NAME`` uses, unless it beats today's configuration by less than ``min_gain`` paired standard
errors on the validation examples (:mod:`seqrec.evaluation.paired`): the best of many trials on
one split is partly luck, and then the preset keeps today's configuration.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seqrec.config import Workspace
from seqrec.errors import SeqrecError
from seqrec.models import PRESET_TRAIN_KEYS, Choice, Float, Int, ModelSpec, SearchSpace, get_spec


@dataclass
class TuneResult:
    study: str
    metric: str
    best_value: float
    best_trial: int
    best_params: dict[str, Any]
    best_train: dict[str, Any]
    preset: str
    preset_file: str
    trials: list[dict[str, Any]] = field(default_factory=list)
    plot: str | None = None
    #: the trial saved as the preset: the best one, or the starting configuration when the
    #: best beats it by less than ``min_gain`` paired standard errors on validation
    preset_trial: int | None = None
    start_trial: int | None = None
    gain: float | None = None  # the best trial's validation gain over the start
    gain_se: float | None = None
    min_gain: float = 0.0
    comparison: str = ""  # how the preset was chosen, in words

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


#: paired standard errors by which the best trial must beat the starting configuration on
#: validation to replace it in the saved preset
MIN_GAIN_SE = 2.0


def study_name(model: str, task: str, label: str | None) -> str:
    return f"{model}-{task}" + (f"-{label.replace(':', '')}" if label else "")


def suggest(trial: Any, space: SearchSpace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sample one configuration: (model hyperparameters, trainer settings)."""
    params: dict[str, Any] = {}
    train: dict[str, Any] = {}
    for key, dist in space.items():
        value: Any
        if isinstance(dist, Float):
            value = trial.suggest_float(key, dist.low, dist.high, log=dist.log)
        elif isinstance(dist, Int):
            value = trial.suggest_int(key, dist.low, dist.high, step=dist.step)
        elif isinstance(dist, Choice):
            value = trial.suggest_categorical(key, list(dist.values))
        else:  # pragma: no cover - ModelSpec validates the types it is given
            raise SeqrecError(f"search space entry '{key}' has an unknown type {type(dist)}")
        (train if key in PRESET_TRAIN_KEYS else params)[key] = value
    return params, train


def storage(ws: Workspace) -> Any:
    """Optuna's RDB storage in the workspace's events database."""
    import optuna
    from optuna.storages import RDBStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return RDBStorage(url=ws.events_url)


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(owner: str) -> bool:
    """Whether the process that owns a trial (``host:pid``) still runs on this host."""
    from seqrec.runs import process_alive

    host, _, pid = owner.rpartition(":")
    try:
        return process_alive(host, int(pid))
    except ValueError:
        return True


def requeue_dead_trials(study: Any) -> int:
    """Trials left RUNNING by a killed ``seqrec tune`` on this host: marked failed and their
    parameters queued again, so the resumed run retries them. Returns how many."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("owner")
        if owner is None or _alive(owner):
            continue
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        if not t.user_attrs.get("retry_of"):
            attrs: dict[str, Any] = {"retry_of": t.number}
            for key in ("start", "start_keys"):  # a retried start is still the study's start
                if key in t.user_attrs:
                    attrs[key] = t.user_attrs[key]
            study.enqueue_trial(t.params, user_attrs=attrs)
        n += 1
    return n


def starting_point(space: SearchSpace, params: dict[str, Any], settings: Any) -> dict[str, Any]:
    """The values of ``space``'s keys in the configuration ``seqrec train`` uses today (model
    hyperparameters from ``params``, trainer keys from ``settings``); keys without a value, or
    with one outside their range, are left to the sampler."""
    start: dict[str, Any] = {}
    for key, dist in space.items():
        value = getattr(settings, key, None) if key in PRESET_TRAIN_KEYS else params.get(key)
        if value is None:
            continue
        if isinstance(dist, Choice):
            fits = any(v == value and type(v) is type(value) for v in dist.values)
        elif isinstance(dist, Int):
            fits = (
                isinstance(value, int)
                and dist.low <= value <= dist.high
                and (value - dist.low) % dist.step == 0
            )
        else:
            fits = isinstance(value, (int, float)) and dist.low <= value <= dist.high
        if fits:
            start[key] = value
    return start


def tune(
    ws: Workspace,
    model_name: str,
    *,
    task: str = "next-item",
    label: str | None = None,
    trials: int = 20,
    timeout: float | None = None,
    epochs: int | None = None,
    seed: int = 0,
    study: str | None = None,
    save_as: str | None = None,
    plot: Path | None = None,
    progress: bool = True,
    data: Any = None,
    min_gain: float = MIN_GAIN_SE,
) -> TuneResult:
    """Search ``model_name``'s space for ``trials`` trials (in total, across resumes).

    The saved preset is the best trial's configuration, unless the study started from today's
    configuration and the best beats it by less than ``min_gain`` paired standard errors on
    the validation examples (0: always the best): then it is today's configuration."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from seqrec.pipeline import build_data, build_model, validator
    from seqrec.presets import resolve, save_workspace_preset
    from seqrec.progress import bar
    from seqrec.training.trainer import train

    spec = get_spec(model_name)
    if not spec.search_space:
        raise SeqrecError(
            f"model '{model_name}' declares no search space",
            hint="its plugin sets ModelSpec(search_space=...) to be tunable",
        )
    if task not in spec.tasks:
        raise SeqrecError(
            f"model '{model_name}' does not support task '{task}'",
            hint=f"it supports: {', '.join(spec.tasks)}",
        )
    if trials < 1:
        raise SeqrecError(f"--trials must be at least 1, got {trials}")
    save_as = save_as or (
        "tuned" if task == "next-item" else f"tuned-{study_name('', task, label)[1:]}"
    )
    data = data if data is not None else build_data(ws, task, label)
    metric = "roc_auc" if task == "classify" else "ndcg@10"
    name = study or study_name(model_name, task, label)
    store = storage(ws)
    identity: dict[str, Any] = {
        "model": model_name,
        "task": task,
        "label": label,
        "epochs": epochs,
        "space": spec_space(spec),
    }
    base_ema = resolve(ws, spec).settings.ema_decay
    if base_ema:  # trials with and without the weight average are not one study
        identity["ema_decay"] = base_ema
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        st = optuna.create_study(
            study_name=name,
            storage=store,
            direction="maximize",
            load_if_exists=True,
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=3),
        )
    if st.user_attrs.get("identity") not in (None, identity):
        raise SeqrecError(
            f"study '{name}' was started with other settings: {st.user_attrs['identity']}",
            hint="resume it with the same --model/--task/--label/--epochs, or start another "
            "with --study NEW",
        )
    st.set_user_attr("identity", identity)
    if not st.trials:
        for stale in examples_path(ws, name, 0).parent.glob("trial-*.npy"):  # a deleted study's
            stale.unlink()
        # a new study's first trial is the configuration it starts from (the defaults, or the
        # workspace's default preset)
        base = resolve(ws, spec)
        start = starting_point(spec.search_space, base.params, base.settings)
        if start:
            st.enqueue_trial(start, user_attrs={"start": base.preset, "start_keys": sorted(start)})
    fingerprint = valid_fingerprint(data)
    # a resumed run must not replay the first run's random draws: seed by the trials so far
    st.sampler = optuna.samplers.TPESampler(seed=seed + len(st.trials))
    requeue_dead_trials(st)
    counted = (TrialState.COMPLETE, TrialState.PRUNED)

    def done() -> int:
        return len(st.get_trials(deepcopy=False, states=counted))

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("owner", _owner())
        params, train_keys = suggest(trial, spec.search_space)
        resolved = resolve(
            ws, spec, params=params, overrides={**train_keys, "epochs": epochs, "seed": seed}
        )
        settings = resolved.settings
        settings.metric = metric
        model = build_model(spec, data, task, resolved.params, settings.seed, ws)
        kept: dict[str, Any] = {"score": -float("inf"), "values": None}

        def keep(scores: dict[str, float], values: Any) -> None:
            if scores[metric] > kept["score"]:  # the trainer's rule for its best epoch
                kept.update(score=scores[metric], values=values)

        base_validate = validator(data, settings, examples=keep)
        step = 0

        def validate(m: Any, device: Any) -> dict[str, float]:
            nonlocal step
            scores: dict[str, float] = base_validate(m, device)
            trial.report(scores[metric], step)
            step += 1
            if trial.should_prune():
                raise optuna.TrialPruned()
            return scores

        t0 = time.perf_counter()
        result = train(
            model,
            data.train.tensors(with_targets=task == "next-item"),
            validate,
            settings,
            progress=False,
        )
        trial.set_user_attr("valid_fingerprint", fingerprint)
        if kept["values"] is not None:
            path = examples_path(ws, name, trial.number)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, kept["values"])
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
        trial.set_user_attr("epochs", settings.epochs)
        return float(result.valid[metric])

    already = done()
    pbar = bar(
        total=trials,
        initial=min(already, trials),
        desc=f"tune {name}",
        unit="trial",
        disable=not progress,
    )

    def tick(study_: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state in counted:
            pbar.update(1)
            with contextlib.suppress(ValueError):  # no finished trial yet
                pbar.set_postfix(best=f"{study_.best_value:.4f}")

    if already < trials:
        st.optimize(
            objective,
            n_trials=None,
            timeout=timeout,
            callbacks=[MaxTrialsCallback(trials, states=counted), tick],
            catch=(),
            gc_after_trial=True,
        )
    pbar.close()
    finished = st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not finished:
        raise SeqrecError(
            f"study '{name}' has no finished trial yet",
            hint="give it more --trials or a longer --timeout",
        )
    best = st.best_trial
    first = next((t for t in finished if t.user_attrs.get("start")), None)
    choice = choose_preset(ws, name, metric, best, first, min_gain, data)
    chosen, gain, gain_se = choice.trial, choice.gain, choice.gain_se
    keys = first.user_attrs.get("start_keys") if first is not None and chosen is first else None
    picked = {k: v for k, v in chosen.params.items() if keys is None or k in keys}
    best_params = {k: v for k, v in picked.items() if k not in PRESET_TRAIN_KEYS}
    best_train = {k: v for k, v in picked.items() if k in PRESET_TRAIN_KEYS}
    if epochs is not None:  # the trial's epoch cap goes with its configuration
        best_train["epochs"] = int(chosen.user_attrs.get("epochs", epochs))
    why = (
        f", kept over trial {best.number} ({best.value:.4f}: {gain:+.4f} +- {gain_se:.4f}, "
        f"under {min_gain:g} standard errors)"
        if chosen is not best and gain is not None and gain_se is not None
        else ""
    )
    path = save_workspace_preset(
        ws,
        spec,
        save_as,
        best_params,
        best_train,
        description=f"seqrec tune: study {name}, trial {chosen.number}, valid {metric} "
        f"{chosen.value:.4f}{why}",
        study=name,
        trial=chosen.number,
        value=chosen.value,
        task=task,
        label=label,
    )
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value if t.value is not None else _last(t),
            "params": t.params,
            "epochs": len(t.intermediate_values),
            "seconds": t.user_attrs.get("seconds"),
            "start": t.user_attrs.get("start"),
        }
        for t in st.get_trials(deepcopy=False)
    ]
    plot_path = None
    if plot is not None:
        plot_path = str(plot_trials(st, plot, metric))
    return TuneResult(
        study=name,
        metric=metric,
        best_value=float(best.value or 0.0),
        best_trial=best.number,
        best_params={k: v for k, v in best.params.items() if k not in PRESET_TRAIN_KEYS},
        best_train={k: v for k, v in best.params.items() if k in PRESET_TRAIN_KEYS},
        preset=save_as,
        preset_file=str(path),
        trials=rows,
        plot=plot_path,
        preset_trial=chosen.number,
        start_trial=first.number if first is not None else None,
        gain=gain,
        gain_se=gain_se,
        min_gain=min_gain,
        comparison=choice.note,
    )


def examples_path(ws: Workspace, study: str, number: int) -> Path:
    """Where a trial's per-example validation outputs (at its best epoch) are kept: a folder
    per study under the workspace's ``tuning/``, named from the study by its safe characters."""
    folder = "study-" + re.sub(r"[^A-Za-z0-9._-]", "_", study)
    return ws.path("tuning") / folder / f"trial-{number}.npy"


@dataclass
class PresetChoice:
    """The trial a study's preset is saved from, and why."""

    trial: Any
    note: str
    gain: float | None = None
    gain_se: float | None = None


def choose_preset(
    ws: Workspace, study: str, metric: str, best: Any, first: Any, min_gain: float, data: Any
) -> PresetChoice:
    """The best trial, unless it beats the study's start trial ``first`` by less than
    ``min_gain`` paired standard errors on the validation examples (then the start)."""
    if first is None:
        return PresetChoice(
            best, "no finished start trial to compare with: the best trial is saved"
        )
    if first.number == best.number:
        return PresetChoice(best, "the start trial is the best")
    if min_gain == 0:
        return PresetChoice(best, "--min-gain 0: the best trial is saved")
    gain, se, why = _gain(ws, study, metric, first, best, data)
    if gain is None or se is None:
        return PresetChoice(best, f"not compared with the start trial ({why}): the best is saved")
    if gain < min_gain * se:
        note = f"under {min_gain:g} standard errors: the start trial is kept"
        return PresetChoice(first, note, gain, se)
    return PresetChoice(
        best, f"at least {min_gain:g} standard errors: the best trial is saved", gain, se
    )


def valid_fingerprint(data: Any) -> str:
    """A hash of the validation examples' users, inputs and targets (or labels): trials
    compared example by example must have been validated on the same examples."""
    import hashlib

    valid = data.valid
    h = hashlib.sha256()
    h.update("\x1f".join(map(str, np.asarray(valid.user_ids).tolist())).encode())
    for name in ("labels", "items"):  # the target item (next-item) or class, and the inputs
        h.update(np.ascontiguousarray(np.asarray(getattr(valid, name)), dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _gain(
    ws: Workspace, study: str, metric: str, base: Any, other: Any, data: Any
) -> tuple[float | None, float | None, str]:
    """Trial ``other``'s paired validation gain over trial ``base`` and its standard error,
    or (None, None, why) when they cannot be compared."""
    from seqrec.evaluation.paired import paired_gain

    now = valid_fingerprint(data)
    if {base.user_attrs.get("valid_fingerprint"), other.user_attrs.get("valid_fingerprint")} != {
        now
    }:
        return None, None, "validated on other examples than today's: the data changed"
    paths = [examples_path(ws, study, t.number) for t in (base, other)]
    if not all(p.exists() for p in paths):
        return None, None, "a trial's validation outputs are missing"
    a, b = (np.load(p) for p in paths)
    labels = getattr(data.valid, "labels", None) if metric == "roc_auc" else None
    gain, se = paired_gain(metric, a, b, labels)
    if not (np.isfinite(gain) and np.isfinite(se)):
        return None, None, "the difference has no finite standard error"
    return gain, se, ""


def _last(trial: Any) -> float | None:
    vals = trial.intermediate_values
    return float(vals[max(vals)]) if vals else None


def plot_trials(study: Any, path: Path, metric: str) -> Path:
    """A PNG of the study: every trial's value and the best so far (Optuna's own plot)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from optuna.visualization.matplotlib import plot_optimization_history
    except ImportError as e:  # pragma: no cover - matplotlib is a dependency
        raise SeqrecError(f"--plot needs matplotlib ({e})", hint="pip install matplotlib") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        ax = plot_optimization_history(study, target_name=f"valid {metric}")
    fig: Any = ax.figure
    fig.set_size_inches(8, 4)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def spec_space(spec: ModelSpec) -> dict[str, str]:
    """Printable search space of ``spec``: key -> description."""
    out = {}
    for k, d in spec.search_space.items():
        if isinstance(d, Float):
            out[k] = f"{d.low:g}..{d.high:g}" + (" (log)" if d.log else "")
        elif isinstance(d, Int):
            out[k] = f"{d.low}..{d.high}" + (f" step {d.step}" if d.step != 1 else "")
        else:
            out[k] = " | ".join(str(v) for v in d.values)
    return out
