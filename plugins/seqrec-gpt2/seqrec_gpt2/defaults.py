"""The gpt2 model's hyperparameters and their defaults (no torch or transformers import, so
registering the plugin stays cheap)."""

from __future__ import annotations

from typing import Any

from seqrec.text.params import TEXT_DEFAULTS

DEFAULTS: dict[str, Any] = {
    "d_model": 64,
    "n_layer": 2,
    "n_head": 2,
    "dropout": 0.5,
    "attn_dropout": None,  # None = dropout
    "inner": 4,  # feed-forward width as a multiple of d_model
    "use_event_types": True,
    "use_time_gaps": True,
    # ml-100k, 3 seeds: test NDCG@10 0.0983 -> 0.1014 and seed spread 0.0033 -> 0.0005;
    # validation 0.1160 -> 0.1168 (docs/benchmarks.md)
    "label_smoothing": 0.1,
    # FPMC's first-order term: a learned "what follows item i" vector per item; synthetic log
    # NDCG@10 0.3123 -> 0.3215, ml-100k 0.1013 -> 0.1020 (seed 0): too small to change defaults
    "transition": False,
    # counted successors of the newest item (seqrec.transitions), fitted on top of the model;
    # ml-100k, 3 seeds paired: test NDCG@10 0.1072 -> 0.1080, validation 0.1192 -> 0.1204;
    # without the repeat bias (seed 0) 0.0636 -> 0.0670; synthetic log 0.3027 -> 0.3108
    "transition_bias": True,
    "now_features": True,  # classify: the events' times relative to the prediction time
    # classify: an example's whole sequence state dropped in training with this probability,
    # so the prediction-time features are learned on their own too (SeqModel.with_now)
    "state_dropout": 0.5,
    # classify: the prediction-time features standardised (batch normalisation) before the MLP
    "now_norm": True,
    **TEXT_DEFAULTS,  # item_text and its options (seqrec.text.fusion)
}
