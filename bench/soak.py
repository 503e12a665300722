"""Soak: `seqrec serve` under steady load for minutes, through a Redis outage and a promotion.

Setup (bench/data/soak, rebuilt on each run): a postgres-redis workspace in a PostgreSQL schema
of its own (dropped at the end) whose online store is a PRIVATE ``redis-server`` on a free port
(the machine's shared Redis is never touched); a small synthetic log; two small models trained
before the soak (the first promoted to ``stage=production``); `seqrec serve --model
stage=production` following the label every 2 s. Then bench/loadgen.py, a separate process,
keeps closed-loop clients on POST /recommend (known users only) for the whole run while:

- at the middle of the run the private Redis is stopped for 60 s (at most a fifth of the run),
  started again on the same port, empty, and re-materialized (``materialize``), as an operator
  would;
- at 85% of the run the second model is promoted; the service hot-reloads it.

A sampler reads, every second: RSS, file descriptors and threads of the server's process tree,
the service's ``/status`` and ``seqrec_fallbacks_total`` on ``/metrics``, and one probe request
whose body says whether it is a fallback. Reported: the error budget outside and inside the
outage window (the stop until the service reports the store up again), the fallback share
during the outage, p50/p99 before, during and after it, RSS growth after warm-up, descriptors
and threads at the end against the start, and a pass/fail table (exit code 1 if a target fails).
Writes bench/results/soak.json, bench/results/soak_rss.png and the "soak" section of
docs/benchmarks.md (``--out DIR`` or ``--quick``: all three into a directory instead).

    python bench/soak.py                          # 10 minutes, the published run
    python bench/soak.py --quick                  # 2-minute smoke run into bench/data/soak-quick
    python bench/soak.py --quick --minutes 1 --out /tmp/soak
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report

NAME = "soak"
DATA = report.ROOT / "bench" / "data" / "soak"
QUICK_OUT = report.ROOT / "bench" / "data" / "soak-quick"
#: the targets of the soak issue
MAX_RSS_GROWTH_PCT = 10.0
MIN_OUTAGE_FALLBACK_SHARE = 0.95
RELOAD_POLL_S = 2.0
SIZES = {"full": {"users": 500, "items": 200}, "quick": {"users": 150, "items": 60}}


@dataclass(frozen=True)
class Schedule:
    """When things happen, in seconds since the load started."""

    total_s: float
    warmup_s: float
    outage_at_s: float
    outage_s: float
    promote_at_s: float
    window_s: float  # start and end levels: medians over this long after warm-up / at the end

    @classmethod
    def of(cls, minutes: float, outage_s: float | None) -> Schedule:
        total = minutes * 60
        outage = min(outage_s if outage_s is not None else 60.0, 0.2 * total)
        return cls(
            total_s=total,
            warmup_s=min(60.0, 0.1 * total),
            outage_at_s=0.5 * total - outage / 2,
            outage_s=outage,
            promote_at_s=0.85 * total,
            window_s=min(10.0, 0.05 * total),
        )


# -- setup --------------------------------------------------------------------------------------


def require_services() -> None:
    """PostgreSQL must answer and ``redis-server`` must be installed, else a clear exit."""
    if shutil.which("redis-server") is None:
        raise SystemExit("soak: redis-server is not installed (apt-get install redis-server)")
    import psycopg

    from seqrec.testing import PG_URL

    try:
        psycopg.connect(PG_URL.replace("+psycopg", ""), connect_timeout=3).close()
    except Exception as exc:
        raise SystemExit(f"soak: PostgreSQL at {PG_URL} does not answer: {exc}") from None


def build_workspace(redis_url: str, users: int, items: int, model: str, epochs: int) -> Any:
    """The workspace, its data online, model A in production and model B stored.
    Returns (workspace, tag A, tag B, the users online)."""
    from seqrec.features.materialize import materialize
    from seqrec.features.repo import apply
    from seqrec.pipeline import train_model
    from seqrec.promotion import promote
    from seqrec.testing import load_synth, make_pg_redis_workspace

    shutil.rmtree(DATA, ignore_errors=True)
    extra = (
        f'[features]\nredis_url = "{redis_url}"\n\n[train]\nnum_threads = 1\n\n'
        f"[serve]\nthreads = 1\nreload_poll_s = {RELOAD_POLL_S}\n"
    )
    ws = make_pg_redis_workspace(DATA / "ws", f"soak_{os.getpid()}", extra)
    os.environ["BENTOML_HOME"] = str(ws.model_store)
    load_synth(ws, users=users, items=items)
    apply(ws)
    materialize(ws)
    a = train_model(ws, model, seed=0, epochs=epochs, progress=False)
    b = train_model(ws, model, seed=1, epochs=epochs, progress=False)
    promote(ws, a.tag, "stage=production", reason="bench/soak.py: the model the soak starts with")
    from sqlalchemy import text

    with ws.engine.connect() as conn:
        online = sorted(conn.execute(text("SELECT DISTINCT user_id FROM events")).scalars())
    return ws, a.tag, b.tag, online


def start_server(ws: Any, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`seqrec serve --model stage=production` in its own process group."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SEQREC_PROJECT", "SEQREC_MODEL", "SEQREC_API_TOKEN")
    }
    env["BENTOML_DO_NOT_TRACK"] = "True"
    exe = str(Path(sys.executable).parent / "seqrec")
    cmd = [exe, "serve", "--project", str(ws.root), "--model", "stage=production"]
    with log.open("wb") as out:
        return subprocess.Popen(
            [*cmd, "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"soak: seqrec serve exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"soak: not ready after {timeout_s:.0f}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def stop_group(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def service_versions(ws: Any) -> dict[str, str]:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    from sqlalchemy import text

    with ws.engine.connect() as conn:
        pg = str(conn.execute(text("SHOW server_version")).scalar()).split()[0]
    return {"redis-server": out.split()[2].removeprefix("v=") if out else "?", "postgresql": pg}


# -- sampling -----------------------------------------------------------------------------------


_FALLBACK_LINE = re.compile(r"^seqrec_fallbacks_total\{[^}]*\}\s+(\S+)$", re.M)


def fallbacks_total(client: Any, url: str) -> float:
    """``seqrec_fallbacks_total`` summed over its reasons."""
    return sum(float(v) for v in _FALLBACK_LINE.findall(client.get(f"{url}/metrics").text))


def _busy(t: Any) -> float:
    """System-wide busy CPU seconds from ``psutil.cpu_times()`` (guest time is in user)."""
    return float(sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq")))


class Sampler(threading.Thread):
    """Once a second: the server tree's RSS, fds and threads, /status, the fallback counter, a
    probe request (is its answer a fallback?), and CPU used by this run and by the machine."""

    def __init__(self, url: str, server_pid: int, probe_user: str):
        super().__init__(name="soak-sampler", daemon=True)
        self.url, self.server_pid, self.probe_user = url, server_pid, probe_user
        self.samples: list[dict[str, Any]] = []
        self.probes: list[dict[str, Any]] = []
        self.ours_cpu: dict[int, float] = {}  # pid -> user+system seconds, last seen
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def server_tree(self) -> list[Any]:
        import psutil

        try:
            root = psutil.Process(self.server_pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_snapshot(self) -> tuple[float, float]:
        """(CPU seconds of this process and all its descendants, system-wide busy seconds)."""
        import psutil

        me = psutil.Process()
        for p in [me, *me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                self.ours_cpu[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return sum(self.ours_cpu.values()), _busy(psutil.cpu_times())

    def sample(self, client: Any) -> dict[str, Any]:
        import psutil

        s: dict[str, Any] = {"t": time.time(), "rss_mb": 0.0, "fds": 0, "threads": 0, "procs": 0}
        for p in self.server_tree():
            try:
                with p.oneshot():
                    s["rss_mb"] += p.memory_info().rss / 2**20
                    s["fds"] += p.num_fds()
                    s["threads"] += p.num_threads()
                    s["procs"] += 1
            except psutil.Error:
                pass
        s["rss_mb"] = round(s["rss_mb"], 2)
        s["ours_cpu_s"], s["busy_cpu_s"] = self.cpu_snapshot()
        try:
            st = client.get(f"{self.url}/status").json()
            s["online_store"], s["model"] = st.get("online_store"), st.get("model")
            s["fallbacks"] = fallbacks_total(client, self.url)
        except Exception as exc:  # a sampler that dies would hide the rest of the run
            s["error"] = f"{type(exc).__name__}: {exc}"
        t0 = time.time()
        try:
            r = client.post(f"{self.url}/recommend", json={"user_id": self.probe_user, "k": 5})
            fb = r.json().get("fallback") if r.status_code == 200 else None
            self.probes.append({"t": t0, "end": time.time(), "status": r.status_code, "fb": fb})
        except Exception as exc:
            self.probes.append({"t": t0, "end": time.time(), "status": 0, "error": str(exc)})
        return s

    def run(self) -> None:
        import httpx

        with httpx.Client(timeout=10) as client:
            while not self._halt.is_set():
                t0 = time.monotonic()
                self.samples.append(self.sample(client))
                self._halt.wait(max(0.0, 1.0 - (time.monotonic() - t0)))


# -- the run ------------------------------------------------------------------------------------


def soak(args: argparse.Namespace, sched: Schedule) -> dict[str, Any]:
    """Set up, run the schedule under load, tear down; returns the raw measurements."""
    from tqdm import tqdm

    from seqrec.features.materialize import materialize
    from seqrec.promotion import promote
    from seqrec.testing import RedisServer, drop_pg_redis_workspace, free_port

    size = SIZES["quick" if args.quick else "full"]
    redis = RedisServer().start()
    os.environ["SEQREC_REDIS_URL"] = redis.url  # over any outer setting: never the shared Redis
    ws: Any = None
    server: subprocess.Popen[bytes] | None = None
    gen: subprocess.Popen[str] | None = None
    sampler: Sampler | None = None
    try:
        t_setup = time.perf_counter()
        ws, tag_a, tag_b, users = build_workspace(
            redis.url, size["users"], size["items"], args.model, args.epochs
        )
        print(
            f"setup {time.perf_counter() - t_setup:.0f}s: {len(users)} users online, "
            f"production {tag_a}, to promote {tag_b}; Redis on port {redis.port}",
            file=sys.stderr,
        )
        versions = service_versions(ws)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = DATA / "serve.log"
        server = start_server(ws, port, log)
        t_ready = time.perf_counter()
        wait_ready(url, server, log)
        print(f"server ready in {time.perf_counter() - t_ready:.0f}s", file=sys.stderr)
        bodies = DATA / "bodies.json"
        bodies.write_text(json.dumps([{"user_id": u, "k": 10} for u in users]))
        timeline = DATA / "timeline.jsonl"
        sampler = Sampler(url, server.pid, users[0])
        load_avg_before = os.getloadavg()
        loadgen = str(Path(__file__).with_name("loadgen.py"))
        gen = subprocess.Popen(
            [sys.executable, loadgen, url, "/recommend", str(bodies), str(args.concurrency),
             str(10**9), "--duration", str(sched.total_s), "--timeline", str(timeline)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        t0 = time.time()
        sampler.start()
        events: dict[str, float] = {"load_start": t0}
        outage: dict[str, Any] = {}
        todo = [(sched.outage_at_s, "outage"), (sched.promote_at_s, "promote")]
        with tqdm(total=round(sched.total_s), unit="s", desc="soak", file=sys.stderr) as bar:

            def tick(phase: str) -> None:
                last = sampler.samples[-1] if sampler.samples else {}
                bar.set_postfix_str(
                    f"{phase}; RSS {last.get('rss_mb', 0):.0f} MB, store "
                    f"{last.get('online_store', '?')}, model {last.get('model', '?')}"
                )
                bar.n = min(round(time.time() - t0), bar.total)
                bar.refresh()

            while (now := time.time() - t0) < sched.total_s:
                if todo and now >= todo[0][0]:
                    if todo.pop(0)[1] == "outage":
                        outage = redis_outage(redis, ws, url, sched.outage_s, tick, materialize)
                    else:
                        events["promote"] = time.time()
                        promote(ws, tag_b, "stage=production", reason="bench/soak.py: under load")
                tick("promoted" if "promote" in events else "recovered" if outage else "steady")
                nxt = todo[0][0] if todo else sched.total_s
                time.sleep(max(0.0, min(1.0, nxt - (time.time() - t0))))
        out, _ = gen.communicate(timeout=120)
        events["load_end"] = time.time()
        sampler.stop()
        summary = json.loads(out)
        load_avg_after = os.getloadavg()
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        if gen is not None and gen.poll() is None:
            gen.terminate()
            gen.wait(timeout=30)
        if server is not None:
            stop_group(server)
        if ws is not None:
            try:
                drop_pg_redis_workspace(ws)
            except Exception as exc:
                print(f"soak: could not clean up the workspace: {exc}", file=sys.stderr)
        redis.stop()
    rows = [json.loads(line) for line in timeline.read_text().splitlines() if line.strip()]
    return {
        "schedule": asdict(sched),
        "events": events,
        "outage": outage,
        "tags": {"start": tag_a, "promoted": tag_b},
        "loadgen": summary,
        "timeline": rows,
        "samples": sampler.samples,
        "probes": sampler.probes,
        "versions": versions,
        "users": len(users),
        "items": size["items"],
        "load_average_before": [round(x, 2) for x in load_avg_before],
        "load_average_after": [round(x, 2) for x in load_avg_after],
    }


def redis_outage(
    redis: Any, ws: Any, url: str, outage_s: float, tick: Any, materialize: Any
) -> dict[str, Any]:
    """Stop the private Redis for ``outage_s``, start it on the same port, re-materialize, and
    wait until the service reports the store up. Fallback counts are read at stop and start."""
    import httpx

    with httpx.Client(timeout=10) as client:
        out: dict[str, Any] = {"fallbacks_at_stop": fallbacks_total(client, url)}
        out["stop"] = time.time()
        redis.stop()
        while (left := out["stop"] + outage_s - time.time()) > 0:
            tick(f"Redis down, {left:.0f}s left")
            time.sleep(min(1.0, left))
        out["fallbacks_at_start"] = fallbacks_total(client, url)
        out["start"] = time.time()
        redis.start()
        out["materialize_s"] = round(materialize(ws).seconds, 3)
        out["filled"] = time.time()
        tick("Redis back, waiting for the service")
        deadline = time.monotonic() + 60
        while not (up := client.get(f"{url}/status").json().get("online_store") == "ok"):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        out["recovered"], out["recovered_ok"] = time.time(), up
    return out


# -- analysis -----------------------------------------------------------------------------------


def _pct(xs: Any, q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 2) if len(xs) else None


def _median(samples: list[dict[str, Any]], key: str, lo: float, hi: float) -> float | None:
    xs = [s[key] for s in samples if lo <= s["t"] <= hi and s.get("procs")]
    return float(np.median(xs)) if xs else None


def analyse(raw: dict[str, Any]) -> dict[str, Any]:
    """Error budget, fallback share, latency by phase, resources, CPU sharing; then checks."""
    sched = Schedule(**raw["schedule"])
    ev, out, tags = raw["events"], raw["outage"], raw["tags"]
    t0, t_end = ev["load_start"], ev["load_start"] + sched.total_s
    tl = raw["timeline"]
    t = np.array([r["t"] for r in tl], dtype=float)
    ms = np.array([r["ms"] for r in tl], dtype=float)
    ok = np.array([r["status"] == 200 for r in tl], dtype=bool)
    done = t + ms / 1000
    lo, hi = out["stop"], out["recovered"]
    inside = (t >= lo) & (t <= hi)
    # connection errors never got an answer, so the timeline has no time for them: they are
    # counted outside the outage, where the target is zero
    unplaced = int(raw["loadgen"]["errors"] - (len(tl) - ok.sum()))
    # the sampler's probe requests count too
    p_in = [lo <= p["t"] <= hi for p in raw["probes"]]
    p_bad = [p["status"] != 200 for p in raw["probes"]]
    budget = {
        "outside": {
            "total": int((~inside).sum()) + unplaced + p_in.count(False),
            "failed": int((~inside & ~ok).sum())
            + unplaced
            + sum(b for i, b in zip(p_in, p_bad, strict=True) if not i),
            "connection_errors": unplaced,
        },
        "inside": {
            "total": int(inside.sum()) + p_in.count(True),
            "failed": int((inside & ~ok).sum())
            + sum(b for i, b in zip(p_in, p_bad, strict=True) if i),
        },
    }
    for part in budget.values():
        part["rate"] = part["failed"] / part["total"] if part["total"] else 0.0
    phases = {
        "before": (t >= t0 + sched.warmup_s) & (t < lo),
        "during": inside,
        "after": t > hi,
    }
    latency = {
        name: {"requests": int(m.sum()), "p50_ms": _pct(ms[m], 50), "p99_ms": _pct(ms[m], 99)}
        for name, m in phases.items()
    }
    # fallback share while Redis was down: the counter's growth between the two scrapes over
    # the answers completed in between (the load generator's and the sampler's probes)
    down = (done >= out["stop"]) & (done <= out["start"]) & ok
    probes = [p for p in raw["probes"] if out["stop"] <= p["end"] <= out["start"]]
    answered = int(down.sum()) + sum(p["status"] == 200 for p in probes)
    fb = out["fallbacks_at_start"] - out["fallbacks_at_stop"]
    outage = {
        "down_s": round(out["start"] - out["stop"], 1),
        "window_s": round(hi - lo, 1),
        "materialize_s": out["materialize_s"],
        "recovery_after_start_s": round(hi - out["start"], 2),
        "recovered": bool(out["recovered_ok"]),
        "answers_while_down": answered,
        "fallbacks_while_down": int(fb),
        "fallback_share": round(fb / answered, 4) if answered else None,
        "probe_answers_while_down": sum(p["status"] == 200 for p in probes),
        "probe_fallbacks_while_down": sum(p.get("fb") is True for p in probes),
    }
    models = [r["model"] for r in tl]
    after_prom = [d for d, m in zip(done, models, strict=True) if m == tags["promoted"]]
    prom = ev.get("promote")
    first_new = min((d for d in after_prom if prom is not None and d >= prom), default=None)
    old_after = sum(
        1 for s, m in zip(t, models, strict=True)
        if first_new is not None and s > first_new + 1 and m == tags["start"]
    )  # fmt: skip
    promotion = {
        "promoted": tags["promoted"],
        "at_s": round(prom - t0, 1) if prom else None,
        "switch_s": round(first_new - prom, 2) if first_new and prom else None,
        "old_model_answers_1s_after_switch": old_after,
    }
    samples = raw["samples"]
    w0, w1 = t0 + sched.warmup_s, t0 + sched.warmup_s + sched.window_s
    e0, e1 = t_end - sched.window_s, t_end
    res = {
        key: {"start": _median(samples, key, w0, w1), "end": _median(samples, key, e0, e1)}
        for key in ("rss_mb", "fds", "threads", "procs")
    }
    rss = res["rss_mb"]
    rss["peak"] = max((s["rss_mb"] for s in samples), default=None)
    rss["growth_pct"] = (
        round(100 * (rss["end"] - rss["start"]) / rss["start"], 2)
        if rss["start"] and rss["end"] is not None
        else None
    )
    inside_load = [s for s in samples if t0 <= s["t"] <= t_end]
    cpu: dict[str, Any] = {"cores": os.cpu_count()}
    if len(inside_load) >= 2:
        a, b = inside_load[0], inside_load[-1]
        secs = b["t"] - a["t"]
        ours = b["ours_cpu_s"] - a["ours_cpu_s"]
        others = max(0.0, (b["busy_cpu_s"] - a["busy_cpu_s"]) - ours)
        cpu |= {"this_run_cores": round(ours / secs, 2), "other_cores": round(others / secs, 2)}
    measured = {
        "error_budget": budget,
        "latency": latency,
        "outage": outage,
        "promotion": promotion,
        "resources": res,
        "cpu": cpu,
        "rps": raw["loadgen"]["rps"],
        "requests": len(tl) + unplaced,
        "status": raw["loadgen"]["status"],
    }
    return measured | {"checks": checks(measured)}


def checks(m: dict[str, Any]) -> list[dict[str, Any]]:
    """The soak's targets, each with what was measured and whether it passed."""
    out, inn = m["error_budget"]["outside"], m["error_budget"]["inside"]
    share = m["outage"]["fallback_share"]
    res, rss = m["resources"], m["resources"]["rss_mb"]

    def level(key: str) -> tuple[str, bool]:
        a, b = res[key]["start"], res[key]["end"]
        if a is None or b is None:
            return "not sampled", False
        return f"{a:g} -> {b:g}", b <= a

    fds, fds_ok = level("fds")
    thr, thr_ok = level("threads")
    sw = m["promotion"]["switch_s"]
    growth = rss["growth_pct"]
    return [
        {
            "check": "failed requests outside the outage",
            "target": "0",
            "measured": f"{out['failed']} of {out['total']:,}",
            "passed": out["failed"] == 0,
        },
        {
            "check": "answers during the outage",
            "target": f"0 failed, fallback share >= {MIN_OUTAGE_FALLBACK_SHARE:.0%}",
            "measured": f"{inn['failed']} failed of {inn['total']:,}, fallback share "
            + ("-" if share is None else f"{share:.1%}"),
            "passed": inn["failed"] == 0 and share is not None
            and share >= MIN_OUTAGE_FALLBACK_SHARE,
        },
        {
            "check": "service back on the store after Redis returned",
            "target": "store reported up",
            "measured": f"{m['outage']['recovery_after_start_s']:g} s after the restart"
            if m["outage"]["recovered"]
            else "still degraded after 60 s",
            "passed": m["outage"]["recovered"],
        },
        {
            "check": "RSS growth after warm-up",
            "target": f"< {MAX_RSS_GROWTH_PCT:g}%",
            "measured": "-" if growth is None else f"{growth:+.1f}% ({rss['start']:.0f} -> "
            f"{rss['end']:.0f} MB)",
            "passed": growth is not None and growth < MAX_RSS_GROWTH_PCT,
        },
        {"check": "file descriptors, end vs start", "target": "no growth", "measured": fds,
         "passed": fds_ok},
        {"check": "threads, end vs start", "target": "no growth", "measured": thr,
         "passed": thr_ok},
        {
            "check": "promoted model hot-reloaded",
            "target": "answers by the new model",
            "measured": "never" if sw is None else f"first answer {sw:g} s after the promotion",
            "passed": sw is not None,
        },
    ]  # fmt: skip


