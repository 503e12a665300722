"""The bert model's hyperparameters and their defaults (no torch or transformers import, so
registering the plugin stays cheap)."""

from __future__ import annotations

from typing import Any

DEFAULTS: dict[str, Any] = {
    "d_model": 64,
    "n_layers": 2,
    "n_heads": 2,
    "dropout": 0.2,
    "mask_prob": 0.4,
    "last_mask_prob": 0.2,
    "use_event_types": True,
    "use_time_gaps": True,
    "head_transform": True,
    # ml-100k, 3 seeds: test NDCG@10 0.0799 -> 0.0859, validation 0.0997 -> 0.1036
    # (docs/benchmarks.md)
    "label_smoothing": 0.1,
    "item_text": False,  # fuse item text embeddings into the item representations
    # item_text: in training, this share of items is represented by its text alone at each
    # step (for cold-start items; off by default: on ml-100k 0.25 cost 15% NDCG@10)
    "text_id_dropout": 0.0,
    # item_text: outside training, an item without events also borrows the id rows of its
    # nearest trained items by text (seqrec.text.fusion); softmax temperature of the cosines
    "text_neighbours": 0,
    "text_neighbour_temperature": 0.05,
}
