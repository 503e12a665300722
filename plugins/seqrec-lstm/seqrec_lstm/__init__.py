"""seqrec plugin: a recurrent model (GRU by default, or LSTM) over item (+ event-type,
+ time-gap) embeddings."""

from __future__ import annotations

from collections.abc import Callable

from seqrec.hookspecs import hookimpl
from seqrec.models import Choice, Float, ModelSpec, Preset
from seqrec_lstm.model import DEFAULTS, TEXT_AWARE_DEFAULTS, LSTMNextItem

#: trainer settings of the defaults: the best known configuration on MovieLens-100K
TRAIN_DEFAULTS = {"lr": 5e-3, "batch_size": 32, "epochs": 80, "patience": 15}

PRESETS = {
    "fast": Preset(
        train={"batch_size": 128, "lr": 8e-3, "epochs": 20, "patience": 3},
        description="a quick first model: 4x larger batches, at most 20 epochs",
    ),
    "large-catalogue": Preset(
        params={"loss": "sampled", "num_negatives": 512, "d_model": 128, "hidden": 256},
        train={"batch_size": 128, "lr": 3e-3},
        description="catalogues of 100k+ items: sampled softmax, wider embeddings",
    ),
}

SEARCH_SPACE = {
    "cell": Choice(("gru", "lstm")),
    "d_model": Choice((32, 64, 128)),
    "hidden": Choice((64, 128, 256)),
    "dropout": Float(0.1, 0.6),
    "transition_bias": Choice((False, True)),
    "lr": Float(1e-3, 1e-2, log=True),
    "batch_size": Choice((32, 64, 128)),
}


@hookimpl
def register_models(register: Callable[[ModelSpec], None]) -> None:
    register(
        ModelSpec(
            name="lstm",
            build=LSTMNextItem,
            tasks=("next-item", "classify"),
            description="GRU (or LSTM, cell=lstm): next-item at every position (tied embeddings, time-gap buckets); last-state classifier",
            defaults=DEFAULTS,
            train_defaults=TRAIN_DEFAULTS,
            presets=PRESETS,
            search_space=SEARCH_SPACE,
            # models stored before these options: LSTMs, trained without the state dropout
            absent_means={"cell": "lstm", "state_dropout": 0.0},
            # text-aware (item_text=true): the fused table overfits at dropout 0.3 (ml-100k,
            # seeds 1-2: 0.1049 and 0.1053 NDCG@10 against id-only 0.1146 and 0.1148; at 0.5:
            # 0.1204 and 0.1117; docs/benchmarks.md, "MovieLens-100K with item text")
            text_defaults=TEXT_AWARE_DEFAULTS,
        )
    )
