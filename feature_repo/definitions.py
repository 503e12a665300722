"""Feast definitions of a seqrec workspace.

`seqrec features apply` and `feast apply` (run in this directory) register the same objects:
both are built by `seqrec.features.definitions.build_definitions` from the workspace's
seqrec.toml: the one in $SEQREC_PROJECT, else the one in this directory's parent. Without a
seqrec.toml (seqrec's own source tree) the definitions use seqrec's defaults.
"""

import os
from pathlib import Path

from seqrec.config import CONFIG_NAME, Config, Workspace, load_workspace
from seqrec.features.definitions import build_definitions
from seqrec.text.features import workspace_item_definitions

_root = Path(os.environ.get("SEQREC_PROJECT") or Path(__file__).resolve().parent.parent)
if (_root / CONFIG_NAME).is_file():
    _ws = load_workspace(_root)
    _items = workspace_item_definitions(_ws)  # item text view, once there are item embeddings
else:
    _ws = Workspace(_root, Config())
    _items = None
_defs = build_definitions(_ws)

user = _defs.user
user_sequence_source = _defs.source
user_sequence_fv = _defs.view
feature_service = _defs.service

if _items is not None:
    item = _items.item
    item_text_source = _items.source
    item_text_fv = _items.view
