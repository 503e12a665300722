"""``seqrec serve``: run the BentoML service on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click


def serve_command(ws_root: Path, model: str | None, host: str, port: int) -> list[str]:
    """The ``bentoml serve`` command line for a workspace."""
    bentoml_bin = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or "bentoml"
    return [
        bentoml_bin,
        "serve",
        "seqrec.service:SeqrecService",
        "--host",
        host,
        "--port",
        str(port),
    ]


def register(cli: click.Group) -> None:
    from seqrec.cli import project_option, workspace

    @cli.command()
    @project_option
    @click.option(
        "--model",
        "-m",
        default=None,
        help="Model tag or name (default: latest of the default model).",
    )
    @click.option("--host", default=None, help="Bind address (default 127.0.0.1).")
    @click.option("--port", type=click.IntRange(1, 65535), default=None)
    def serve(project: Path | None, model: str | None, host: str | None, port: int | None) -> None:
        """Serve recommendations over HTTP (POST /recommend) with online features."""
        from seqrec import model_store

        ws = workspace(project)
        tag, _ = model_store.locate(
            model or ws.config.models.default, ws.model_store
        )  # fail fast, clearly
        env = dict(os.environ, SEQREC_PROJECT=str(ws.root), SEQREC_MODEL=tag)
        host = host or ws.config.serve.host
        port = port or ws.config.serve.port
        cmd = serve_command(ws.root, tag, host, port)
        click.echo(f"serving {tag} on http://{host}:{port} (POST /recommend)", err=True)
        os.execvpe(cmd[0], cmd, env)
