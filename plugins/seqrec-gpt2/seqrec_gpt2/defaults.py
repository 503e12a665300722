"""The gpt2 model's hyperparameters and their defaults (no torch or transformers import, so
registering the plugin stays cheap)."""

from __future__ import annotations

from typing import Any

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
    "item_text": False,  # fuse item text embeddings into the item representations
    # item_text: in training, this share of items is represented by its text alone at each
    # step (for cold-start items; off by default: on ml-100k 0.25 cost 15% NDCG@10)
    "text_id_dropout": 0.0,
    # item_text: outside training, an item without events also borrows the id rows of its
    # nearest trained items by text (seqrec.text.fusion); softmax temperature of the cosines
    "text_neighbours": 0,
    "text_neighbour_temperature": 0.05,
}
