"""Continuous retraining, replayed: warm-started retrains against cold training, slice by slice.

A log is replayed in time order. The first half is imported and trained from scratch by
``seqrec retrain`` (no production yet: the first model must beat popularity). Then, for each
10% slice of time: import the slice, run ``seqrec retrain`` (warm start from production,
compare on each user's newest event, decide), and, on exactly the same data, train a cold model
from random weights with the same defaults. Both are evaluated on the same held-out window,
over ``--seeds`` seeds (default 3: seeds 1 and 2 of the warm start come from ``--no-promote``
retrain runs from the same production before the seed 0 run that decides), means compared.
Reported per slice: NDCG@10 and training seconds of warm and cold, how many of the slice's new
items were recommended at all (top 10 of any test user), recall@10 on test targets that are new
items, and the decision. Last comes a corrupted slice (item ids shuffled among the slice's
items): the run must refuse it.

Logs: (a) seqrec's synthetic log (2,000 users, 1,000 items, data seed 7) in which 20% of the
items are released over time (their events before the release are dropped), and (b) ml-100k by
time (the copy in the ``recbole==1.2.1`` wheel, as bench/ml100k.py fetches it). Models train
with the plugin's defaults; nothing else runs on the machine while this is timed.

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


def _decision(run: Any) -> str:
    if run.promoted:
        return "promoted"
    return "rejected" if run.intake and run.intake.get("refused") else "kept"


def trained(ws: Any, tag: str) -> dict[str, Any]:
    from seqrec import model_store

    info = model_store.load(tag, store=ws.model_store).info
    return {k: info.get(k) for k in ("seconds", "epochs_run", "best_epoch")}


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs))


def _sd(xs: list[float]) -> float:
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def replay(
    log: str, events: list[Any], n_slices: int, model: str, epochs: int | None, seeds: int = 1
) -> dict:
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
    from seqrec.features.repo import apply

    apply(ws)
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
        # more warm seeds first, from the same production and never promoted (seed 0 decides)
        extra_warm = []
        for seed in range(1, seeds if not corrupted else 1):
            other = retrain(
                ws, seed=seed, epochs=epochs, promote=False, materialize=False, progress=False
            )
            extra_warm.append(other.candidate)
        t0 = time.perf_counter()
        run = retrain(ws, seed=0, epochs=epochs, progress=False)
        retrain_s = time.perf_counter() - t0
        row: dict[str, Any] = {
            "slice": name,
            "events": len(part),
            "decision": _decision(run),
            "intake": run.intake,
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
            extra_cold = [
                train_model(ws, model, seed=seed, epochs=epochs, data=data, progress=False).tag
                for seed in range(1, seeds)
            ]
            for side, tags in (
                ("warm", [run.candidate, *extra_warm]),
                ("cold", [cold.tag, *extra_cold]),
            ):
                nd = [
                    evaluate_model(ws, t, data=data, progress=False, ci=False)["ndcg@10"]
                    for t in tags
                ]
                infos = [trained(ws, t) for t in tags]
                sec = [i["seconds"] for i in infos]
                row[side] |= {
                    "seeds": len(tags),
                    "ndcg@10_seeds": nd,
                    "seconds_seeds": sec,
                    "ndcg@10": _mean(nd),
                    "ndcg@10_sd": _sd(nd),
                    "seconds": _mean(sec),
                    "epochs_run": round(_mean([i["epochs_run"] for i in infos]), 1),
                }
            w, c = row["warm"], row["cold"]
            row["ndcg_ratio"] = round(w["ndcg@10"] / c["ndcg@10"], 3) if c["ndcg@10"] else None
            row["time_ratio"] = round(w["seconds"] / c["seconds"], 3) if c["seconds"] else None
        rows.append(row)
    return {"log": log, "model": model, "events": len(events), "seeds": seeds, "slices": rows}


# -- promotion under load ----------------------------------------------------------------------


def _pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 2) if xs else None


def swap_under_load(log: str, tags: list[str], every_s: float, concurrency: int) -> dict:
    """Serve ``stage=production`` from the replay's workspace, keep ``concurrency`` closed-loop
    clients sending /recommend, promote each of ``tags`` in turn, ``every_s`` apart, and read
    the timeline: errors, which model answered, p99 while each swap was under way."""
    import subprocess

    from seqrec.config import load_workspace
    from seqrec.promotion import promote
    from seqrec.testing import _merge

    root = DATA / f"ws-retrain-{log}"
    cfg = root / "seqrec.toml"
    cfg.write_text(_merge(cfg.read_text(), "[serve]\nreload_poll_s = 1.0\n"))
    ws = load_workspace(root)
    users = sorted({e["user_id"] for e in _read_jsonl(DATA / f"{log}-slice1-warm.jsonl")})[:500]
    bodies = DATA / f"{log}-bodies.json"
    bodies.write_text(json.dumps([{"user_id": u, "k": 10} for u in users]))
    port = _free_port()
    env = dict(os.environ, SEQREC_PROJECT=str(root), SEQREC_MODEL="stage=production")
    env["BENTOML_HOME"], env["BENTOML_DO_NOT_TRACK"] = str(root / "models"), "True"
    bentoml = str(Path(sys.executable).parent / "bentoml")
    log_file = DATA / f"{log}-serve.log"
    serve = subprocess.Popen(
        [bentoml, "serve", "seqrec.service:SeqrecService", "--host", "127.0.0.1", "--port",
         str(port)],
        env=env, stdout=log_file.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    timeline = DATA / f"{log}-timeline.jsonl"
    try:
        _wait_ready(url, serve, log_file)
        duration = every_s * (len(tags) + 1)
        gen = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("loadgen.py")), url, "/recommend",
             str(bodies), str(concurrency), str(10**9), "--duration", str(duration),
             "--timeline", str(timeline)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        promoted_at = []
        for tag in tags:
            time.sleep(every_s)
            promoted_at.append(time.time())
            promote(ws, tag, "stage=production", reason="bench/retrain.py: swap under load")
        summary = json.loads(gen.communicate(timeout=duration + 120)[0])
    finally:
        import signal

        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=30)
    rows = _read_jsonl(timeline)
    swaps = []
    for tag, t_prom in zip(tags, promoted_at, strict=True):
        after = (r["t"] + r["ms"] / 1000 for r in rows if r["model"] == tag and r["t"] >= t_prom)
        first = min(after, default=None)
        end = (first or t_prom) + 1.0
        during = [r["ms"] for r in rows if t_prom <= r["t"] <= end]
        swaps.append(
            {
                "tag": tag,
                "switch_s": round(first - t_prom, 2) if first else None,
                "requests_during": len(during),
                "p99_during_ms": _pct(during, 99),
            }
        )
    windows = [(t, t + (s["switch_s"] or 0) + 1.0) for t, s in zip(promoted_at, swaps, strict=True)]
    steady = [r["ms"] for r in rows if not any(a <= r["t"] <= b for a, b in windows)]
    return {
        "concurrency": concurrency,
        "every_s": every_s,
        "requests": len(rows),
        "errors": summary["errors"],
        "status": summary["status"],
        "models_answering": sorted({str(r["model"]) for r in rows}),
        "p50_steady_ms": _pct(steady, 50),
        "p99_steady_ms": _pct(steady, 99),
        "swaps": swaps,
    }


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: Any, log_file: Path, timeout_s: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited:\n{log_file.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the service was not ready after {timeout_s:.0f}s")


# -- the page -----------------------------------------------------------------------------------


def _f(x: Any, nd: int = 4) -> str:
    return "-" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _pm(side: dict[str, Any]) -> str:
    """NDCG@10, with ± the standard deviation over seeds where there were several."""
    if side.get("seeds", 1) > 1:
        return f"{side['ndcg@10']:.4f} ± {side['ndcg@10_sd']:.4f}"
    return _f(side.get("ndcg@10"))


def markdown(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    out = [
        "## Continuous retraining (bench/retrain.py)",
        "",
        "A log replayed in time slices: the first half trained from scratch by `seqrec retrain`, "
        "then per 10% slice: import, `seqrec retrain` (warm start from production, compare on "
        "each user's newest event, decide) and, on the same data, a cold model from random "
        "weights. The cold model trains the plugin's defaults; the warm start keeps "
        "production's configuration on the retrain's fine-tuning schedule (`[train] "
        "warm_start_share` = 0.2 of the from-scratch epochs, no warmup, the learning rate "
        "decaying to zero). With `--seeds 3` (the default) each clean slice has three warm "
        "candidates from the same production (seeds 1 and 2 in `--no-promote` retrain runs "
        "first; the seed 0 run decides) and three cold models, and the table compares means "
        "(± the standard deviation over seeds): one seed's NDCG@10 on ml-100k moves by about "
        "±0.012 (bootstrap 95%), six times the 2% target. All evaluated on the same window "
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
                    _pm(w),
                    _pm(c) if c else "-",
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
        clean = [r for r in res["slices"] if "cold" in r]
        met = [
            r for r in clean if r["ndcg_ratio"] >= 0.98 and r["time_ratio"] is not None
            and r["time_ratio"] <= 0.5
        ]  # fmt: skip
        if clean:
            nd = [r["ndcg_ratio"] for r in clean]
            tr = [r["time_ratio"] for r in clean if r["time_ratio"] is not None]
            out.append(
                f"Target (warm within 2% of cold NDCG@10 in at most half its training time): "
                f"met on {len(met)} of {len(clean)} slices; warm/cold NDCG {min(nd):.3f}-"
                f"{max(nd):.3f}, training time ratio {min(tr):.2f}-{max(tr):.2f}."
            )
            out.append("")
        refused = [r for r in res["slices"] if r["slice"].endswith("-corrupted")]
        for r in refused:
            out.append(f"Corrupted slice: **{r['decision']}**. Reason: {r['reason']}")
            out.append("")
        sw = res.get("swap")
        if sw:
            out += [
                f"Promotion under load: `seqrec serve --model stage=production` (poll 1 s), "
                f"{sw['concurrency']} closed-loop clients on /recommend, three promotions "
                f"{sw['every_s']:g} s apart: {sw['requests']:,} requests, **{sw['errors']} errors** "
                f"(status {sw['status']}), answered by {len(sw['models_answering'])} models; "
                f"steady p50 {sw['p50_steady_ms']} ms, p99 {sw['p99_steady_ms']} ms.",
                "",
                report.table(
                    ["promoted", "first answer after (s)", "requests in swap window", "p99 (ms)"],
                    [
                        [x["tag"], x["switch_s"], x["requests_during"], x["p99_during_ms"]]
                        for x in sw["swaps"]
                    ],
                ),
                "",
                "The swap window runs from the promotion to 1 s after the first answer by the "
                "new model (the poll interval is most of the delay).",
                "",
            ]
    out.append(report.machine_line(machine))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--logs", default="synthetic,ml100k")
    ap.add_argument("--slices", type=int, default=3, help="clean 10%% slices (then a corrupted)")
    ap.add_argument("--model", default="gpt2")
    ap.add_argument(
        "--seeds", type=int, default=3, help="warm and cold models per clean slice (mean compared)"
    )
    ap.add_argument("--quick", action="store_true", help="tiny synthetic log, 2 epochs")
    ap.add_argument("--swap-every", type=float, default=10.0, help="seconds between swaps; 0: none")
    ap.add_argument("--concurrency", type=int, default=8, help="load generator clients")
    ap.add_argument("--report-only", action="store_true", help="rewrite the page from JSON")
    args = ap.parse_args()
    if args.report_only:
        report.republish(NAME, markdown)
        return
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
        res = replay(log, events, args.slices, args.model, epochs, args.seeds)
        if args.swap_every > 0:
            clean = [r for r in res["slices"] if "cold" in r]
            prod, other = clean[-1]["warm"]["tag"], clean[-1]["cold"]["tag"]
            if res["slices"][-1]["decision"] == "promoted":  # the corrupted slice got through
                prod = res["slices"][-1]["warm"]["tag"]
            res["swap"] = swap_under_load(
                log, [other, prod, other], args.swap_every, args.concurrency
            )
        results.append(res)
        if args.quick:
            break
    report.publish(NAME, machine, results, markdown, args.quick)


if __name__ == "__main__":
    main()
