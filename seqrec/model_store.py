"""Trained models in the BentoML model store.

A stored model is a directory with ``model.safetensors`` + ``seqrec_model.json`` (weights and
the context to rebuild it), ``vocab.json`` (item id for each index), ``event_types.json``,
``popularity.json`` (training counts, for cold-start fallback), ``metrics.json`` and
``seqrec.json`` (plugin name and version, task, feature service, training settings, events
watermark). Names are ``seqrec-<model>``; ``gpt2`` is short for ``seqrec-gpt2:latest``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import Engine, select

from seqrec.compat.bentoml_private import default_models_dir, store_kwargs
from seqrec.data.schema import event_types, items
from seqrec.errors import SeqrecError
from seqrec.faults import kill_point
from seqrec.models import CONTEXT_FILE, WEIGHTS_FILE, SeqModel, load_weights, save_weights

PREFIX = "seqrec-"

log = logging.getLogger("seqrec.model_store")


def _store(store: Path | None) -> dict[str, Any]:
    """Keyword arguments selecting the BentoML model store at ``store`` (a BENTOML_HOME).

    BentoML reads BENTOML_HOME once per process; passing the store explicitly lets one process
    (tests, notebooks, the quickstart) use several workspaces, each with its own models.
    """
    if store is None:
        return {}
    path = Path(store) / "models"
    path.mkdir(parents=True, exist_ok=True)
    return store_kwargs(path)


def store_name(model_name: str) -> str:
    return PREFIX + model_name


def resolve_tag(ref: str) -> str:
    """``gpt2`` -> ``seqrec-gpt2:latest``; ``seqrec-gpt2`` -> ``seqrec-gpt2:latest``."""
    name, _, ver = ref.partition(":")
    if not name.startswith(PREFIX):
        name = PREFIX + name
    return f"{name}:{ver or 'latest'}"


def read_vocab(engine: Engine) -> tuple[list[str], list[str]]:
    """(item id per index, event type per index); index 0 is padding ('')."""
    with engine.connect() as conn:
        item_rows = conn.execute(select(items.c.item_idx, items.c.item_id)).all()
        type_rows = conn.execute(select(event_types.c.type_idx, event_types.c.name)).all()
    vocab = [""] * (max((r[0] for r in item_rows), default=0) + 1)
    for idx, iid in item_rows:
        vocab[idx] = iid
    types = [""] * (max((r[0] for r in type_rows), default=0) + 1)
    for idx, name in type_rows:
        types[idx] = name
    return vocab, types


def _plugin_version(plugin: str) -> str | None:
    for dist in (f"seqrec-{plugin}", "seqrec"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def save(
    model: SeqModel,
    *,
    engine: Engine,
    plugin: str,
    task: str,
    feature_service: str,
    metrics: dict[str, Any],
    popularity: np.ndarray,
    train_info: dict[str, Any],
    store: Path | None = None,
) -> str:
    """Save ``model`` and everything serving needs; returns the BentoML tag."""
    import bentoml

    vocab, types = read_vocab(engine)
    info = {
        "model": model.spec_name,
        "plugin": plugin,
        "plugin_version": _plugin_version(plugin),
        "task": task,
        "feature_service": feature_service,
        "max_len": model.ctx.max_len,
        "trained_at": datetime.now(UTC).isoformat(),
        **train_info,
    }
    labels = {"model": model.spec_name, "task": task, "plugin": plugin}
    # BentoML copies a new model into its store file by file: a process killed midway would
    # leave half a model there (which breaks listing the store). Build it in a staging store
    # on the same filesystem instead, then move it in with one rename.
    models_dir = _models_dir(store)
    staging = _staging_dir(models_dir)
    try:
        with bentoml.models.create(
            store_name(model.spec_name),
            labels=labels,
            metadata=_bento_metadata(info, metrics),
            **store_kwargs(staging),
        ) as bm:
            path = Path(bm.path)
            save_weights(model.cpu(), path)
            kill_point("model_store.save")
            (path / "vocab.json").write_text(json.dumps(vocab))
            (path / "event_types.json").write_text(json.dumps(types))
            (path / "popularity.json").write_text(json.dumps([float(x) for x in popularity]))
            (path / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
            (path / "seqrec.json").write_text(json.dumps(info, indent=2, sort_keys=True))
            name, version = bm.tag.name, str(bm.tag.version)
        final = models_dir / name / version
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging / name / version, final)  # atomic: all of the model or none
        kill_point("model_store.publish")
        latest = final.parent / f".latest-{os.getpid()}"
        latest.write_text(version)
        os.replace(latest, final.parent / "latest")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return f"{name}:{version}"


def _models_dir(store: Path | None) -> Path:
    """The ``models`` directory of the BentoML store at ``store`` (None: BENTOML_HOME's)."""
    path = default_models_dir() if store is None else Path(store) / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _staging_dir(models_dir: Path) -> Path:
    """A fresh staging directory beside ``models_dir``; those of dead processes are removed."""
    from seqrec.runs import process_alive

    root = models_dir.parent / ".staging"
    root.mkdir(exist_ok=True)
    for old in root.iterdir():
        host, _, rest = old.name.rpartition("-pid")
        pid = rest.partition("-")[0]
        if pid.isdigit() and not process_alive(host, int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = root / f"{socket.gethostname()}-pid{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def _bento_metadata(info: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """The small, JSON-safe summary BentoML keeps (the full record is in seqrec.json)."""
    valid = {
        k: float(v)
        for k, v in (metrics.get("valid") or {}).items()
        if isinstance(v, int | float) and v == v  # drop NaN
    }
    return {
        "model": str(info["model"]),
        "task": str(info["task"]),
        "plugin": str(info["plugin"]),
        "valid": valid,
    }


@dataclass
class StoredModel:
    """A model loaded from the store, with its vocabulary and metadata."""

    tag: str
    model: SeqModel
    vocab: list[str]
    event_types: list[str]
    popularity: np.ndarray
    info: dict[str, Any]
    metrics: dict[str, Any]
    path: Path

    def item_index(self) -> dict[str, int]:
        return {iid: i for i, iid in enumerate(self.vocab) if i > 0}


def locate(ref: str, store: Path | None = None) -> tuple[str, Path]:
    """(full tag, directory) of a stored model; a clear error when absent or when BentoML's
    record of it (``model.yaml``, ``latest``) cannot be read."""
    import bentoml
    from bentoml.exceptions import NotFound

    tag = resolve_tag(ref)
    try:
        bm = bentoml.models.get(tag, **_store(store))
    except NotFound:
        raise SeqrecError(
            f"no stored model '{tag}'",
            hint="train one with `seqrec train --model NAME`; `seqrec models --stored` lists stored ones",
        ) from None
    except Exception as exc:  # a damaged model.yaml or latest file
        raise _damaged(_record(tag, store), tag, exc) from None
    return str(bm.tag), Path(bm.path)


def _record(tag: str, store: Path | None) -> Path:
    """The file BentoML reads to find ``tag``: its ``model.yaml``, or the name's ``latest``
    file when that does not name a stored version."""
    name, _, ver = tag.partition(":")
    base = _models_dir(store) / name
    if ver == "latest":
        try:
            ver = (base / "latest").read_text().strip()
        except (OSError, ValueError):
            return base / "latest"
        if not ver or not (base / ver).is_dir():
            return base / "latest"
    return base / ver / "model.yaml"


#: the JSON files of a stored model beside its weights, and the type each must hold
_JSON_FILES = {
    CONTEXT_FILE: dict,
    "seqrec.json": dict,
    "vocab.json": list,
    "event_types.json": list,
    "popularity.json": list,
    "metrics.json": dict,
}


def _damaged(path: Path, tag: str, reason: object) -> SeqrecError:
    """The error for a stored model file that cannot be read: it names the file."""
    text = str(reason).splitlines()[0] if str(reason) else type(reason).__name__
    return SeqrecError(
        f"stored model '{tag}' is damaged: {text}",
        where=str(path),
        hint="retrain it, or serve another version (`seqrec models --stored` lists them)",
    )


def _read_json(path: Path, tag: str) -> Any:
    want = _JSON_FILES[path.name]
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise _damaged(path, tag, "the file is missing") from None
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
        raise _damaged(path, tag, f"not valid JSON ({exc})") from None
    if not isinstance(value, want):
        raise _damaged(path, tag, f"holds a {type(value).__name__}, not a {want.__name__}")
    return value


def _check_weights(path: Path, tag: str) -> None:
    """The safetensors header is whole and covers the file (truncation, garbage)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except FileNotFoundError:
        raise _damaged(path, tag, "the file is missing") from None
    except Exception as exc:  # SafetensorError: header cut short, too large, not JSON
        raise _damaged(path, tag, f"not a readable safetensors file ({exc})") from None


def load(ref: str, device: str | torch.device = "cpu", store: Path | None = None) -> StoredModel:
    """Load a stored model by tag (or short name) onto ``device``. A damaged file (cut
    short, overwritten, not what it should hold) is a :class:`SeqrecError` naming it; weights
    are only ever read through safetensors."""
    tag, path = locate(ref, store)
    files = {name: _read_json(path / name, tag) for name in _JSON_FILES}
    _check_weights(path / WEIGHTS_FILE, tag)
    try:
        model = load_weights(path, device=device)
    except SeqrecError:
        raise
    except Exception as exc:  # weights that do not fit the context, a context not valid, or
        # a bug in the plugin's code: the message names the file, the log keeps the traceback
        log.error("loading %s failed inside the model's code", tag, exc_info=exc)
        raise _damaged(
            path / WEIGHTS_FILE, tag, f"does not fit {CONTEXT_FILE}: {str(exc)[:300]}"
        ) from exc
    vocab, types = files["vocab.json"], files["event_types.json"]
    n_items, n_types = model.ctx.n_items, model.ctx.n_event_types
    if len(vocab) < n_items or not all(isinstance(v, str) for v in vocab):
        raise _damaged(path / "vocab.json", tag, f"not {n_items} item ids (has {len(vocab)})")
    if len(types) < n_types or not all(isinstance(t, str) for t in types):
        raise _damaged(
            path / "event_types.json", tag, f"not {n_types} event types (has {len(types)})"
        )
    pop = files["popularity.json"]
    if not all(isinstance(x, int | float) for x in pop):
        raise _damaged(path / "popularity.json", tag, "holds something other than numbers")
    return StoredModel(
        tag=tag,
        model=model,
        vocab=vocab,
        event_types=types,
        popularity=np.asarray(pop, dtype=np.float64),
        info=files["seqrec.json"],
        metrics=files["metrics.json"],
        path=path,
    )


def _readable(store: Path | None) -> list[Any]:
    """BentoML's record of every seqrec model in the store. One whose record cannot be read
    is left out with a warning naming it: one damaged model must not hide the others."""
    import bentoml

    out = []
    for path in sorted(_models_dir(store).glob(f"{PREFIX}*/*")):
        if not path.is_dir():
            continue  # a name's `latest` file
        try:
            out.append(bentoml.models.get(f"{path.parent.name}:{path.name}", **_store(store)))
        except Exception as exc:
            tag = f"{path.parent.name}:{path.name}"
            log.warning("left out of the listing: %s", _damaged(path / "model.yaml", tag, exc))
    return out


def list_models(store: Path | None = None) -> list[dict[str, Any]]:
    """Stored seqrec models, newest first (damaged ones left out, with a warning)."""
    rows = []
    for bm in _readable(store):
        if not bm.tag.name.startswith(PREFIX):
            continue
        meta: dict[str, Any] = dict(bm.info.metadata or {})
        rows.append(
            {
                "tag": str(bm.tag),
                "created": bm.info.creation_time.isoformat(),
                "labels": dict(bm.info.labels or {}),
                "valid": dict(meta.get("valid") or {}),
            }
        )
    return sorted(rows, key=lambda r: r["created"], reverse=True)


def delete(ref: str, store: Path | None = None) -> str:
    """Delete a stored model; returns its full tag."""
    import bentoml

    tag, _ = locate(ref, store)
    bentoml.models.delete(tag, **_store(store))
    return tag
