"""seqrec plugin: a GPT-2 decoder over item ids, trained causally at every position."""

from __future__ import annotations

from collections.abc import Callable

from seqrec.hookspecs import hookimpl
from seqrec.models import ModelSpec
from seqrec_gpt2.model import DEFAULTS, GPT2NextItem


@hookimpl
def register_models(register: Callable[[ModelSpec], None]) -> None:
    register(
        ModelSpec(
            name="gpt2",
            build=GPT2NextItem,
            tasks=("next-item", "classify"),
            description="GPT-2 decoder: causal next-item at every position (tied embeddings); last-position classifier",
            defaults=DEFAULTS,
        )
    )
