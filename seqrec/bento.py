"""Bentos: the service code, a model, the workspace's serving configuration and pinned
requirements, built into the workspace's BentoML home (``seqrec build``).

Inside a Bento the service finds its workspace in ``src/`` (:data:`BUNDLED_WS`, marked by
:data:`BENTO_MARKER`) and its model in BentoML's own store (:func:`serving_project`).
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

from seqrec.config import Workspace
from seqrec.errors import SeqrecError

#: the BentoML service, as ``bentoml serve`` and bentofile.yaml name it
SERVICE = "seqrec.service:SeqrecService"
BUNDLED_WS = "seqrec_ws"  # the serving workspace inside a Bento's src/
BENTO_MARKER = "BENTO"  # present in a Bento's bundled workspace: the model is in BentoML's store


def serving_project() -> tuple[str | None, bool]:
    """(workspace directory, whether the model comes from BentoML's own store) for the
    service. Inside a Bento (cwd = its src/) the workspace is :data:`BUNDLED_WS`; otherwise
    ``SEQREC_PROJECT`` names it, and ``SEQREC_MODEL_STORE=bentoml`` picks BentoML's store."""
    bundled = Path(BUNDLED_WS)
    if (bundled / BENTO_MARKER).is_file() and not os.environ.get("SEQREC_PROJECT"):
        return str(bundled.resolve()), True
    project = os.environ.get("SEQREC_PROJECT")
    in_bento = project is not None and (Path(project) / BENTO_MARKER).is_file()
    return project, in_bento or os.environ.get("SEQREC_MODEL_STORE") == "bentoml"


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


def _provides(dist: metadata.Distribution, module: Path) -> bool:
    """Whether ``dist`` installed the file ``module`` (by its RECORD, else by its location)."""
    files = [Path(str(dist.locate_file(f))).resolve() for f in dist.files or []]
    if files:
        return module in files
    return Path(str(dist.locate_file(module.parent.name))).resolve() == module.parent


def faiss_distribution() -> metadata.Distribution:
    """The installed distribution that provides the importable ``faiss`` module (faiss-cpu,
    faiss-gpu, a conda build with metadata, ...), or a SeqrecError saying how to install one."""
    from seqrec.serving.ann import import_faiss

    module = Path(import_faiss().__file__).resolve()  # not importable: how to install it
    for name in metadata.packages_distributions().get("faiss", []):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if _provides(dist, module):
            return dist
    raise SeqrecError(
        f"[serve] ann = true needs FAISS pinned in the Bento, but no installed distribution "
        f"provides the faiss module at {module} (a source build or an install without "
        "package metadata?)",
        hint="pip install 'seqrec[ann]' (faiss-cpu), or set [serve] ann = false",
    )


def _requirements(ws: Workspace, dists: list[str]) -> list[str]:
    """The Bento's pinned requirements: those of ``dists``, plus FAISS when the workspace
    serves with ``[serve] ann = true`` (the index is built where the model loads)."""
    reqs = pinned_requirements(dists)
    if ws.config.serve.ann:
        faiss = faiss_distribution()
        name = faiss.metadata["Name"]
        reqs = sorted({*reqs, f"{name}=={faiss.version}", *pinned_requirements([name])})
    return reqs


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


def _without_password(url: str) -> str:
    """``url`` with its password left out (``redis://:pw@h/0`` -> ``redis://h/0``)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return url
    user = f"{parts.username}@" if parts.username else ""
    return parts._replace(netloc=user + parts.netloc.rsplit("@", 1)[1]).geturl()


def bundled_config(ws: Workspace, tag: str) -> str:
    """seqrec.toml for the Bento: the workspace's profile, features and serve sections (the
    model, the default, comes from BentoML's own store: see BENTO_MARKER). URLs go in without
    their passwords: the deployment gives them in SEQREC_PG_URL / SEQREC_REDIS_URL."""
    cfg = ws.config.model_dump()
    cfg["features"]["redis_url"] = _without_password(cfg["features"]["redis_url"])
    lines = [f'profile = "{cfg["profile"]}"']
    sections: dict[str, dict[str, Any]] = {
        "events": {},
        "features": dict(cfg["features"]),
        "models": {"default": tag},
        "serve": dict(cfg["serve"]),
    }
    if ws.uses_redis:
        events = {k: v for k, v in cfg["events"].items() if k != "batch_size"}
        sections["events"] = {**events, "url": _without_password(ws.config.events.url)}
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

    from seqrec import model_store
    from seqrec.compat.bentoml_private import bento_env
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
        (ctx / "requirements.txt").write_text("\n".join(_requirements(ws, dists)) + "\n")
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
                envs=[bento_env("SEQREC_PROJECT", BUNDLED_WS), bento_env("SEQREC_MODEL", tag)],
                models=[tag],
                build_ctx=str(ctx),
            )
    return {"bento": str(bento.tag), "model": tag, "path": bento.path, "wheels": dists}
