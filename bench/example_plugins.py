"""Example plugins (examples/seqrec-*) for the benchmarks, installed as a user would.

The examples are not part of ``make install``. A benchmark whose model list names one installs
it from its own directory into ``bench/data/site`` (``pip install --no-deps
--no-build-isolation --no-index --target``, fresh on every run, so the benchmark trains the
current sources) and gives its worker processes that directory on ``PYTHONPATH``: the plugin's
entry point is found there and the shared venv is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable

import report

#: model name -> the example distribution that registers it
EXAMPLES = {"itemknn": report.ROOT / "examples" / "seqrec-itemknn"}
SITE = report.ROOT / "bench" / "data" / "site"


def worker_env(models: Iterable[str]) -> dict[str, str]:
    """Install the example plugins among ``models`` into :data:`SITE`; returns the
    environment for worker processes (this one's, plus ``SITE`` on ``PYTHONPATH`` when an
    example was installed)."""
    env = dict(os.environ)
    wanted = sorted({m for m in models if m in EXAMPLES})
    if not wanted:
        return env
    shutil.rmtree(SITE, ignore_errors=True)
    SITE.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    cmd += ["--no-deps", "--no-build-isolation", "--no-index", "--target", str(SITE)]
    subprocess.run([*cmd, *(str(EXAMPLES[m]) for m in wanted)], check=True)
    print(f"installed example plugin(s) {', '.join(wanted)} into {SITE}", file=sys.stderr)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SITE), env.get("PYTHONPATH")) if p)
    return env
