"""GPT-2 next-item model built from a transformers ``GPT2Config`` (no hub download).

Inputs are left-padded: position ids count real events only, so the newest event is always at
index -1 and its position id is (sequence length - 1). Item embeddings are tied with the output
layer: scores = hidden @ item_embeddings.T. With ``item_text=true`` the item embeddings are
fused with the item text (:class:`seqrec.text.fusion.TextFusion`), on both sides.

Scoring (eval mode) needs the newest position only: :meth:`GPT2NextItem.newest_hidden` runs the
same blocks with the same weights, but the last block computes its attention query, projection
and feed-forward for that one position (a test checks it equals the full forward).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import GPT2Config, GPT2Model
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

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


class GPT2NextItem(SeqModel):
    def __init__(self, ctx: ModelContext):
        super().__init__(ctx)
        p = ctx.params
        if int(p["d_model"]) % int(p["n_head"]):
            raise SeqrecError(
                f"gpt2: d_model ({p['d_model']}) must be a multiple of n_head ({p['n_head']})",
                hint="e.g. --param d_model=64 --param n_head=2",
            )
        self.config = GPT2Config(
            vocab_size=ctx.n_items,
            n_positions=ctx.max_len,
            n_embd=p["d_model"],
            n_layer=p["n_layer"],
            n_head=p["n_head"],
            n_inner=int(p.get("inner", 4) * p["d_model"]),
            resid_pdrop=p["dropout"],
            embd_pdrop=p["dropout"],
            attn_pdrop=p["dropout"] if p.get("attn_dropout") is None else p["attn_dropout"],
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
            # GPT-2's tanh GELU as one fused kernel (same formula as "gelu_new", 2x faster)
            activation_function="gelu_pytorch_tanh",
        )
        self.backbone = GPT2Model(self.config)
        self.type_emb = (
            nn.Embedding(ctx.n_event_types, p["d_model"], padding_idx=0)
            if p["use_event_types"]
            else None
        )
        # .get: models saved before these options existed load unchanged
        self.gap_emb = (
            nn.Embedding(GAP_BUCKETS, p["d_model"], padding_idx=0)
            if p.get("use_time_gaps", False)
            else None
        )
        for emb in (self.type_emb, self.gap_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, std=self.config.initializer_range)
                nn.init.zeros_(emb.weight[0])
        self.dropout = nn.Dropout(p["dropout"])
        self.classifier = nn.Linear(p["d_model"], ctx.n_classes) if ctx.task == "classify" else None
        self.add_now_features(int(p["d_model"]))
        if p.get("item_text", False):
            self.text_fusion = TextFusion(ctx, p["d_model"], self.config.initializer_range)
        # transition=true: FPMC's first-order term (Rendle et al., WWW 2010), a per-item vector
        # added to the final hidden state of the position that item sits at, so "what follows
        # item i" has its own row instead of being squeezed through the feed-forward layers;
        # zero at the start (the plain model). Off by default: docs/benchmarks.md has the runs
        self.transition = (
            nn.Embedding(ctx.n_items, p["d_model"], padding_idx=0)
            if p.get("transition", False)
            else None
        )
        if self.transition is not None:
            nn.init.zeros_(self.transition.weight)

    def item_table(self) -> Tensor:
        """[n_items, d] item representations: input embeddings = tied output rows."""
        w = self.backbone.wte.weight
        return w if self.text_fusion is None else self.text_fusion.table(w)

    def _inputs(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(input embeddings [B, L, d] without positions, position ids [B, L])."""
        positions = (batch.mask.long().cumsum(1) - 1).clamp(min=0)
        if self.text_fusion is None:
            emb = self.backbone.wte(batch.items)
        else:
            emb = self.item_table()[batch.items]
        if self.type_emb is not None:
            emb = emb + self.type_emb(batch.types)
        if self.gap_emb is not None:
            emb = emb + self.gap_emb(time_gap_buckets(batch.times, batch.mask))
        return emb, positions

    def hidden(self, batch: Batch) -> Tensor:
        """[B, L, d] hidden states; padding positions carry no meaning."""
        emb, positions = self._inputs(batch)
        mask = batch.mask.long()
        out = self.backbone(inputs_embeds=emb, attention_mask=mask, position_ids=positions)
        h = out.last_hidden_state
        if self.transition is not None:
            h = h + self.transition(batch.items)
        return h

    def newest_hidden(self, batch: Batch) -> Tensor:
        """[B, d]: ``hidden(batch)[:, -1]`` in eval mode, with the last block computed for the
        newest position only."""
        emb, positions = self._inputs(batch)
        x = emb + self.backbone.wpe(positions)
        mask = batch.mask
        n = x.shape[1]
        seen = torch.ones(n, n, dtype=torch.bool, device=x.device).tril() & mask[:, None, :]
        # a query that sees no key (left padding) sees itself instead: no empty softmax rows;
        # every other mask row is the full forward's (causal, real keys only)
        alone = torch.eye(n, dtype=torch.bool, device=x.device) & ~seen.any(-1, keepdim=True)
        seen = seen | alone
        blocks = list(self.backbone.h)
        for block in blocks[:-1]:
            x = _block(block, x, seen[:, None], newest_only=False)
        x = _block(blocks[-1], x, mask[:, None, None, :], newest_only=True)
        h = self.backbone.ln_f(x[:, -1])
        if self.transition is not None:
            h = h + self.transition(batch.items[:, -1])
        return h

    def _newest(self, batch: Batch) -> Tensor:
        return self.hidden(batch)[:, -1] if self.training else self.newest_hidden(batch)

    def next_item_loss(self, batch: Batch) -> Tensor:
        assert batch.targets is not None
        sel = batch.targets > 0  # [B, L] positions that have a next item
        h = self.hidden(batch)[sel]  # [N, d]
        hist = dist = None
        if self.repeat_bias is not None:
            hist, dist = (x[sel] for x in prefix_history(batch.items))
        prev = batch.items[sel]
        return self.item_loss(h, batch.targets[sel], self.item_table(), None, hist, dist, prev)

    def next_item_scores(self, batch: Batch) -> Tensor:
        return self.next_item_scores_and_state(batch)[0]

    def next_item_factors(self, batch: Batch) -> ItemFactors:
        h = self._newest(batch)
        hist, offsets = self.score_offsets(batch.items, newest_distance(batch.items))
        return ItemFactors(h, self.item_table(), None, hist, offsets)

    def next_item_scores_and_state(self, batch: Batch) -> tuple[Tensor, Tensor]:
        f = self.next_item_factors(batch)
        return f.scores(), f.hidden

    def class_logits(self, batch: Batch) -> Tensor:
        # GPT2ForSequenceClassification-style: the newest (last real, as inputs are
        # left-padded) position summarises the sequence.
        assert self.classifier is not None, "built for next-item, not classification"
        return self.classifier(self.with_now(self.dropout(self._newest(batch)), batch))


def _block(block: GPT2Block, x: Tensor, attn_mask: Tensor, newest_only: bool) -> Tensor:
    """One GPT-2 block (eval mode: no dropout, no cache) over ``x`` [B, L, d]; ``attn_mask``
    [B, 1, Q, L] says which keys each query sees. ``newest_only``: queries, projection and
    feed-forward for the last position only ([B, 1, d] out)."""
    attn = block.attn
    b, _, d = x.shape
    q, k, v = attn.c_attn(block.ln_1(x)).split(attn.split_size, dim=2)
    if newest_only:
        q, x = q[:, -1:], x[:, -1:]
    heads = (b, -1, attn.num_heads, attn.head_dim)
    q, k, v = (t.reshape(heads).transpose(1, 2) for t in (q, k, v))
    if newest_only:  # one query: plain softmax(q k^T) v, the same for every row of a batch
        w = (q @ k.transpose(-1, -2)) * attn.scaling
        w = w.masked_fill(~attn_mask, torch.finfo(w.dtype).min).softmax(dim=-1)
        out = w @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=attn.scaling)
    x = x + attn.c_proj(out.transpose(1, 2).reshape(b, -1, d))
    return x + block.mlp(block.ln_2(x))
