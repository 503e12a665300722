"""Behaviour as text: a pretrained BERT-family encoder fine-tuned to classify sequences
rendered as sentences.

Each sequence is rendered by :mod:`seqrec.text.render` (``"viewed Toy Story (1995)
[Animation] 3 days ago; purchased Heat (1995) [Action] 2 h ago"``, newest last, whole events cut
from the oldest end to fit ``max_length`` tokens), tokenised with the checkpoint's tokenizer and
encoded; a linear head classifies the mean-pooled (or ``[CLS]``) output. The shared trainer
fine-tunes everything through :meth:`SeqModel.loss`: there is no training loop here.

Item titles and event type names come from the workspace (:meth:`TextClassifier.prepare`,
:func:`seqrec.text.titles.item_titles`); a model built without one names items ``item <index>``
and types ``event <index>``.

A stored model is self-contained: beside the fine-tuned weights, uint8 buffers (saved in the
same safetensors file) hold the encoder's config, the tokenizer files, the titles and the type
names, so it loads and serves where the checkpoint it started from does not exist. The
tokenizer runs in Python, so the class says ``traceable = False``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seqrec.errors import SeqrecError
from seqrec.models import Batch, ModelContext, SeqModel
from seqrec.text.render import event_texts, render_sequence
from seqrec_textclf import checkpoint as ckpt

DEFAULTS: dict[str, Any] = {
    "checkpoint": "",  # local Hugging Face directory; "" = [text] checkpoint, else MiniLM
    "max_length": 0,  # tokens per sequence; 0 = the tokenizer's limit (512 for MiniLM)
    "pooling": "mean",  # mean (over real tokens) | cls
    "dropout": 0.1,  # before the classification head
    "micro_batch": 64,  # sequences per forward pass outside training (evaluation, serving)
}
POOLING = ("mean", "cls")
#: uint8 buffers of varying size, resized to the saved size when loading
_BLOBS = ("hf_config", "tokenizer_files", "titles", "type_names")
#: token counts of event texts kept between batches (they repeat across epochs)
_COUNT_CACHE = 200_000


def _blob(text: str) -> Tensor:
    return torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8).clone()


def _text(blob: Tensor) -> str:
    return bytes(blob.cpu().numpy()).decode()


class TextClassifier(SeqModel):
    """A Hugging Face encoder + linear head over sequences rendered as text."""

    traceable = False

    def __init__(self, ctx: ModelContext):
        super().__init__(ctx)
        p = ctx.params
        if p["pooling"] not in POOLING:
            raise SeqrecError(f"unknown pooling '{p['pooling']}'", hint=f"use one of {POOLING}")
        self.pooling = str(p["pooling"])
        self.micro_batch = max(1, int(p["micro_batch"]))
        self.drop = nn.Dropout(float(p["dropout"]))
        self.encoder: nn.Module | None = None
        self.head: nn.Linear | None = None
        self.tokenizer: Any = None
        self.max_length = 0
        self._counts: dict[str, int] = {}
        self.hf_config: Tensor
        self.tokenizer_files: Tensor
        self.titles: Tensor
        self.type_names: Tensor
        for name in _BLOBS:
            self.register_buffer(name, torch.zeros(0, dtype=torch.uint8))
        self._set_names(
            [""] + [f"item {i}" for i in range(1, ctx.n_items)],
            [""] + [f"event {t}" for t in range(1, ctx.n_event_types)],
        )
        #: why the checkpoint could not be loaded; raised on first use. A stored model is
        #: rebuilt from its own buffers, so loading one never needs the checkpoint.
        self.missing: SeqrecError | None = None
        try:
            self._attach(*ckpt.load_pretrained(p["checkpoint"]))
        except SeqrecError as exc:
            self.missing = exc

    # -- building ---------------------------------------------------------------------------

    def _attach(self, encoder: nn.Module, tokenizer: Any) -> None:
        """Use ``encoder`` and ``tokenizer``: a fresh head, the config and tokenizer buffers."""
        config: Any = encoder.config
        limit = min(
            int(getattr(tokenizer, "model_max_length", 512) or 512),
            int(getattr(config, "max_position_embeddings", 512) or 512),
        )
        want = int(self.ctx.params["max_length"])
        self.max_length = min(want, limit) if want > 0 else limit
        tokenizer.truncation_side = "left"  # should the newest event alone be too long
        device = next((b.device for b in self.buffers()), torch.device("cpu"))
        self.encoder = encoder.to(device)
        self.head = nn.Linear(int(config.hidden_size), self.ctx.n_classes).to(device)
        self.tokenizer = tokenizer
        self._counts = {}
        self.hf_config = _blob(ckpt.config_json(encoder)).to(device)
        self.tokenizer_files = _blob(ckpt.tokenizer_files(tokenizer)).to(device)

    def _set_names(self, titles: list[str], type_names: list[str]) -> None:
        device = self.titles.device
        self._titles, self._types = titles, type_names
        self.titles = _blob(json.dumps(titles, ensure_ascii=False)).to(device)
        self.type_names = _blob(json.dumps(type_names, ensure_ascii=False)).to(device)

    def _ready(self) -> None:
        if self.encoder is None:
            raise self.missing or SeqrecError("the text model has no encoder")

    def prepare(self, ws: Any) -> None:
        """Read the item titles and event type names the sequences are rendered with. Without
        a ``checkpoint`` param, a workspace whose item text encoder is a local checkpoint
        (``[text] checkpoint``) fine-tunes that one."""
        from seqrec.text.titles import event_type_names, item_titles

        encoder_dir = ws.config.text.checkpoint
        if not self.ctx.params["checkpoint"] and encoder_dir:
            path = str(ws.path(encoder_dir))
            self._attach(*ckpt.load_pretrained(path))
            self.ctx.params["checkpoint"] = path
            self.missing = None
        self._ready()
        self._set_names(
            item_titles(ws, self.ctx.n_items), event_type_names(ws, self.ctx.n_event_types)
        )

    def fit_classifier(self, tensors: Mapping[str, Tensor]) -> None:
        self._ready()  # a missing checkpoint fails before the first step, clearly

    # -- text -------------------------------------------------------------------------------

    def texts(self, batch: Batch) -> list[str]:
        """Each sequence of ``batch`` as the text the encoder reads (newest events that fit)."""
        self._ready()
        items, types, times = (t.cpu().numpy() for t in (batch.items, batch.types, batch.times))
        now = None if batch.now is None else batch.now.cpu().numpy()
        rows = [
            event_texts(
                items[r],
                types[r],
                times[r],
                self._titles,
                self._types,
                None if now is None else float(now[r]),
            )
            for r in range(len(items))
        ]
        counts = self._token_counts([e for row in rows for e in row])
        budget = self.max_length - int(self.tokenizer.num_special_tokens_to_add(pair=False))
        sep = self._token_counts([";"])[";"]
        return [
            render_sequence(
                row,
                budget=budget,
                count_tokens=lambda evs: [counts[e] for e in evs],
                separator_tokens=sep,
            )
            for row in rows
        ]

    def _token_counts(self, texts: list[str]) -> dict[str, int]:
        """Token counts of ``texts`` (no special tokens), cached between batches."""
        counts = self._counts  # this call's view, whatever another thread does to the cache
        todo = list(dict.fromkeys(t for t in texts if t not in counts))
        if todo:
            if len(counts) + len(todo) > _COUNT_CACHE:
                counts = {}
            ids = self.tokenizer(todo, add_special_tokens=False)["input_ids"]
            counts.update({t: len(i) for t, i in zip(todo, ids, strict=True)})
            self._counts = counts
        return {t: counts[t] for t in texts}

    # -- scoring ----------------------------------------------------------------------------

    def class_logits(self, batch: Batch) -> Tensor:
        texts = self.texts(batch)
        if self.training or len(texts) <= self.micro_batch:
            return self._logits(texts)
        step = self.micro_batch
        return torch.cat([self._logits(texts[i : i + step]) for i in range(0, len(texts), step)])

    def _logits(self, texts: list[str]) -> Tensor:
        assert self.encoder is not None and self.head is not None
        device = self.head.weight.device
        enc = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(device)
        hidden = self.encoder(**enc).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0].float()
        else:
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(self.drop(pooled).to(self.head.weight.dtype))

    # -- warm start and loading -------------------------------------------------------------

    @torch.no_grad()
    def grow_from(self, state: Mapping[str, Tensor], ctx: ModelContext) -> int:
        """Warm start: the weights of a model fine-tuned from the same architecture (titles
        and type names stay those of the current workspace); nothing from another one."""
        saved = state.get("hf_config")
        if saved is None or not torch.equal(saved.cpu(), self.hf_config.cpu()):
            return 0
        return super().grow_from({k: v for k, v in state.items() if k not in _BLOBS}, ctx)

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any, **kw: Any) -> None:
        config = state_dict.get(prefix + "hf_config")
        tok = state_dict.get(prefix + "tokenizer_files")
        same = (
            self.encoder is not None
            and config is not None
            and tok is not None
            and torch.equal(config.cpu(), self.hf_config.cpu())
            and torch.equal(tok.cpu(), self.tokenizer_files.cpu())
        )
        if config is not None and tok is not None and not same:
            # another architecture or tokenizer than this one was built with (or none could
            # be loaded): rebuild from the stored model's own files, then load its weights
            self._attach(*ckpt.from_saved(_text(config), _text(tok)))
            self.missing = None
        for name in _BLOBS:  # the saved blobs' sizes are not known before loading
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kw)
        self._titles = list(json.loads(_text(self.titles)))
        self._types = list(json.loads(_text(self.type_names)))
        self._counts = {}


def rendered(model: SeqModel, batch: Batch) -> list[str]:
    """The texts a text model reads for ``batch`` (for inspection)."""
    if not isinstance(model, TextClassifier):
        raise SeqrecError(f"model '{model.spec_name}' does not read text")
    return model.texts(batch)


__all__ = ["DEFAULTS", "TextClassifier", "rendered"]

_ = np  # numpy arrays flow through event_texts
