"""Shared pieces of the benchmark scripts: machine facts, JSON results, the docs page.

Each benchmark owns one section of ``docs/benchmarks.md`` between
``<!-- bench:NAME:start -->`` and ``<!-- bench:NAME:end -->`` and rewrites only that section.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: the trainer settings a bench run records and is compared by (ema_decay: absent = off)
TRAIN_KEYS = ("lr", "batch_size", "epochs", "patience", "ema_decay")
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
IMG = ROOT / "docs" / "img"

PAGE_HEADER = """# Benchmarks

Produced by the scripts in `bench/`; each section says the machine, the versions and the command
that produced it. Raw results are in `bench/results/*.json`. Nothing else ran on the machine
while a benchmark was timed.
"""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ver(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """Where and with what a benchmark ran."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            n: _ver(n)
            for n in ("seqrec", "torch", "transformers", "feast", "bentoml", "duckdb", "numpy")
        },
        "commit": commit,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def save_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return path


def machine_line(m: dict[str, Any]) -> str:
    v = m["versions"]
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, torch {v['torch']}, "
        f"transformers {v['transformers']}, feast {v['feast']}; commit {m['commit']}, {m['date']}.  \n"
        f"Command: `{m['command']}`"
    )


def write_section(name: str, markdown: str) -> None:
    """Replace (or append) the section ``name`` of docs/benchmarks.md."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    text = DOCS.read_text() if DOCS.exists() else PAGE_HEADER
    block = f"{start}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block + "\n"
    )
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def publish(
    name: str,
    machine: dict[str, Any],
    results: Any,
    render: Callable[[Any, dict[str, Any]], str],
    quick: bool,
    page_when_quick: bool = False,
) -> None:
    """Save ``results`` as bench/results/NAME.json and write its page section; a quick
    (smoke) run only prints the payload (and the section with ``page_when_quick``)."""
    payload = {"machine": machine, "results": results}
    if quick:
        print(json.dumps(payload, indent=2, default=str))
        if page_when_quick:
            print(render(results, machine))
        return
    save_json(name, payload)
    write_section(name, render(results, machine))
    print(render(results, machine))


def republish(name: str, render: Callable[[Any, dict[str, Any]], str]) -> None:
    """Rewrite NAME's page section from bench/results/NAME.json (``--report-only``)."""
    saved = json.loads((RESULTS / f"{name}.json").read_text())
    write_section(name, render(saved["results"], saved["machine"]))
