"""Cost growth with data size: ingest, feature build, materialization, one training epoch and
evaluation, for the postgres-redis and spark-redis profiles, at 1M, 10M and 50M events.

For each size a synthetic log is written as CSV by seqrec's generator
(:func:`seqrec.data.synth.write_csv`, the importer's schema: ``user_id, item_id, timestamp,
event_type, value``), with users and items growing with it: one user per
``EVENTS_PER_USER`` events, one item per ``EVENTS_PER_ITEM`` (1M events: 20,000 users and
10,000 items; 50M: 1,000,000 users and 500,000 items). Then, per profile, in a fresh
workspace (its own PostgreSQL schema and Redis key namespace), each stage is the command a
user runs, in its own process:

============  =================================================================================
ingest        ``seqrec events import events.csv`` (vectorised CSV read, PostgreSQL ``COPY``)
build         ``seqrec features build`` (postgres-redis: SQL window table; spark-redis: Parquet
              export of the events, Spark SQL)
materialize   ``seqrec features materialize`` (each user's newest row into Redis)
train         ``seqrec train --model gpt2 --epochs 1`` with ``[train] stream = true`` and
              ``loss = "sampled_logq"``: the training set through Feast's point-in-time join,
              written to Parquet and streamed, one epoch, validation, the model stored
evaluate      ``seqrec evaluate --sample-users 20000`` (a seeded sample of the test users, every
              one ranked by chunked top-k over the whole catalogue)
============  =================================================================================

What is measured per stage:

- ``seconds``: wall time of the command (the process's start, imports included);
- ``peak_rss_mb``: the command's own high-water mark (``ru_maxrss`` from ``wait4``);
- ``tree_peak_mb``: the largest sum of RSS over the command and its children, sampled every
  0.25 s (the spark-redis profile's JVM is a child of the command);
- ``postgres_peak_mb``: the largest sum of private memory (USS: shared buffers left out) of the
  PostgreSQL server processes that started during the command (its backends and parallel
  workers), sampled every 0.25 s; readable where the bench runs as root or as the server's
  user, otherwise absent;
- after materialization, ``online_store_mb``: Redis ``used_memory`` it added; after each
  profile, ``disk_mb``: its PostgreSQL schema plus its workspace directory.

A size that would not fit is skipped with the reason recorded: the disk it needs (extrapolated
linearly from the previous size's measured use, or ``DISK_PER_EVENT`` bytes per event before
any), the memory (the previous size's largest stage peak, extrapolated linearly) against the
machine's, or the time left of ``--max-hours`` (the previous size's total, extrapolated
linearly). Per profile and stage, a least-squares line through ``log(cost)`` against
``log(events)`` gives the exponent of the cost's growth (1.0: linear).

    python bench/scale.py                        # 1M, 10M, 50M: JSON, plot, docs section
    python bench/scale.py --sizes 1000000,5000000
    python bench/scale.py --quick                # 20k, 60k events: prints, nothing written
    python bench/scale.py --report-only          # docs section and plot from the JSON
    python bench/scale.py --sizes 10000000 --add # one more size beside the saved ones
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report

NAME = "scale"
FULL = [1_000_000, 10_000_000, 50_000_000]
QUICK = [20_000, 60_000]
PROFILES = ("postgres-redis", "spark-redis")
STAGES = ("ingest", "build", "materialize", "train", "evaluate")
#: the cost measures fitted and plotted per stage
MEASURES = ("seconds", "peak_rss_mb")
EVENTS_PER_USER = 50
EVENTS_PER_ITEM = 100
MIN_ITEMS = 500
MAX_LEN = 50
MODEL = "gpt2"
#: test users ``seqrec evaluate`` ranks (a seeded sample; every user up to 1M events): each is
#: ranked over the whole catalogue, so all of them would cost users x items, both growing
EVAL_USERS = 20_000
# the transition bias off (gpt2's defaults turn it on): the page's figures were measured
# without it, as the large-catalogue preset has it
PARAMS = {
    "loss": "sampled_logq",
    "num_negatives": 1024,
    "d_model": 64,
    "transition_bias": False,
}
TRAIN = {"epochs": 1, "batch_size": 256, "eval_batch_size": 512}
#: disk a size needs per event before any size was measured (CSV, events, feature rows, Parquet)
DISK_PER_EVENT = 2_000
SAMPLE_S = 0.25
DATA = report.ROOT / "bench" / "data" / "scale"
IMG_NAME = "scale.png"


# --------------------------------------------------------------------------------------------
# Fitting and reporting (no seqrec imports: tested on their own)


def fit_exponent(sizes: list[float], costs: list[float]) -> dict[str, float] | None:
    """Least squares of ``log(cost) = exponent * log(size) + log(coefficient)`` over the
    points with a positive size and cost; None with fewer than two distinct sizes."""
    pts = [(s, c) for s, c in zip(sizes, costs, strict=True) if s > 0 and c is not None and c > 0]
    if len({s for s, _ in pts}) < 2:
        return None
    x = np.log([s for s, _ in pts])
    y = np.log([c for _, c in pts])
    slope, intercept = np.polyfit(x, y, 1)
    return {
        "exponent": round(float(slope), 3),
        "coefficient": float(math.exp(intercept)),
        "points": len(pts),
    }


def series(res: dict[str, Any], profile: str, stage: str, measure: str) -> list[tuple[int, float]]:
    """(events, cost) of every measured size of ``profile``'s ``stage``."""
    out = []
    for entry in res["sizes"]:
        stage_res = entry.get("profiles", {}).get(profile, {}).get("stages", {}).get(stage, {})
        value = stage_res.get(measure)
        if isinstance(value, int | float) and value > 0:
            out.append((int(entry["events"]), float(value)))
    return out


