"""MovieLens-100K next-item benchmark: seqrec's models against RecBole's protocol and peers.

Protocol (RecBole's): leave-one-out by time (ties in file order), full ranking over all 1,682
items, no history masking, max sequence length 50. The data is the ml-100k copy that ships
inside the ``recbole==1.2.1`` wheel (fetched with ``pip download --no-deps``, never committed).

For every model and seed, a fresh worker process trains through ``seqrec.pipeline`` (the same
code path as ``seqrec train``) and evaluates the test targets; the parent reports mean and
spread of NDCG@10, Recall@10, MRR@10, seconds per epoch (one pass over all training targets),
epochs to best, total training time and peak memory. ``--with-peer`` also runs
``bench/peer_recbole.py --mode speed`` in the same invocation so the speed ratio is measured on
the same machine in the same run.

    python bench/ml100k.py                      # all models, seeds 0,1,2
    python bench/ml100k.py --models gpt2 --seeds 0 --with-peer
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
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report

DATA = report.ROOT / "bench" / "data"
WHEEL_GLOB = "recbole-1.2.1-py3-none-any.whl"
WS = DATA / "ws-ml100k"

#: The tuned configuration of each model (hyperparameters + trainer settings). Changing these is
#: how the benchmark is tuned; the page prints them.
CONFIGS: dict[str, dict[str, Any]] = {
    "popularity": {"params": {}, "train": {}},
    "gpt2": {
        "params": {
            "d_model": 64,
            "n_layer": 2,
            "n_head": 2,
            "dropout": 0.5,
            "use_time_gaps": True,
            "repeat_bias": True,
        },
        "train": {"lr": 2e-3, "batch_size": 32, "epochs": 50, "patience": 8},
    },
    "lstm": {
        "params": {"d_model": 64, "hidden": 128, "dropout": 0.5, "repeat_bias": True},
        "train": {"lr": 5e-3, "batch_size": 32, "epochs": 50, "patience": 8},
    },
    "bert": {
        "params": {
            "d_model": 64,
            "n_layers": 2,
            "n_heads": 2,
            "dropout": 0.2,
            "mask_prob": 0.4,
            "last_mask_prob": 0.2,
            "use_time_gaps": True,
            "head_transform": True,
            "repeat_bias": True,
        },
        "train": {"lr": 2e-3, "batch_size": 32, "epochs": 80, "patience": 10},
    },
}
STRIDE = 50  # training window stride (= max_len: no overlap)

#: RecBole 1.2.1 on this kind of machine, same protocol (from the project's design brief).
RECBOLE_REFERENCE = {
    "SASRec": {"ndcg@10": 0.0670, "recall@10": 0.1442},
    "GRU4Rec": {"ndcg@10": 0.0694, "recall@10": 0.1410},
    "BERT4Rec": {"ndcg@10": 0.0610, "recall@10": 0.1326},
}


def fetch_data() -> Path:
    """ml-100k.inter from the recbole wheel (downloaded once with pip, no other network)."""
    target = DATA / "ml-100k" / "ml-100k.inter"
    if target.exists():
        return target
    DATA.mkdir(parents=True, exist_ok=True)
    wheels = sorted(DATA.glob(WHEEL_GLOB))
    if not wheels:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "-q",
                "recbole==1.2.1",
                "-d",
                str(DATA),
            ],
            check=True,
        )
        wheels = sorted(DATA.glob(WHEEL_GLOB))
    with zipfile.ZipFile(wheels[0]) as zf:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(zf.read("recbole/dataset_example/ml-100k/ml-100k.inter"))
    return target


def prepare() -> Path:
    """Workspace with ml-100k imported and features applied; the training data cached."""
    os.environ.setdefault("BENTOML_HOME", str(WS / "models"))
    from seqrec.commands.project import init_workspace
    from seqrec.config import load_workspace
    from seqrec.data.importers import import_file
    from seqrec.data.schema import make_engine
    from seqrec.features import store as fs
    from seqrec.training.data import build_next_item_data

    cache = WS / f"data-stride{STRIDE}.pkl"
    if cache.exists():
        return cache
    inter = fetch_data()
    if not (WS / "seqrec.toml").exists():
        init_workspace(WS)
    ws = load_workspace(WS)
    report_ = import_file(make_engine(ws.events_url), inter, "recbole", progress=True)
    print(f"imported {report_.rows_added:,} events ({report_.rows_read:,} read)", file=sys.stderr)
    fs.apply(ws)
    data = build_next_item_data(ws, stride=STRIDE)
    cache.write_bytes(pickle.dumps(data))
    return cache


def worker(model: str, seed: int, cache: Path) -> dict[str, Any]:
    """Train and evaluate one (model, seed) in this process; returns its metrics."""
    import torch

    from seqrec.config import load_workspace
    from seqrec.pipeline import evaluate_model, train_model

    torch.set_num_threads(2)
    ws = load_workspace(WS)
    data = pickle.loads(cache.read_bytes())
    cfg = CONFIGS[model]
    t0 = time.perf_counter()
    out = train_model(
        ws,
        model,
        seed=seed,
        params=cfg["params"],
        overrides={**cfg["train"], "num_threads": 2},
        data=data,
        progress=False,
        run_dir=WS / "runs" / f"{model}-seed{seed}",
    )
    train_s = time.perf_counter() - t0
    test = evaluate_model(ws, out.tag, ks=(10, 20), data=data, progress=False)
    return {
        "model": model,
        "seed": seed,
        "tag": out.tag,
        "ndcg@10": test["ndcg@10"],
        "recall@10": test["recall@10"],
        "mrr@10": test["mrr@10"],
        "ndcg@20": test["ndcg@20"],
        "recall@20": test["recall@20"],
        "ndcg@10_ci95": test.get("ndcg@10_ci95"),
        "valid_ndcg@10": out.valid.get("ndcg@10"),
        "seconds_per_epoch": out.seconds_per_epoch,
        "epochs_to_best": out.best_epoch,
        "epochs_run": out.epochs_run,
        "train_seconds": round(train_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "train_positions": data.summary()["train_positions"],
    }


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for model in dict.fromkeys(r["model"] for r in runs):
        rs = [r for r in runs if r["model"] == model]
        row: dict[str, Any] = {
            "model": model,
            "seeds": len(rs),
            "train_positions": rs[0]["train_positions"],
        }
        for key in (
            "ndcg@10",
            "recall@10",
            "mrr@10",
            "seconds_per_epoch",
            "epochs_to_best",
            "train_seconds",
            "peak_rss_mb",
        ):
            vals = np.array([r[key] for r in rs], dtype=float)
            row[key] = float(vals.mean())
            row[key + "_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        rows.append(row)
    return rows


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["model"] for r in summary] + [f"RecBole {k}" for k in RECBOLE_REFERENCE]
    vals = [r["ndcg@10"] for r in summary] + [v["ndcg@10"] for v in RECBOLE_REFERENCE.values()]
    errs = [r["ndcg@10_std"] for r in summary] + [0.0] * len(RECBOLE_REFERENCE)
    colors = ["tab:blue"] * len(summary) + ["tab:gray"] * len(RECBOLE_REFERENCE)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.bar(names, vals, yerr=errs, color=colors, capsize=4)
    ax.axhline(0.080, color="tab:red", linestyle="--", linewidth=1, label="target 0.080")
    ax.set_ylabel("test NDCG@10")
    ax.set_title("MovieLens-100K, leave-one-out, full ranking (mean ± sd over seeds)")
    ax.legend()
    plt.xticks(rotation=20, ha="right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def page(payload: dict[str, Any]) -> str:
    summary, peer = payload["summary"], payload.get("peer")
    rows = []
    for r in summary:
        rows.append(
            [
                f"seqrec {r['model']}",
                f"{r['ndcg@10']:.4f} ± {r['ndcg@10_std']:.4f}",
                f"{r['recall@10']:.4f} ± {r['recall@10_std']:.4f}",
                f"{r['mrr@10']:.4f} ± {r['mrr@10_std']:.4f}",
                f"{r['seconds_per_epoch']:.2f}",
                f"{r['epochs_to_best']:.1f}",
                f"{r['train_seconds']:.0f}",
                f"{r['peak_rss_mb']:.0f}",
            ]
        )
    for name, ref in RECBOLE_REFERENCE.items():
        measured = next(
            (
                p
                for p in (peer or {}).get("results", [])
                if p["model"] == name and p.get("mode", "speed") == "speed"
            ),
            None,
        )
        spe = (
            f"{measured['seconds_per_epoch']:.1f}" if measured else "(118 / 55 / 119 in the brief)"
        )
        rows.append(
            [
                f"RecBole {name} (reference)",
                f"{ref['ndcg@10']:.4f}",
                f"{ref['recall@10']:.4f}",
                "",
                spe,
                "",
                "",
                "",
            ]
        )
    md = [
        "## MovieLens-100K next-item (`bench/ml100k.py`)",
        "",
        report.machine_line(payload["machine"]),
        "",
        "Protocol: leave-one-out by time (ties in file order), full ranking over all items, no "
        "history masking, max length 50: RecBole's protocol. Mean ± sample sd over seeds "
        f"{payload['seeds']}. Seconds per epoch = one pass over all "
        f"{summary[0].get('train_positions', '')} training targets, 2 threads.",
        "",
        report.table(
            [
                "model",
                "NDCG@10",
                "Recall@10",
                "MRR@10",
                "s/epoch",
                "epochs to best",
                "train s",
                "peak RSS MB",
            ],
            rows,
        ),
        "",
        "![NDCG@10 by model](img/ml100k.png)",
        "",
    ]
    if peer:
        sas = next(
            (
                p
                for p in peer["results"]
                if p["model"] == "SASRec" and p.get("mode", "speed") == "speed"
            ),
            None,
        )
        best = min(
            summary, key=lambda r: r["seconds_per_epoch"] if r["model"] != "popularity" else 1e9
        )
        if sas:
            md.append(
                f"Speed, same run, same machine: RecBole SASRec {sas['seconds_per_epoch']:.1f} s per epoch "
                "vs "
                + ", ".join(
                    f"seqrec {r['model']} {r['seconds_per_epoch']:.2f} s "
                    f"({sas['seconds_per_epoch'] / r['seconds_per_epoch']:.0f}x)"
                    for r in summary
                    if r["model"] != "popularity" and r["seconds_per_epoch"] > 0
                )
                + f". Fastest: {best['model']}."
            )
    md.append("")
    md.append(
        "Configurations: "
        + "; ".join(f"`{m}`: {json.dumps(CONFIGS[m])}" for m in payload["models"])
    )
    return "\n".join(md)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default="popularity,lstm,bert,gpt2")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--with-peer", action="store_true", help="also time RecBole (speed mode) now")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("BENTOML_HOME", str(WS / "models"))
    cache = prepare()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), cache)))
        return
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = []
    from tqdm import tqdm

    jobs = [(m, s) for m in models for s in seeds if not (m == "popularity" and s != seeds[0])]
    for model, seed in tqdm(jobs, desc="ml-100k", unit="run"):
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", model, str(seed)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            sys.exit(f"{model} seed {seed} failed:\n{proc.stderr[-3000:]}")
        run = json.loads(proc.stdout.strip().splitlines()[-1])
        runs.append(run)
        tqdm.write(
            f"{model:>10} seed {seed}: ndcg@10 {run['ndcg@10']:.4f} recall@10 {run['recall@10']:.4f} "
            f"{run['seconds_per_epoch']:.2f} s/epoch, best epoch {run['epochs_to_best']}"
        )
    peer = None
    if args.with_peer:
        out = report.RESULTS / "peer_recbole.json"
        subprocess.run(
            [
                sys.executable,
                str(Path(__file__).with_name("peer_recbole.py")),
                "--mode",
                "speed",
                "--out",
                str(out),
            ],
            check=True,
        )
        peer = json.loads(out.read_text())
    payload = {
        "machine": report.machine(),
        "models": models,
        "seeds": seeds,
        "stride": STRIDE,
        "configs": {m: CONFIGS[m] for m in models},
        "runs": runs,
        "summary": summarize(runs),
        "peer": peer,
    }
    report.save_json("ml100k", payload)
    plot(payload["summary"], report.IMG / "ml100k.png")
    report.write_section("ml100k", page(payload))
    print(
        report.table(
            ["model", "ndcg@10", "recall@10", "s/epoch"],
            [
                [
                    r["model"],
                    f"{r['ndcg@10']:.4f}",
                    f"{r['recall@10']:.4f}",
                    f"{r['seconds_per_epoch']:.2f}",
                ]
                for r in payload["summary"]
            ],
        )
    )


if __name__ == "__main__":
    main()
