"""seqrec plugin: a bidirectional BERT encoder over item ids, trained BERT4Rec-style (cloze)."""

from __future__ import annotations

from collections.abc import Callable

from seqrec.hookspecs import hookimpl
from seqrec.models import ModelSpec
from seqrec_bert.model import DEFAULTS, BertNextItem


@hookimpl
def register_models(register: Callable[[ModelSpec], None]) -> None:
    register(
        ModelSpec(
            name="bert",
            build=BertNextItem,
            tasks=("next-item", "classify"),
            description="BERT4Rec: bidirectional cloze training, scores a MASK appended after the newest event; newest-position classifier",
            defaults=DEFAULTS,
        )
    )
