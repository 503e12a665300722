"""seqrec plugin: an LSTM over item (+ event-type, + time-gap) embeddings."""

from __future__ import annotations

from collections.abc import Callable

from seqrec.hookspecs import hookimpl
from seqrec.models import ModelSpec
from seqrec_lstm.model import DEFAULTS, LSTMNextItem


@hookimpl
def register_models(register: Callable[[ModelSpec], None]) -> None:
    register(
        ModelSpec(
            name="lstm",
            build=LSTMNextItem,
            tasks=("next-item", "classify"),
            description="LSTM: next-item at every position (tied embeddings, time-gap buckets); last-state classifier",
            defaults=DEFAULTS,
        )
    )
