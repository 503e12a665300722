"""`seqrec tune`: Optuna study in the workspace database, resumable, best saved as a preset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from seqrec.config import Workspace
from seqrec.errors import SeqrecError
from seqrec.features.repo import apply
from seqrec.models import get_spec
from seqrec.presets import find_preset, resolve, workspace_presets
from seqrec.testing import load_synth
from seqrec.tuning import storage, tune


@pytest.fixture
def small_ws(ws: Workspace) -> Workspace:
    load_synth(ws, users=60, items=30)
    apply(ws)
    return ws


def _counted(ws: Workspace, study: str) -> int:
    import optuna
    from optuna.trial import TrialState

    st = optuna.load_study(study_name=study, storage=storage(ws))
    return len(st.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))


def test_tune_saves_the_best_trial_as_a_workspace_preset(small_ws: Workspace) -> None:
    res = tune(small_ws, "lstm", trials=3, epochs=1, progress=False, min_gain=0)
    assert res.preset_trial == res.best_trial
    assert res.study == "lstm-next-item"
    assert len([t for t in res.trials if t["state"] == "COMPLETE"]) == 3
    best = max(t["value"] for t in res.trials if t["state"] == "COMPLETE")
    assert res.best_value == pytest.approx(best)
    stored = workspace_presets(small_ws, "lstm")["tuned"]
    assert stored["params"] == res.best_params and stored["trial"] == res.best_trial
    r = resolve(small_ws, get_spec("lstm"), preset="tuned")
    for k, v in res.best_params.items():
        assert r.params[k] == v
    _, _, preset = find_preset(small_ws, get_spec("lstm"), "tuned")
    assert preset.train["epochs"] == 1  # the trial's epoch cap goes with the preset


def test_tune_resumes_a_study_instead_of_starting_over(small_ws: Workspace) -> None:
    tune(small_ws, "lstm", trials=2, epochs=1, progress=False)
    assert _counted(small_ws, "lstm-next-item") == 2
    res = tune(small_ws, "lstm", trials=3, epochs=1, progress=False)
    assert _counted(small_ws, "lstm-next-item") == 3
    assert [t["number"] for t in res.trials] == [0, 1, 2]


def test_tune_refuses_models_without_a_search_space(small_ws: Workspace) -> None:
    with pytest.raises(SeqrecError, match="no search space"):
        tune(small_ws, "popularity", trials=1, progress=False)


def test_tune_writes_a_plot_of_the_trials(small_ws: Workspace) -> None:
    png = small_ws.root / "trials.png"
    tune(small_ws, "lstm", trials=2, epochs=1, progress=False, plot=png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_sigkilled_tune_resumes_to_the_requested_trial_count(small_ws: Workspace) -> None:
    cmd = [sys.executable, "-m", "seqrec.cli", "tune", "--model", "lstm", "--trials", "4"]
    cmd += ["--epochs", "2", "--json", "--project", str(small_ws.root)]
    proc = subprocess.Popen(
        cmd,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while True:  # wait until one trial is done and the next has started, then kill
            assert proc.poll() is None, "tune ended before it could be killed"
            assert time.monotonic() < deadline, "no trial finished in time"
            try:
                if _counted(small_ws, "lstm-next-item") >= 1:
                    break
            except KeyError:  # the study does not exist yet
                pass
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = _counted(small_ws, "lstm-next-item")
    assert 1 <= killed_at < 4
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert _counted(small_ws, "lstm-next-item") == 4
    assert workspace_presets(small_ws, "lstm")["tuned"]["trial"] == res["best_trial"]


def test_a_resumed_study_does_not_replay_the_first_runs_parameters(small_ws: Workspace) -> None:
    first = tune(small_ws, "lstm", trials=2, epochs=1, progress=False)
    res = tune(small_ws, "lstm", trials=4, epochs=1, progress=False)
    old = [t["params"] for t in first.trials]
    new = [t["params"] for t in res.trials[2:]]
    assert all(p not in old for p in new)


def test_resuming_with_other_settings_is_refused(small_ws: Workspace) -> None:
    tune(small_ws, "lstm", trials=1, epochs=1, progress=False)
    with pytest.raises(SeqrecError, match="started with other settings"):
        tune(small_ws, "lstm", trials=2, epochs=2, progress=False)


def test_a_trial_left_running_by_a_dead_process_is_failed_and_retried_as_itself(
    small_ws: Workspace,
) -> None:
    import optuna
    from optuna.trial import TrialState

    from seqrec.tuning import requeue_dead_trials

    st = optuna.create_study(study_name="s", storage=storage(small_ws))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial = st.ask({"dropout": optuna.distributions.FloatDistribution(0.1, 0.6)})
    trial.set_user_attr("owner", f"{__import__('socket').gethostname()}:{dead.pid}")
    trial.set_user_attr("start", "default")  # the killed trial was the study's start
    trial.set_user_attr("start_keys", ["dropout"])
    alive = st.ask({"dropout": optuna.distributions.FloatDistribution(0.1, 0.6)})
    alive.set_user_attr("owner", f"{__import__('socket').gethostname()}:{os.getpid()}")
    assert requeue_dead_trials(st) == 1
    states = {t.number: t.state for t in st.get_trials()}
    assert states[trial.number] == TrialState.FAIL
    assert states[alive.number] == TrialState.RUNNING
    queued = st.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs["retry_of"] for t in queued] == [trial.number]
    assert [t.user_attrs.get("start") for t in queued] == ["default"]  # still the start
    assert [t.user_attrs.get("start_keys") for t in queued] == [["dropout"]]
    retried = st.ask()  # the queued trial runs next, with the dead one's parameters
    assert retried.suggest_float("dropout", 0.1, 0.6) == trial.params["dropout"]


def test_classify_tuning_saves_its_own_preset_name(small_ws: Workspace) -> None:
    res = tune(
        small_ws,
        "lstm",
        task="classify",
        label="purchase-within:7d",
        trials=1,
        epochs=1,
        progress=False,
    )
    assert res.preset == "tuned-classify-purchase-within7d"
    assert res.metric == "roc_auc"
    stored = workspace_presets(small_ws, "lstm")[res.preset]
    assert stored["task"] == "classify"


def test_a_new_study_first_trains_the_configuration_train_uses(small_ws: Workspace) -> None:
    from seqrec.tuning import starting_point

    spec = get_spec("lstm")
    base = resolve(small_ws, spec)
    start = starting_point(spec.search_space, base.params, base.settings)
    assert start == {
        "cell": base.params["cell"],
        "d_model": base.params["d_model"],
        "hidden": base.params["hidden"],
        "dropout": base.params["dropout"],
        "transition_bias": base.params["transition_bias"],
        "lr": base.settings.lr,
        "batch_size": base.settings.batch_size,
    }
    res = tune(small_ws, "lstm", trials=2, epochs=1, progress=False)
    first = res.trials[0]
    assert first["params"] == start
    assert first["start"] == base.preset and res.start_trial == 0
    assert res.trials[1]["start"] is None


def test_a_resumed_study_does_not_queue_the_start_again(small_ws: Workspace) -> None:
    tune(small_ws, "lstm", trials=1, epochs=1, progress=False)
    res = tune(small_ws, "lstm", trials=3, epochs=1, progress=False)
    assert [t["start"] is not None for t in res.trials] == [True, False, False]


def test_start_values_outside_the_search_space_are_left_to_the_sampler() -> None:
    from types import SimpleNamespace

    from seqrec.models import Choice, Float, Int
    from seqrec.tuning import starting_point

    space = {
        "d_model": Choice((32, 64)),
        "n_layer": Int(1, 3),
        "dropout": Float(0.1, 0.6),
        "flag": Choice((False, True)),
        "lr": Float(1e-4, 1e-2, log=True),
        "batch_size": Choice((32, 64)),
    }
    params = {"d_model": 48, "n_layer": 5, "dropout": 0.3, "flag": 1}
    settings = SimpleNamespace(lr=0.005, batch_size=128)
    # 48, 5 and 128 are out of range; 1 is not the boolean True; lr and dropout fit
    assert starting_point(space, params, settings) == {"dropout": 0.3, "lr": 0.005}


def test_a_start_kept_over_the_best_is_saved_as_the_preset(small_ws: Workspace) -> None:
    from seqrec.models import PRESET_TRAIN_KEYS
    from seqrec.tuning import starting_point

    spec = get_spec("lstm")
    base = resolve(small_ws, spec)
    start = starting_point(spec.search_space, base.params, base.settings)
    res = tune(small_ws, "lstm", trials=3, epochs=1, progress=False, min_gain=1e6)
    assert res.preset_trial == 0  # kept, or the start is the best
    stored = workspace_presets(small_ws, "lstm")["tuned"]
    assert stored["trial"] == 0
    assert stored["params"] == {k: v for k, v in start.items() if k not in PRESET_TRAIN_KEYS}
    want_train = {k: v for k, v in start.items() if k in PRESET_TRAIN_KEYS}
    assert stored["train"] == {**want_train, "epochs": 1}
    if res.best_trial != 0:
        assert res.gain is not None and f"kept over trial {res.best_trial}" in stored["description"]


def _trial(number: int, value: float, fingerprint: str = "fp") -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(
        number=number, value=value, user_attrs={"valid_fingerprint": fingerprint}
    )


@pytest.mark.parametrize(
    ("start_ranks", "best_ranks", "min_gain", "kept"),
    [
        # a small lead over many examples with a large spread: within the noise
        ([1, 50] * 50, [1, 50] * 49 + [0, 50], 2.0, True),
        # the best ranks every target first where the start never reaches the top 10
        ([50] * 100, [0] * 100, 2.0, False),
        ([1, 50] * 50, [1, 50] * 49 + [0, 50], 0.0, False),  # 0: always the best, unmeasured
    ],
)
def test_the_preset_keeps_the_start_unless_the_best_leads_by_min_gain_standard_errors(
    small_ws: Workspace,
    monkeypatch: pytest.MonkeyPatch,
    start_ranks: list[int],
    best_ranks: list[int],
    min_gain: float,
    kept: bool,
) -> None:
    import numpy as np

    from seqrec import tuning

    monkeypatch.setattr(tuning, "valid_fingerprint", lambda data: "fp")
    for n, ranks in ((0, start_ranks), (1, best_ranks)):
        path = tuning.examples_path(small_ws, "s", n)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.array(ranks))
    start, best = _trial(0, 0.1), _trial(1, 0.2)
    choice = tuning.choose_preset(small_ws, "s", "ndcg@10", best, start, min_gain, None)
    assert (choice.trial is start) == kept
    assert min_gain == 0 or (choice.gain is not None and choice.gain > 0)


def test_trials_validated_on_other_examples_are_not_compared(
    small_ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from seqrec import tuning

    monkeypatch.setattr(tuning, "valid_fingerprint", lambda data: "today")
    for n in (0, 1):
        path = tuning.examples_path(small_ws, "s", n)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.array([50] * 10))
    start, best = _trial(0, 0.1, "before"), _trial(1, 0.2, "today")
    choice = tuning.choose_preset(small_ws, "s", "ndcg@10", best, start, 2.0, None)
    assert choice.trial is best and choice.gain is None
    assert "the data changed" in choice.note
    start = _trial(0, 0.1, "today")
    tuning.examples_path(small_ws, "s", 0).unlink()
    choice = tuning.choose_preset(small_ws, "s", "ndcg@10", best, start, 2.0, None)
    assert choice.trial is best and "outputs are missing" in choice.note


def test_the_paired_gain_of_ranks_is_the_mean_ndcg_difference_and_its_standard_error() -> None:
    import numpy as np

    from seqrec.evaluation.metrics import ndcg_per_example
    from seqrec.evaluation.paired import paired_gain

    base = np.array([0, 3, 20, 9, 50])
    other = np.array([0, 1, 20, 12, 2])
    d = ndcg_per_example(other, 10) - ndcg_per_example(base, 10)
    gain, se = paired_gain("ndcg@10", base, other)
    assert gain == pytest.approx(d.mean()) and se == pytest.approx(d.std(ddof=1) / np.sqrt(5))
    assert paired_gain("ndcg@10", base, base) == (0.0, 0.0)
    with pytest.raises(ValueError, match="5 examples against 4"):
        paired_gain("ndcg@10", base, other[:4])


def test_the_paired_gain_of_a_better_classifier_is_positive_with_a_finite_error() -> None:
    import numpy as np

    from seqrec.evaluation.classification import classification_metrics, roc_auc
    from seqrec.evaluation.paired import paired_gain

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    noise = rng.random(400)
    weak = np.stack([1 - noise, noise], axis=1)
    p = np.clip(0.6 * y + 0.4 * noise, 0, 1)
    strong = np.stack([1 - p, p], axis=1)
    gain, se = paired_gain("roc_auc", weak, strong, y)
    assert gain > 0.3 and 0 < se < gain / 4
    assert paired_gain("roc_auc", weak, weak, y) == (0.0, 0.0)
    # three classes: the mean one-against-rest ROC-AUC, as classification_metrics has it
    y3 = rng.integers(0, 3, 300)
    probs = rng.dirichlet(np.ones(3), 300)
    sharp = probs + 2 * np.eye(3)[y3]
    sharp /= sharp.sum(1, keepdims=True)
    gain3, se3 = paired_gain("roc_auc", probs, sharp, y3)
    assert gain3 > 0.2 and 0 < se3 < gain3 / 4
    for q in (probs, sharp):
        assert roc_auc(y3, q) == classification_metrics(y3, q)["roc_auc"]


def test_roc_auc_gives_tied_scores_their_average_rank_as_sklearn_does() -> None:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from seqrec.evaluation.classification import roc_auc

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    p1 = np.round(np.clip(0.3 * y + 0.7 * rng.random(500), 0, 1), 1)  # about 11 distinct values
    probs = np.stack([1 - p1, p1], axis=1)
    assert roc_auc(y, probs) == pytest.approx(roc_auc_score(y, p1), abs=1e-12)
    y3 = rng.integers(0, 3, 500)
    p3 = np.round(rng.dirichlet(np.ones(3), 500), 1)
    want = np.mean([roc_auc_score(y3 == c, p3[:, c]) for c in range(3)])
    assert roc_auc(y3, p3) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("study", ["..", "../../etc", "/tmp/elsewhere", "a/b"])
def test_a_study_name_cannot_point_the_outputs_outside_the_workspace(
    small_ws: Workspace, study: str
) -> None:
    from seqrec.tuning import examples_path

    tuning_dir = small_ws.path("tuning").resolve()
    path = examples_path(small_ws, study, 3).resolve()
    assert path.parent.parent == tuning_dir and path.name == "trial-3.npy"
