"""seqrec plugin: behaviour as text. A pretrained BERT-family encoder (default: the packaged
all-MiniLM-L6-v2) fine-tuned to classify sequences rendered as sentences of item titles, event
types and relative times; classification only."""

from __future__ import annotations

from collections.abc import Callable

from seqrec.hookspecs import hookimpl
from seqrec.models import Choice, Float, ModelSpec, Preset, SearchSpace
from seqrec_textclf.model import DEFAULTS, TextClassifier

#: fine-tuning a pretrained encoder: a small learning rate with warmup, small batches, few
#: epochs (early stopping on validation ROC-AUC keeps the best one)
TRAIN_DEFAULTS = {
    "lr": 5e-5,
    "batch_size": 16,
    "epochs": 4,
    "patience": 2,
    "warmup_ratio": 0.1,
    "weight_decay": 0.01,
    "grad_clip": 1.0,
}

PRESETS = {
    "fast": Preset(
        params={"max_length": 128},
        train={"batch_size": 32, "epochs": 2, "lr": 8e-5},
        description="a quick first model: the newest 128 tokens, 2 epochs",
    ),
}

SEARCH_SPACE: SearchSpace = {
    "lr": Float(1e-5, 1e-4, log=True),
    "batch_size": Choice((8, 16, 32)),
    "dropout": Float(0.0, 0.3),
    "pooling": Choice(("mean", "cls")),
}


@hookimpl
def register_models(register: Callable[[ModelSpec], None]) -> None:
    register(
        ModelSpec(
            name="text-bert",
            build=TextClassifier,
            tasks=("classify",),
            description="behaviour as text: a fine-tuned MiniLM (or local BERT) reads "
            "sequences as sentences of titles, event types, times (classification only)",
            defaults=DEFAULTS,
            train_defaults=TRAIN_DEFAULTS,
            presets=PRESETS,
            search_space=SEARCH_SPACE,
        )
    )
