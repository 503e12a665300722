"""The ``popularity`` baseline: rank items by how often they are a training target."""

from __future__ import annotations

import torch
from torch import Tensor

from seqrec.errors import SeqrecError
from seqrec.hookspecs import hookimpl
from seqrec.models import Batch, ModelContext, ModelSpec, SeqModel


class Popularity(SeqModel):
    """Scores every user's next item by global training frequency (no personalisation)."""

    def __init__(self, ctx: ModelContext):
        if ctx.params.get("repeat_bias"):
            raise SeqrecError(
                "popularity has no repeat bias (it is counted, not trained)",
                hint="drop --param repeat_bias=true; --exclude-seen masks seen items instead",
            )
        super().__init__(ctx)
        self.counts: Tensor
        self.register_buffer("counts", torch.zeros(ctx.n_items, dtype=torch.float32))

    def fit_statistics(self, items: Tensor, targets: Tensor) -> None:
        t = targets[targets > 0].reshape(-1).to(torch.long)
        counts = torch.bincount(t, minlength=self.ctx.n_items).to(torch.float32)
        counts[0] = 0.0
        self.counts.copy_(counts[: self.ctx.n_items])

    def next_item_scores(self, batch: Batch) -> Tensor:
        return self.counts.unsqueeze(0).expand(batch.items.shape[0], -1)


@hookimpl(trylast=True)
def register_models(register) -> None:  # type: ignore[no-untyped-def]
    register(
        ModelSpec(
            name="popularity",
            build=Popularity,
            tasks=("next-item",),
            description="global item popularity (non-personalised baseline)",
            defaults={"repeat_bias": False},  # it scores by counts only
        )
    )
