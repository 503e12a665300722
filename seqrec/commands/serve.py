"""``seqrec serve``, ``seqrec build`` and ``seqrec label``: the BentoML side of a workspace.

``serve`` runs the service on 127.0.0.1 (after checking that the model loads, so a broken model
stops here with a message and exit 1). ``build`` makes a Bento: the service code, the model,
the workspace's serving configuration (seqrec.toml's [serve]/[features] and its Feast repo) and
pinned requirements. ``label`` sets BentoML labels on a stored model (``stage=production``), which
``--model`` accepts as a selector.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import click

from seqrec.config import Workspace
from seqrec.errors import SeqrecError

SERVICE = "seqrec.service:SeqrecService"
BUNDLED_WS = "seqrec_ws"  # the serving workspace inside a Bento's src/
BENTO_MARKER = "BENTO"  # present in a Bento's bundled workspace: the model is in BentoML's store


def serve_command(ws_root: Path, model: str | None, host: str, port: int) -> list[str]:
    """The ``bentoml serve`` command line for a workspace."""
    bentoml_bin = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or "bentoml"
    return [bentoml_bin, "serve", SERVICE, "--host", host, "--port", str(port)]


def check_model(ws: Workspace, ref: str) -> tuple[str, str]:
    """(tag, task) of the model ``ref`` names, loaded once on CPU: fail before serving."""
    from seqrec import model_store
    from seqrec.recommend import resolve_model_ref

    tag = resolve_model_ref(ref, ws.model_store, ws=ws)
    stored = model_store.load(tag, device="cpu", store=ws.model_store)
    return tag, stored.model.ctx.task


# -- pinned requirements --------------------------------------------------------------------------


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_requirements(roots: list[str]) -> list[str]:
    """``name==version`` for every installed distribution ``roots`` need (transitively, with
    their extras and this interpreter's markers), the roots themselves excluded."""
    from packaging.requirements import Requirement

    seen: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [(r, frozenset()) for r in roots]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (_norm(name), extras) in done:
            continue
        done.add((_norm(name), extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[_norm(name)] = f"{dist.metadata['Name']}=={dist.version}"
        for raw in dist.requires or []:
            req = Requirement(raw)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            todo.append((req.name, frozenset(req.extras)))
    skip = {_norm(r) for r in roots}
    return sorted(v for k, v in seen.items() if k not in skip)


def _source_dir(dist_name: str) -> Path:
    """The project directory of an editable/local install (its direct_url.json)."""
    dist = metadata.distribution(dist_name)
    raw = dist.read_text("direct_url.json")
    if raw:
        url = json.loads(raw).get("url", "")
        if url.startswith("file://"):
            return Path(url[len("file://") :])
    raise SeqrecError(
        f"cannot find the source of {dist_name} to put into the Bento",
        hint="install seqrec and its plugins from a checkout (pip install -e .)",
    )


_NOT_IN_WHEEL = shutil.ignore_patterns(
    ".git",
    ".venv*",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    "demo",
    "bench",
    "tests",
    "docs",
    "plugins",
    "node_modules",
)


def _wheel(src: Path, out: Path) -> Path:
    """A wheel of the project at ``src``, built from a copy (the checkout stays clean)."""
    copy = out.parent / "src-copy" / src.name
    shutil.copytree(src, copy, ignore=_NOT_IN_WHEEL)
    src = copy
    before = set(out.glob("*.whl"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    made = set(out.glob("*.whl")) - before
    if proc.returncode != 0 or not made:
        raise SeqrecError(f"building a wheel of {src} failed:\n{proc.stderr[-2000:]}")
    return made.pop()


def bundled_config(ws: Workspace, tag: str) -> str:
    """seqrec.toml for the Bento: the workspace's profile, features and serve sections (the
    model, the default, comes from BentoML's own store: see BENTO_MARKER)."""
    cfg = ws.config.model_dump()
    lines = [f'profile = "{cfg["profile"]}"']
    sections: dict[str, dict[str, Any]] = {
        "events": {},
        "features": dict(cfg["features"]),
        "models": {"default": tag},
        "serve": dict(cfg["serve"]),
    }
    if ws.config.profile == "postgres-redis":
        sections["events"] = {"url": ws.config.events.url, "pg_schema": ws.config.events.pg_schema}
    for name, values in sections.items():
        lines.append(f"\n[{name}]")
        for key, value in values.items():
            if isinstance(value, str) and name == "features" and key.endswith("_path"):
                value = str(ws.path(value))  # the embedded stores stay where they are
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def build_bento(ws: Workspace, ref: str, version: str | None = None) -> dict[str, Any]:
    """Build the Bento for ``ref`` into the workspace's BentoML home; returns its summary."""
    import bentoml
    from bentoml._internal.bento.build_config import BentoEnvSchema

    from seqrec import model_store
    from seqrec.features.repo import write_repo
    from seqrec.plugins import DEFAULT_PLUGINS

    tag, task = check_model(ws, ref)
    _, path = model_store.locate(tag, ws.model_store)
    plugin = json.loads((path / "seqrec.json").read_text()).get("plugin")
    builtin = {m.rsplit(".", 1)[-1] for m in DEFAULT_PLUGINS}  # ship inside seqrec itself
    dists = ["seqrec"] + ([f"seqrec-{plugin}"] if plugin and plugin not in builtin else [])
    with tempfile.TemporaryDirectory(prefix="seqrec-bento-") as tmp:
        ctx = Path(tmp)
        wheels = ctx / "wheels"
        wheels.mkdir()
        wheel_files = [_wheel(_source_dir(d), wheels) for d in dists]
        (ctx / "requirements.txt").write_text("\n".join(pinned_requirements(dists)) + "\n")
        bundled = ctx / BUNDLED_WS
        bundled.mkdir()
        (bundled / "seqrec.toml").write_text(bundled_config(ws, tag))
        (bundled / BENTO_MARKER).write_text(f"{tag}\n")
        repo = write_repo(ws)
        shutil.copytree(
            repo, bundled / "feature_repo", ignore=shutil.ignore_patterns("__pycache__")
        )
        (ctx / "service.py").write_text(
            '"""Entry point of the Bento: the service lives in the seqrec package."""\n\n'
            "from seqrec.service import SeqrecService\n\n__all__ = ['SeqrecService']\n"
        )
        with contextlib.chdir(ctx):  # BentoML resolves wheel paths against the cwd
            bento = bentoml.bentos.build(
                "service:SeqrecService",
                name="seqrec",
                version=version,
                labels={"model": tag.replace(":", "-"), "task": task},
                description=f"seqrec serving {tag}",
                include=["service.py", f"{BUNDLED_WS}/**", "requirements.txt"],
                python={
                    "requirements_txt": "requirements.txt",
                    "wheels": [f"wheels/{w.name}" for w in wheel_files],
                    "lock_packages": False,
                },
                envs=[
                    BentoEnvSchema(name="SEQREC_PROJECT", value=BUNDLED_WS),
                    BentoEnvSchema(name="SEQREC_MODEL", value=tag),
                ],
                models=[tag],
                build_ctx=str(ctx),
            )
    return {"bento": str(bento.tag), "model": tag, "path": bento.path, "wheels": dists}


def set_labels(ws: Workspace, ref: str, labels: dict[str, str]) -> tuple[str, dict[str, str]]:
    """Add (or, with an empty value, remove) BentoML labels on a stored model."""
    import bentoml

    from seqrec.model_store import _store, locate

    tag, _ = locate(ref, ws.model_store)
    bm = bentoml.models.get(tag, **_store(ws.model_store))
    for key, value in labels.items():
        if value:
            bm.info.labels[key] = value
        else:
            bm.info.labels.pop(key, None)
    bm.flush()
    return tag, dict(bm.info.labels)


def label_model(ws: Workspace, ref: str, labels: dict[str, str]) -> tuple[str, dict[str, str]]:
    """``seqrec label``: pointer selectors (:func:`seqrec.promotion.has_pointer`) move through
    :func:`seqrec.promotion.promote`; a pointer whose model gets another value for its key is
    withdrawn; other labels are set on the model. Every change is recorded."""
    from seqrec import model_store, promotion
    from seqrec.runs import record_label_change, tables

    tag = model_store.locate(ref, ws.model_store)[0]
    reason = "seqrec label"
    plain: dict[str, str] = {}
    for key, value in labels.items():
        selector = f"{key}={value}"
        if value and promotion.has_pointer(ws, selector):
            promotion.promote(ws, tag, selector, reason=reason)
            continue
        for held in promotion.pointers_to(ws, tag):  # it no longer carries that label
            if held.partition("=")[0] == key:
                promotion.withdraw(ws, held, reason=f"{reason}: {tag} {selector}")
        plain[key] = value
    if plain:
        set_labels(ws, tag, plain)
        with tables(ws).begin() as conn:
            for key, value in plain.items():
                record_label_change(conn, f"{key}={value}", None, tag, reason=reason)
    return set_labels(ws, tag, {})


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
            SEQREC_MODEL=ref if "=" in ref else tag,
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
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise SeqrecError(f"bad label '{item}'", hint="use key=value (key= removes it)")
            pairs[key] = value
        tag, now = label_model(ws, model, pairs)
        click.echo(f"{tag}: " + ", ".join(f"{k}={v}" for k, v in sorted(now.items())))
