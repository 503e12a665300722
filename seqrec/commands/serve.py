"""``seqrec serve``, ``seqrec build`` and ``seqrec label``: the BentoML side of a workspace.

``serve`` runs the service on 127.0.0.1 (after checking that the model loads, so a broken model
stops here with a message and exit 1). ``build`` makes a Bento (:mod:`seqrec.bento`). ``label``
sets BentoML labels on a stored model (``stage=production``), which ``--model`` accepts as a
selector (:mod:`seqrec.labels`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import click

from seqrec.bento import SERVICE, build_bento, check_model
from seqrec.labels import is_selector, label_model, parse_selector
from seqrec.labels import set_labels as set_labels  # still importable from here


def serve_command(ws_root: Path, model: str | None, host: str, port: int) -> list[str]:
    """The ``bentoml serve`` command line for a workspace."""
    bentoml_bin = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or "bentoml"
    return [bentoml_bin, "serve", SERVICE, "--host", host, "--port", str(port)]


def register(cli: click.Group) -> None:
    from seqrec.cli import project_option, workspace

    model_opt = click.option(
        "--model",
        "-m",
        default=None,
        help="Model tag, name (latest version) or label selector such as stage=production "
        "(default: latest of the default model).",
    )

    @cli.command()
    @project_option
    @model_opt
    @click.option("--host", default=None, help="Bind address (default: serve.host, 127.0.0.1).")
    @click.option("--port", type=click.IntRange(1, 65535), default=None)
    def serve(project: Path | None, model: str | None, host: str | None, port: int | None) -> None:
        """Serve recommendations over HTTP (POST /recommend) with online features."""
        ws = workspace(project)
        ref = model or ws.config.models.default
        tag, task = check_model(ws, ref)  # fail fast, clearly
        env = dict(
            os.environ,
            SEQREC_PROJECT=str(ws.root),
            # a label selector is passed on as such: the service follows it (hot reload)
            SEQREC_MODEL=ref if is_selector(ref) else tag,
            BENTOML_HOME=str(ws.model_store),
        )
        env.setdefault("BENTOML_DO_NOT_TRACK", "True")
        host = host or ws.config.serve.host
        port = port or ws.config.serve.port
        cmd = serve_command(ws.root, tag, host, port)
        endpoint = "/predict" if task == "classify" else "/recommend"
        click.echo(f"serving {tag} on http://{host}:{port} (POST {endpoint})", err=True)
        os.execvpe(cmd[0], cmd, env)

    @cli.command()
    @project_option
    @model_opt
    @click.option("--version", default=None, help="Bento version (default: generated).")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    def build(project: Path | None, model: str | None, version: str | None, as_json: bool) -> None:
        """Build a Bento (service + model + Feast config + pinned requirements)."""
        ws = workspace(project)
        os.environ["BENTOML_HOME"] = str(ws.model_store)
        out = build_bento(ws, model or ws.config.models.default, version)
        if as_json:
            click.echo(json.dumps(out))
            return
        click.echo(f"built {out['bento']} with {out['model']} at {out['path']}")
        click.echo(
            f"serve it: BENTOML_HOME={ws.model_store} bentoml serve {out['bento']} --host 127.0.0.1"
        )

    @cli.command()
    @project_option
    @click.argument("model")
    @click.argument("labels", nargs=-1, required=True)
    def label(project: Path | None, model: str, labels: tuple[str, ...]) -> None:
        """Set labels on a stored model: seqrec label gpt2:TAG stage=production (key= removes).

        stage=production (and any selector with a promotion pointer) moves the pointer in one
        recorded transaction: the model it named before gets stage=archived."""
        ws = workspace(project)
        pairs: dict[str, str] = {}
        for item in labels:
            pairs.update(parse_selector(item, removals=True))
        tag, now = label_model(ws, model, pairs)
        click.echo(f"{tag}: " + ", ".join(f"{k}={v}" for k, v in sorted(now.items())))
