"""seqrec plugin: a gradient-boosted tree classifier (LightGBM) over hand-made sequence
features; the tabular baseline the sequence models have to beat."""

from __future__ import annotations

from collections.abc import Callable

from seqrec.hookspecs import hookimpl
from seqrec.models import ModelSpec
from seqrec_gbdt.model import DEFAULTS, GBDTClassifier


@hookimpl
def register_models(register: Callable[[ModelSpec], None]) -> None:
    register(
        ModelSpec(
            name="gbdt",
            build=GBDTClassifier,
            tasks=("classify",),
            description="LightGBM over recency, frequency, event-type counts, gaps and item "
            "popularity (classification only)",
            defaults=DEFAULTS,
        )
    )
