"""Sequence classification on the synthetic log: purchase propensity and churn, every model.

Labels are computed in SQL at time cutoffs (train/valid/test by time, features strictly before
each cutoff); the binary decision threshold is tuned on validation for F1. Metrics are on the
test cutoff.

    python bench/classification.py                      # lstm, bert, gpt2 x 2 labels
    python bench/classification.py --users 3000 --labels purchase-within:7d
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report

WS = report.ROOT / "bench" / "data" / "ws-classify"
METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--users", type=int, default=4000)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--models", default="lstm,bert,gpt2")
    ap.add_argument("--labels", default="purchase-within:7d,churn:7d")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    shutil.rmtree(WS, ignore_errors=True)
    os.environ["BENTOML_HOME"] = str(WS / "models")
    from tqdm import tqdm

    from seqrec.commands.project import init_workspace
    from seqrec.config import load_workspace
    from seqrec.data.schema import make_engine
    from seqrec.features import store as fs
    from seqrec.pipeline import evaluate_model, train_model
    from seqrec.testing import load_synth
    from seqrec.training.data import build_classification_data

    init_workspace(WS)
    ws = load_workspace(WS)
    n = load_synth(ws, users=args.users, items=args.items, seed=args.seed)
    fs.apply(ws)
    engine = make_engine(ws.events_url)
    results: list[dict[str, Any]] = []
    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    models = [x.strip() for x in args.models.split(",") if x.strip()]
    for label in labels:
        data = build_classification_data(ws, label, engine)
        for model in tqdm(models, desc=label):
            out = train_model(
                ws,
                model,
                task="classify",
                label=label,
                epochs=args.epochs,
                seed=args.seed,
                data=data,
                progress=False,
                overrides={"lr": 1e-3, "patience": 4},
            )
            res = evaluate_model(ws, out.tag, data=data, progress=False)
            row = {
                "label": label,
                "model": model,
                "tag": out.tag,
                "summary": data.summary(),
                "best_epoch": out.best_epoch,
                "seconds": out.seconds,
                **{m: res[m] for m in (*METRICS, "confusion_matrix")},
            }
            results.append(row)
            tqdm.write(f"{label:>20} {model:>5}: " + " ".join(f"{m} {res[m]:.3f}" for m in METRICS))
    payload = {"machine": report.machine(), "events": n, "users": args.users, "results": results}
    report.save_json("classification", payload)
    rows = [
        [r["label"], r["model"], *(f"{r[m]:.3f}" for m in METRICS), str(r["confusion_matrix"])]
        for r in results
    ]
    first = results[0]["summary"] if results else {}
    md = "\n".join(
        [
            "## Sequence classification on the synthetic log (`bench/classification.py`)",
            "",
            report.machine_line(payload["machine"]),
            "",
            f"{n:,} synthetic events, {args.users:,} users. Labels computed in SQL at time cutoffs "
            "(active users: an event in the horizon before the cutoff); train/valid/test by time; "
            "class-weighted loss; binary threshold tuned on validation for F1. Test cutoff metrics "
            f"(e.g. {first.get('test_examples', '?')} test examples for the first label).",
            "",
            report.table(["label", "model", *METRICS, "confusion [[tn, fp], [fn, tp]]"], rows),
        ]
    )
    report.write_section("classification", md)
    print(md)


if __name__ == "__main__":
    main()
