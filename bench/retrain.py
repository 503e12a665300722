"""Continuous retraining, replayed: warm-started retrains against cold training, slice by slice.

A log is replayed in time order. The first half is imported and trained from scratch by
``seqrec retrain`` (no production yet: the first model must beat popularity). Then, for each
10% slice of time: import the slice, run ``seqrec retrain`` (warm start from production,
compare on each user's newest event, decide), and, on exactly the same data, train a cold model
from random weights with the same defaults. Both are evaluated on the same held-out window.
Reported per slice: NDCG@10 and training seconds of warm and cold, how many of the slice's new
items were recommended at all (top 10 of any test user), recall@10 on test targets that are new
items, and the decision. Last comes a corrupted slice (item ids shuffled among the slice's
items): the run must refuse it.

Logs: (a) seqrec's synthetic log (2,000 users, 1,000 items, data seed 7) in which 20% of the
items are released over time (their events before the release are dropped), and (b) ml-100k by
time (the copy in the ``recbole==1.2.1`` wheel, as bench/ml100k.py fetches it). Models train
with the plugin's defaults, seed 0; nothing else runs on the machine while this is timed.

    python bench/retrain.py                      # both logs, gpt2, 3 slices + the corrupted one
    python bench/retrain.py --logs synthetic --slices 2
    python bench/retrain.py --quick              # smoke run: tiny log, 2 epochs; page untouched
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report

NAME = "retrain"
DATA = report.ROOT / "bench" / "data"
BASE_SHARE = 0.5  # the first half of the log, by time, is the starting point
SLICE_SHARE = 0.1
RELEASED_SHARE = 0.2  # synthetic: share of items that appear only later
SYNTH = {"users": 2000, "items": 1000, "seed": 7}
QUICK_SYNTH = {"users": 200, "items": 120, "seed": 7}


# -- the logs -----------------------------------------------------------------------------------


def synthetic_events(users: int, items: int, seed: int) -> list[Any]:
    """seqrec's synthetic log with :data:`RELEASED_SHARE` of the items released over time."""
    from seqrec.data.synth import generate

    events = sorted(generate(users, items, seed), key=lambda e: e.ts_ms)
    rng = np.random.default_rng(seed)
    ids = sorted({e.item_id for e in events})
    late = rng.choice(len(ids), size=int(RELEASED_SHARE * len(ids)), replace=False)
    ts = np.array([e.ts_ms for e in events])
    lo, hi = np.quantile(ts, [BASE_SHARE - 0.1, 0.9])
    release = {
        ids[i]: int(t) for i, t in zip(late, rng.uniform(lo, hi, size=len(late)), strict=True)
    }
    return [e for e in events if e.ts_ms >= release.get(e.item_id, 0)]


def ml100k_events() -> list[Any]:
    """ml-100k's ratings as views, in time order (ties in file order)."""
    import ml100k

    from seqrec.data.importers import RawEvent

    out = []
    with ml100k.fetch_data().open() as fh:
        next(fh)  # header
        for line in fh:
            user, item, rating, ts = line.rstrip("\n").split("\t")[:4]
            out.append(RawEvent(user, item, int(ts) * 1000, "view", float(rating)))
    return sorted(out, key=lambda e: e.ts_ms)


def time_slices(events: list[Any], n: int) -> tuple[list[Any], list[list[Any]]]:
    """The base (first half) and ``n + 1`` slices of 10% each (the last one is corrupted)."""
    bounds = [BASE_SHARE + SLICE_SHARE * i for i in range(n + 2)]
    cut = [int(b * len(events)) for b in bounds]
    return events[: cut[0]], [events[cut[i] : cut[i + 1]] for i in range(n + 1)]


def shuffled_ids(events: list[Any], seed: int) -> list[Any]:
    """The slice with item ids permuted among its items: plausible shape, meaningless order."""
    ids = sorted({e.item_id for e in events})
    perm = dict(zip(ids, np.random.default_rng(seed).permutation(ids).tolist(), strict=True))
    return [dataclasses.replace(e, item_id=perm[e.item_id]) for e in events]


# -- one replay ---------------------------------------------------------------------------------


