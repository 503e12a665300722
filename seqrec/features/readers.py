"""Feature reads: point-in-time training sets (offline) and users' newest rows (online)."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from seqrec.config import Workspace
from seqrec.errors import StoreUnavailable
from seqrec.features.materialize import redis_online
from seqrec.features.repo import get_store, require_applied

if TYPE_CHECKING:
    from feast import FeatureStore


class OnlineReader(Protocol):
    """What serving reads online features through (either profile)."""

    def read(self, user_ids: list[str]) -> dict[str, list[Any]]: ...

    def ping(self) -> bool: ...


def historical(ws: Workspace, entity_df: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time features for ``entity_df`` (user_id, event_timestamp, extra columns)."""
    store = get_store(ws)
    require_applied(store)
    service = store.get_feature_service(ws.config.features.feature_service)
    job = store.get_historical_features(entity_df=entity_df, features=service)
    try:
        return job.to_df()
    except Exception:
        if ws.config.profile == "embedded":  # a damaged snapshot: the file, not DuckDB's error
            from seqrec.features.snapshots import read_snapshot

            read_snapshot(ws)
        raise


def online(store: FeatureStore, service: Any, user_ids: list[str]) -> dict[str, list[Any]]:
    """Online features for ``user_ids`` (one batched lookup); missing users get None values."""
    resp = store.get_online_features(
        features=service, entity_rows=[{"user_id": u} for u in user_ids]
    )
    return resp.to_dict()


class FeastOnline:
    """Online reads through Feast's ``get_online_features`` (embedded profile)."""

    def __init__(self, store: FeatureStore, service: Any, where: str):
        self.store, self.service, self.where = store, service, where

    def read(self, user_ids: list[str]) -> dict[str, list[Any]]:
        try:
            return online(self.store, self.service, user_ids)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"online store unreadable: {exc}", where=self.where) from None

    def ping(self) -> bool:
        try:
            self.read(["__seqrec_ping__"])
            return True
        except StoreUnavailable:
            return False


def online_reader(ws: Workspace, feature_service: str | None = None) -> OnlineReader:
    """The profile's online reader: ``read(user_ids)`` -> Feast ``to_dict()``-shaped columns
    (None for users not online), raising :class:`StoreUnavailable` when the store is down;
    ``ping()`` -> bool. postgres-redis and spark-redis read Redis directly (one pipelined
    round trip)."""
    if ws.uses_redis:
        return redis_online(ws)
    store = get_store(ws)
    service = store.get_feature_service(feature_service or ws.config.features.feature_service)
    return FeastOnline(store, service, str(ws.path(ws.config.features.online_path)))
