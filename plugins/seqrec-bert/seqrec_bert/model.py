"""BERT4Rec next-item model built from a transformers ``BertConfig`` (no hub download).

The item vocabulary gets one extra id, ``n_items``, used as the MASK token. Inputs are
left-padded: position ids count real events only and padding is masked out of attention, so the
amount of padding does not change results.

Training (cloze): the sequence is the input items plus the final target (``targets[:, -1]``)
appended after the newest event, i.e. width L + 1 (the position table has ``max_len + 1``
entries, so nothing is dropped for L <= max_len; wider inputs keep their newest max_len + 1).
In training (not in eval mode), with probability ``crop_prob`` a row is first cut after a
random event (its newer events dropped), so the newest position training predicts is anywhere
in a sequence, as in RecBole, which trains BERT4Rec on every prefix. Random real positions are
replaced by MASK and predicted with a full softmax over real items (tied output:
h @ item_embeddings[:n_items].T + bias). Scoring appends a MASK after the newest event and ranks
items at that position. Event types are zero (padding) at every MASK and at
the appended target, whose type is unknown at inference. Classification uses the newest
position's hidden state, like the gpt2 and lstm plugins. With ``item_text=true`` the item
embeddings (not the MASK row) and the output bias are fused with the item text
(:class:`seqrec.text.fusion.TextFusion`). With ``transition_bias=true`` a masked position's
scores get the offsets of the counted successors of the item before it, where that item is
visible (:mod:`seqrec.transitions`); at inference, of the newest event.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import BertConfig, BertModel

from seqrec.errors import SeqrecError
from seqrec.models import (
    GAP_BUCKETS,
    Batch,
    ItemFactors,
    ModelContext,
    SeqModel,
    newest_distance,
    time_gap_buckets,
)
from seqrec.text.fusion import TextFusion
from seqrec_bert.cloze import append_newest, cloze_positions, crop_newest


class BertNextItem(SeqModel):
    def __init__(self, ctx: ModelContext):
        super().__init__(ctx)
        p = ctx.params
        d = int(p["d_model"])
        if d % int(p["n_heads"]):
            raise SeqrecError(
                f"bert: d_model ({d}) must be a multiple of n_heads ({p['n_heads']})",
                hint="e.g. --param d_model=64 --param n_heads=2",
            )
        self.mask_id = ctx.n_items
        self.width = ctx.max_len + 1  # widest input: max_len events + the appended target/MASK
        self.config = BertConfig(
            vocab_size=ctx.n_items + 1,
            hidden_size=d,
            num_hidden_layers=int(p["n_layers"]),
            num_attention_heads=int(p["n_heads"]),
            intermediate_size=4 * d,
            hidden_dropout_prob=float(p["dropout"]),
            attention_probs_dropout_prob=float(p["dropout"]),
            max_position_embeddings=self.width,
            type_vocab_size=1,
            pad_token_id=0,
        )
        self.backbone = BertModel(self.config, add_pooling_layer=False)
        self.type_emb = (
            nn.Embedding(ctx.n_event_types, d, padding_idx=0) if p["use_event_types"] else None
        )
        if self.type_emb is not None:
            nn.init.normal_(self.type_emb.weight, std=self.config.initializer_range)
            nn.init.zeros_(self.type_emb.weight[0])
        # .get: models saved before these options existed load unchanged
        self.gap_emb = (
            nn.Embedding(GAP_BUCKETS, d, padding_idx=0) if p.get("use_time_gaps", False) else None
        )
        if self.gap_emb is not None:
            nn.init.normal_(self.gap_emb.weight, std=self.config.initializer_range)
            nn.init.zeros_(self.gap_emb.weight[0])
        # BERT's masked-LM head: dense + GELU + LayerNorm before the tied output layer
        self.head = (
            nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d, eps=1e-12))
            if p.get("head_transform", False)
            else None
        )
        self.out_bias = nn.Parameter(torch.zeros(ctx.n_items))
        self.mask_prob = float(p["mask_prob"])
        self.last_mask_prob = float(p["last_mask_prob"])
        self.crop_prob = float(p.get("crop_prob", 0.0))  # .get: models stored before it
        if not 0.0 <= self.crop_prob <= 1.0:
            raise SeqrecError(
                f"bert: crop_prob must be in [0, 1], got {self.crop_prob}",
                hint="the share of training rows cut at a random event, e.g. 0.5 (0: none)",
            )
        self.dropout = nn.Dropout(float(p["dropout"]))
        self.classifier = nn.Linear(d, ctx.n_classes) if ctx.task == "classify" else None
        self.add_now_features(d)
        if p.get("item_text", False):
            init = self.config.initializer_range
            self.text_fusion = TextFusion(ctx, d, init, with_bias=True)

    def output_items(self) -> tuple[Tensor, Tensor]:
        """(item representations [n_items, d], output bias [n_items]): the MASK row is not a
        candidate; with item text, fused with it (ids for items seen in training, + text)."""
        w = self.item_weight[: self.mask_id]
        if self.text_fusion is None:
            return w, self.out_bias
        return self.text_fusion.table(w), self.text_fusion.bias(self.out_bias)

    def _embed_items(self, items: Tensor) -> Tensor:
        if self.text_fusion is None:
            return self.backbone.embeddings.word_embeddings(items)
        table = torch.cat([self.output_items()[0], self.item_weight[self.mask_id :]])
        return table[items]

    @property
    def item_weight(self) -> Tensor:
        """[n_items + 1, d] item embeddings; row 0 is padding, row ``n_items`` is MASK."""
        return self.backbone.embeddings.word_embeddings.weight

    @torch.no_grad()
    def grow_from(self, state: Mapping[str, Tensor], ctx: ModelContext) -> int:
        """As :meth:`SeqModel.grow_from`, but the MASK row (the last of the item embeddings)
        moves to this model's MASK id; the new items' rows keep their fresh initialisation."""
        key = "backbone.embeddings.word_embeddings.weight"
        old = state.get(key)
        if old is not None and len(old) == ctx.n_items + 1 < len(self.item_weight):
            grown = self.item_weight.detach().clone()
            grown[: ctx.n_items] = old[: ctx.n_items]
            grown[self.mask_id] = old[ctx.n_items]
            state = {**state, key: grown}
        return super().grow_from(state, ctx)

    def encode(self, items: Tensor, types: Tensor, times: Tensor | None = None) -> Tensor:
        """[B, T, d] hidden states for left-padded ``items``/``types``/``times`` [B, T]
        (T <= max_len + 1); a time of 0 marks an unknown time (MASK or appended column)."""
        mask = items > 0
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        emb = self._embed_items(items)
        if self.type_emb is not None:
            emb = emb + self.type_emb(types)
        if self.gap_emb is not None and times is not None:
            emb = emb + self.gap_emb(time_gap_buckets(times, mask & (times > 0)))
        out = self.backbone(inputs_embeds=emb, attention_mask=mask.long(), position_ids=positions)
        return out.last_hidden_state

    def _extend(self, batch: Batch, col: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Items, types and times [B, T] with ``col`` appended after the newest event (type
        and time 0: unknown at inference)."""
        zero = torch.zeros_like(col)
        items = append_newest(batch.items, col, keep)[:, -self.width :]
        types = append_newest(batch.types, zero, keep)[:, -self.width :]
        times = append_newest(batch.times, zero, keep)[:, -self.width :]
        return items, types, times

    def _out(self, h: Tensor) -> Tensor:
        return h if self.head is None else self.head(h)

    def next_item_loss(self, batch: Batch) -> Tensor:
        """Cloze loss over randomly masked real positions of the items + final target."""
        assert batch.targets is not None
        last = batch.targets[:, -1]  # [B]
        items, types, times = self._extend(batch, last, last > 0)  # [B, T]
        if self.training and self.crop_prob > 0:  # an augmentation, as RecBole trains on prefixes
            items, types, times = crop_newest([items, types, times], items > 0, self.crop_prob)
        chosen = cloze_positions(items > 0, self.mask_prob, self.last_mask_prob)  # [B, T]
        h = self.encode(
            items.masked_fill(chosen, self.mask_id),
            types.masked_fill(chosen, 0),
            times.masked_fill(chosen, 0),
        )
        # masked positions against real items only (the MASK row is not a candidate)
        emb, bias = self.output_items()  # [n_items, d], [n_items]
        hist = dist = None
        if self.repeat_bias is not None:  # the visible (unmasked) items, both directions
            T = items.shape[1]
            idx = torch.arange(T, device=items.device)
            seen = items.masked_fill(chosen, 0)[:, None, :].expand(-1, T, -1)  # [B, T, T]
            hist = seen[chosen]
            dist = (idx[:, None] - idx[None, :]).abs().expand_as(seen)[chosen]
        out, targets = self._out(h[chosen]), items[chosen]
        # the transition bias (when on): the item before each masked position, where visible
        # (0 after padding or a MASK). Each such pair prev -> target was counted from the
        # training tensors (targets are the items shifted by one), so offsets() may leave it out
        prev = visible_before(items, chosen)[chosen]
        return self.item_loss(out, targets, emb, bias, hist, dist, prev)

    def next_item_scores(self, batch: Batch) -> Tensor:
        """[B, n_items] scores at a MASK appended after the newest event (column 0 = padding)."""
        return self.next_item_scores_and_state(batch)[0]

    def next_item_factors(self, batch: Batch) -> ItemFactors:
        """The hidden state at a MASK appended after the newest event, against the output items."""
        col = torch.full_like(batch.items[:, 0], self.mask_id)
        items, types, times = self._extend(batch, col, torch.ones_like(col, dtype=torch.bool))
        h = self._out(self.encode(items, types, times)[:, -1])  # [B, d]
        emb, bias = self.output_items()
        hist, offsets = self.score_offsets(batch.items, newest_distance(batch.items, 1))
        return ItemFactors(h, emb, bias, hist, offsets)

    def next_item_scores_and_state(self, batch: Batch) -> tuple[Tensor, Tensor]:
        f = self.next_item_factors(batch)
        return f.scores(), f.hidden  # [B, n_items], [B, d]

    def class_logits(self, batch: Batch) -> Tensor:
        """[B, n_classes] from the newest event's hidden state (no MASK appended)."""
        assert self.classifier is not None, "built for next-item, not classification"
        w = -self.width
        h = self.encode(batch.items[:, w:], batch.types[:, w:], batch.times[:, w:])[:, -1]
        return self.classifier(self.with_now(self.dropout(h), batch))


def visible_before(items: Tensor, masked: Tensor) -> Tensor:
    """[B, T] the item before each position of ``items`` [B, T], or 0 where that one is
    padding, outside the window or ``masked`` [B, T]."""
    return F.pad(items, (1, 0))[:, :-1].masked_fill(F.pad(masked, (1, 0))[:, :-1], 0)