def import_slice(ws: Any, events: list[Any], name: str) -> int:
    from seqrec.data.importers import import_events
    from seqrec.data.schema import make_engine

    engine = make_engine(ws.events_url)
    try:
        rep = import_events(
            engine, enumerate(events, 1), source=name, sha256=name, fmt="replay", progress=False
        )
    finally:
        engine.dispose()
    return int(rep.rows_added)


def new_item_stats(topk_file: Path, new_items: set[str], k: int = 10) -> dict[str, Any]:
    """How many ``new_items`` were recommended at all, and recall@k on targets among them."""
    shown: set[str] = set()
    hits = targets = 0
    for line in topk_file.read_text().splitlines():
        rec = json.loads(line)
        top = rec["topk"][:k]
        shown.update(top)
        if rec["target"] in new_items:
            targets += 1
            hits += rec["target"] in top
    return {
        "new_items": len(new_items),
        "new_items_recommended": len(shown & new_items),
        "new_targets": targets,
        "recall@10_new_targets": round(hits / targets, 4) if targets else None,
    }


def trained(ws: Any, tag: str) -> dict[str, Any]:
    from seqrec import model_store

    info = model_store.load(tag, store=ws.model_store).info
    return {k: info.get(k) for k in ("seconds", "epochs_run", "best_epoch")}


def replay(log: str, events: list[Any], n_slices: int, model: str, epochs: int | None) -> dict:
    from seqrec.commands.project import init_workspace
    from seqrec.config import load_workspace
    from seqrec.pipeline import build_data, evaluate_model, train_model
    from seqrec.retrain import retrain

    root = DATA / f"ws-retrain-{log}"
    shutil.rmtree(root, ignore_errors=True)
    init_workspace(root, force=True)
    os.environ["BENTOML_HOME"] = str(root / "models")
    ws = load_workspace(root)
    base, slices = time_slices(events, n_slices)
    known: set[str] = {e.item_id for e in base}
    import_slice(ws, base, f"{log}-base")
    from seqrec.features import store as fs

    fs.apply(ws)
    first = retrain(ws, model_name=model, seed=0, epochs=epochs, progress=False)
    rows: list[dict[str, Any]] = [
        {
            "slice": "base",
            "events": len(base),
            "decision": "promoted" if first.promoted else "kept",
            "reason": first.reason,
            "warm": {"tag": first.candidate, "ndcg@10": first.candidate_score}
            | trained(ws, first.candidate),
        }
    ]
    print(f"[{log}] base: {first.reason}", file=sys.stderr)
    for i, part in enumerate(slices, 1):
        corrupted = i == len(slices)
        if corrupted:
            part = shuffled_ids(part, seed=i)
        name = f"{log}-slice{i}" + ("-corrupted" if corrupted else "")
        fresh = {e.item_id for e in part} - known
        known |= fresh
        import_slice(ws, part, name)
        t0 = time.perf_counter()
        run = retrain(ws, seed=0, epochs=epochs, progress=False)
        retrain_s = time.perf_counter() - t0
        row: dict[str, Any] = {
            "slice": name,
            "events": len(part),
            "decision": "promoted" if run.promoted else "kept",
            "reason": run.reason,
            "retrain_seconds": round(retrain_s, 1),
            "production_ndcg@10": run.production_score,
        }
        print(f"[{log}] {name}: {run.reason}", file=sys.stderr)
        data = build_data(ws, "next-item", None)
        warm_eval = DATA / f"{name}-warm.jsonl"
        ev = evaluate_model(ws, run.candidate, data=data, dump_topk=warm_eval, progress=False)
        row["warm"] = {"tag": run.candidate, "ndcg@10": ev["ndcg@10"], "recall@10": ev["recall@10"]}
        row["warm"] |= trained(ws, run.candidate) | new_item_stats(warm_eval, fresh)
        if not corrupted:
            cold = train_model(ws, model, seed=0, epochs=epochs, data=data, progress=False)
            cold_eval = DATA / f"{name}-cold.jsonl"
            ev = evaluate_model(ws, cold.tag, data=data, dump_topk=cold_eval, progress=False)
            row["cold"] = {"tag": cold.tag, "ndcg@10": ev["ndcg@10"], "recall@10": ev["recall@10"]}
            row["cold"] |= trained(ws, cold.tag) | new_item_stats(cold_eval, fresh)
            w, c = row["warm"], row["cold"]
            row["ndcg_ratio"] = round(w["ndcg@10"] / c["ndcg@10"], 3) if c["ndcg@10"] else None
            row["time_ratio"] = round(w["seconds"] / c["seconds"], 3) if c["seconds"] else None
        rows.append(row)
    return {"log": log, "model": model, "events": len(events), "slices": rows}


