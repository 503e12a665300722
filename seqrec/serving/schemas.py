"""Request and response bodies of the service's endpoints, bounded by the workspace's
``[serve]`` limits (id length, k, events, batch size), read once at import."""

from __future__ import annotations

from typing import Annotated

import bentoml
from pydantic import BaseModel, ConfigDict, Field

from seqrec.bento import serving_project
from seqrec.config import ServeConfig


def serve_config() -> ServeConfig:
    """The service workspace's [serve] section (defaults when there is none, e.g. at
    ``bentoml build``)."""
    from seqrec.config import load_workspace
    from seqrec.errors import SeqrecError

    try:
        return load_workspace(serving_project()[0]).config.serve
    except SeqrecError:
        return ServeConfig()


#: the [serve] section read at import: its limits bound the request models below
LIMITS = serve_config()

Id = Annotated[str, Field(min_length=1, max_length=LIMITS.max_id_len)]
K = Annotated[int, Field(ge=1, le=LIMITS.max_k, description="number of items to return")]
ExcludeItems = Annotated[
    list[Id],
    Field(max_length=LIMITS.max_events, description="item ids never to return"),
]


class ApiRequest(bentoml.IODescriptor):
    """The base of every endpoint's request body: unknown fields and loose types rejected."""

    model_config = ConfigDict(extra="forbid", strict=True)


class RecommendRequest(ApiRequest):
    """POST /recommend body. Unknown fields are rejected (400), not silently ignored."""

    user_id: Id
    k: K = 10
    exclude_seen: bool = Field(True, description="leave out items already in the user's history")
    exclude_items: ExcludeItems = Field(default_factory=list)


class RecommendBatchRequest(ApiRequest):
    """POST /recommend_batch body: the same k and exclusions for every user."""

    user_ids: Annotated[list[Id], Field(min_length=1, max_length=LIMITS.max_batch)]
    k: K = 10
    exclude_seen: bool = True
    exclude_items: ExcludeItems = Field(default_factory=list)


class SessionEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    item_id: Id
    event_type: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    timestamp: Annotated[float, Field(ge=0, le=1e11, description="epoch seconds")] | None = None


class EventsRequest(ApiRequest):
    """POST /recommend_from_events body: a session (oldest event first) not in the store yet."""

    events: Annotated[list[SessionEvent], Field(max_length=LIMITS.max_events)]
    k: K = 10
    exclude_seen: bool = True
    exclude_items: ExcludeItems = Field(default_factory=list)


class PredictRequest(ApiRequest):
    """POST /predict body (classification models)."""

    user_id: Id


class ReloadRequest(BaseModel):
    """POST /admin/reload body (optional): the model to serve; default: the startup one."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: Annotated[str, Field(min_length=1, max_length=LIMITS.max_id_len)] | None = None


class ScoredItem(BaseModel):
    item_id: str
    score: float


class Recommendation(bentoml.IODescriptor):
    items: list[ScoredItem]
    model: str = Field(description="tag of the model that answered")
    fallback: bool = Field(description="true: popularity ranking (unknown user or store outage)")
    feature_age_s: float | None = Field(description="seconds since the newest event used")


class SessionRecommendation(Recommendation):
    unknown_items: int = Field(description="events whose item the model does not know (skipped)")


class BatchRecommendation(bentoml.IODescriptor):
    results: list[Recommendation]


class Prediction(bentoml.IODescriptor):
    probabilities: dict[str, float]
    model: str
    fallback: bool
    feature_age_s: float | None
