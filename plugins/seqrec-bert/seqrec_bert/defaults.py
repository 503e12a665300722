"""The bert model's hyperparameters and their defaults (no torch or transformers import, so
registering the plugin stays cheap)."""

from __future__ import annotations

from typing import Any

from seqrec.text.params import TEXT_DEFAULTS

DEFAULTS: dict[str, Any] = {
    "d_model": 64,
    "n_layers": 2,
    "n_heads": 2,
    "dropout": 0.2,
    "mask_prob": 0.4,
    "last_mask_prob": 0.2,
    # training rows cut after a random event with this probability (seqrec_bert.cloze.crop_newest)
    "crop_prob": 0.5,
    "use_event_types": True,
    "use_time_gaps": True,
    "head_transform": True,
    # ml-100k, 3 seeds: test NDCG@10 0.0799 -> 0.0859, validation 0.0997 -> 0.1036
    # (docs/benchmarks.md)
    "label_smoothing": 0.1,
    # offsets for the counted successors of the item before the predicted position
    # (seqrec.transitions); with patience 15 (TRAIN_DEFAULTS): docs/benchmarks.md
    "transition_bias": True,
    "now_features": True,  # classify: the events' times relative to the prediction time
    # classify: an example's whole sequence state dropped in training with this probability,
    # so the prediction-time features are learned on their own too (SeqModel.with_now)
    "state_dropout": 0.5,
    # classify: the prediction-time features standardised (batch normalisation) before the MLP
    "now_norm": True,
    **TEXT_DEFAULTS,  # item_text and its options (seqrec.text.fusion)
}
