"""Every private Feast API seqrec uses, in one place.

seqrec writes and reads Feast's Redis rows itself (:mod:`seqrec.features.redis_online`), so it
needs the exact bytes Feast uses for entity keys and feature-name hashes; and the postgres
and spark offline stores' data sources live under ``feast.infra``, outside Feast's public namespace. Each
is reached here, imported when first used, and nowhere else. ``tests/test_feast_private.py``
imports every symbol of :data:`SYMBOLS`, so a Feast release that moves one fails that test by
name instead of failing a user's command.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from seqrec.errors import SeqrecError

#: private symbol -> the Feast module it is imported from
SYMBOLS: dict[str, str] = {
    "serialize_entity_key": "feast.infra.key_encoding_utils",
    "_mmh3": "feast.infra.online_stores.helpers",
    "PostgreSQLSource": "feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source",
    "SparkSource": "feast.infra.offline_stores.contrib.spark_offline_store.spark_source",
}


def feast_version() -> str:
    """The installed Feast version ("not installed" without one)."""
    try:
        return version("feast")
    except PackageNotFoundError:
        return "not installed"


def load(module: str, name: str) -> Any:
    """``module.name``; a SeqrecError naming it and the installed Feast version when that
    release does not have it."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise SeqrecError(
            f"Feast {feast_version()} has no {module}.{name}, which seqrec uses ({exc})",
            hint="install the Feast version constraints.txt pins",
        ) from None


def private(name: str) -> Any:
    """The private Feast symbol ``name`` (a key of :data:`SYMBOLS`)."""
    return load(SYMBOLS[name], name)


def entity_key(join_key: str, value: str, serialization_version: int) -> bytes:
    """Feast's serialized entity key for one string join key (the start of an online row's
    Redis key; Feast appends the project name)."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    key = EntityKey(join_keys=[join_key], entity_values=[Value(string_val=value)])
    serialize = private("serialize_entity_key")
    return bytes(serialize(key, entity_key_serialization_version=serialization_version))


def feature_hash(view: str, feature: str) -> bytes:
    """The Redis hash field Feast stores ``view:feature`` under (murmur3, 4 bytes)."""
    return bytes(private("_mmh3")(f"{view}:{feature}"))


def postgres_source(**kwargs: Any) -> Any:
    """A ``PostgreSQLSource`` (the postgres offline store's data source) from ``kwargs``."""
    return private("PostgreSQLSource")(**kwargs)


def spark_source(**kwargs: Any) -> Any:
    """A ``SparkSource`` (the spark offline store's data source) from ``kwargs``; Feast's
    warning that the API is experimental is silenced (seqrec pins the Feast release)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return private("SparkSource")(**kwargs)
