"""A new workspace on disk: ``seqrec.toml`` with the defaults of a profile, plus the Feast repo
(``seqrec init``, the quickstart, benchmarks)."""

from __future__ import annotations

from pathlib import Path

from seqrec.config import CONFIG_NAME, render_default_config
from seqrec.errors import SeqrecError


def init_workspace(directory: Path, profile: str = "embedded", force: bool = False) -> Path:
    """Create a workspace: seqrec.toml with defaults plus the Feast repo; returns the toml."""
    from seqrec.config import load_workspace
    from seqrec.features.repo import write_repo

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CONFIG_NAME
    if path.exists() and not force:
        raise SeqrecError(f"{path} already exists", hint="use --force to overwrite it")
    path.write_text(render_default_config(profile))
    write_repo(load_workspace(directory))
    return path
