"""The floor for `bench/serve_load.py`: a BentoML service whose /recommend returns a constant
answer of the same shape as seqrec's (no lookup, no model), with BentoML's defaults (one worker,
tracing and metrics middleware, IO descriptors). Run by the benchmark, not by users."""

from __future__ import annotations

import bentoml

ITEMS = [{"item_id": f"i{i:05d}", "score": round(1.0 / (i + 1), 6)} for i in range(10)]


@bentoml.service(name="constant", workers=1, logging={"access": {"enabled": False}})
class Constant:
    @bentoml.api
    async def recommend(self, user_id: str, k: int = 10) -> dict:
        return {"items": ITEMS[:k], "model": "constant", "fallback": False, "feature_age_s": 0.0}