def fits(res: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """{profile: {stage: {measure: fit or None}}} for every profile and stage."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for profile in res["config"]["profiles"]:
        out[profile] = {}
        for stage in STAGES:
            out[profile][stage] = {}
            for measure in MEASURES:
                pts = series(res, profile, stage, measure)
                out[profile][stage][measure] = fit_exponent(
                    [p[0] for p in pts], [p[1] for p in pts]
                )
    return out


def _exp(f: dict[str, Any] | None) -> str:
    return "n/a" if f is None else f"{f['exponent']:.2f}"


def plot(res: dict[str, Any], path: Path) -> Path | None:
    """A log-log plot of seconds and peak RSS against events, one line per stage, one row per
    profile, the fitted exponent in each label; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    profiles = res["config"]["profiles"]
    fitted = res.get("fits") or fits(res)
    fig, axes = plt.subplots(len(profiles), 2, figsize=(11, 3.8 * len(profiles)), squeeze=False)
    titles = {"seconds": "wall time (s)", "peak_rss_mb": "peak RSS of the process (MB)"}
    for row, profile in enumerate(profiles):
        for col, measure in enumerate(MEASURES):
            ax = axes[row][col]
            for stage in STAGES:
                pts = series(res, profile, stage, measure)
                if not pts:
                    continue
                f = fitted[profile][stage][measure]
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    marker="o",
                    label=f"{stage} (exponent {_exp(f)})",
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{profile}: {titles[measure]}")
            ax.set_xlabel("events")
            ax.grid(alpha=0.3, which="both")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _num(v: Any, fmt: str = "{:,.1f}") -> str:
    return fmt.format(v) if isinstance(v, int | float) else "–"


def _all_users_rank_s(ev: dict[str, Any]) -> float | None:
    """The evaluate stage's ranking seconds scaled from its sample to every test user."""
    if not isinstance(ev.get("rank_seconds"), int | float) or not ev.get("users"):
        return None
    return float(ev["rank_seconds"]) * (ev.get("sampled_from") or ev["users"]) / ev["users"]


def _stage_cell(s: dict[str, Any]) -> tuple[str, str, str, str]:
    if "seconds" not in s:
        why = s.get("skipped") or f"failed: {s.get('failed', '?')}"
        return why, "", "", ""
    return (
        _num(s["seconds"]),
        _num(s.get("peak_rss_mb"), "{:,.0f}"),
        _num(s.get("tree_peak_mb"), "{:,.0f}"),
        _num(s.get("postgres_peak_mb"), "{:,.0f}"),
    )


def markdown(res: dict[str, Any], machine: dict[str, Any], img: str | None) -> str:
    """The benchmarks page section: per size, profile and stage the costs; the fitted
    exponents; the skipped sizes and why."""
    c = res["config"]
    rows = []
    skipped = []
    for entry in res["sizes"]:
        if "skipped" in entry:
            skipped.append(f"- {entry['events']:,} events: skipped, {entry['skipped']}")
            continue
        for profile, pres in entry["profiles"].items():
            if "failed" in pres:
                skipped.append(f"- {entry['events']:,} events, {profile}: {pres['failed']}")
            for stage in STAGES:
                s = pres.get("stages", {}).get(stage, {"skipped": "not run"})
                rows.append([f"{entry['events']:,}", profile, stage, *_stage_cell(s)])
    fitted = res.get("fits") or fits(res)
    fit_rows = [
        [
            profile,
            stage,
            _exp(fitted[profile][stage]["seconds"]),
            _exp(fitted[profile][stage]["peak_rss_mb"]),
        ]
        for profile in c["profiles"]
        for stage in STAGES
    ]
    extra = []
    for entry in res["sizes"]:
        for profile, pres in entry.get("profiles", {}).items():
            extra.append(
                [
                    f"{entry['events']:,}",
                    profile,
                    _num(pres.get("online_store_mb")),
                    _num(pres.get("disk_mb"), "{:,.0f}"),
                    _num(pres.get("train", {}).get("seconds_per_epoch")),
                    _num(pres.get("evaluate", {}).get("rank_seconds")),
                    _num(_all_users_rank_s(pres.get("evaluate", {}))),
                ]
            )
    lines = [
        "## Cost growth with data size (`bench/scale.py`)",
        "",
        f"Synthetic logs (seqrec's generator), one user per {c['events_per_user']} events and "
        f"one item per {c['events_per_item']}; sequences of L={c['max_len']}. Each stage is the "
        "command a user runs, in its own process: `seqrec events import` (PostgreSQL COPY), "
        "`seqrec features build`, `seqrec features materialize`, `seqrec train --model "
        f'{c["model"]} --epochs 1` (`[train] stream = true`, `loss = "{c["params"]["loss"]}"`, '
        f"{c['params']['num_negatives']} negatives; training set, one epoch, validation, model "
        f"stored) and `seqrec evaluate --sample-users {c.get('eval_users', EVAL_USERS):,}` "
        "(a seeded sample of the test users, each ranked by chunked top-k over the whole "
        "catalogue: every test user would cost users x items, both growing with the log; the "
        "last column estimates it as the sample's ranking time x users / sample). Seconds: wall time "
        "of the command. Peak RSS: the command's own high-water mark (`ru_maxrss`); process "
        "tree: the largest sum of RSS over the command and its children, sampled every "
        f"{SAMPLE_S} s (the Spark JVM is one); PostgreSQL: the largest sum of private memory "
        "(USS, shared buffers left out) of the server processes that served the command.",
        "",
        report.table(
            [
                "events",
                "profile",
                "stage",
                "seconds",
                "peak RSS MB",
                "process tree MB",
                "PostgreSQL MB",
            ],
            rows,
        ),
        "",
        "Fitted exponents (least squares of log cost against log events; 1.0 is linear):",
        "",
        report.table(["profile", "stage", "time exponent", "peak RSS exponent"], fit_rows),
        "",
        report.table(
            [
                "events",
                "profile",
                "Redis MB added",
                "disk MB",
                "trainer s / epoch",
                "ranking s (evaluate)",
                "ranking s, every test user (estimate)",
            ],
            extra,
        ),
        "",
    ]
    if skipped:
        lines += [*skipped, ""]
    if img:
        lines += [f"![cost against events, log-log]({img})", ""]
    lines.append(report.machine_line(machine))
    for b in machine.get("earlier", []):
        sizes = ", ".join(f"{n:,}" for n in b["events"])
        lines[-1] += (
            f"  \n{sizes} events: measured by an earlier invocation on the same machine, "
            f"`{b['command']}` (commit {b['commit']}, {b['date']})."
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Measuring


def shape(events: int) -> tuple[int, int]:
    """(users, items) of a log of ``events`` events."""
    return max(1, events // EVENTS_PER_USER), max(MIN_ITEMS, events // EVENTS_PER_ITEM)


def dataset(events: int, data_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The CSV log of about ``events`` events (written once, then reused)."""
    from seqrec.data.synth import write_csv

    users, items = shape(events)
    path = data_dir / f"events-{events}.csv"
    info: dict[str, Any] = {"users": users, "items": items}
    if not path.exists():
        t0 = time.perf_counter()
        tmp = path.with_suffix(".part")
        rows = write_csv(tmp, users, items, seed=7, mean_events_per_user=EVENTS_PER_USER)
        tmp.rename(path)
        info["generate_s"] = round(time.perf_counter() - t0, 1)
        info["rows"] = rows
    info["csv_mb"] = round(path.stat().st_size / 2**20, 1)
    return path, info


def _postgres_pids() -> set[int]:
    import psutil

    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"}


def _tree_rss(proc: Any) -> float:
    import psutil

    total = 0
    with contextlib.suppress(psutil.Error):
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
    return total / 2**20


def _postgres_uss(pids: set[int]) -> float | None:
    import psutil

    total, readable = 0, False
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_full_info().uss
            readable = True
        except psutil.Error:
            pass
    return total / 2**20 if readable else None


def run_stage(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run one stage's command; its wall time, peak RSS (own, process tree, PostgreSQL) and
    the JSON object it printed last."""
    import psutil

    before = _postgres_pids()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        proc = psutil.Process(child.pid)
        tree_peak, pg_peak = 0.0, None
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            tree_peak = max(tree_peak, _tree_rss(proc))
            uss = _postgres_uss(_postgres_pids() - before)
            if uss is not None:
                pg_peak = max(pg_peak or 0.0, uss)
            time.sleep(SAMPLE_S)
        seconds = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    res: dict[str, Any] = {
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "tree_peak_mb": round(max(tree_peak, usage.ru_maxrss / 1024), 1),
    }
    if pg_peak is not None:
        res["postgres_peak_mb"] = round(pg_peak, 1)
    if child.returncode != 0:
        tail = [ln for ln in (stderr.strip() or stdout.strip()).splitlines() if ln.strip()]
        return {"failed": (tail or [f"exit code {child.returncode}"])[-1][:300]}
    output = printed_json(stdout)
    if output is not None:
        res["output"] = output
    return res


def printed_json(stdout: str) -> dict[str, Any] | None:
    """The JSON object a ``--json`` command printed: the whole output, or its last line."""
    for text in (stdout, *reversed(stdout.strip().splitlines())):
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(text)
            if isinstance(value, dict):
                return value
    return None


def workspace_settings(threads: int, driver_memory: str) -> str:
    master = f"local[{threads}]" if threads else "local[*]"
    return f"""
[features]
max_len = {MAX_LEN}

[train]
epochs = {TRAIN["epochs"]}
batch_size = {TRAIN["batch_size"]}
eval_batch_size = {TRAIN["eval_batch_size"]}
num_threads = {threads}
stream = true

[spark]
master = "{master}"
driver_memory = "{driver_memory}"
"""


def _toml(value: Any) -> str:
    """A ``--param`` value as the CLI parses it (TOML: booleans are lower case)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def stage_commands(root: Path, csv_path: Path) -> dict[str, list[str]]:
    seqrec = [sys.executable, "-m", "seqrec"]
    proj = ["--project", str(root)]
    params = [a for k, v in PARAMS.items() for a in ("--param", f"{k}={_toml(v)}")]
    return {
        "ingest": [*seqrec, "events", "import", str(csv_path), *proj, "--json"],
        "build": [*seqrec, "features", "build", *proj, "--json"],
        "materialize": [*seqrec, "features", "materialize", *proj, "--json"],
        "train": [*seqrec, "train", "--model", MODEL, "--epochs", "1", *params, *proj, "--json"],
        "evaluate": [*seqrec, "evaluate", "--sample-users", str(EVAL_USERS), *proj, "--json"],
    }


def _apply(root: Path, env: dict[str, str]) -> str | None:
    """``seqrec features apply`` (registers the Feast objects); the error, or None."""
    cmd = [sys.executable, "-m", "seqrec", "features", "apply", "--project", str(root)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode == 0:
        return None
    return f"features apply: {(done.stderr.strip().splitlines() or ['?'])[-1][:300]}"


def _redis_used_mb(url: str) -> float:
    import redis

    return float(redis.Redis.from_url(url).info("memory")["used_memory"]) / 2**20


def _disk_mb(ws: Any, root: Path) -> float:
    from sqlalchemy import text

    with ws.engine.connect() as conn:
        pg = conn.execute(
            text(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = :s AND c.relkind IN ('r', 'm')"
            ),
            {"s": ws.config.events.pg_schema},
        ).scalar_one()
    files = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return round((int(pg) + files) / 2**20, 1)


def run_profile(
    profile: str, events: int, csv_path: Path, data_dir: Path, settings: str
) -> dict[str, Any]:
    """Every stage of ``profile`` on the log at ``csv_path``, in a fresh workspace."""
    from seqrec.testing import drop_pg_redis_workspace, make_pg_redis_workspace

    root = data_dir / f"ws-{profile}-{events}"
    shutil.rmtree(root, ignore_errors=True)
    ws = make_pg_redis_workspace(root, f"bench_scale_{profile.split('-')[0]}", settings, profile)
    env = {**os.environ, "SEQREC_PROJECT": str(root)}
    out: dict[str, Any] = {"stages": {}}
    try:
        redis_url = ws.config.features.redis_url
        failed = None
        for stage, cmd in stage_commands(root, csv_path).items():
            if failed:
                out["stages"][stage] = {"skipped": f"not run: {failed.split(':')[0]} failed"}
                continue
            redis_before = _redis_used_mb(redis_url) if stage == "materialize" else 0.0
            print(f"== {events:,} events, {profile}: {stage}", file=sys.stderr, flush=True)
            res = run_stage(cmd, env)
            shown = {k: v for k, v in res.items() if k != "output"}
            print(f"   {json.dumps(shown)}", file=sys.stderr, flush=True)
            if "failed" in res:
                failed = stage
            elif stage == "materialize":
                out["online_store_mb"] = round(_redis_used_mb(redis_url) - redis_before, 1)
            output = res.pop("output", None) or {}
            if stage == "train" and output:
                out["train"] = {
                    k: output.get(k) for k in ("seconds_per_epoch", "epochs_run", "data", "valid")
                }
            if stage == "evaluate" and output:
                out["evaluate"] = {
                    "rank_seconds": output.get("seconds"),
                    "users": output.get("users"),
                    **{k: output.get(k) for k in ("recall@10", "ndcg@10", "sampled_from")},
                }
            if stage == "ingest" and output:
                out["ingest"] = {k: output.get(k) for k in ("rows_added", "method")}
            out["stages"][stage] = res
            if stage == "ingest" and not failed:  # once per workspace, not timed
                failed = _apply(root, env)
                if failed:
                    out["failed"] = failed
        out["disk_mb"] = _disk_mb(ws, root)
    finally:
        drop_pg_redis_workspace(ws)
        shutil.rmtree(root, ignore_errors=True)
    return out


def _mem_total_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def stage_memory_mb(stage: dict[str, Any], scale: float, child_cap_mb: float) -> float:
    """A stage's peak memory at ``scale`` times its measured size: its own RSS and the
    PostgreSQL backends' grown linearly; its children's (the Spark JVM, whose heap
    ``driver_memory`` bounds) grown linearly up to ``child_cap_mb``."""
    own = stage.get("peak_rss_mb", 0.0)
    children = max(stage.get("tree_peak_mb", 0.0) - own, 0.0)
    grown = own * scale + min(children * scale, max(children, child_cap_mb))
    return max(grown, stage.get("postgres_peak_mb", 0.0) * scale)


def skip_reason(
    events: int,
    done: list[dict[str, Any]],
    data_dir: Path,
    seconds_left: float,
    child_cap_mb: float = math.inf,
) -> str | None:
    """Why a log of ``events`` events would not fit this machine (None: it fits), judged from
    the largest size measured so far, extrapolated linearly (a stage's child processes up to
    ``child_cap_mb``: :func:`stage_memory_mb`)."""
    prev = [e for e in done if "profiles" in e]
    last = prev[-1] if prev else None
    scale = events / last["events"] if last else 1.0
    csv_mb = (last["csv_mb"] * scale) if last else events * 60 / 2**20
    if last:
        per_profile = max(p.get("disk_mb") or 0.0 for p in last["profiles"].values()) * scale
    else:
        per_profile = events * DISK_PER_EVENT / 2**20
    need_mb = csv_mb + per_profile  # one workspace at a time: dropped after each profile
    data_dir.mkdir(parents=True, exist_ok=True)
    free_mb = shutil.disk_usage(data_dir).free / 2**20
    if need_mb > 0.9 * free_mb:
        return f"needs about {need_mb:,.0f} MB of disk, {free_mb:,.0f} MB free"
    if last:
        peaks = [
            stage_memory_mb(s, scale, child_cap_mb)
            for p in last["profiles"].values()
            for s in p["stages"].values()
        ]
        need_mem = max(peaks, default=0.0)
        total = _mem_total_mb()
        if need_mem > 0.8 * total:
            return f"a stage would peak at about {need_mem:,.0f} MB, {total:,.0f} MB of memory"
        spent = sum(
            s.get("seconds", 0.0) for p in last["profiles"].values() for s in p["stages"].values()
        )
        need_s = spent * scale
        if need_s > seconds_left:
            return (
                f"would take about {need_s / 3600:,.1f} h, {seconds_left / 3600:,.1f} h left "
                "of --max-hours"
            )
    return None


def memory_mb(text: str) -> float:
    """MB of a JVM memory setting such as ``4g`` or ``512m``."""
    units = {"k": 1 / 1024, "m": 1.0, "g": 1024.0, "t": 1024.0**2}
    text = text.strip().lower()
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text) / 2**20


def run(
    sizes: list[int],
    profiles: list[str],
    settings: str,
    max_hours: float,
    data_dir: Path,
    keep_data: bool,
    child_cap_mb: float = math.inf,
    earlier: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Measure each size in turn; ``earlier``: sizes measured by an earlier invocation (kept
    unless measured again, and used to judge whether the next size fits)."""
    out: dict[str, Any] = {
        "config": {
            "profiles": profiles,
            "events_per_user": EVENTS_PER_USER,
            "events_per_item": EVENTS_PER_ITEM,
            "max_len": MAX_LEN,
            "model": MODEL,
            "params": PARAMS,
            "train": TRAIN,
            "sample_s": SAMPLE_S,
            "eval_users": EVAL_USERS,
        },
        "sizes": [e for e in earlier or [] if e["events"] not in sizes and "profiles" in e],
    }
    deadline = time.monotonic() + max_hours * 3600
    for events in sorted(sizes):
        measured = sorted(out["sizes"], key=lambda e: e["events"])
        left = deadline - time.monotonic()
        reason = skip_reason(events, measured, data_dir, left, child_cap_mb)
        if reason:
            out["sizes"].append({"events": events, "skipped": reason})
            print(f"== {events:,} events: skipped, {reason}", file=sys.stderr)
            continue
        csv_path, info = dataset(events, data_dir)
        entry: dict[str, Any] = {"events": events, **info, "profiles": {}}
        for profile in profiles:
            entry["profiles"][profile] = run_profile(profile, events, csv_path, data_dir, settings)
        if not keep_data:
            csv_path.unlink()
        out["sizes"].append(entry)
    out["sizes"].sort(key=lambda e: e["events"])
    out["fits"] = fits(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", help="events per size, comma-separated (default 1M,10M,50M)")
    ap.add_argument("--quick", action="store_true", help="20k and 60k events: prints only")
    ap.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated")
    ap.add_argument("--threads", type=int, default=0, help="torch threads and Spark local[N]")
    ap.add_argument("--driver-memory", default="4g", help="[spark] driver_memory")
    ap.add_argument("--max-hours", type=float, default=24.0, help="skip sizes past this")
    ap.add_argument("--data-dir", type=Path, default=DATA, help="logs and workspaces")
    ap.add_argument("--keep-data", action="store_true", help="keep the CSV logs for reruns")
    ap.add_argument("--report-only", action="store_true", help="page and plot from the JSON")
    ap.add_argument(
        "--add",
        action="store_true",
        help="keep the sizes of the saved JSON that this run does not measure again",
    )
    args = ap.parse_args()
    if args.report_only:
        saved = json.loads((report.RESULTS / f"{NAME}.json").read_text())
        img = plot(saved["results"], report.IMG / IMG_NAME)
        md = markdown(saved["results"], saved["machine"], img and f"img/{IMG_NAME}")
        report.write_section(NAME, md)
        return
    sizes = QUICK if args.quick else FULL
    if args.sizes:
        sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    unknown = sorted(set(profiles) - set(PROFILES))
    if unknown or not sizes or min(sizes) < 1_000:
        ap.error(f"--profiles: one of {PROFILES}; --sizes: 1000 events or more")
    machine = report.machine()
    settings = workspace_settings(args.threads, args.driver_memory)
    earlier = None
    if args.add:
        saved = json.loads((report.RESULTS / f"{NAME}.json").read_text())
        earlier = saved["results"]["sizes"]
        before = saved["machine"].get("earlier", [])
        kept = {e["events"] for e in earlier if "profiles" in e and e["events"] not in sizes}
        was = {k: saved["machine"].get(k) for k in ("commit", "date", "command")}
        inherited = [b for b in before if set(b["events"]) & kept]
        fresh = sorted(kept - {n for b in inherited for n in b["events"]})
        machine["earlier"] = [*inherited, *([{"events": fresh, **was}] if fresh else [])]
    # the Spark JVM's heap is bounded by driver_memory: its extrapolation stops at 1.5x that
    cap = 1.5 * memory_mb(args.driver_memory) if "spark-redis" in profiles else math.inf
    results = run(
        sizes, profiles, settings, args.max_hours, args.data_dir, args.keep_data, cap, earlier
    )
    payload = {"machine": machine, "results": results}
    if args.quick:  # a smoke run: the plot into a temporary file, nothing else written
        img = plot(results, Path(tempfile.mkdtemp(prefix="scale-")) / IMG_NAME)
        print(json.dumps(payload, indent=2, default=str))
        print(markdown(results, machine, None))
        print(f"plot: {img}")
        return
    report.save_json(NAME, payload)
    img = plot(results, report.IMG / IMG_NAME)
    md = markdown(results, machine, img and f"img/{IMG_NAME}")
    report.write_section(NAME, md)
    print(md)


if __name__ == "__main__":
    main()
