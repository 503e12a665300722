"""Feast definitions for this seqrec workspace (written by `seqrec init`).

`seqrec features apply` and `feast -c feature_repo apply` register the same objects; both are
built by `seqrec.features.definitions.build_definitions` from this workspace's seqrec.toml.
"""

import os
from pathlib import Path

from seqrec.config import load_workspace
from seqrec.features.definitions import build_definitions

_defs = build_definitions(
    load_workspace(os.environ.get("SEQREC_PROJECT") or Path(__file__).resolve().parent.parent)
)

user = _defs.user
user_sequence_source = _defs.source
user_sequence_fv = _defs.view
feature_service = _defs.service
