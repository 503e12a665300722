"""Sequence classification: lstm, bert, gpt2 and the gbdt baseline on three kinds of labels.

Datasets (each its own workspace under bench/data/):

* ``synthetic``: the synthetic log (purchase funnel, sessions); ``purchase-within:7d`` and
  ``churn:7d``.
* ``control``: the same generator with ``random_event_types=True``: every event type is drawn
  independently of everything, so ``next-event-type:7d`` is pure noise and every model must
  score ROC-AUC 0.5 within 3 standard errors. The check needs at least 2,000 test examples:
  the test cutoff sees about 0.34% of the events, so 32,000 users (about 690k events) give
  about 2,300.
* ``ml100k``: MovieLens-100K (the copy inside the recbole 1.2.1 wheel, fetched by
  bench/ml100k.py) imported with ``--event-type-from liked`` (rating >= 4 liked, else disliked);
  ``churn:30d`` and ``next-event-type:30d`` (is the next rating a like).

Labels are computed in SQL at time cutoffs (train/valid/test by time, features strictly before
each cutoff); binary thresholds are tuned on validation for F1. Every (dataset, label, model)
trains and is evaluated in its own process, one at a time, through ``seqrec.pipeline`` (what
``seqrec train`` / ``seqrec evaluate`` run). ROC-AUC standard errors: Hanley-McNeil for binary
labels, a bootstrap (500 resamples of the test set) for the macro AUC of multi-class ones.

    python bench/classification.py            # full run (see the page for its duration)
    python bench/classification.py --quick    # tiny data, 1 epoch: checks that it works

A quick run writes its JSON and plot under bench/data/classification-quick/ and prints the page
section instead of writing docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report

DATA = report.ROOT / "bench" / "data"
#: ``M:no-now`` is model M with ``now_features=false``: the same model without the prediction
#: time (seqrec/now_features.py), so the page shows what that option carries
NO_NOW = ":no-now"
MODELS = ("lstm", "bert", "gpt2", "gbdt", f"lstm{NO_NOW}", f"bert{NO_NOW}", f"gpt2{NO_NOW}")
#: trainer settings of the neural models here (as in earlier runs of this benchmark; no weight
#: average, which gpt2's next-item defaults added later, so every neural model trains alike)
NEURAL_TRAIN = {"lr": 1e-3, "patience": 4, "ema_decay": 0.0}
MIN_CONTROL_TEST = 2000
METRICS = ("roc_auc", "f1", "accuracy", "pr_auc")


@dataclass(frozen=True)
class Dataset:
    name: str
    labels: tuple[str, ...]
    users: int = 0  # synthetic only
    mean_events: int = 30
    random_types: bool = False

    @property
    def ws(self) -> Path:
        return DATA / f"ws-classify-{self.name}"


def datasets(quick: bool) -> list[Dataset]:
    return [
        Dataset("synthetic", ("purchase-within:7d", "churn:7d"), 600 if quick else 4000),
        Dataset("control", ("next-event-type:7d",), 1500 if quick else 32000, 20, True),
        Dataset("ml100k", ("churn:30d", "next-event-type:30d")),
    ]


# -- statistics -------------------------------------------------------------------------------


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from scipy.stats import rankdata

    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    return float((rankdata(s)[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def macro_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """ROC-AUC (binary: of class 1; multi-class: macro one-vs-rest over present classes)."""
    if probs.shape[1] == 2:
        return _auc(y, probs[:, 1])
    aucs = [_auc((y == c).astype(int), probs[:, c]) for c in range(probs.shape[1])]
    return float(np.nanmean(aucs))


def hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of a binary ROC-AUC (Hanley & McNeil, 1982)."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)
    return float(np.sqrt(max(var, 0.0) / (n_pos * n_neg)))


def auc_se(y: np.ndarray, probs: np.ndarray, n_boot: int = 500, seed: int = 0) -> tuple[str, float]:
    """(method, standard error) of :func:`macro_auc` on this test set."""
    if probs.shape[1] == 2:
        n_pos = int((y == 1).sum())
        return "hanley-mcneil", hanley_mcneil_se(macro_auc(y, probs), n_pos, len(y) - n_pos)
    rng = np.random.default_rng(seed)
    boots = [macro_auc(y[i], probs[i]) for i in rng.integers(0, len(y), (n_boot, len(y)))]
    return "bootstrap", float(np.nanstd(boots, ddof=1))


# -- preparation and one run (each in its own process) ----------------------------------------


def prepare(ds: Dataset, seed: int) -> dict[str, Any]:
    """Workspace with the dataset imported and features applied; each label's data pickled."""
    os.environ["BENTOML_HOME"] = str(ds.ws / "models")
    import shutil

    from seqrec.commands.project import init_workspace
    from seqrec.config import load_workspace
    from seqrec.data.importers import import_file
    from seqrec.data.schema import make_engine
    from seqrec.data.synth import import_synth
    from seqrec.features.repo import apply
    from seqrec.training.data import build_classification_data

    shutil.rmtree(ds.ws, ignore_errors=True)
    init_workspace(ds.ws)
    ws = load_workspace(ds.ws)
    engine = make_engine(ws.events_url)
    t0 = time.perf_counter()
    if ds.name == "ml100k":
        from ml100k import fetch_data

        events = import_file(engine, fetch_data(), "recbole", event_type_from="liked").rows_added
    else:
        events = import_synth(
            engine,
            ds.users,
            1000,
            seed,
            mean_events_per_user=ds.mean_events,
            random_event_types=ds.random_types,
            progress=True,
        ).rows_added
    apply(ws)
    summaries = {}
    for label in ds.labels:
        data = build_classification_data(ws, label, engine)
        (ds.ws / f"data-{label.replace(':', '')}.pkl").write_bytes(pickle.dumps(data))
        summaries[label] = {**data.summary(), "class_names": data.class_names}
    return {"events": events, "seconds": round(time.perf_counter() - t0, 1), "labels": summaries}


