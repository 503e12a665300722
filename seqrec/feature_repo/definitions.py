"""Feast definitions for this seqrec workspace (written by `seqrec init`).

`seqrec features apply` and `feast -c feature_repo apply` register the same objects; both are
built by `seqrec.features.definitions.build_definitions` from this workspace's seqrec.toml.
"""

import os
from pathlib import Path

from seqrec.config import load_workspace
from seqrec.features.definitions import build_definitions
from seqrec.text.features import workspace_item_definitions

_ws = load_workspace(os.environ.get("SEQREC_PROJECT") or Path(__file__).resolve().parent.parent)
_defs = build_definitions(_ws)
_items = workspace_item_definitions(_ws)  # item text view, once there are item embeddings

user = _defs.user
user_sequence_source = _defs.source
user_sequence_fv = _defs.view
feature_service = _defs.service

if _items is not None:
    item = _items.item
    item_text_source = _items.source
    item_text_fv = _items.view
