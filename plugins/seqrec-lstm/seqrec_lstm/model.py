"""Recurrent next-item model: a GRU (GRU4Rec's cell, the default) or an LSTM (``cell=lstm``).

Inputs are left-padded. The recurrent layer runs on a right-aligned copy (each row rolled left
by its pad count) through ``pack_padded_sequence``, and its outputs are rolled back, so every
state — in particular the newest one at index -1 — is exact and independent of the amount of
padding.
Item embeddings are tied with the output layer: scores = proj(h) @ item_embeddings.T. With
``item_text=true`` they are fused with the item text (:class:`seqrec.text.fusion.TextFusion`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqrec.errors import SeqrecError
from seqrec.models import (
    GAP_BUCKETS,
    Batch,
    ItemFactors,
    ModelContext,
    SeqModel,
    newest_distance,
    prefix_history,
    time_gap_buckets,
)
from seqrec.text.fusion import TextFusion
from seqrec.text.params import TEXT_DEFAULTS

__all__ = [
    "DEFAULTS",
    "GAP_BUCKETS",
    "TEXT_AWARE_DEFAULTS",
    "LSTMNextItem",
    "roll_rows",
    "time_gap_buckets",
]

DEFAULTS: dict[str, Any] = {
    "d_model": 64,
    "hidden": 128,
    "n_layers": 1,
    # GRU4Rec's cell and dropout (with patience 15, at most 80 epochs): ml-100k, seeds 0-2,
    # test NDCG@10 without the repeat bias 0.0637 -> 0.0748 (GRU4Rec 0.0694), with it
    # 0.1026 -> 0.1143 (docs/benchmarks.md); stored models without the key are LSTMs
    # (``.get`` below, ``absent_means`` in the spec)
    "cell": "gru",  # or "lstm"
    "dropout": 0.3,
    "use_event_types": True,
    "use_time_gaps": True,
    "label_smoothing": 0.0,
    "transition_bias": False,  # counted successors of the newest item (seqrec.transitions)
    "now_features": True,  # classify: the events' times relative to the prediction time
    # classify: an example's whole sequence state dropped in training with this probability,
    # so the prediction-time features are learned on their own too (SeqModel.with_now)
    "state_dropout": 0.5,
    # classify: the prediction-time features standardised (batch normalisation) before the MLP
    "now_norm": True,
    **TEXT_DEFAULTS,  # item_text and its options (seqrec.text.fusion)
}

#: what differs from DEFAULTS for a text-aware model (``item_text=true``, ModelSpec.text_defaults)
TEXT_AWARE_DEFAULTS: dict[str, Any] = {"dropout": 0.5}


#: the recurrent cells the plugin builds (the attribute keeps its name for saved models)
CELLS: dict[str, type[nn.LSTM] | type[nn.GRU]] = {"lstm": nn.LSTM, "gru": nn.GRU}


def roll_rows(x: Tensor, shift: Tensor) -> Tensor:
    """out[b, i] = x[b, (i + shift[b]) % L] for x [B, L, ...] and shift [B]."""
    L = x.shape[1]
    idx = (torch.arange(L, device=x.device) + shift[:, None]) % L  # [B, L]
    idx = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, idx)


class LSTMNextItem(SeqModel):
    def __init__(self, ctx: ModelContext):
        super().__init__(ctx)
        p = ctx.params
        d, hidden, n_layers = int(p["d_model"]), int(p["hidden"]), int(p["n_layers"])
        self.item_emb = nn.Embedding(ctx.n_items, d, padding_idx=0)
        self.type_emb = (
            nn.Embedding(ctx.n_event_types, d, padding_idx=0) if p["use_event_types"] else None
        )
        self.gap_emb = nn.Embedding(GAP_BUCKETS, d, padding_idx=0) if p["use_time_gaps"] else None
        self.dropout = nn.Dropout(float(p["dropout"]))
        cell = str(p.get("cell", "lstm"))  # .get: models saved before the option load unchanged
        if cell not in CELLS:
            raise SeqrecError(
                f"lstm: cell must be one of {', '.join(CELLS)}, got {cell!r}",
                hint="e.g. --param cell=gru",
            )
        self.lstm = CELLS[cell](
            d,
            hidden,
            num_layers=n_layers,
            batch_first=True,
            dropout=float(p["dropout"]) if n_layers > 1 else 0.0,
        )
        self.proj = nn.Linear(hidden, d)
        self.classifier = nn.Linear(d, ctx.n_classes) if ctx.task == "classify" else None
        self.add_now_features(d)
        if p.get("item_text", False):
            self.text_fusion = TextFusion(ctx, d, init_std=1.0)  # nn.Embedding's N(0, 1)

    def item_table(self) -> Tensor:
        """[n_items, d] item representations: input embeddings = tied output rows."""
        w = self.item_emb.weight
        return w if self.text_fusion is None else self.text_fusion.table(w)

    def embed(self, batch: Batch) -> Tensor:
        """[B, L, d] input embeddings (zero at padding)."""
        if self.text_fusion is None:
            emb = self.item_emb(batch.items)
        else:
            emb = self.item_table()[batch.items]
        if self.type_emb is not None:
            emb = emb + self.type_emb(batch.types)
        if self.gap_emb is not None:
            emb = emb + self.gap_emb(time_gap_buckets(batch.times, batch.mask))
        return self.dropout(emb)

    def hidden(self, batch: Batch) -> Tensor:
        """[B, L, d] output states, left-aligned like the input; padding positions carry no meaning."""
        x = self.embed(batch)
        L = x.shape[1]
        lengths = batch.mask.sum(1)  # [B]
        pad = L - lengths
        right = roll_rows(x, pad)  # right-padded: real events first
        packed = pack_padded_sequence(
            right, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=L)  # [B, L, hidden]
        return self.proj(self.dropout(roll_rows(out, -pad)))

    def next_item_loss(self, batch: Batch) -> Tensor:
        """Cross-entropy at every position with a target (the platform's loss policy)."""
        assert batch.targets is not None
        sel = batch.targets > 0  # [B, L]
        h = self.hidden(batch)[sel]  # [N, d]
        hist = dist = None
        if self.repeat_bias is not None:
            hist, dist = (x[sel] for x in prefix_history(batch.items))
        prev = batch.items[sel]
        return self.item_loss(h, batch.targets[sel], self.item_table(), None, hist, dist, prev)

    def next_item_scores(self, batch: Batch) -> Tensor:
        return self.next_item_scores_and_state(batch)[0]

    def next_item_factors(self, batch: Batch) -> ItemFactors:
        h = self.hidden(batch)[:, -1]  # [B, d]
        hist, offsets = self.score_offsets(batch.items, newest_distance(batch.items))
        return ItemFactors(h, self.item_table(), None, hist, offsets)

    def next_item_scores_and_state(self, batch: Batch) -> tuple[Tensor, Tensor]:
        f = self.next_item_factors(batch)
        return f.scores(), f.hidden  # [B, n_items], [B, d]

    def class_logits(self, batch: Batch) -> Tensor:
        assert self.classifier is not None, "built for next-item, not classification"
        return self.classifier(self.with_now(self.dropout(self.hidden(batch)[:, -1]), batch))