# -- output -------------------------------------------------------------------------------------


def plot(payload: dict[str, Any], path: Path) -> None:
    """RSS of the server's process tree over time, descriptors and threads below; the outage
    shaded, the promotion and the end of warm-up marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev, out, sched = payload["events"], payload["outage_times"], payload["schedule"]
    t0 = ev["load_start"]
    end = t0 + sched["total_s"]
    s = [x for x in payload["samples"] if x.get("procs") and x["t"] <= end]
    x = [v["t"] - t0 for v in s]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True,
                                      gridspec_kw={"height_ratios": [2, 1]})  # fmt: skip
    top.plot(x, [v["rss_mb"] for v in s], color="tab:blue", lw=1.2, label="RSS, server tree")
    bottom.plot(x, [v["fds"] for v in s], color="tab:green", lw=1, label="file descriptors")
    bottom.plot(x, [v["threads"] for v in s], color="tab:purple", lw=1, label="threads")
    for ax in (top, bottom):
        if out:
            ax.axvspan(out["stop"] - t0, out["recovered"] - t0, color="tab:red", alpha=0.15,
                       label="Redis outage" if ax is top else None)  # fmt: skip
        if ev.get("promote"):
            ax.axvline(ev["promote"] - t0, color="tab:orange", ls="-", lw=1.5,
                       label="promotion" if ax is top else None)  # fmt: skip
        ax.axvline(sched["warmup_s"], color="grey", ls="--", lw=1,
                   label="end of warm-up" if ax is top else None)  # fmt: skip
        ax.grid(alpha=0.3)
    top.set_ylabel("RSS (MB)")
    growth = payload["measured"]["resources"]["rss_mb"]["growth_pct"]
    top.set_title(
        "seqrec serve under steady load: RSS "
        + ("" if growth is None else f"{growth:+.1f}% after warm-up")
        + ", descriptors, threads"
    )
    top.legend(loc="lower right", fontsize=8)
    bottom.set_ylabel("count")
    bottom.set_xlabel("seconds since the load started")
    bottom.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(p: dict[str, Any], plot_path: str) -> str:
    sched, m, setup = p["schedule"], p["measured"], p["setup"]
    o, pr = m["outage"], m["promotion"]
    rows = [
        [c["check"], c["target"], c["measured"], "pass" if c["passed"] else "**FAIL**"]
        for c in m["checks"]
    ]
    lat = [
        [name, f"{v['requests']:,}", v["p50_ms"], v["p99_ms"]] for name, v in m["latency"].items()
    ]
    b, rss = m["error_budget"], m["resources"]["rss_mb"]
    out = [
        "## Soak (bench/soak.py)",
        "",
        f"`seqrec serve --model stage=production` on the postgres-redis profile (a private "
        f"redis-server {setup['versions']['redis-server']}, PostgreSQL "
        f"{setup['versions']['postgresql']}), {setup['users']} users online, {setup['items']} "
        f"items, {setup['model']} ({setup['epochs']} epoch{'s' * (setup['epochs'] != 1)}), under "
        f"{setup['concurrency']} "
        f"closed-loop clients (bench/loadgen.py) on POST /recommend for "
        f"{sched['total_s'] / 60:g} min: {m['requests']:,} requests, {m['rps']} req/s. "
        f"Redis was stopped for {o['down_s']:g} s at {sched['outage_at_s']:g} s, started again "
        f"empty on the same port and re-materialized ({o['materialize_s']:g} s); the service "
        f"reported the store up {o['recovery_after_start_s']:g} s after the start. At "
        f"{pr['at_s']} s a second model was promoted (the service polls the label every "
        f"{setup['reload_poll_s']:g} s). Warm-up: the first {sched['warmup_s']:g} s; start and "
        f"end levels are medians over {sched['window_s']:g} s after warm-up and at the end.",
        "",
        report.table(["check", "target", "measured", "result"], rows),
        "",
        f"Error budget: outside the outage window {b['outside']['failed']} failed of "
        f"{b['outside']['total']:,} ({b['outside']['rate']:.4%}); inside it "
        f"({o['window_s']:g} s, the stop until the service reports the store up) "
        f"{b['inside']['failed']} failed of {b['inside']['total']:,} ({b['inside']['rate']:.4%}). "
        f"While Redis was down {o['fallbacks_while_down']:,} of {o['answers_while_down']:,} "
        f"answers were the popularity fallback (`seqrec_fallbacks_total`); the sampler's probe "
        f'said `"fallback": true` in {o["probe_fallbacks_while_down"]} of '
        f"{o['probe_answers_while_down']} answers.",
        "",
        report.table(["phase", "requests", "p50 (ms)", "p99 (ms)"], lat),
        "",
        f"Server process tree ({m['resources']['procs']['end']:g} processes, RSS summed): "
        f"{rss['start']:.0f} -> {rss['end']:.0f} MB after warm-up (peak {rss['peak']:.0f} MB); "
        f"the new model answered "
        f"{pr['switch_s']} s after its promotion. Plot: `{plot_path}`.",
        "",
    ]
    cpu = m["cpu"]
    if p.get("note") or cpu.get("other_cores", 0) >= 0.2:
        shared = (
            f"other processes used {cpu['other_cores']:g} of {cpu['cores']} cores on average "
            f"(this run {cpu.get('this_run_cores')})"
        )
        out += [f"**CPU shared:** {shared}. {p.get('note', '')}".rstrip(), ""]
    out.append(report.machine_line(p["machine"]))
    return "\n".join(out)


def write_outputs(payload: dict[str, Any], out_dir: Path | None) -> Path:
    """JSON, plot and page section: the published places, or all three into ``out_dir``."""
    if out_dir is None:
        png = report.RESULTS / f"{NAME}_rss.png"
        plot(payload, png)
        report.save_json(NAME, payload)
        report.write_section(NAME, markdown(payload, f"bench/results/{png.name}"))
        return report.RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(payload, out_dir / f"{NAME}_rss.png")
    text = json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"
    (out_dir / f"{NAME}.json").write_text(text)
    md = markdown(payload, str(out_dir / f"{NAME}_rss.png"))
    (out_dir / "benchmarks.md").write_text(md + "\n")
    return out_dir


def print_summary(payload: dict[str, Any]) -> None:
    m = payload["measured"]
    rows = [
        [c["check"], c["target"], c["measured"], "pass" if c["passed"] else "FAIL"]
        for c in m["checks"]
    ]
    print(report.table(["check", "target", "measured", "result"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    ap.add_argument("--minutes", type=float, default=None, help="length (default 10; --quick 2)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 minutes, a smaller workspace, output to bench/data/soak-quick")  # fmt: skip
    ap.add_argument("--outage-s", type=float, default=None,
                    help="Redis outage length (default 60, at most a fifth of the run)")  # fmt: skip
    ap.add_argument("--concurrency", type=int, default=4, help="load generator clients")
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None,
                    help="write soak.json, soak_rss.png and benchmarks.md here instead")  # fmt: skip
    ap.add_argument("--note", default="", help="conditions to record (e.g. other load)")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the page and the plot from bench/results/soak.json")  # fmt: skip
    args = ap.parse_args()
    if args.report_only:
        payload = json.loads((report.RESULTS / f"{NAME}.json").read_text())
        write_outputs(payload, args.out)
        print_summary(payload)
        return
    minutes = args.minutes if args.minutes is not None else (2.0 if args.quick else 10.0)
    if minutes <= 0 or (args.outage_s is not None and args.outage_s <= 0):
        raise SystemExit("soak: --minutes and --outage-s must be positive")
    sched = Schedule.of(minutes, args.outage_s)
    require_services()
    import torch

    torch.set_num_threads(1)
    machine = report.machine()
    raw = soak(args, sched)
    payload = {
        "machine": machine,
        "note": args.note,
        "quick": args.quick,
        "setup": {
            "users": raw["users"],
            "items": raw["items"],
            "model": args.model,
            "epochs": args.epochs,
            "concurrency": args.concurrency,
            "reload_poll_s": RELOAD_POLL_S,
            "versions": raw["versions"],
            "tags": raw["tags"],
        },
        "schedule": raw["schedule"],
        "events": raw["events"],
        "outage_times": raw["outage"],
        "load_average_before": raw["load_average_before"],
        "load_average_after": raw["load_average_after"],
        "loadgen": raw["loadgen"],
        "measured": analyse(raw),
        "samples": raw["samples"],
        "probes": raw["probes"],
    }
    out_dir = args.out or (QUICK_OUT if args.quick else None)
    where = write_outputs(payload, out_dir)
    print_summary(payload)
    print(f"results in {where}", file=sys.stderr)
    if not all(c["passed"] for c in payload["measured"]["checks"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