def run_one(ds: Dataset, label: str, model: str, epochs: int, seed: int) -> dict[str, Any]:
    """Train and evaluate one model on one label in this process."""
    os.environ["BENTOML_HOME"] = str(ds.ws / "models")
    import torch

    from seqrec import model_store
    from seqrec.config import load_workspace
    from seqrec.pipeline import evaluate_model, train_model
    from seqrec.training.trainer import predict

    torch.set_num_threads(2)
    ws = load_workspace(ds.ws)
    data = pickle.loads((ds.ws / f"data-{label.replace(':', '')}.pkl").read_bytes())
    name = model.removesuffix(NO_NOW)
    t0 = time.perf_counter()
    out = train_model(
        ws,
        name,
        params={"now_features": False} if model.endswith(NO_NOW) else None,
        task="classify",
        label=label,
        epochs=epochs,
        seed=seed,
        data=data,
        progress=False,
        overrides={} if model == "gbdt" else NEURAL_TRAIN,
        run_dir=ds.ws / "runs" / f"{model.replace(':', '-')}-{label.replace(':', '')}",
    )
    train_s = time.perf_counter() - t0
    res = evaluate_model(ws, out.tag, data=data, progress=False)
    stored = model_store.load(out.tag, store=ws.model_store)
    t1 = time.perf_counter()
    probs = predict(stored.model, data.test, device=torch.device("cpu"))["probs"]
    infer_s = time.perf_counter() - t1
    y = data.test.labels
    method, se = auc_se(y, probs, seed=seed)
    return {
        "dataset": ds.name,
        "label": label,
        "model": model,
        "tag": out.tag,
        **{m: res[m] for m in METRICS},
        "roc_auc_check": macro_auc(y, probs),
        "roc_auc_se": se,
        "se_method": method,
        "test_examples": len(y),
        "confusion_matrix": res["confusion_matrix"],
        "best_epoch": out.best_epoch,
        "epochs_run": out.epochs_run,
        "train_seconds": round(train_s, 2),
        "infer_ms_per_1k": round(1000 * infer_s / max(1, len(y)) * 1000, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _child(args: list[str]) -> dict[str, Any]:
    """Run this script with ``args`` in a fresh process; its last stdout line is JSON."""
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, cwd=report.ROOT
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# -- report -----------------------------------------------------------------------------------


def control_check(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether every model's control AUC is within 0.5 +- 3 SE on >= 2,000 test examples."""
    rows = [r for r in results if r["dataset"] == "control"]
    n = min((r["test_examples"] for r in rows), default=0)
    outside = [r["model"] for r in rows if abs(r["roc_auc"] - 0.5) > 3 * r["roc_auc_se"]]
    return {
        "test_examples": n,
        "big_enough": n >= MIN_CONTROL_TEST,
        "outside": outside,
        "passed": n >= MIN_CONTROL_TEST and not outside,
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["dataset"], r["label"]) for r in results))
    models = list(dict.fromkeys(r["model"] for r in results))
    fig, ax = plt.subplots(figsize=(10, 3.8))
    width = 0.8 / max(1, len(models))
    for j, m in enumerate(models):
        xs, ys, es = [], [], []
        for i, g in enumerate(groups):
            r = next(
                (r for r in results if (r["dataset"], r["label"]) == g and r["model"] == m), None
            )
            if r is not None:
                xs.append(i + (j - (len(models) - 1) / 2) * width)
                ys.append(r["roc_auc"])
                es.append(1.96 * r["roc_auc_se"])
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=m)
    ax.axhline(0.5, color="black", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(groups)), [f"{d}\n{lab}" for d, lab in groups], fontsize=8)
    ax.set_ylim(0.2, 1.0)
    ax.set_ylabel("test ROC-AUC (± 1.96 SE)")
    ax.set_title("Sequence classification (dashed: chance)")
    ax.legend(fontsize=8, ncol=len(models))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def page(payload: dict[str, Any]) -> str:
    results, check = payload["results"], payload["control"]
    rows = [
        [
            r["dataset"],
            r["label"],
            r["model"],
            f"{r['roc_auc']:.3f} ± {r['roc_auc_se']:.3f}",
            f"{r['f1']:.3f}",
            f"{r['pr_auc']:.3f}",
            f"{r['test_examples']:,}",
            f"{r['train_seconds']:.1f}",
            f"{r['infer_ms_per_1k']:.0f}",
            f"{r['peak_rss_mb']:.0f}",
        ]
        for r in results
    ]
    sizes = "; ".join(
        f"{d}: {p['events']:,} events"
        + (f" ({payload['users'][d]:,} users)" if d != "ml100k" else "")
        for d, p in payload["prepared"].items()
    )
    if not check["big_enough"]:
        verdict = (
            f"NOT CHECKED: the control's test set has {check['test_examples']:,} examples "
            f"(< {MIN_CONTROL_TEST:,})"
        )
    elif check["passed"]:
        verdict = f"PASSED: every model within 0.5 ± 3 SE on {check['test_examples']:,} examples"
    else:
        verdict = f"FAILED: {', '.join(check['outside'])} outside 0.5 ± 3 SE (a leak or a bug)"
    note = payload.get("note")
    return "\n".join(
        [
            "## Sequence classification (`bench/classification.py`)",
            "",
            report.machine_line(payload["machine"]),
            "",
            f"{'QUICK RUN (tiny data, not for comparison). ' if payload['quick'] else ''}"
            f"Data: {sizes}. Labels are computed in SQL at time cutoffs (active users: an event "
            "in the horizon before the cutoff; train/valid/test by time; features strictly "
            "before each cutoff). Neural models: class-weighted cross-entropy, "
            f"lr {NEURAL_TRAIN['lr']}, patience {NEURAL_TRAIN['patience']}, no weight "
            f"average (ema_decay {NEURAL_TRAIN['ema_decay']}), at most "
            f"{payload['epochs']} epochs; gbdt: its defaults (LightGBM {payload['lightgbm']}). "
            "Binary thresholds tuned on validation for F1 (macro F1 for multi-class). "
            "ROC-AUC ± its standard error (Hanley-McNeil for binary labels, bootstrap for the "
            "macro AUC of multi-class ones). Train s: training including validation; "
            "inference: ms per 1,000 test sequences, CPU, batches of 512; peak RSS of the "
            "process (data + model). One model per process, one at a time, 2 threads. "
            f"`M{NO_NOW}` is model M without the prediction time (`now_features=false`; the "
            "built-in neural classifiers read it by default, `seqrec/now_features.py`).",
            "",
            f"**Random-label control** (`control`, `next-event-type:7d` on event types drawn "
            f"independently of everything): {verdict}.",
            "",
            report.table(
                [
                    "data",
                    "label",
                    "model",
                    "ROC-AUC ± SE",
                    "F1",
                    "PR-AUC",
                    "test n",
                    "train s",
                    "infer ms/1k",
                    "peak RSS MB",
                ],
                rows,
            ),
            "",
            *([f"**Note on this run:** {note}", ""] if note else []),
            *against_gbdt(results),
            "![ROC-AUC by model and label](img/classification.png)",
        ]
    )


