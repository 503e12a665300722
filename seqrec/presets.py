"""Presets: which hyperparameters and trainer settings a training run uses, and from where.

A model's configuration comes, lowest precedence first, from:

1. the platform's trainer fallbacks (:class:`~seqrec.training.trainer.TrainSettings`);
2. the defaults: the plugin's (``ModelSpec.defaults`` + ``train_defaults``, the preset called
   ``default``), or the workspace preset called ``default`` (``presets/<model>.json`` in the
   workspace, which ``seqrec tune --save-as default`` writes) where there is one;
3. ``[hyperparams.<model>]`` and the ``[train]`` keys set in ``seqrec.toml``;
4. a preset asked for by name (``--preset``): a plugin preset (``ModelSpec.presets``) or a
   workspace preset, with only the keys it sets;
5. what the caller passes (``--param``, ``--epochs``, ``--seed``).

``Resolved.origin`` says where each value came from; ``seqrec train`` prints the keys that
seqrec.toml sets over the defaults (a workspace made before presets existed lists every
``[train]`` key; comment them out to get the model's tuned settings).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from seqrec.config import TrainConfig, Workspace
from seqrec.errors import SeqrecError
from seqrec.models import DEFAULT_PRESET, PRESET_TRAIN_KEYS, ModelSpec, Preset
from seqrec.training.trainer import TrainSettings

PRESET_DIR = "presets"


@dataclass
class Resolved:
    """The configuration of one run and where it came from."""

    preset: str
    source: str  # "plugin" or "workspace"
    params: dict[str, Any]
    settings: TrainSettings
    origin: dict[str, str] = field(default_factory=dict)  # key -> where its value came from


def _preset_file(ws: Workspace, model: str) -> Path:
    return ws.path(PRESET_DIR) / f"{model}.json"


def workspace_presets(ws: Workspace, model: str) -> dict[str, dict[str, Any]]:
    """The workspace's presets of ``model``: name -> {params, train, description, ...}."""
    path = _preset_file(ws, model)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SeqrecError(
            f"workspace preset file is not valid JSON: {e.msg}",
            where=f"{path}:{e.lineno}:{e.colno}",
            hint="fix or delete it (seqrec tune writes it)",
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise SeqrecError("workspace preset file must map preset names to objects", where=str(path))
    return data


def save_workspace_preset(
    ws: Workspace,
    spec: ModelSpec,
    name: str,
    params: dict[str, Any],
    train: dict[str, Any],
    description: str = "",
    **extra: Any,
) -> Path:
    """Write (or replace) workspace preset ``name`` of ``spec``; atomic. Returns the file."""
    _check_keys(spec, params, train, f"preset '{name}'")
    path = _preset_file(ws, spec.name)
    data = workspace_presets(ws, spec.name)
    data[name] = {"params": params, "train": train, "description": description, **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def _check_keys(spec: ModelSpec, params: dict[str, Any], train: dict[str, Any], where: str) -> None:
    from seqrec.models import COMMON_PARAMS

    bad_params = sorted(set(params) - set(spec.defaults) - set(COMMON_PARAMS))
    bad_train = sorted(set(train) - set(PRESET_TRAIN_KEYS))
    if bad_params or bad_train:
        raise SeqrecError(
            f"{where} of model '{spec.name}' has unknown key(s): "
            f"{', '.join(bad_params + bad_train)}",
            hint=f"hyperparameters: {', '.join(sorted({*spec.defaults, *COMMON_PARAMS}))}; "
            f"trainer settings: {', '.join(PRESET_TRAIN_KEYS)}",
        )


def find_preset(ws: Workspace | None, spec: ModelSpec, name: str | None) -> tuple[str, str, Preset]:
    """(name, source, preset) for ``name``; ``None`` means the default one."""
    wanted = name or DEFAULT_PRESET
    stored = workspace_presets(ws, spec.name) if ws is not None else {}
    if wanted in stored:
        entry = stored[wanted]
        params = dict(entry.get("params", {}))
        train = dict(entry.get("train", {}))
        _check_keys(spec, params, train, f"workspace preset '{wanted}'")
        preset = Preset(
            {**spec.defaults, **params},
            {**spec.train_defaults, **train},
            str(entry.get("description", "")),
        )
        return wanted, "workspace", preset
    if name is not None and name != DEFAULT_PRESET and name not in spec.presets:
        names = [DEFAULT_PRESET, *spec.presets, *(n for n in stored if n not in spec.presets)]
        raise SeqrecError(
            f"model '{spec.name}' has no preset '{name}'",
            hint=f"presets: {', '.join(names)} (see `seqrec models --presets`)",
        )
    return wanted, "plugin", spec.preset(name)


def resolve(
    ws: Workspace,
    spec: ModelSpec,
    *,
    preset: str | None = None,
    params: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Resolved:
    """The hyperparameters and trainer settings of a run (see the module docstring)."""
    # the base: the defaults (the plugin's, or the workspace preset called "default")
    base_name, base_source, base_preset = find_preset(ws, spec, None)
    name, source = base_name, base_source
    named_params: dict[str, Any] = {}
    named_train: dict[str, Any] = {}
    if preset not in (None, DEFAULT_PRESET):
        # a preset asked for by name: only what it sets, above seqrec.toml (it was asked for)
        name, source, _ = find_preset(ws, spec, preset)
        if source == "workspace":
            entry = workspace_presets(ws, spec.name)[name]
            named_params, named_train = dict(entry.get("params", {})), dict(entry.get("train", {}))
        else:
            named_params = dict(spec.presets[name].params)
            named_train = dict(spec.presets[name].train)
    origin: dict[str, str] = {}
    merged_params: dict[str, Any] = {}
    for where, layer in (
        (f"preset {base_name}", dict(base_preset.params)),
        ("seqrec.toml [hyperparams]", ws.config.hyperparams.get(spec.name, {})),
        (f"preset {name}", named_params),
        ("option", params or {}),
    ):
        for k, v in layer.items():
            merged_params[k] = v
            origin[k] = where
    if base_source == "plugin":
        # a text-aware model's own defaults, where nothing above the defaults set the key
        for k, v in spec.defaults_for(merged_params).items():
            if origin.get(k) == f"preset {base_name}" and merged_params[k] != v:
                merged_params[k] = v
                origin[k] = f"preset {base_name} (item_text=true)"
    base = asdict(TrainSettings())
    toml_train = {
        k: v for k, v in ws.config.train.model_dump().items() if v is not None and k in base
    }
    for where, layer in (
        (f"preset {base_name}", dict(base_preset.train)),
        ("seqrec.toml [train]", toml_train),
        (f"preset {name}", named_train),
        ("option", {k: v for k, v in (overrides or {}).items() if v is not None}),
    ):
        for k, v in layer.items():
            if k not in base:
                raise SeqrecError(
                    f"unknown trainer setting '{k}' ({where})",
                    hint=f"known: {', '.join(f.name for f in fields(TrainSettings))}",
                )
            base[k] = v
            if k in PRESET_TRAIN_KEYS:
                origin[k] = where
    _check_train_values(base, origin)
    return Resolved(name, source, merged_params, TrainSettings(**base), origin)


def _check_train_values(settings: dict[str, Any], origin: dict[str, str]) -> None:
    """Every trainer setting within seqrec.toml's bounds, whichever layer set it (a plugin's
    train_defaults, a workspace preset, an option): ``lr=inf`` from a hand-edited preset
    fails here, naming the key and the layer, instead of training on NaN."""
    from pydantic import ValidationError

    checked = {k: v for k, v in settings.items() if k in TrainConfig.model_fields}
    try:
        TrainConfig.model_validate(checked)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = str(error["loc"][0]) if error["loc"] else "?"
        raise SeqrecError(
            f"trainer setting {key}={settings.get(key)!r} "
            f"({origin.get(key, 'trainer default')}): {error['msg']}",
            hint="see `seqrec models --presets` and docs/configuration.md for the bounds",
        ) from None
