"""seqrec plugin: a bidirectional BERT encoder over item ids, trained BERT4Rec-style (cloze)."""

from __future__ import annotations

from collections.abc import Callable

from seqrec.hookspecs import hookimpl
from seqrec.models import Choice, Float, ModelContext, ModelSpec, Preset, SeqModel
from seqrec_bert.defaults import DEFAULTS

#: trainer settings of the defaults: the best known configuration on MovieLens-100K. Patience
#: 25: bert's validation NDCG@10 can stay level for 15 epochs before it climbs again (ml-100k,
#: the same seed and configuration on two CPUs: stopped at epoch 43, best 28, test 0.0815; and
#: best 70 of 80, test 0.0942)
TRAIN_DEFAULTS = {"lr": 2e-3, "batch_size": 32, "epochs": 80, "patience": 25}

PRESETS = {
    "fast": Preset(
        train={"batch_size": 128, "lr": 3e-3, "epochs": 30, "patience": 4},
        description="a quick first model: 4x larger batches, at most 30 epochs",
    ),
    "large-catalogue": Preset(
        params={
            "loss": "sampled",
            "num_negatives": 512,
            "d_model": 128,
            "n_heads": 4,
            "transition_bias": False,  # as the preset was measured
        },
        train={"batch_size": 128, "lr": 1e-3},
        description="catalogues of 100k+ items: sampled softmax, wider embeddings",
    ),
}

SEARCH_SPACE = {
    "d_model": Choice((32, 64, 128)),
    "dropout": Float(0.1, 0.5),
    "mask_prob": Float(0.1, 0.6),
    "last_mask_prob": Float(0.0, 0.4),
    "crop_prob": Float(0.0, 0.8),
    "transition_bias": Choice((False, True)),
    "lr": Float(5e-4, 5e-3, log=True),
    "batch_size": Choice((32, 64, 128)),
}


def build(ctx: ModelContext) -> SeqModel:
    """The model, imported when first built: transformers loads only for commands that
    train or load a bert model, not for every command that lists the plugins."""
    from seqrec_bert.model import BertNextItem

    return BertNextItem(ctx)


@hookimpl
def register_models(register: Callable[[ModelSpec], None]) -> None:
    register(
        ModelSpec(
            name="bert",
            build=build,
            tasks=("next-item", "classify"),
            description="BERT4Rec: bidirectional cloze training, scores a MASK appended after the newest event; newest-position classifier",
            defaults=DEFAULTS,
            train_defaults=TRAIN_DEFAULTS,
            presets=PRESETS,
            search_space=SEARCH_SPACE,
            # models stored before these options: no state dropout, no cropped rows
            absent_means={"state_dropout": 0.0, "crop_prob": 0.0},
            # text-aware (item_text=true): no cropped rows, dropout 0.3. ml-100k NDCG@10 by
            # seed (0, 1, 2): with the crop 0.0762, 0.0858 (seeds 0-1); without it 0.0970,
            # 0.0836, 0.0946; and dropout 0.3 0.0982, 0.0914, 0.0952, against id-only 0.0957,
            # 0.0952, 0.0979: 0.99x (docs/benchmarks.md, "MovieLens-100K with item text")
            text_defaults={"crop_prob": 0.0, "dropout": 0.3},
        )
    )
