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
        self.id_dropout = float(ctx.params.get("text_id_dropout", 0.0))
        if not 0.0 <= self.id_dropout < 1.0:
            raise SeqrecError(
                f"text_id_dropout must be in [0, 1), got {self.id_dropout}",
                hint="the share of items trained on their text alone at each step, e.g. 0.25",
            )
        self._cache: tuple[Any, Tensor] | None = None

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
        known = self._known()[:, None].to(id_weight.dtype)
        out = id_weight * known + self.proj(self.text_table.to(id_weight.dtype))
        if frozen:
            self._cache = (self._key(id_weight), out)
        return out

    def bias(self, out_bias: Tensor) -> Tensor:
        """[n_items]: a plugin's output bias for items seen in training + a text term."""
        known = self.id_known.to(out_bias.dtype)
        if self.text_bias is None:
            return out_bias * known
        text = self.text_bias(self.text_table.to(out_bias.dtype)).squeeze(-1)
        return out_bias * known + text

    @torch.no_grad()
    def vectors(self, text: Tensor) -> tuple[Tensor, Tensor | None]:
        """Text-only representations of items the model has no row for: ([m, d], bias [m] or
        None), from their text embeddings [m, dim]; an item scores ``state @ vector + bias``."""
        text = text.to(self.proj.weight.dtype)
        bias = None if self.text_bias is None else self.text_bias(text).squeeze(-1)
        return self.proj(text), bias

    def _apply(self, fn: Any, recurse: bool = True) -> TextFusion:  # .to(), .half(): recompute
        self._cache = None
        return super()._apply(fn, recurse)  # type: ignore[no-any-return]


def wants_item_text(params: dict[str, Any]) -> bool:
    """Whether resolved hyperparameters ask for a text-aware model."""
    return bool(params.get("item_text", False))


__all__ = ["TextFusion", "wants_item_text"]