#: why the neural classifiers trail the tree baseline where they do (read with the table)
WHY_GBDT_LEADS = (
    "Why: these labels are mostly about *when* the user was last active relative to the "
    "prediction time and how active they are. The neural classifiers read that through "
    "`now_features` (hours since the newest event, events in the last 1, 7 and 30 days, the "
    "same per event type; the column beside shows each without it), standardised "
    "(`now_norm`), and in training half of the examples see only those features "
    "(`state_dropout` 0.5), because the sequence state overfits a few thousand labelled "
    "examples within a few epochs and otherwise drowns them. `gbdt` reads the same columns and "
    "more: the mean, smallest and largest gap between events, each event type's share, events "
    "per day, the popularity of the newest items. How much each group carries is in the next "
    "section (`bench/gbdt_features.py`): trees on the neural models' columns alone get most "
    "of gbdt's score, and gaps and popularity add the rest. On labels like these, `gbdt` is "
    "the cheaper classifier to deploy (seconds to train); the page keeps it beside the neural "
    "models."
)


def against_gbdt(results: list[dict[str, Any]]) -> list[str]:
    """Per (data, label): the best sequence model's ROC-AUC against gbdt's, as page lines."""
    lines, behind = [], False
    keys = dict.fromkeys((r["dataset"], r["label"]) for r in results)
    for data, label in keys:
        rs = [r for r in results if (r["dataset"], r["label"]) == (data, label)]
        tree = next((r for r in rs if r["model"] == "gbdt"), None)
        seq = [r for r in rs if r["model"] != "gbdt" and not r["model"].endswith(NO_NOW)]
        without = {r["model"].removesuffix(NO_NOW): r for r in rs if r["model"].endswith(NO_NOW)}
        if tree is None or not seq or data == "control":
            continue
        best = max(seq, key=lambda r: r["roc_auc"])
        gap = best["roc_auc"] - tree["roc_auc"]
        se = (best["roc_auc_se"] ** 2 + tree["roc_auc_se"] ** 2) ** 0.5
        verdict = "ahead" if gap >= 0 else "behind"
        behind = behind or gap < 0
        off = without.get(best["model"])
        off_auc = "-" if off is None else f"{off['roc_auc']:.3f}"
        lines.append(
            f"| {data} | {label} | {best['model']} {best['roc_auc']:.3f} | {off_auc} | "
            f"{tree['roc_auc']:.3f} | {gap:+.3f} ({verdict}; {abs(gap) / se:.1f} SE) |"
        )
    if not lines:
        return []
    head = [
        "**Best sequence model against gbdt** (ROC-AUC; the gap in standard errors of the "
        "difference; the same model without the prediction time, `now_features=false`, beside "
        "it):",
        "",
        "| data | label | best sequence model | the same, now_features off | gbdt | gap |",
        "|---|---|---|---|---|---|",
    ]
    return [*head, *lines, "", *([WHY_GBDT_LEADS, ""] if behind else [])]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="tiny data, 1 epoch")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--datasets", default="synthetic,control,ml100k")
    ap.add_argument("--epochs", type=int, default=None, help="default 15 (quick: 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the page section from bench/results/classification.json; train nothing",
    )
    ap.add_argument("--note", help="a remark printed with the results (e.g. a shared CPU)")
    ap.add_argument("--prepare", help=argparse.SUPPRESS)
    ap.add_argument("--run", nargs=3, metavar=("DATASET", "LABEL", "MODEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    epochs = args.epochs or (1 if args.quick else 15)
    if args.report_only:
        path = report.RESULTS / "classification.json"
        payload = json.loads(path.read_text())
        if args.note is not None:
            payload["note"] = args.note
            path.write_text(json.dumps(payload, indent=2, default=str))
        report.write_section("classification", page(payload))
        print(page(payload))
        return
    by_name = {d.name: d for d in datasets(args.quick)}
    if args.prepare:
        print(json.dumps(prepare(by_name[args.prepare], args.seed)))
        return
    if args.run:
        name, label, model = args.run
        print(json.dumps(run_one(by_name[name], label, model, epochs, args.seed)))
        return

    from tqdm import tqdm

    chosen = [by_name[x.strip()] for x in args.datasets.split(",") if x.strip()]
    models = [x.strip() for x in args.models.split(",") if x.strip()]
    flags = [
        "--seed",
        str(args.seed),
        "--epochs",
        str(epochs),
        *(["--quick"] if args.quick else []),
    ]
    t0 = time.perf_counter()
    prepared: dict[str, Any] = {}
    for ds in tqdm(chosen, desc="prepare data"):
        prepared[ds.name] = _child(["--prepare", ds.name, *flags])
    jobs = [(ds, label, m) for ds in chosen for label in ds.labels for m in models]
    results: list[dict[str, Any]] = []
    for ds, label, model in (pbar := tqdm(jobs, desc="train+evaluate")):
        pbar.set_postfix_str(f"{ds.name} {label} {model}")
        r = _child(["--run", ds.name, label, model, *flags])
        results.append(r)
        tqdm.write(
            f"{ds.name:>9} {label:>20} {model:>12}: ROC-AUC {r['roc_auc']:.3f} ± "
            f"{r['roc_auc_se']:.3f}  F1 {r['f1']:.3f}  n {r['test_examples']}  "
            f"{r['train_seconds']:.1f}s"
        )
    from importlib.metadata import version

    payload = {
        "machine": report.machine(),
        "quick": args.quick,
        "epochs": epochs,
        "seed": args.seed,
        "lightgbm": version("lightgbm"),
        "users": {d.name: d.users for d in chosen},
        "prepared": prepared,
        "results": results,
        "control": control_check(results),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "note": args.note,
    }
    md = page(payload)
    if args.quick:  # never over the published results
        out = DATA / "classification-quick"
        out.mkdir(parents=True, exist_ok=True)
        (out / "classification.json").write_text(json.dumps(payload, indent=2, default=str))
        plot(results, out / "classification.png")
    else:
        report.save_json("classification", payload)
        plot(results, report.IMG / "classification.png")
        report.write_section("classification", md)
    print(md)
    check = payload["control"]
    if check["big_enough"] and not check["passed"]:
        raise SystemExit(f"random-label control failed: {check['outside']} outside 0.5 ± 3 SE")


if __name__ == "__main__":
    main()
