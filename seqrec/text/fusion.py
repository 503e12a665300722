"""Item representations from ids and text, for text-aware next-item models (``item_text=true``).

An item's representation is its id embedding plus a learned projection of its text embedding,
``e_i = id_i + W t_i``. The id embedding counts only for items with events in the training
data (``id_known``): an item the model never saw in training (a cold-start item imported with
text, or one whose events all fall after the training cutoff) is represented by its text alone,
``W t_i``, and so is an item newer than the model (:meth:`TextFusion.vectors`, which the
service uses). Items without text keep their id embedding alone (their text row is zero), as in
an id-only model.

The text matrix and the mask are buffers: saved with the model, never copied by a warm start
(:data:`seqrec.models.DATA_BUFFERS`). In eval mode without gradients the fused table is
computed once and reused until a weight changes.

**Text neighbours** (``text_neighbours = k``, a hyperparameter): outside training, an item
without an id row also borrows one, the weighted mean of the id rows (and output biases) of the
``k`` trained items whose text is nearest to its own (cosine; weights a softmax of the cosines
at temperature ``text_neighbour_temperature``). ``W t_i`` carries what text predicts for every
item; the neighbours carry what the events said about items like it (the kNN mapping from
content to collaborative space of Gantner et al., ICDM 2010). Known items are unchanged.

In training, ``text_id_dropout`` (a hyperparameter, off by default) of the items, drawn anew at
every step, are represented by their text alone, as cold-start items are when served: the
projection learns to stand on its own, not just to correct an id row (the idea of DropoutNet,
Volkovs et al., NeurIPS 2017). On ml-100k it ranks held-out items higher (median rank 741 ->
449 at 0.25) but costs 15% NDCG@10 on the standard protocol, so it is an option.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from seqrec.errors import SeqrecError
from seqrec.models import ModelContext
from seqrec.text.params import TEXT_DEFAULTS


class TextFusion(nn.Module):
    """``table(id_weight)`` = id rows (items seen in training) + ``W`` text rows, [n_items, d].

    ``init_std``: the std of the projection's entries, that of the plugin's id embeddings (a
    unit text vector then gives rows of the same scale). ``with_bias``: also a learned text
    term for a plugin's output bias (:meth:`bias`)."""

    text_table: Tensor  # [n_items, dim] buffer
    id_known: Tensor  # [n_items] bool buffer

    def __init__(self, ctx: ModelContext, d: int, init_std: float, with_bias: bool = False):
        super().__init__()
        n, dim = ctx.n_items, ctx.text_dim
        if dim <= 0:
            raise SeqrecError(
                "item_text=true but the model was given no item text embeddings",
                hint="train it through `seqrec train` (the platform hands the text matrix "
                "to the model), after `seqrec items import FILE` and `seqrec items embed`",
            )
        self.register_buffer("text_table", torch.zeros(n, dim))
        self.register_buffer("id_known", torch.ones(n, dtype=torch.bool))
        self.proj = nn.Linear(dim, d, bias=False)
        nn.init.normal_(self.proj.weight, std=init_std)
        self.text_bias = nn.Linear(dim, 1, bias=False) if with_bias else None
        if self.text_bias is not None:
            nn.init.zeros_(self.text_bias.weight)
        given = ctx.item_text
        if given is not None:
            if given.matrix.shape != (n, dim):
                raise SeqrecError(
                    f"item text matrix is {given.matrix.shape}, the model wants ({n}, {dim})"
                )
            with torch.no_grad():
                self.text_table.copy_(torch.from_numpy(given.matrix))
                if given.trained is not None:  # an item without text keeps its id row
                    no_text = ~self.text_table.any(dim=1)
                    self.id_known.copy_(torch.from_numpy(given.trained) | no_text)
                self.id_known[0] = True  # padding keeps its own row
        params = {**TEXT_DEFAULTS, **ctx.params}  # a third-party plugin may leave them out
        self.id_dropout = float(params["text_id_dropout"])
        if not 0.0 <= self.id_dropout < 1.0:
            raise SeqrecError(
                f"text_id_dropout must be in [0, 1), got {self.id_dropout}",
                hint="the share of items trained on their text alone at each step, e.g. 0.25",
            )
        self.neighbours = int(params["text_neighbours"])
        self.temperature = float(params["text_neighbour_temperature"])
        if self.neighbours < 0 or self.temperature <= 0:
            raise SeqrecError(
                f"text_neighbours must be >= 0 and text_neighbour_temperature > 0, got "
                f"{self.neighbours} and {self.temperature}",
                hint="e.g. --param text_neighbours=20 (0: cold items by their text alone)",
            )
        self._cache: tuple[Any, Tensor] | None = None
        self._nb_cache: tuple[Any, tuple[Tensor, Tensor, Tensor]] | None = None
        #: the id rows and output bias of the last :meth:`table` / :meth:`bias` call: the
        #: neighbours :meth:`vectors` borrows from (not saved; the plugin's own tensors)
        self._id_ref: Tensor | None = None
        self._bias_ref: Tensor | None = None

    # -- text neighbours ------------------------------------------------------------------------

    def _donors(self) -> tuple[Tensor, Tensor]:
        """(indices [n_d] of the items that lend their id rows: trained, with text;
        their unit text vectors [n_d, dim])."""
        has_text = self.text_table.any(dim=1)
        donors = torch.nonzero(self.id_known & has_text).flatten()
        unit = nn.functional.normalize(self.text_table[donors].float(), dim=1)
        return donors, unit

    @torch.no_grad()
    def neighbours_of(self, text: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
        """(donor item indices [m, k], weights [m, k] summing to 1) of items with text
        embeddings ``text`` [m, dim]: their ``k`` nearest trained items by text cosine."""
        donors, unit = self._donors()
        k = min(self.neighbours, len(donors))
        m = text.shape[0]
        if k == 0 or m == 0:
            empty = torch.zeros(m, 0, device=text.device)
            return empty.long(), empty
        query = nn.functional.normalize(text.float(), dim=1)
        idx, wts = [], []
        for lo in range(0, m, chunk):  # [chunk, n_donors] at a time, never [m, n_donors]
            sim = query[lo : lo + chunk] @ unit.T
            top, pos = sim.topk(k, dim=1)
            idx.append(donors[pos])
            wts.append(torch.softmax(top / self.temperature, dim=1))
        return torch.cat(idx), torch.cat(wts)

    def _cold_neighbours(self) -> tuple[Tensor, Tensor, Tensor]:
        """(cold rows [c], their donors [c, k], weights [c, k]): the items of the model's own
        vocabulary without an id row but with text (cached until the buffers change)."""
        key = tuple((t.data_ptr(), t._version) for t in (self.text_table, self.id_known))
        if self._nb_cache is not None and self._nb_cache[0] == key:
            return self._nb_cache[1]
        cold = torch.nonzero(~self.id_known & self.text_table.any(dim=1)).flatten()
        idx, wts = self.neighbours_of(self.text_table[cold])
        self._nb_cache = (key, (cold, idx, wts))
        return cold, idx, wts

    def _borrowing(self) -> bool:
        return self.neighbours > 0 and not self.training

    def _known(self) -> Tensor:
        """[n_items] bool: whose id row counts (in training, minus a random share)."""
        if not self.training or self.id_dropout <= 0:
            return self.id_known
        keep = torch.rand(self.id_known.shape, device=self.id_known.device) >= self.id_dropout
        keep |= ~self.text_table.any(dim=1)  # an item without text keeps its id row; padding too
        return self.id_known & keep

    def _key(self, id_weight: Tensor) -> tuple[Any, ...]:
        ts = [id_weight, self.proj.weight, self.text_table, self.id_known]
        if self.text_bias is not None:
            ts.append(self.text_bias.weight)
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in ts)

    def table(self, id_weight: Tensor) -> Tensor:
        """[n_items, d]: ``id_weight`` [n_items, d] rows of items seen in training + W text."""
        frozen = not self.training and not torch.is_grad_enabled()
        if frozen and self._cache is not None and self._cache[0] == self._key(id_weight):
            return self._cache[1]
        self._id_ref = id_weight.detach()
        known = self._known()[:, None].to(id_weight.dtype)
        out = id_weight * known + self.proj(self.text_table.to(id_weight.dtype))
        if self._borrowing():
            cold, idx, wts = self._cold_neighbours()
            if len(cold) and idx.shape[1]:
                lent = (wts[..., None].to(out.dtype) * id_weight[idx]).sum(1)
                out = out.index_add(0, cold, lent)
        if frozen:
            self._cache = (self._key(id_weight), out)
        return out

    def bias(self, out_bias: Tensor) -> Tensor:
        """[n_items]: a plugin's output bias for items seen in training + a text term."""
        self._bias_ref = out_bias.detach()
        known = self.id_known.to(out_bias.dtype)
        out = out_bias * known
        if self.text_bias is not None:
            out = out + self.text_bias(self.text_table.to(out_bias.dtype)).squeeze(-1)
        if self._borrowing():
            cold, idx, wts = self._cold_neighbours()
            if len(cold) and idx.shape[1]:
                out = out.index_add(0, cold, (wts.to(out.dtype) * out_bias[idx]).sum(1))
        return out

    @torch.no_grad()
    def vectors(
        self, text: Tensor, id_weight: Tensor | None = None, out_bias: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Representations of items the model has no row for: ([m, d], bias [m] or None),
        from their text embeddings [m, dim]; an item scores ``state @ vector + bias``. With
        ``text_neighbours``, each also borrows from its nearest trained items' id rows
        ``id_weight`` (and output biases ``out_bias``); by default those of the last
        :meth:`table` (:meth:`bias`) call, as a model of its own vocabulary's cold items."""
        text = text.to(self.proj.weight.dtype)
        bias = None if self.text_bias is None else self.text_bias(text).squeeze(-1)
        vecs = self.proj(text)
        id_weight = self._id_ref if id_weight is None else id_weight
        out_bias = self._bias_ref if out_bias is None else out_bias
        if self.neighbours > 0 and id_weight is not None:
            idx, wts = self.neighbours_of(text)
            if idx.shape[1]:
                vecs = vecs + (wts[..., None].to(vecs.dtype) * id_weight[idx]).sum(1)
                if bias is not None and out_bias is not None:
                    bias = bias + (wts.to(bias.dtype) * out_bias[idx]).sum(1)
        return vecs, bias

    def _apply(self, fn: Any, recurse: bool = True) -> TextFusion:  # .to(), .half(): recompute
        self._cache = self._nb_cache = self._id_ref = self._bias_ref = None
        return super()._apply(fn, recurse)  # type: ignore[no-any-return]


def wants_item_text(params: dict[str, Any]) -> bool:
    """Whether resolved hyperparameters ask for a text-aware model."""
    return bool(params.get("item_text", False))


__all__ = ["TextFusion", "wants_item_text"]
