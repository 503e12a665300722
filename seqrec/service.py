"""The BentoML service: ``bentoml serve seqrec.service:SeqrecService`` (or ``seqrec serve``).

Configured by environment: ``SEQREC_PROJECT`` (workspace directory), ``SEQREC_MODEL`` (model
tag or short name; default: the workspace's default model, latest version), ``BENTOML_HOME``
(the model store; ``seqrec serve`` sets it from the workspace).
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import bentoml
from pydantic import ConfigDict, Field

MAX_ID_LEN = 256
MAX_K = 1000


class RecommendRequest(bentoml.IODescriptor):
    """POST /recommend body. Unknown fields are rejected (400), not silently ignored."""

    model_config = ConfigDict(extra="forbid")

    user_id: Annotated[str, Field(min_length=1, max_length=MAX_ID_LEN)]
    k: Annotated[int, Field(ge=1, le=MAX_K)] = 10
    exclude_seen: bool = True


@bentoml.service(name="seqrec", traffic={"timeout": 30}, workers=1)
class SeqrecService:
    def __init__(self) -> None:
        from seqrec.config import load_workspace
        from seqrec.recommend import Recommender

        ws = load_workspace(os.environ.get("SEQREC_PROJECT"))
        self.recommender = Recommender(ws, os.environ.get("SEQREC_MODEL"))
        self.max_k = ws.config.serve.max_k

    @bentoml.api(input_spec=RecommendRequest)
    def recommend(
        self,
        user_id: Annotated[str, Field(min_length=1, max_length=MAX_ID_LEN)],
        k: Annotated[int, Field(ge=1, le=MAX_K)] = 10,
        exclude_seen: bool = True,
    ) -> dict[str, Any]:
        """Top-k next items for a user from their online sequence (popularity if none)."""
        return self.recommender.recommend(user_id, min(k, self.max_k), exclude_seen)
