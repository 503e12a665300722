"""Next-item on synthetic logs: popularity, markov, itemknn and gpt2 with their defaults.

Two logs of the quickstart's size (2,000 users, 1,000 items, data seed 7): (a) seqrec's default
synthetic log (what ``seqrec quickstart`` imports) and (b) the ``markov-clusters`` log (a
first-order item chain mixed with per-user interest clusters, :mod:`seqrec.data.synth_clusters`).
Every model trains through ``seqrec.pipeline.train_model(ws, model, seed=...)`` with no params or
trainer overrides, i.e. the plugin's defaults, and is evaluated by leave-one-out full ranking with
seen items excluded (``evaluate_model(..., exclude_seen=True)``). Each (log, model, seed) runs in
its own worker process, one at a time; popularity, markov and itemknn are deterministic and
run once. ``itemknn`` is the example plugin in examples/seqrec-itemknn (not part of ``make
install``): the script installs it into ``bench/data/site`` and runs the workers with that
directory on ``PYTHONPATH`` (:mod:`example_plugins`).

    python bench/synthetic_nextitem.py                        # both logs, seeds 0,1,2
    python bench/synthetic_nextitem.py --models markov,gpt2 --seeds 0
    python bench/synthetic_nextitem.py --quick                # smoke run: tiny logs, 1 seed

``--quick`` (150 users, 80 items, seed 0, gpt2 for 2 epochs) writes its results, plot and page
section under ``bench/data/synthetic_nextitem-quick/`` and leaves docs/ and bench/results alone.
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import example_plugins
import report

NAME = "synthetic_nextitem"
DATA = report.ROOT / "bench" / "data"
QUICK_OUT = DATA / f"{NAME}-quick"
LOGS = {
    "default": "seqrec's default synthetic log (the quickstart's)",
    "markov-clusters": "item chain + per-user interest clusters",
}
MODELS = ("popularity", "markov", "itemknn", "gpt2")
DETERMINISTIC = {"popularity", "markov", "itemknn"}  # seeds change nothing: one run each
DATA_SEED = 7  # the quickstart's
SIZES = {"users": 2000, "items": 1000}
QUICK = {"users": 150, "items": 80, "epochs": 2}
KS = (10, 20)


def workspace_dir(kind: str, users: int, items: int) -> Path:
    return DATA / f"ws-synth-{kind}-{users}x{items}"


def prepare(kind: str, users: int, items: int) -> dict[str, Any]:
    """A workspace with the log imported and features applied, the training data cached;
    returns the log's size (events, training targets, test users)."""
    from seqrec.commands.project import init_workspace
    from seqrec.config import load_workspace
    from seqrec.data.schema import make_engine
    from seqrec.data.synth import import_synth
    from seqrec.features.repo import apply
    from seqrec.training.data import build_next_item_data

    root = workspace_dir(kind, users, items)
    cache, info = root / "data.pkl", root / "data.json"
    if cache.exists() and info.exists():
        return dict(json.loads(info.read_text()))
    init_workspace(root, force=True)
    ws = load_workspace(root)
    engine = make_engine(ws.events_url)
    rep = import_synth(engine, users, items, DATA_SEED, kind=kind, progress=True)
    apply(ws)
    data = build_next_item_data(ws, engine)
    engine.dispose()
    cache.write_bytes(pickle.dumps(data))
    facts = {"events": rep.rows_read, **data.summary()}
    info.write_text(json.dumps(facts))
    return facts


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one (log, model, seed) in this process; returns its metrics."""
    from seqrec.config import load_workspace
    from seqrec.pipeline import evaluate_model, train_model

    root = workspace_dir(job["kind"], job["users"], job["items"])
    ws = load_workspace(root)
    data = pickle.loads((root / "data.pkl").read_bytes())
    model, seed = job["model"], job["seed"]
    epochs = job["epochs"] if model not in DETERMINISTIC else None
    t0 = time.perf_counter()
    out = train_model(ws, model, seed=seed, epochs=epochs, data=data, progress=False)
    train_s = time.perf_counter() - t0
    test = evaluate_model(ws, out.tag, ks=KS, exclude_seen=True, data=data, progress=False)
    summary = data.summary()
    return {
        **{k: job[k] for k in ("kind", "model", "seed")},
        "tag": out.tag,
        **{f"{m}@{k}": test[f"{m}@{k}"] for m in ("ndcg", "recall", "mrr") for k in KS},
        "valid_ndcg@10": out.valid.get("ndcg@10"),
        "seconds_per_epoch": out.seconds_per_epoch,
        "epochs_to_best": out.best_epoch,
        "epochs_run": out.epochs_run,
        "train_seconds": round(train_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "train_positions": summary["train_positions"],
        "test_users": summary["test_users"],
    }


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample sd over seeds per (log, model)."""
    rows = []
    for kind, model in dict.fromkeys((r["kind"], r["model"]) for r in runs):
        rs = [r for r in runs if r["kind"] == kind and r["model"] == model]
        row: dict[str, Any] = {"kind": kind, "model": model, "seeds": len(rs)}
        for key in ("ndcg@10", "recall@10", "mrr@10", "epochs_to_best", "train_seconds"):
            vals = np.array([r[key] for r in rs], dtype=float)
            row[key] = float(vals.mean())
            row[key + "_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        rows.append(row)
    return rows


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    """NDCG@10 bars: one group per log, one bar per model (sd over seeds as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(r["kind"] for r in summary))
    models = list(dict.fromkeys(r["model"] for r in summary))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for j, model in enumerate(models):
        rows = [
            next((r for r in summary if r["kind"] == k and r["model"] == model), None)
            for k in kinds
        ]
        x = np.arange(len(kinds)) + (j - (len(models) - 1) / 2) * width
        vals = [r["ndcg@10"] if r else 0.0 for r in rows]
        errs = [r["ndcg@10_std"] if r else 0.0 for r in rows]
        bars = ax.bar(x, vals, width, yerr=errs, capsize=3, label=model)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(np.arange(len(kinds)), [f"{k}\n({LOGS.get(k, '')})" for k in kinds], fontsize=8)
    ax.set_ylabel("test NDCG@10 (exclude seen)")
    ax.set_title("Synthetic next-item, leave-one-out, full ranking (mean ± sd over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def page(payload: dict[str, Any], img: str) -> str:
    rows = [
        [
            r["kind"],
            r["model"],
            f"{r['ndcg@10']:.4f} ± {r['ndcg@10_std']:.4f}",
            f"{r['recall@10']:.4f} ± {r['recall@10_std']:.4f}",
            f"{r['mrr@10']:.4f}",
            f"{r['epochs_to_best']:.1f}",
            f"{r['train_seconds']:.0f}",
            r["seeds"],
        ]
        for r in payload["summary"]
    ]
    sizes = payload["sizes"]
    data = "; ".join(
        f"`{k}`: {d['events']:,} events, {d['train_positions']:,} training targets, "
        f"{d['test_users']:,} test users"
        for k, d in payload["datasets"].items()
    )
    trained = "Every model is trained with its plugin defaults (no options)."
    if payload["quick"]:
        trained += f" Quick smoke run: gpt2 stopped after {QUICK['epochs']} epochs."
    return "\n".join(
        [
            f"## Synthetic next-item: {', '.join(payload['models'])} (`bench/{NAME}.py`)",
            "",
            report.machine_line(payload["machine"]),
            "",
            f"Logs of {sizes['users']:,} users and {sizes['items']:,} items (data seed "
            f"{DATA_SEED}): `default` is seqrec's synthetic log (the quickstart's), "
            "`markov-clusters` a first-order item chain mixed with per-user interest clusters. "
            f"{data}. {trained} "
            "Leave-one-out, full ranking over all items, items already in the user's history "
            f"excluded. Mean ± sample sd over seeds {payload['seeds']} "
            "(popularity, markov and itemknn are deterministic: one run).",
            "",
            report.table(
                [
                    "log",
                    "model",
                    "NDCG@10",
                    "Recall@10",
                    "MRR@10",
                    "epochs to best",
                    "train s",
                    "runs",
                ],
                rows,
            ),
            "",
            f"![NDCG@10 by log and model]({img})",
        ]
    )


def run_jobs(jobs: list[dict[str, Any]], env: dict[str, str]) -> list[dict[str, Any]]:
    from tqdm import tqdm

    from seqrec.config import load_workspace

    runs = []
    bar = tqdm(jobs, desc=NAME, unit="run")
    for job in bar:
        bar.set_postfix_str(f"{job['kind']} {job['model']} seed {job['seed']}")
        store = load_workspace(workspace_dir(job["kind"], job["users"], job["items"])).model_store
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(job)],
            capture_output=True,
            text=True,
            env={**env, "BENTOML_HOME": str(store)},  # BentoML reads it once per process
        )
        if proc.returncode != 0:
            sys.exit(
                f"{job['kind']} {job['model']} seed {job['seed']} failed:\n{proc.stderr[-3000:]}"
            )
        run = json.loads(proc.stdout.strip().splitlines()[-1])
        runs.append(run)
        tqdm.write(
            f"{run['kind']:>15} {run['model']:>10} seed {run['seed']}: ndcg@10 {run['ndcg@10']:.4f} "
            f"recall@10 {run['recall@10']:.4f}, best epoch {run['epochs_to_best']}, "
            f"{run['train_seconds']:.0f} s"
        )
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--logs", default=",".join(LOGS), help="comma-separated synthetic log kinds")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--quick", action="store_true", help="tiny logs, seed 0, 2 gpt2 epochs")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    kinds = [k.strip() for k in args.logs.split(",") if k.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    sizes = {k: QUICK[k] for k in SIZES} if args.quick else dict(SIZES)
    epochs = QUICK["epochs"] if args.quick else None
    unknown = sorted(set(kinds) - set(LOGS))
    if unknown:
        sys.exit(f"unknown log kind(s): {', '.join(unknown)} (choose from {', '.join(LOGS)})")

    datasets = {kind: prepare(kind, **sizes) for kind in kinds}
    jobs = [
        {"kind": k, "model": m, "seed": s, "epochs": epochs, **sizes}
        for k in kinds
        for m in models
        for s in seeds
        if not (m in DETERMINISTIC and s != seeds[0])
    ]
    runs = run_jobs(jobs, example_plugins.worker_env(models))
    payload = {
        "machine": report.machine(),
        "quick": args.quick,
        "sizes": sizes,
        "data_seed": DATA_SEED,
        "seeds": seeds,
        "models": models,
        "datasets": datasets,
        "runs": runs,
        "summary": summarize(runs),
    }
    if args.quick:
        QUICK_OUT.mkdir(parents=True, exist_ok=True)
        (QUICK_OUT / f"{NAME}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
        plot(payload["summary"], QUICK_OUT / f"{NAME}.png")
        (QUICK_OUT / "benchmarks.md").write_text(page(payload, f"{NAME}.png") + "\n")
        print(f"quick run: results, plot and page section in {QUICK_OUT}", file=sys.stderr)
    else:
        report.save_json(NAME, payload)
        plot(payload["summary"], report.IMG / f"{NAME}.png")
        report.write_section(NAME, page(payload, f"img/{NAME}.png"))
    print(
        report.table(
            ["log", "model", "ndcg@10", "recall@10", "train s"],
            [
                [
                    r["kind"],
                    r["model"],
                    f"{r['ndcg@10']:.4f} ± {r['ndcg@10_std']:.4f}",
                    f"{r['recall@10']:.4f}",
                    f"{r['train_seconds']:.0f}",
                ]
                for r in payload["summary"]
            ],
        )
    )


if __name__ == "__main__":
    main()
