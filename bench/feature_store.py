"""Feature-store benchmark: ingest, feature build, materialization, online lookups, increments.

For synthetic logs of 1M, 5M and 10M events (50 events per user on average: 20k, 100k, 200k
users; 10k items; sequences of L=50) and each profile:

* ingest of a CSV file with ``import_file`` (rows/s): SQLite inserts (embedded) or COPY
  (postgres-redis);
* full feature build (SQL windows -> Parquet snapshot / PostgreSQL table);
* full materialization into the online store (users/s): Feast ``write_to_online_store`` into
  SQLite (embedded), seqrec's direct Redis writer (postgres-redis); and, as the peer, Feast's own
  ``materialize`` into the same Redis from its postgres offline store (pull_latest on);
* online lookups, 1 user and batches of 64, p50/p99: seqrec's reader next to Feast's own
  ``get_online_features`` on the same store, in the same process;
* an incremental run after 1% new events (feature refresh + incremental materialization) as a
  share of the full build + materialization.

Usage: ``python bench/feature_store.py [--sizes 1000000,5000000,10000000] [--embedded-max N]``.
The embedded profile keeps per-event sequences as Python lists in memory: it runs up to
``--embedded-max`` events (default 1M). Writes bench/results/feature_store.json, a section of
docs/benchmarks.md and docs/img/feature_store.png.
"""

from __future__ import annotations

import argparse
import csv
import gc
import random
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report

from seqrec.config import Workspace
from seqrec.data.importers import import_file
from seqrec.data.schema import make_engine
from seqrec.data.synth import write_csv
from seqrec.features import readers
from seqrec.features.materialize import materialize, redis_online
from seqrec.features.readers import online_reader
from seqrec.features.repo import apply, get_store
from seqrec.features.snapshots import build_snapshot, ensure_snapshot
from seqrec.testing import (
    drop_pg_redis_workspace,
    make_pg_redis_workspace,
    make_workspace,
)

DATA = report.ROOT / "bench" / "data" / "feature_store"
ITEMS = 10_000
EVENTS_PER_USER = 50
MAX_LEN = 50
LOOKUPS_1 = 2_000
LOOKUPS_64 = 300
SETTINGS = f"[features]\nmax_len = {MAX_LEN}\n"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def lat(fn: Any, batches: list[list[str]]) -> dict[str, float]:
    for b in batches[:20]:  # warm up
        fn(b)
    times = []
    for b in batches:
        t = time.perf_counter()
        fn(b)
        times.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": round(pct(times, 0.5), 3), "p99_ms": round(pct(times, 0.99), 3)}


def csv_for(n_events: int) -> tuple[Path, int]:
    users = n_events // EVENTS_PER_USER
    path = DATA / f"events-{n_events}.csv"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        write_csv(path, users, ITEMS, seed=7, mean_events_per_user=EVENTS_PER_USER)
    return path, users


def increment_csv(path: Path, n: int, users: list[str]) -> Path:
    """1% new events: random known users, later than everything in the log."""
    out = path.with_suffix(".inc.csv")
    rng = random.Random(11)
    t0 = int((datetime.now(UTC) - timedelta(hours=1)).timestamp() * 1000)
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "item_id", "timestamp", "event_type", "value"])
        for k in range(n):
            w.writerow([rng.choice(users), f"i{rng.randrange(1, ITEMS):05d}", t0 + k, "view", ""])
    return out


def sample_users(ws: Workspace, k: int) -> list[str]:
    from sqlalchemy import text

    with make_engine(ws.events_url).connect() as c:
        users = list(c.execute(text("SELECT DISTINCT user_id FROM events")).scalars())
    random.Random(3).shuffle(users)
    return users[:k] if k else users


