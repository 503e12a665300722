"""Peak memory of one epoch over a training set streamed from Parquet against the same set held
in memory, as the set grows.

For each size a synthetic training set of windows of 50 (items, event types, times, a label,
``loss_from``, a cutoff time) is written to Parquet chunk by chunk (``StreamWriter``, 8,192
rows per row group). Each measurement then runs in a fresh process, so its peak RSS (the
high-water mark, ``ru_maxrss``) is its own:

- streamed: ``StreamedSet.batches`` for one shuffled epoch ([train] stream = true: 65,536-row
  shuffle buffer), batch 256;
- in memory: the set read into [N, 50] arrays (preallocated and filled row group by row group,
  a lower bound of what the feature build holds), ``SequenceSet.tensors(with_targets=True)``
  and one shuffled epoch of ``iter_batches``, as the trainer does without streaming.

Each batch's targets are summed so that every batch is really materialised; no model runs, so
the figures are the data path's alone. ``base`` is the process's RSS after its imports (torch).
An in-memory run that would not fit the available memory is skipped and says so.

    python bench/stream_memory.py           # 100k, 1M, 4M rows: JSON + docs/benchmarks.md
    python bench/stream_memory.py --quick   # 5k, 20k rows: prints, nothing written
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report

NAME = "stream_memory"
FULL = [100_000, 1_000_000, 4_000_000]
QUICK = [5_000, 20_000]
SEQ_LEN = 50
ITEMS = 50_000
BATCH = 256
BUFFER = 65_536
ROW_GROUP = 8_192
CHUNK = 50_000  # rows generated and appended at a time
#: bytes per row held by the in-memory path: items, types, times and targets [50] int64 + 3
ROW_BYTES = (4 * SEQ_LEN + 3) * 8


def rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def write(path: Path, rows: int, seed: int = 0) -> dict[str, Any]:
    """A synthetic training set of ``rows`` windows at ``path``, written CHUNK rows at a time."""
    from seqrec.training.data import SequenceSet
    from seqrec.training.stream import write_stream

    rng = np.random.default_rng(seed)

    def parts():  # type: ignore[no-untyped-def]
        for start in range(0, rows, CHUNK):
            n = min(CHUNK, rows - start)
            lengths = rng.integers(1, SEQ_LEN + 1, n)
            cols = np.arange(SEQ_LEN)[None, :]
            pad = cols < (SEQ_LEN - lengths)[:, None]
            items = rng.integers(1, ITEMS, (n, SEQ_LEN))
            items[pad] = 0
            times = 1_700_000_000 + np.cumsum(rng.integers(1, 3_600, (n, SEQ_LEN)), axis=1)
            times[pad] = 0
            yield SequenceSet(
                user_ids=np.array([f"u{start + i}" for i in range(n)], dtype=object),
                items=items,
                types=np.where(pad, 0, rng.integers(1, 4, (n, SEQ_LEN))),
                times=times,
                labels=rng.integers(1, ITEMS, n),
                loss_from=np.zeros(n, dtype=np.int64),
                now=times[:, -1] + 60,
            )

    t0 = time.perf_counter()
    s = write_stream(path, parts(), SEQ_LEN, row_group=ROW_GROUP)
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "file_mb": round(path.stat().st_size / 2**20, 1),
        "row_groups": len(s.group_rows),
    }


def child(mode: str, path: Path) -> dict[str, Any]:
    """One epoch (``mode`` = stream or memory) over the set at ``path``, in this process."""
    import torch

    from seqrec.training.data import SequenceSet, iter_batches
    from seqrec.training.stream import StreamedSet

    torch.set_num_threads(1)
    base = rss_mb()
    s = StreamedSet(path, with_targets=True, shuffle_buffer=BUFFER)
    t0 = time.perf_counter()
    checksum, batches = 0, 0
    if mode == "stream":
        for b in s.batches(BATCH, seed=0):
            assert b.targets is not None
            checksum += int(b.targets.sum())
            batches += 1
    else:
        n, L = len(s), s.max_len
        arrays = {k: np.empty((n, L), np.int64) for k in ("items", "types", "times")}
        arrays |= {k: np.empty(n, np.int64) for k in ("labels", "loss_from", "now")}
        at = 0
        for rows in s.chunks():
            k = len(rows["labels"])
            for c, a in arrays.items():
                a[at : at + k] = rows[c]
            at += k
        whole = SequenceSet(np.empty(n, dtype=object), **arrays)  # type: ignore[arg-type]
        tensors = whole.tensors(with_targets=True)
        gen = torch.Generator().manual_seed(0)
        for b in iter_batches(tensors, BATCH, shuffle=True, generator=gen):
            assert b.targets is not None
            checksum += int(b.targets.sum())
            batches += 1
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": rss_mb(),
        "base_rss_mb": base,
        "batches": batches,
        "checksum": checksum,
    }


def measure(mode: str, path: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return {"failed": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def run(sizes: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "config": {
            "seq_len": SEQ_LEN,
            "batch": BATCH,
            "shuffle_buffer": BUFFER,
            "row_group": ROW_GROUP,
        },
        "sizes": [],
    }
    with tempfile.TemporaryDirectory(prefix="stream-bench-") as tmp:
        for rows in sizes:
            path = Path(tmp) / f"train-{rows}.parquet"
            entry: dict[str, Any] = {"rows": rows, "write": write(path, rows)}
            entry["stream"] = measure("stream", path)
            need = rows * ROW_BYTES / 2**20
            avail = available_mb()
            if need > 0.8 * avail:
                entry["memory"] = {
                    "skipped": f"needs about {need:,.0f} MB, {avail:,.0f} MB available"
                }
            else:
                entry["memory"] = measure("memory", path)
            stream_sum = entry["stream"].get("checksum")
            memory_sum = entry["memory"].get("checksum")
            entry["same_rows"] = None if memory_sum is None else stream_sum == memory_sum
            out["sizes"].append(entry)
            path.unlink()
            print(json.dumps(entry), file=sys.stderr)
    streamed = [e["stream"]["peak_rss_mb"] for e in out["sizes"] if "peak_rss_mb" in e["stream"]]
    if len(streamed) > 1:
        out["stream_peak_ratio_largest_to_smallest"] = round(streamed[-1] / streamed[0], 2)
    return out


def _cell(d: dict[str, Any], key: str) -> str:
    if key in d:
        return f"{d[key]:,}"
    return d.get("skipped") or f"failed: {d.get('failed', '?')}"


def markdown(res: dict[str, Any], machine: dict[str, Any]) -> str:
    c = res["config"]
    rows = [
        [
            f"{e['rows']:,}",
            e["write"]["file_mb"],
            e["write"]["row_groups"],
            _cell(e["stream"], "peak_rss_mb"),
            _cell(e["memory"], "peak_rss_mb"),
            _cell(e["stream"], "seconds"),
            _cell(e["memory"], "seconds"),
        ]
        for e in res["sizes"]
    ]
    lines = [
        "## Training data bigger than memory (streamed from Parquet)",
        "",
        f"`bench/stream_memory.py`: synthetic training sets of windows of {c['seq_len']}; one "
        f"shuffled epoch of batches of {c['batch']}, streamed ({c['shuffle_buffer']:,}-row "
        f"shuffle buffer, {c['row_group']:,}-row row groups) or held in memory (tensors and "
        "targets, as without `[train] stream`). Peak RSS of a fresh process per run, torch "
        "imported; data path only, no model.",
        "",
        report.table(
            [
                "rows",
                "Parquet MB",
                "row groups",
                "streamed peak RSS (MB)",
                "in-memory peak RSS (MB)",
                "streamed s",
                "in-memory s",
            ],
            rows,
        ),
        "",
    ]
    if "stream_peak_ratio_largest_to_smallest" in res:
        lines += [
            "Streamed peak RSS, largest over smallest set: "
            f"{res['stream_peak_ratio_largest_to_smallest']}x.",
            "",
        ]
    lines.append(report.machine_line(machine))
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], Path(sys.argv[3]))))
        return
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="5k and 20k rows: prints, page untouched")
    ap.add_argument("--report-only", action="store_true", help="rewrite the page from JSON")
    args = ap.parse_args()
    if args.report_only:
        report.republish(NAME, markdown)
        return
    machine = report.machine()
    results = run(QUICK if args.quick else FULL)
    report.publish(NAME, machine, results, markdown, args.quick, page_when_quick=True)


if __name__ == "__main__":
    main()
