"""Where gbdt's lead over the neural classifiers comes from: its trees on feature subsets.

The neural classifiers read the prediction-time features of ``seqrec/now_features.py`` (recency,
events in the last 1, 7 and 30 days, the window's span, per event type the count and the time
since the newest one) beside the sequence. ``gbdt`` reads those and more (gaps between events,
type shares, events per day, the newest items' popularity, distinct items). This script fits
LightGBM, with the gbdt plugin's hyperparameters, on the labels of
``bench/classification.py`` using: the columns that match the neural models' features, those
plus each further group, and all of them. If the trees on the neural models' columns alone
score about as well as gbdt, the lead is in how the features are fitted, not in which
features there are.

    python bench/classification.py      # prepares the labels' data (bench/data/ws-classify-*)
    python bench/gbdt_features.py       # about a minute on 2 cores

Early stopping here uses the validation split (the plugin uses its newest training cutoff), so
the "all" row is close to, not equal to, the gbdt row of the classification page. Writes
bench/results/gbdt_features.json and its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report
from classification import datasets, hanley_mcneil_se, macro_auc

#: (dataset, label) pairs with a binary label (the control is noise by construction)
LABELS = (
    ("synthetic", "churn:7d"),
    ("synthetic", "purchase-within:7d"),
    ("ml100k", "churn:30d"),
)


def groups(n_event_types: int) -> dict[str, list[str]]:
    """Feature subsets by name: gbdt's columns that match ``now_features``, then each further
    group added to them, then all of gbdt's columns."""
    from seqrec_gbdt.features import feature_names

    types = range(1, n_event_types)
    now = ["events", "recency_s", "events_1d", "events_7d", "events_30d", "span_s"]
    now += [f"type{t}_count" for t in types] + [f"type{t}_recency_s" for t in types]
    extra = {
        "gaps": ["events_per_day", "gap_mean_s", "gap_min_s", "gap_max_s", "gap_last_s"],
        "type shares": [f"type{t}_share" for t in types] + ["last_type"],
        "popularity": ["pop_last", "pop_last5_mean"],
        "distinct items": ["distinct_share", "last_item_repeated"],
    }
    out = {"the neural models' features": now}
    out |= {f"+ {name}": now + cols for name, cols in extra.items()}
    out["all (gbdt)"] = feature_names(n_event_types)
    return out


def fit_auc(
    x: dict[str, np.ndarray], y: dict[str, np.ndarray], cols: list[int], seed: int
) -> float:
    """Test ROC-AUC of LightGBM (the gbdt plugin's hyperparameters) on columns ``cols``."""
    import lightgbm as lgb
    from seqrec_gbdt.model import DEFAULTS

    params = {
        "objective": "binary",
        "learning_rate": DEFAULTS["learning_rate"],
        "num_leaves": DEFAULTS["num_leaves"],
        "min_child_samples": DEFAULTS["min_child_samples"],
        "feature_fraction": DEFAULTS["feature_fraction"],
        "lambda_l2": DEFAULTS["l2"],
        "num_threads": 2,
        "seed": seed,
        "deterministic": True,
        "force_col_wise": True,
        "verbosity": -1,
    }
    pos = y["train"].mean()
    weight = np.where(y["train"] == 1, 0.5 / pos, 0.5 / (1 - pos))  # balanced, as the trainer
    train = lgb.Dataset(x["train"][:, cols], y["train"], weight=weight)
    valid = lgb.Dataset(x["valid"][:, cols], y["valid"], reference=train)
    booster = lgb.train(
        params,
        train,
        num_boost_round=DEFAULTS["n_trees"],
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(DEFAULTS["early_stopping"], verbose=False)],
    )
    p = booster.predict(x["test"][:, cols])
    return macro_auc(y["test"], np.stack([1 - p, p], 1))


def run(seed: int) -> list[dict[str, Any]]:
    from seqrec_gbdt.features import feature_names, sequence_features

    by_name = {d.name: d for d in datasets(False)}
    rows = []
    for name, label in LABELS:
        path = by_name[name].ws / f"data-{label.replace(':', '')}.pkl"
        if not path.exists():
            raise SystemExit(f"{path} is missing: run `python bench/classification.py` first")
        data = pickle.loads(path.read_bytes())
        n_types = data.n_event_types
        items = data.train.items
        counts = np.bincount(items[items > 0].ravel(), minlength=data.n_items)[: data.n_items]
        pop = np.log1p(counts.astype(np.float64))
        pop[0] = 0.0
        splits = {"train": data.train, "valid": data.valid, "test": data.test}
        x = {
            k: sequence_features(s.items, s.types, s.times, s.now, n_types, pop)
            for k, s in splits.items()
        }
        y = {k: s.labels for k, s in splits.items()}
        names = feature_names(n_types)
        for group, cols in groups(n_types).items():
            auc = fit_auc(x, y, [names.index(c) for c in cols], seed)
            n_pos = int((y["test"] == 1).sum())
            se = hanley_mcneil_se(auc, n_pos, len(y["test"]) - n_pos)
            rows.append(
                {
                    "dataset": name,
                    "label": label,
                    "features": group,
                    "columns": len(cols),
                    "roc_auc": auc,
                    "roc_auc_se": se,
                    "test_examples": len(y["test"]),
                }
            )
            print(f"{name:>9} {label:>20} {group:>30}: ROC-AUC {auc:.3f} ± {se:.3f}")
    return rows


def render(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    rows = [
        [
            r["dataset"],
            r["label"],
            r["features"],
            r["columns"],
            f"{r['roc_auc']:.3f} ± {r['roc_auc_se']:.3f}",
        ]
        for r in results
    ]
    return "\n".join(
        [
            "### Where gbdt's lead comes from (`bench/gbdt_features.py`)",
            "",
            report.machine_line(machine),
            "",
            "LightGBM with the gbdt plugin's hyperparameters on subsets of gbdt's features, "
            "the data of the classification benchmark above (balanced class weights, early "
            "stopping on the validation split, so the last row of each label is close to, not "
            "equal to, the gbdt row above). \"The neural models' features\" are gbdt's columns "
            "that match `now_features`; each `+` row adds one group to them.",
            "",
            report.table(["data", "label", "features", "columns", "test ROC-AUC ± SE"], rows),
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    results = run(args.seed)
    report.publish("gbdt_features", report.machine(), results, render, quick=False)


if __name__ == "__main__":
    main()