def run_profile(profile: str, n_events: int, peer: bool) -> dict[str, Any]:
    path, n_users = csv_for(n_events)
    root = DATA / f"ws-{profile}-{n_events}"
    shutil.rmtree(root, ignore_errors=True)
    if profile == "embedded":
        ws = make_workspace(root, SETTINGS)
    else:
        ws = make_pg_redis_workspace(root, "bench_fs", SETTINGS)
    out: dict[str, Any] = {"profile": profile, "events": n_events, "users": n_users}
    engine = make_engine(ws.events_url)
    try:
        t = time.perf_counter()
        rep = import_file(engine, path, progress=True)
        out["ingest_s"] = round(time.perf_counter() - t, 2)
        out["ingest_rows_per_s"] = round(rep.rows_read / out["ingest_s"])
        out["ingest_method"] = rep.method
        out["events_added"] = rep.rows_added
        apply(ws)
        gc.collect()
        t = time.perf_counter()
        info = build_snapshot(ws, engine)
        out["build_s"] = round(time.perf_counter() - t, 2)
        out["feature_rows"] = info.rows
        gc.collect()
        mat = materialize(ws, engine=engine, progress=True)
        out["materialize_s"] = mat.seconds
        out["materialize_rows_per_s"] = mat.rows_per_s
        out["online_users"] = mat.users_written

        users = sample_users(ws, 20_000)
        rng = random.Random(5)
        ones = [[rng.choice(users)] for _ in range(LOOKUPS_1)]
        sixty4 = [rng.sample(users, 64) for _ in range(LOOKUPS_64)]
        reader = online_reader(ws)
        store = get_store(ws)
        service = store.get_feature_service(ws.config.features.feature_service)
        out["lookup_seqrec_1"] = lat(reader.read, ones)
        out["lookup_seqrec_64"] = lat(reader.read, sixty4)
        out["lookup_feast_1"] = lat(lambda b: readers.online(store, service, b), ones)
        out["lookup_feast_64"] = lat(lambda b: readers.online(store, service, b), sixty4)
        check = reader.read(sixty4[0])
        assert check == readers.online(store, service, sixty4[0]), "readers disagree"

        # 1% new events: incremental refresh + materialization vs the full ones
        inc = increment_csv(path, max(1, n_events // 100), sample_users(ws, 0))
        import_file(engine, inc)
        t = time.perf_counter()
        refresh = ensure_snapshot(ws, engine)
        inc_mat = materialize(ws, incremental=True, engine=engine)
        out["incremental_s"] = round(time.perf_counter() - t, 2)
        out["incremental_users"] = inc_mat.users_written
        out["incremental_build_mode"] = refresh.mode
        out["incremental_share"] = round(
            out["incremental_s"] / (out["build_s"] + out["materialize_s"]), 4
        )
        if peer and profile == "postgres-redis":
            out["feast_materialize"] = feast_materialize(ws, n_users)
    finally:
        engine.dispose()
        if profile == "postgres-redis":
            drop_pg_redis_workspace(ws)
        shutil.rmtree(root, ignore_errors=True)
    return out


def feast_materialize(ws: Workspace, n_users: int) -> dict[str, Any]:
    """Feast's own materialize (postgres offline store -> Redis, pull_latest) on the same data."""
    store = get_store(ws)
    redis_online(ws).drop()
    end = datetime.now(UTC) + timedelta(days=1)
    t = time.perf_counter()
    store.materialize(start_date=datetime(1970, 1, 2, tzinfo=UTC), end_date=end)
    secs = time.perf_counter() - t
    return {"seconds": round(secs, 2), "rows_per_s": round(n_users / secs, 1)}


def fmt_lat(d: dict[str, float]) -> str:
    return f"{d['p50_ms']:.2f} / {d['p99_ms']:.2f}"


def plot(results: list[dict[str, Any]]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for profile, marker in (("embedded", "o"), ("postgres-redis", "s")):
        rs = sorted((r for r in results if r["profile"] == profile), key=lambda r: r["events"])
        if not rs:
            continue
        x = [r["events"] / 1e6 for r in rs]
        axes[0].plot(x, [r["ingest_s"] for r in rs], marker=marker, label=profile)
        axes[1].plot(x, [r["build_s"] for r in rs], marker=marker, label=profile)
        axes[2].plot(x, [r["materialize_s"] for r in rs], marker=marker, label=profile)
    for ax, title in zip(axes, ("ingest (s)", "feature build (s)", "materialize (s)"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("events (millions)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    report.IMG.mkdir(parents=True, exist_ok=True)
    path = report.IMG / "feature_store.png"
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000000,5000000,10000000")
    ap.add_argument("--embedded-max", type=int, default=1_000_000)
    ap.add_argument("--no-peer", action="store_true", help="skip Feast's own materialize")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    for n in sizes:
        for profile in ("embedded", "postgres-redis"):
            if profile == "embedded" and n > args.embedded_max:
                continue
            print(f"== {profile}, {n:,} events", file=sys.stderr)
            r = run_profile(profile, n, peer=not args.no_peer and n <= 5_000_000)
            print(r, file=sys.stderr)
            results.append(r)
    payload = {"machine": report.machine(), "results": results}
    report.save_json("feature_store", payload)
    img = plot(results)
    rows = []
    for r in results:
        ratio1 = r["lookup_seqrec_1"]["p50_ms"] / r["lookup_feast_1"]["p50_ms"]
        ratio64 = r["lookup_seqrec_64"]["p50_ms"] / r["lookup_feast_64"]["p50_ms"]
        peer = r.get("feast_materialize")
        rows.append(
            [
                r["profile"],
                f"{r['events']:,}",
                f"{r['users']:,}",
                f"{r['ingest_rows_per_s']:,} ({r['ingest_method']})",
                f"{r['build_s']:.1f}",
                f"{r['materialize_rows_per_s']:,.0f}"
                + (f" (Feast: {peer['rows_per_s']:,.0f})" if peer else ""),
                f"{fmt_lat(r['lookup_seqrec_1'])} ({ratio1:.2f}x Feast)",
                f"{fmt_lat(r['lookup_seqrec_64'])} ({ratio64:.2f}x Feast)",
                f"{fmt_lat(r['lookup_feast_1'])}; {fmt_lat(r['lookup_feast_64'])}",
                f"{r['incremental_s']:.2f} s = {100 * r['incremental_share']:.1f}%",
            ]
        )
    md = "\n".join(
        [
            "## Feature store: ingest, build, materialize, lookups (`bench/feature_store.py`)",
            "",
            report.machine_line(payload["machine"]),
            "",
            f"Synthetic logs, {EVENTS_PER_USER} events per user on average, {ITEMS:,} items, "
            f"sequences of L={MAX_LEN} (3 arrays + 4 scalars per user online). Ingest: "
            "`import_file` of a CSV (SQLite inserts; PostgreSQL COPY). Build: full SQL window "
            "build. Materialize: users written per second into the online store (embedded: "
            "Feast `write_to_online_store` into SQLite; postgres-redis: seqrec's Redis writer in "
            "Feast's layout; in brackets Feast's own `materialize` from its postgres offline "
            "store into the same Redis, pull_latest on). Lookups: p50 / p99 ms of one process "
            "calling the reader (1 user; 64 users), seqrec's next to Feast's "
            "`get_online_features` on the same store. Incremental: after 1% new events, "
            "feature refresh + incremental materialization, and its share of a full build + "
            "materialization. The embedded profile holds per-event sequences as Python lists "
            "in memory, so it runs only at the smallest size.",
            "",
            report.table(
                [
                    "profile",
                    "events",
                    "users",
                    "ingest rows/s",
                    "build s",
                    "materialize users/s",
                    "lookup 1 (seqrec)",
                    "lookup 64 (seqrec)",
                    "Feast lookup 1; 64",
                    "incremental (1% new)",
                ],
                rows,
            ),
            "",
            f"![cost growth](img/{img.name})" if img else "",
        ]
    )
    report.write_section("feature-store", md)
    print(md)


if __name__ == "__main__":
    main()
