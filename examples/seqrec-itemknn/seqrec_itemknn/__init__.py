"""seqrec plugin (an example of a third-party one): item-based k nearest neighbours.

Item-to-item cosine similarity over co-occurrence in users' sequences, top-M neighbours per
item kept sparse, and the next item scored as the recency-decayed, similarity-weighted sum
over the user's recent items. Next-item only; fitted once from the training data by the
shared trainer (no gradient training), saved, evaluated and served like any model.
"""

from __future__ import annotations

from collections.abc import Callable

from seqrec.hookspecs import hookimpl
from seqrec.models import Choice, Float, Int, ModelSpec
from seqrec_itemknn.model import ItemKNN
from seqrec_itemknn.params import DEFAULTS


@hookimpl
def register_models(register: Callable[[ModelSpec], None]) -> None:
    register(
        ModelSpec(
            name="itemknn",
            build=ItemKNN,
            tasks=("next-item",),
            description="item kNN: cosine neighbours over co-occurrence, recency-decayed",
            defaults=DEFAULTS,
            search_space={
                "neighbours": Choice((20, 50, 100, 200)),
                "shrinkage": Float(0.0, 100.0),
                "window": Int(0, 10),
                "decay": Float(0.3, 1.0),
            },
        )
    )
