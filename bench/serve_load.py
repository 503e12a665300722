"""Serving under load: a real `seqrec serve`, Redis online features, closed-loop clients.

Setup (bench/data/serve, rebuilt on each run): a catalogue of 10k items, a GPT-2 (2 layers,
d=64, L=50; weights untrained: latency does not depend on them) in the model store, and the
newest feature row of 100k users written to a private Redis (postgres-redis profile, Feast's
Redis layout). Then `seqrec serve` runs on 127.0.0.1 and `bench/loadgen.py`, a separate process,
drives POST /recommend (k=10, exclude_seen, random known users) at each concurrency with a fixed
number of requests after a warm-up. The same load then drives two reference servers, one after
the other (see VARIANTS): seqrec through BentoML's own endpoints, and a BentoML endpoint returning
a constant. Results: bench/results/serve.json and the "serve" section of docs/benchmarks.md. With a
GPU, the model call alone is also timed on cuda (fp16).

    python bench/serve_load.py                          # c = 1, 8, 32, 64; all three servers
    python bench/serve_load.py --servers seqrec --requests 1000 --users 20000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report

DATA = report.ROOT / "bench" / "data" / "serve"
N_TYPES = ("view", "cart", "purchase")
#: the acceptance criteria of the serving issue (2-core machine, load generator included)
TARGETS = {"c1_p50_ms": 4.0, "c1_p99_ms": 8.0, "c8_p99_ms": 40.0, "c32_rps": 300.0}


def build_workspace(root: Path, redis_url: str, users: int, items: int, max_len: int) -> Any:
    """Vocabulary DB, model in the store, online rows in Redis; returns the workspace."""
    import numpy as np
    import pandas as pd
    from sqlalchemy import insert

    from seqrec import model_store
    from seqrec.config import load_workspace
    from seqrec.data.schema import create_schema, event_types, make_engine
    from seqrec.data.schema import items as items_table
    from seqrec.models import ModelContext, get_spec
    from seqrec.testing import write_online

    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / "seqrec.toml").write_text(
        'profile = "postgres-redis"\n\n'
        f'[events]\nurl = "sqlite:///{root}/vocab.db"\n\n'
        f'[features]\nmax_len = {max_len}\nproject = "benchserve"\nredis_url = "{redis_url}"\n\n'
        '[models]\nstore = "models"\n'
    )
    ws = load_workspace(root)
    engine = make_engine(ws.events_url)
    create_schema(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(items_table),
            [{"item_idx": i, "item_id": f"i{i:05d}"} for i in range(1, items + 1)],
        )
        conn.execute(
            insert(event_types), [{"type_idx": i + 1, "name": n} for i, n in enumerate(N_TYPES)]
        )
    rng = np.random.default_rng(0)
    pop = 1.0 / np.arange(1, items + 1) ** 0.8  # Zipf-like popularity
    pop /= pop.sum()
    spec = get_spec("gpt2")
    params = {**spec.defaults, "n_layer": 2, "d_model": 64}
    ctx = ModelContext(
        n_items=items + 1, n_event_types=len(N_TYPES) + 1, max_len=max_len, params=params
    )
    counts = np.concatenate([[0.0], np.round(pop * 1e6)])
    tag = model_store.save(
        spec.make(ctx),
        engine=engine,
        plugin="gpt2",
        task="next-item",
        feature_service=ws.config.features.feature_service,
        metrics={},
        popularity=counts,
        train_info={"note": "untrained, for serving benchmarks"},
        store=ws.model_store,
    )
    engine.dispose()
    now = int(time.time())
    seqs = rng.choice(items, size=(users, max_len), p=pop) + 1
    types = rng.integers(1, len(N_TYPES) + 1, size=(users, max_len))
    gaps = rng.integers(10, 3600, size=(users, max_len))
    ts = now - 86_400 - gaps[:, ::-1].cumsum(axis=1)[:, ::-1]
    rows = pd.DataFrame(
        {
            "user_id": [f"u{i:06d}" for i in range(users)],
            "event_timestamp": pd.to_datetime(ts[:, -1], unit="s", utc=True),
            "item_seq": list(seqs),
            "type_seq": list(types),
            "ts_seq": list(ts),
            "seq_len": max_len,
            "n_events": max_len,
            "n_purchases": (types == 3).sum(axis=1),
            "last_gap_s": gaps[:, -1],
        }
    )
    t0 = time.perf_counter()
    write_online(ws, rows)
    print(f"online rows: {users:,} users in {time.perf_counter() - t0:.1f}s; model {tag}")
    return ws, tag


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"seqrec serve exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"not ready after {timeout}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def load(url: str, bodies: Path, concurrency: int, requests: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("loadgen.py")),
            url,
            "/recommend",
            str(bodies),
            str(concurrency),
            str(requests),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout))


def gpu_model_call(ws: Any, tag: str) -> list[dict[str, Any]] | str:
    """The model call alone on cuda (fp16), by batch size; a sentence when there is no GPU."""
    import numpy as np
    import torch

    if not torch.cuda.is_available():
        return "not measured: this machine has no GPU, and the device tool lent none to this project; on a machine with CUDA the same command adds this table (the model call alone, fp16, by batch size)"
    from seqrec.recommend import Query, Recommender

    rec = Recommender(ws, tag, device="cuda")
    rows = []
    rng = np.random.default_rng(1)
    for b in (1, 8, 32, 64, 256):
        queries = [Query(f"u{i:06d}", 10) for i in rng.integers(0, 1000, size=b)]
        feats = rec.lookup([q.user_id for q in queries])
        from seqrec.features.sql import left_pad

        items = left_pad(feats["item_seq"], rec.max_len)
        types = left_pad(feats["type_seq"], rec.max_len)
        times = left_pad(feats["ts_seq"], rec.max_len)
        for _ in range(10):
            rec._rank(items.copy(), types.copy(), times.copy(), queries)
        torch.cuda.synchronize()
        n = 100
        t0 = time.perf_counter()
        for _ in range(n):
            rec._rank(items.copy(), types.copy(), times.copy(), queries)
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) / n * 1000
        rows.append({"batch": b, "ms_per_call": round(ms, 3), "users_per_s": round(b / ms * 1e3)})
    return rows


#: the servers one run compares, each driven by the same load: seqrec as configured by default,
#: seqrec answering through BentoML's own endpoints with tracing on (what the fast path and the
#: tracing default save), and a BentoML endpoint returning a constant (the framework's floor)
VARIANTS = {
    "seqrec": "",
    "seqrec-bentoml-path": "fast_path = false\ntracing = true\n",
    "bentoml-constant": None,
}


def serve(ws: Any, variant: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start one variant on 127.0.0.1:port (its own process group)."""
    env = {k: v for k, v in os.environ.items() if k not in ("SEQREC_PROJECT", "SEQREC_MODEL")}
    env["BENTOML_DO_NOT_TRACK"] = "True"
    bindir = Path(sys.executable).parent
    serve_cfg = VARIANTS[variant]
    if serve_cfg is None:
        cmd = [str(bindir / "bentoml"), "serve", "const_service:Constant", "--host", "127.0.0.1"]
        cwd: Path | None = Path(__file__).parent
    else:
        toml = ws.root / "seqrec.toml"
        base = toml.read_text().split("\n[serve]\n")[0]
        toml.write_text(base + (f"\n[serve]\n{serve_cfg}" if serve_cfg else ""))
        cmd = [str(bindir / "seqrec"), "serve", "--project", str(ws.root)]
        cwd = None
    with log.open("wb") as out:
        return subprocess.Popen(
            [*cmd, "--port", str(port)],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    import signal

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def drive(ws: Any, variant: str, bodies: Path, levels: list[int], args: Any) -> list[dict]:
    """Start ``variant``, run every concurrency level against it, stop it."""
    from seqrec.testing import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = DATA / f"serve-{variant}.log"
    proc = serve(ws, variant, port, log)
    results = []
    try:
        wait_ready(url, proc, log)
        for c in levels:
            load(url, bodies, c, args.warmup)
            r = {"server": variant, **load(url, bodies, c, args.requests)}
            print(json.dumps(r), flush=True)
            results.append(r)
    finally:
        stop(proc)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--requests", type=int, default=3000, help="measured requests per level")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument(
        "--servers",
        default=",".join(VARIANTS),
        help=f"which of {', '.join(VARIANTS)} to run (the first is the one judged)",
    )
    ap.add_argument("--note", default="", help="conditions to record (e.g. other load)")
    args = ap.parse_args()

    import random

    from seqrec.testing import RedisServer

    levels = [int(c) for c in args.concurrency.split(",")]
    servers = [s for s in args.servers.split(",") if s]
    unknown = set(servers) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown --servers {sorted(unknown)}; known: {list(VARIANTS)}")
    load_before = os.getloadavg()
    with RedisServer() as redis:
        ws, tag = build_workspace(DATA, redis.url, args.users, args.items, args.max_len)
        rnd = random.Random(0)
        bodies = DATA / "bodies.json"
        bodies.write_text(
            json.dumps(
                [{"user_id": f"u{rnd.randrange(args.users):06d}", "k": 10} for _ in range(5000)]
            )
        )
        all_results: list[dict] = []
        for variant in servers:
            all_results += drive(ws, variant, bodies, levels, args)
        load_avg = os.getloadavg()
        gpu = gpu_model_call(ws, tag)
    results = [r for r in all_results if r["server"] == servers[0]]
    by_c = {r["concurrency"]: r for r in results}
    checks = {
        "c1_p50_ms": by_c.get(1, {}).get("p50_ms"),
        "c1_p99_ms": by_c.get(1, {}).get("p99_ms"),
        "c8_p99_ms": by_c.get(8, {}).get("p99_ms"),
        "c32_rps": by_c.get(32, {}).get("rps"),
    }
    judged = servers[0] == "seqrec"
    passed = {
        k: (v is not None and (v >= TARGETS[k] if k.endswith("rps") else v <= TARGETS[k]))
        for k, v in checks.items()
    }
    errors = sum(r["errors"] for r in results)
    payload = {
        "machine": report.machine(),
        "setup": {
            "users": args.users,
            "items": args.items,
            "max_len": args.max_len,
            "model": "gpt2 n_layer=2 d_model=64 (untrained weights)",
            "online_store": "Redis (private redis-server), postgres-redis profile reader",
            "requests_per_level": args.requests,
            "warmup_per_level": args.warmup,
            "servers": {v: VARIANTS[v] for v in servers},
            "client": "bench/loadgen.py: closed loop, one keep-alive connection per client, "
            "separate process on the same machine",
        },
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_avg],
        "note": args.note,
        "results": results,
        "all_servers": all_results,
        "acceptance": {
            "targets": TARGETS,
            "measured": checks,
            "passed": passed,
            "judged_server": servers[0],
        },
        "errors": errors,
        "gpu_model_call": gpu,
    }
    path = report.save_json("serve", payload)
    rows = [
        [
            r["server"],
            r["concurrency"],
            r["requests"],
            r["p50_ms"],
            r["p95_ms"],
            r["p99_ms"],
            r["rps"],
            r["errors"],
            r["n_503"],
        ]
        for r in all_results
    ]
    ratio_rows = []
    for c in levels:
        own = by_c.get(c)
        if own is None:
            continue
        row: list[Any] = [c]
        for other in servers[1:]:
            o = next(
                (r for r in all_results if r["server"] == other and r["concurrency"] == c), None
            )
            row += (
                [f"{own['p50_ms'] / o['p50_ms']:.2f}x", f"{own['rps'] / o['rps']:.2f}x"]
                if o
                else ["", ""]
            )
        ratio_rows.append(row)
    ratio_md = ""
    if len(servers) > 1:
        heads = ["concurrency"]
        for other in servers[1:]:
            heads += [f"p50 vs {other}", f"req/s vs {other}"]
        ratio_md = (
            f"\n`{servers[0]}` as a ratio of the others (p50 latency: lower is better; "
            "req/s: higher is better):\n\n" + report.table(heads, ratio_rows) + "\n"
        )
    verdict = ", ".join(
        f"{k} {checks[k]} ({'ok' if passed[k] else 'MISSED'}; target {TARGETS[k]})" for k in TARGETS
    )
    if not judged:
        verdict += " (measured on a variant, not seqrec's defaults)"
    gpu_md = (
        gpu
        if isinstance(gpu, str)
        else report.table(
            ["batch", "ms per call", "users/s"],
            [[g["batch"], g["ms_per_call"], g["users_per_s"]] for g in gpu],
        )
    )
    md = f"""## Serving under load (`bench/serve_load.py`)

{report.machine_line(payload["machine"])}

A real `seqrec serve` (BentoML {payload["machine"]["versions"]["bentoml"]}, one worker, requests
micro-batched into one Redis lookup and one model call) on 127.0.0.1; GPT-2 with 2 layers,
d=64, L={args.max_len}, {args.items:,} items; online features of {args.users:,} users in a private
Redis (Feast's layout, read by the postgres-redis profile's reader). `bench/loadgen.py` (a
separate process on the same 2 cores) sends POST /recommend (k=10, exclude_seen) in a closed
loop: {args.warmup} warm-up then {args.requests} measured requests per concurrency level.
Servers, one after the other in the same run: `seqrec` (defaults), `seqrec-bentoml-path`
(`[serve] fast_path = false, tracing = true`: every request through BentoML's routing, IO
descriptors and OpenTelemetry middleware) and `bentoml-constant` (`bench/const_service.py`: a
BentoML endpoint that returns a constant answer of the same shape, the framework's floor).

{report.table(["server", "concurrency", "requests", "p50 ms", "p95 ms", "p99 ms", "req/s", "errors", "503s"], rows)}
{ratio_md}
Acceptance (`{servers[0]}`): {verdict}. Errors in all: {errors}. Load average (1, 5, 15 min)
before the run {payload["load_average_before"]}, after {payload["load_average_after"]}
(2 cores).{(" " + args.note) if args.note else ""}

Model call on cuda (fp16), without HTTP: {gpu_md}
"""
    report.write_section("serve", md)
    print(f"wrote {path} and docs/benchmarks.md (serve)")


if __name__ == "__main__":
    main()
