"""The Feast objects: entity ``user``, the sequence source and view, the feature service; and
entity ``item`` with the item text view (``item_text_v1``, see :mod:`seqrec.text.features`).

One set of definitions, parameterised by the workspace config (profile, max length, paths).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32, Int64, String

from seqrec.config import Workspace

VIEW_NAME = "user_sequence"
SNAPSHOT_FILE = "user_sequence.parquet"

#: feature name -> Feast type; the order is the order of columns in the snapshot
FEATURES: dict[str, Any] = {
    "item_seq": Array(Int64),
    "type_seq": Array(Int64),
    "ts_seq": Array(Int64),
    "seq_len": Int64,
    "n_events": Int64,
    "n_purchases": Int64,
    "last_gap_s": Int64,
}


@dataclass
class Definitions:
    user: Entity
    source: Any  # FileSource (embedded), PostgreSQLSource (postgres-redis), SparkSource
    view: FeatureView
    service: FeatureService

    @property
    def objects(self) -> list[Any]:
        return [self.user, self.source, self.view, self.service]


def build_definitions(ws: Workspace) -> Definitions:
    """Build the Feast objects for a workspace (no side effects)."""
    user = Entity(
        name="user",
        join_keys=["user_id"],
        value_type=ValueType.STRING,
        description="a user whose behaviour events are sequenced",
    )
    source: Any
    if ws.is_postgres_redis:
        from seqrec.compat.feast_private import postgres_source
        from seqrec.features.pg import TABLE

        source = postgres_source(
            name="user_sequence_source",
            table=f"{ws.config.events.pg_schema}.{TABLE}",
            timestamp_field="event_timestamp",
            created_timestamp_column="created",
            description="per-event sequence features computed in PostgreSQL (refreshed "
            "incrementally)",
        )
    elif ws.is_spark:
        from seqrec.compat.feast_private import spark_source
        from seqrec.features.spark.features import FEATURES_DIR

        source = spark_source(
            name="user_sequence_source",
            path=str(ws.snapshot_dir / FEATURES_DIR),
            file_format="parquet",
            timestamp_field="event_timestamp",
            created_timestamp_column="created",
            description="per-event sequence features computed by Spark SQL (Parquet)",
        )
    else:
        source = FileSource(
            name="user_sequence_source",
            path=str(ws.snapshot_dir / SNAPSHOT_FILE),
            timestamp_field="event_timestamp",
            created_timestamp_column="created",
            description="per-event sequence features computed in SQL (Parquet snapshot)",
        )
    view = FeatureView(
        name=VIEW_NAME,
        entities=[user],
        ttl=timedelta(0),
        schema=[Field(name=n, dtype=t) for n, t in FEATURES.items()],
        source=source,
        online=True,
        description=f"last {ws.config.features.max_len} events per user, as of each event",
        tags={"max_len": str(ws.config.features.max_len)},
    )
    service = FeatureService(name=ws.config.features.feature_service, features=[view])
    return Definitions(user, source, view, service)


ITEM_VIEW_NAME = "item_text_v1"
ITEM_SNAPSHOT_FILE = "item_text.parquet"
#: the PostgreSQL table of the postgres-redis profile's item text source
ITEM_TABLE = "item_text_features"

#: item text feature name -> Feast type, in snapshot column order
ITEM_FEATURES: dict[str, Any] = {
    "embedding": Array(Float32),
    "text_hash": String,
    "item_idx": Int64,
}


@dataclass
class ItemDefinitions:
    item: Entity
    source: Any  # FileSource (embedded), PostgreSQLSource (postgres-redis), SparkSource
    view: FeatureView

    @property
    def objects(self) -> list[Any]:
        return [self.item, self.source, self.view]


def build_item_definitions(ws: Workspace, *, encoder: str, dim: int) -> ItemDefinitions:
    """The item entity and the item text view over the embeddings of ``encoder`` (no side
    effects); the view's tags carry the encoder id and the vector width."""
    item = Entity(
        name="item",
        join_keys=["item_id"],
        value_type=ValueType.STRING,
        description="a catalogue item (the same ids as the events)",
    )
    source: Any
    if ws.is_postgres_redis:
        from seqrec.compat.feast_private import postgres_source

        source = postgres_source(
            name="item_text_source",
            table=f"{ws.config.events.pg_schema}.{ITEM_TABLE}",
            timestamp_field="event_timestamp",
            created_timestamp_column="created",
            description="item text embeddings (a table refreshed from item_embeddings)",
        )
    elif ws.is_spark:
        from seqrec.compat.feast_private import spark_source

        source = spark_source(
            name="item_text_source",
            path=str(ws.snapshot_dir / ITEM_SNAPSHOT_FILE),
            file_format="parquet",
            timestamp_field="event_timestamp",
            created_timestamp_column="created",
            description="item text embeddings (Parquet snapshot of item_embeddings)",
        )
    else:
        source = FileSource(
            name="item_text_source",
            path=str(ws.snapshot_dir / ITEM_SNAPSHOT_FILE),
            timestamp_field="event_timestamp",
            created_timestamp_column="created",
            description="item text embeddings (Parquet snapshot of item_embeddings)",
        )
    view = FeatureView(
        name=ITEM_VIEW_NAME,
        entities=[item],
        ttl=timedelta(0),
        schema=[Field(name=n, dtype=t) for n, t in ITEM_FEATURES.items()],
        source=source,
        online=True,
        description="item text embedding (L2-normalised) and the hash of the text it encodes",
        tags={"encoder": encoder, "dim": str(dim)},
    )
    return ItemDefinitions(item, source, view)
