"""The hyperparameters of text-aware next-item models (``item_text``), shared by the built-in
plugins' defaults; no torch import, so registering a plugin stays cheap
(:mod:`seqrec.text.fusion` reads them)."""

from __future__ import annotations

from typing import Any

#: the text hyperparameters every text-aware plugin takes, with their defaults
TEXT_DEFAULTS: dict[str, Any] = {
    "item_text": False,  # fuse item text embeddings into the item representations
    # in training, this share of items is represented by its text alone at each step (for
    # cold-start items; off by default: on ml-100k 0.25 cost 15% NDCG@10)
    "text_id_dropout": 0.0,
    # outside training, an item without events also borrows the id rows of its nearest
    # trained items by text; softmax temperature of the cosines
    "text_neighbours": 0,
    "text_neighbour_temperature": 0.05,
}


__all__ = ["TEXT_DEFAULTS"]