# -- the page -----------------------------------------------------------------------------------


def _f(x: Any, nd: int = 4) -> str:
    return "-" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def markdown(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    out = [
        "## Continuous retraining (bench/retrain.py)",
        "",
        "A log replayed in time slices: the first half trained from scratch by `seqrec retrain`, "
        "then per 10% slice: import, `seqrec retrain` (warm start from production, compare on "
        "each user's newest event, decide) and, on the same data, a cold model from random "
        "weights. Both with the plugin's defaults, seed 0, evaluated on the same window "
        "(leave-one-out, full ranking, unmasked). *New items*: items whose first event is in "
        "the slice; *shown* = how many of them are in some test user's top 10; *recall new*: "
        "recall@10 on test targets that are new items. The last slice has its item ids "
        "shuffled and must be refused.",
        "",
    ]
    for res in results:
        out += [f"### {res['log']} ({res['events']:,} events, {res['model']})", ""]
        rows = []
        for r in res["slices"]:
            w, c = r.get("warm", {}), r.get("cold", {})
            rows.append(
                [
                    r["slice"],
                    f"{r['events']:,}",
                    _f(w.get("ndcg@10")),
                    _f(c.get("ndcg@10")),
                    _f(r.get("ndcg_ratio"), 3),
                    f"{_f(w.get('seconds'), 0)} ({w.get('epochs_run', '-')} ep)",
                    f"{_f(c.get('seconds'), 0)} ({c.get('epochs_run', '-')} ep)" if c else "-",
                    _f(r.get("time_ratio"), 2),
                    f"{w.get('new_items_recommended', '-')}/{w.get('new_items', '-')}",
                    _f(w.get("recall@10_new_targets")),
                    _f(c.get("recall@10_new_targets")) if c else "-",
                    r["decision"],
                ]
            )
        out.append(
            report.table(
                [
                    "slice",
                    "events",
                    "warm NDCG@10",
                    "cold NDCG@10",
                    "warm/cold",
                    "warm train s",
                    "cold train s",
                    "time ratio",
                    "new shown (warm)",
                    "recall new (warm)",
                    "recall new (cold)",
                    "decision",
                ],
                rows,
            )
        )
        out.append("")
        refused = [r for r in res["slices"] if r["slice"].endswith("-corrupted")]
        for r in refused:
            out.append(f"Corrupted slice: **{r['decision']}**. Reason: {r['reason']}")
            out.append("")
    out.append(report.machine_line(machine))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--logs", default="synthetic,ml100k")
    ap.add_argument("--slices", type=int, default=3, help="clean 10%% slices (then a corrupted)")
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--quick", action="store_true", help="tiny synthetic log, 2 epochs")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    machine = report.machine()
    results = []
    for log in args.logs.split(","):
        if args.quick:
            events, epochs = synthetic_events(**QUICK_SYNTH), 2
            log = "synthetic-quick"
        elif log == "synthetic":
            events, epochs = synthetic_events(**SYNTH), None
        elif log == "ml100k":
            events, epochs = ml100k_events(), None
        else:
            raise SystemExit(f"unknown log {log!r}: synthetic or ml100k")
        results.append(replay(log, events, args.slices, args.model, epochs))
        if args.quick:
            break
    payload = {"machine": machine, "results": results}
    if args.quick:
        print(json.dumps(payload, indent=2, default=str))
        return
    report.save_json(NAME, payload)
    report.write_section(NAME, markdown(results, machine))
    print(markdown(results, machine))


if __name__ == "__main__":
    main()
