"""seqrec plugin: a GPT-2 decoder over item ids, trained causally at every position."""

from __future__ import annotations

from collections.abc import Callable

from seqrec.hookspecs import hookimpl
from seqrec.models import Choice, Float, Int, ModelContext, ModelSpec, Preset, SeqModel
from seqrec_gpt2.defaults import DEFAULTS

#: trainer settings of the defaults: the best known configuration on MovieLens-100K
#: (bench/ml100k.py trains exactly these; docs/benchmarks.md has the figures). The weight
#: average (ema_decay): ml-100k test NDCG@10 0.1015 -> 0.1074 over seeds 0-2.
TRAIN_DEFAULTS = {"lr": 2e-3, "batch_size": 32, "epochs": 50, "patience": 8, "ema_decay": 0.995}

PRESETS = {
    "fast": Preset(
        train={"batch_size": 128, "lr": 3e-3, "epochs": 20, "patience": 3},
        description="a quick first model: 4x larger batches, at most 20 epochs",
    ),
    "large-catalogue": Preset(
        # the transition bias off, as measured (docs/benchmarks.md, "Large catalogue"): its
        # counted successors would add up to 65 per item to the saved model
        params={
            "loss": "sampled",
            "num_negatives": 512,
            "d_model": 128,
            "n_head": 4,
            "transition_bias": False,
        },
        train={"batch_size": 128, "lr": 1e-3},
        description="catalogues of 100k+ items: sampled softmax, wider embeddings",
    ),
}

SEARCH_SPACE = {
    "d_model": Choice((32, 64, 128)),
    "n_layer": Int(1, 3),
    "n_head": Choice((1, 2, 4)),
    "dropout": Float(0.1, 0.6),
    "use_time_gaps": Choice((True, False)),
    "transition_bias": Choice((False, True)),
    "lr": Float(5e-4, 5e-3, log=True),
    "batch_size": Choice((32, 64, 128)),
}


def build(ctx: ModelContext) -> SeqModel:
    """The model, imported when first built: transformers loads only for commands that
    train or load a gpt2 model, not for every command that lists the plugins."""
    from seqrec_gpt2.model import GPT2NextItem

    return GPT2NextItem(ctx)


@hookimpl
def register_models(register: Callable[[ModelSpec], None]) -> None:
    register(
        ModelSpec(
            name="gpt2",
            build=build,
            tasks=("next-item", "classify"),
            description="GPT-2 decoder: causal next-item at every position (tied embeddings); last-position classifier",
            defaults=DEFAULTS,
            train_defaults=TRAIN_DEFAULTS,
            presets=PRESETS,
            search_space=SEARCH_SPACE,
            absent_means={"state_dropout": 0.0},  # models stored before the option
        )
    )
