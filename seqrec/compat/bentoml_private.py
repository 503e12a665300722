"""Every private BentoML API seqrec uses, in one place.

BentoML's public API has no way to pick a model store per call, to read the configured store
directory or the CORS setting, to give a Bento environment variables from Python, or to change
a stored model's labels; seqrec needs all five. Each is reached here, imported when first used
(``bentoml`` is slow to import), and nowhere else. ``tests/test_bentoml_private.py`` imports
every symbol of :data:`SYMBOLS`, checks the private keyword :data:`STORE_KWARG` and relabels a
model, so a BentoML release that moves one fails that test by name instead of failing a
user's command.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from seqrec.errors import SeqrecError

#: private symbol -> the BentoML module it is imported from
SYMBOLS: dict[str, str] = {
    "ModelStore": "bentoml._internal.models",
    "BentoMLContainer": "bentoml._internal.configuration.containers",
    "BentoEnvSchema": "bentoml._internal.bento.build_config",
}

#: the private keyword of ``bentoml.models.get/list/create/delete`` that selects a model store
STORE_KWARG = "_model_store"


def bentoml_version() -> str:
    """The installed BentoML version ("not installed" without one)."""
    try:
        return version("bentoml")
    except PackageNotFoundError:
        return "not installed"


def private(name: str) -> Any:
    """The private BentoML symbol ``name`` (a key of :data:`SYMBOLS`); a SeqrecError naming it
    and the installed BentoML version when that release does not have it."""
    module = SYMBOLS[name]
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise SeqrecError(
            f"BentoML {bentoml_version()} has no {module}.{name}, which seqrec uses ({exc})",
            hint="install the BentoML version constraints.txt pins",
        ) from None


def store_kwargs(models_dir: Path) -> dict[str, Any]:
    """Keyword arguments for ``bentoml.models.*`` that select the model store at ``models_dir``
    (a ``models`` directory) instead of the process-wide one of ``BENTOML_HOME``."""
    return {STORE_KWARG: private("ModelStore")(models_dir)}


def default_models_dir() -> Path:
    """The ``models`` directory of the process-wide store (``BENTOML_HOME``)."""
    return Path(private("BentoMLContainer").model_store_dir.get())


def cors_enabled() -> bool:
    """Whether BentoML's CORS middleware is configured on (False for a BentoML without that
    setting: it has no CORS middleware either)."""
    try:
        return bool(private("BentoMLContainer").http.cors.enabled.get())
    except (SeqrecError, AttributeError, KeyError):  # no container, or no such setting
        return False


def bento_env(name: str, value: str) -> Any:
    """An environment variable of a Bento, for ``bentoml.bentos.build(envs=[...])``."""
    return private("BentoEnvSchema")(name=name, value=value)


def relabel(model: Any, labels: dict[str, str]) -> dict[str, str]:
    """Set labels on a stored ``bentoml.Model`` in place (an empty value removes one), written
    to its model.yaml at once; returns its labels now."""
    for key, value in labels.items():
        if value:
            model.info.labels[key] = value
        else:
            model.info.labels.pop(key, None)
    model.flush()
    return dict(model.info.labels)
