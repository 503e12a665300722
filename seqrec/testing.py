"""Helpers for testing seqrec and its plugins: fast workspaces with real stores and data.

Plugin authors can use these in their own test suites (see docs/plugins.md).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from seqrec.config import Workspace, load_workspace, render_default_config

# Small, fast settings for every workspace a test makes.
FAST = """
[train]
epochs = 2
batch_size = 64
num_threads = 2
eval_batch_size = 256

[features]
max_len = 20
"""


def make_workspace(root: Path, extra: str = "") -> Workspace:
    root.mkdir(parents=True, exist_ok=True)
    text = render_default_config()
    (root / "seqrec.toml").write_text(_merge(text, FAST + extra))
    return load_workspace(root)


def _merge(base: str, overrides: str) -> str:
    """Replace ``key = value`` lines of ``base`` with those in ``overrides`` (same section)."""
    import tomllib

    over = tomllib.loads(overrides)
    out, section = [], ""
    for line in base.splitlines():
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            section = s.strip("[]")
        elif "=" in s and not s.startswith("#"):
            key = s.split("=", 1)[0].strip()
            if section in over and key in over[section]:
                val = over[section][key]
                line = f"{key} = {val!r}" if not isinstance(val, str) else f'{key} = "{val}"'
        out.append(line)
    return "\n".join(out) + "\n"


def load_synth(ws: Workspace, users: int, items: int, seed: int = 3) -> int:
    from seqrec.data.importers import import_events
    from seqrec.data.schema import create_schema, make_engine
    from seqrec.data.synth import generate

    engine = make_engine(ws.events_url)
    create_schema(engine)
    source = f"synth:{users}:{items}:{seed}"
    report = import_events(
        engine,
        ((i + 1, ev) for i, ev in enumerate(generate(users, items, seed, mean_events_per_user=30))),
        source=source,
        sha256=hashlib.sha256(source.encode()).hexdigest(),
        fmt="synth",
    )
    return report.rows_added
