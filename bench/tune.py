"""`seqrec tune` on MovieLens-100K: a 20-trial Optuna study, killed and resumed, its best preset
trained with 3 seeds against the shipped defaults.

What a user runs, in the ``bench/ml100k.py`` workspace (same data, same protocol: leave-one-out
by time, full ranking, max length 50):

1. ``seqrec tune --model gpt2 --trials 20 --study S`` as a subprocess; once ``--kill-after``
   trials have finished it is killed with SIGKILL (mid-trial);
2. the same command again: the study resumes from the workspace's database (the killed trial
   is retried) and runs to 20 finished trials, then saves the best as workspace preset
   ``tuned`` and a PNG of the trials;
3. ``seqrec train --model gpt2 --preset tuned`` with seeds 0, 1, 2 (each in its own process,
   through ``seqrec.pipeline``), evaluated on the test split, against the defaults' 3 seeds
   from ``bench/results/ml100k_runs.jsonl`` (the same script's runs of ``seqrec train --model
   gpt2``; ``python bench/ml100k.py --models gpt2`` makes them when missing).

The tuner chooses on validation NDCG@10; the test split decides "at least as good".

    python bench/tune.py                       # 20 trials, killed after 5, 3 seeds
    python bench/tune.py --report-only         # the page from bench/results/tune.json
    python bench/tune.py --quick               # 3 trials of 2 epochs, killed after 1

``--quick`` writes under ``bench/data/tune-quick/`` and leaves docs/ and bench/results alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ml100k
import report

NAME = "tune"
MODEL = "gpt2"
STUDY = "bench-tune-gpt2"
TOP_PRESET = "tuned-top"  # the study's top trial, where the preset kept the defaults
QUICK_OUT = ml100k.DATA / "tune-quick"


def _seqrec() -> list[str]:
    return [sys.executable, "-m", "seqrec"]


def finished_trials(ws_dir: Path, study: str, running: bool = False) -> int:
    """Completed + pruned trials of ``study`` in the workspace's database (0 if none yet), or
    with ``running`` the trials running now."""
    import optuna
    from optuna.trial import TrialState

    from seqrec.config import load_workspace
    from seqrec.tuning import storage

    try:
        st = optuna.load_study(study_name=study, storage=storage(load_workspace(ws_dir)))
    except KeyError:
        return 0
    states = (TrialState.RUNNING,) if running else (TrialState.COMPLETE, TrialState.PRUNED)
    return len(st.get_trials(deepcopy=False, states=states))


def fresh_study(ws_dir: Path, study: str) -> None:
    import optuna

    from seqrec.config import load_workspace
    from seqrec.tuning import storage

    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=study, storage=storage(load_workspace(ws_dir)))


def tune_cmd(ws_dir: Path, trials: int, epochs: int | None, plot: Path) -> list[str]:
    cmd = [*_seqrec(), "tune", "--project", str(ws_dir), "--model", MODEL]
    cmd += ["--trials", str(trials), "--study", STUDY, "--plot", str(plot), "--json"]
    return cmd + (["--epochs", str(epochs)] if epochs else [])


def run_killed(
    cmd: list[str], ws_dir: Path, kill_after: int, env: dict[str, str]
) -> dict[str, Any]:
    """Start ``cmd``; SIGKILL its process group once ``kill_after`` trials have finished."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    while proc.poll() is None:
        time.sleep(1)
        if finished_trials(ws_dir, STUDY) >= kill_after:
            # into the next trial: the kill lands mid-trial
            while proc.poll() is None and not finished_trials(ws_dir, STUDY, running=True):
                time.sleep(0.5)
            time.sleep(2)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
    done = finished_trials(ws_dir, STUDY)
    if proc.returncode not in (-signal.SIGKILL,):
        err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        sys.exit(f"seqrec tune ended before the kill (rc {proc.returncode}):\n{err}")
    return {
        "killed_after_trials": done,
        "seconds": round(time.perf_counter() - t0, 1),
        "returncode": proc.returncode,
    }


def run_resumed(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"resumed seqrec tune failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return dict(res)


def worker(
    seed: int, epochs: int | None, ws_dir: Path, cache: Path, preset: str = "tuned"
) -> dict[str, Any]:
    """Train workspace preset ``preset`` with ``seed`` and evaluate it (this process)."""
    import torch

    from seqrec.config import load_workspace
    from seqrec.pipeline import evaluate_model, train_model

    torch.set_num_threads(2)
    ws = load_workspace(ws_dir)
    data = pickle.loads(cache.read_bytes())
    out = train_model(
        ws,
        MODEL,
        seed=seed,
        preset=preset,
        epochs=epochs,
        overrides={"num_threads": 2},
        data=data,
        progress=False,
    )
    test = evaluate_model(ws, out.tag, ks=(10,), data=data, progress=False, ci=False)
    return {
        "seed": seed,
        "tag": out.tag,
        "ndcg@10": test["ndcg@10"],
        "recall@10": test["recall@10"],
        "valid_ndcg@10": out.valid.get("ndcg@10"),
        "epochs_to_best": out.best_epoch,
        "seconds_per_epoch": out.seconds_per_epoch,
        "params": out.params,
        "settings": {k: out.settings.get(k, 0.0) for k in report.TRAIN_KEYS},
    }


def train_seeds(
    preset: str, seeds: list[int], epochs: int | None, env: dict[str, str]
) -> list[dict[str, Any]]:
    """``worker`` for each seed, each in its own process."""
    runs = []
    for s in seeds:
        wcmd = [sys.executable, __file__, "--worker", str(s), "--preset", preset]
        wcmd += ["--epochs", str(epochs)] if epochs else []
        proc = subprocess.run(wcmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"preset {preset}, seed {s} failed:\n{proc.stderr[-3000:]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{preset} seed {s}: ndcg@10 {runs[-1]['ndcg@10']:.4f}", file=sys.stderr)
    return runs


def defaults_runs() -> list[dict[str, Any]]:
    """``bench/ml100k.py``'s runs of the gpt2 defaults (the last of each seed)."""
    path = report.RESULTS / "ml100k_runs.jsonl"
    runs: dict[int, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if (
                r["model"] == MODEL
                and r["variant"] == "defaults"
                and ml100k.matches_current_config(r)
            ):
                runs[r["seed"]] = r
    return [runs[s] for s in sorted(runs)]


def _mean_sd(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
    return f"{np.mean(xs):.4f} ± {sd:.4f}"


def page(p: dict[str, Any], machine: dict[str, Any]) -> str:
    img = "img/tune_trials.png"
    t = p["tune"]
    states: dict[str, int] = {}
    for tr in t["trials"]:
        states[tr["state"].lower()] = states.get(tr["state"].lower(), 0) + 1
    tuned = [r["ndcg@10"] for r in p["tuned_runs"]]
    base = [r["ndcg@10"] for r in p["default_runs"]]
    top = p.get("top_runs") or []
    if tuned and base:
        diff = float(np.mean(tuned) - np.mean(base))
        spread = max(float(np.std(tuned, ddof=1)), float(np.std(base, ddof=1)))
        verdict = (
            f"{'at least as good as' if diff >= 0 else 'below'} the defaults on the mean test "
            f"NDCG@10 ({diff:+.4f}; the larger of the two seed spreads is {spread:.4f}, so "
            f"{'within' if abs(diff) <= spread else 'beyond'} the noise of 3 seeds); its "
            f"worst seed gives {min(tuned):.4f}, the defaults' {min(base):.4f}"
        )
    else:
        verdict = "not compared"
    best = {**t["best_params"], **t["best_train"]}
    start = next((tr for tr in t["trials"] if tr["number"] == t.get("start_trial")), None)
    start_line = (
        f" Trial {start['number']} trained the shipped defaults, where a new study starts "
        f"(valid NDCG@10 {start['value']:.4f})."
        if start is not None and start.get("value") is not None
        else ""
    )
    if t.get("gain") is not None and t.get("gain_se") is not None:
        kept = t.get("preset_trial") != t["best_trial"]
        start_line += (
            f" The best trial beats it by {t['gain']:+.4f} ± {t['gain_se']:.4f} (the paired "
            "standard error over the validation users): "
            + (
                f"under {t['min_gain']:g} standard errors, so `seqrec tune` saved trial "
                f"{t['preset_trial']}'s configuration, the defaults, as the preset"
                if kept
                else f"at least {t['min_gain']:g} standard errors, so the preset is the best trial"
            )
            + "."
        )
    else:
        start_line += f" Trial {t.get('preset_trial', t['best_trial'])} is saved as preset `tuned`."
    md = [
        "## Tuning gpt2 on MovieLens-100K (`bench/tune.py`)",
        "",
        report.machine_line(machine),
        "",
        f"`seqrec tune --model gpt2 --trials {p['trials']}` in the `bench/ml100k.py` workspace "
        "(the same data and protocol), with the search space the plugin declares. It was "
        f"killed with SIGKILL after {p['killed']['killed_after_trials']} finished trials "
        f"({p['killed']['seconds']:.0f} s) and the same command resumed the study from the "
        f"workspace's database and finished it ({t['seconds']:.0f} s). Trials: "
        + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        + " (a failed trial is the one the kill interrupted; it was retried). Best: trial "
        f"{t['best_trial']}, valid NDCG@10 {t['best_value']:.4f}, `{json.dumps(best)}`."
        + start_line,
        "",
        "| configuration | test NDCG@10 (3 seeds) | Recall@10 | valid NDCG@10 | seeds |",
        "|---|---|---|---|---|",
        f"| `seqrec train --model gpt2 --preset tuned` | {_mean_sd(tuned)} | "
        f"{_mean_sd([r['recall@10'] for r in p['tuned_runs']])} | "
        f"{_mean_sd([r['valid_ndcg@10'] for r in p['tuned_runs']])} | "
        f"{', '.join(str(r['seed']) for r in p['tuned_runs'])} |",
        *(
            [
                f"| `seqrec train --model gpt2 --preset {TOP_PRESET}` (trial "
                f"{t['best_trial']}, the top by validation alone: `seqrec tune --min-gain 0 "
                f"--save-as {TOP_PRESET}`) | {_mean_sd([r['ndcg@10'] for r in top])} | "
                f"{_mean_sd([r['recall@10'] for r in top])} | "
                f"{_mean_sd([r['valid_ndcg@10'] for r in top])} | "
                f"{', '.join(str(r['seed']) for r in top)} |"
            ]
            if top
            else []
        ),
        f"| `seqrec train --model gpt2` (shipped defaults; `bench/ml100k.py`'s runs) | "
        f"{_mean_sd(base)} | {_mean_sd([r['recall@10'] for r in p['default_runs']])} | "
        f"{_mean_sd([r['valid_ndcg@10'] for r in p['default_runs']])} | "
        f"{', '.join(str(r['seed']) for r in p['default_runs'])} |",
        "",
        f"The tuned preset is {verdict}.",
        "",
        f"![trials]({img})",
    ]
    return "\n".join(md)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--kill-after", type=int, default=5, help="finished trials before the kill")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--quick", action="store_true", help="3 trials of 2 epochs, kill after 1")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--preset", default="tuned", help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("BENTOML_HOME", str(ml100k.WS / "models"))
    cache = ml100k.prepare()
    ws_dir = ml100k.WS
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.epochs, ws_dir, cache, args.preset)))
        return
    if args.quick:
        args.trials, args.kill_after, args.seeds, args.epochs = 3, 1, "0", 2
    out_dir = QUICK_OUT if args.quick else None
    img_dir = out_dir or report.IMG
    img_dir.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        report.republish(NAME, page)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "2", "BENTOML_HOME": str(ws_dir / "models")}
    fresh_study(ws_dir, STUDY)
    plot = img_dir / "tune_trials.png"
    cmd = tune_cmd(ws_dir, args.trials, args.epochs, plot)
    print(f"tune: {' '.join(cmd[2:])}; kill after {args.kill_after} trials", file=sys.stderr)
    killed = run_killed(cmd, ws_dir, args.kill_after, env)
    print(f"killed after {killed['killed_after_trials']} trials; resuming", file=sys.stderr)
    tuned = run_resumed(cmd, env)
    print(f"best trial {tuned['best_trial']}: {tuned['best_value']:.4f}", file=sys.stderr)
    seeds = [int(x) for x in args.seeds.split(",")]
    runs = train_seeds("tuned", seeds, args.epochs, env)
    top_runs: list[dict[str, Any]] = []
    if tuned.get("preset_trial") != tuned["best_trial"]:
        # the study's top trial by validation alone, which the preset did not take: saved
        # under its own name by the same command with --min-gain 0 (the study is finished,
        # so no trial runs), and trained with the same seeds
        top = run_resumed([*cmd, "--min-gain", "0", "--save-as", TOP_PRESET], env)
        print(f"top trial {top['preset_trial']} saved as {TOP_PRESET}", file=sys.stderr)
        top_runs = train_seeds(TOP_PRESET, seeds, args.epochs, env)
    payload = {
        "trials": args.trials,
        "killed": killed,
        "tune": tuned,
        "tuned_runs": runs,
        "top_runs": top_runs,
        "default_runs": [
            {k: r.get(k) for k in ("seed", "ndcg@10", "recall@10", "valid_ndcg@10")}
            for r in defaults_runs()
        ],
    }
    if out_dir is not None:
        (out_dir / f"{NAME}.json").write_text(json.dumps(payload, indent=2, default=str))
    report.publish(NAME, report.machine(), payload, page, quick=args.quick)


if __name__ == "__main__":
    main()
