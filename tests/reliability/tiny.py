"""A tiny next-item model trained in this process: two checkpointed epochs in a second, for the
checks on checkpoints and resuming that need no real model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from seqrec.models import Batch, ModelContext, SeqModel

#: 48 sequences in batches of 16: 3 optimizer steps per epoch
STEPS_PER_EPOCH = 3


class TinyBag(SeqModel):
    """A tiny next-item model: embeddings, one layer, dropout."""

    def __init__(self, ctx: ModelContext):
        super().__init__(ctx)
        self.emb = nn.Embedding(ctx.n_items, 8, padding_idx=0)
        self.mix = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(8, ctx.n_items)

    def _hidden(self, items: Tensor) -> Tensor:
        return self.drop(torch.tanh(self.mix(self.emb(items))))

    def next_item_loss(self, batch: Batch) -> Tensor:
        assert batch.targets is not None
        sel = batch.targets > 0
        return nn.functional.cross_entropy(
            self.out(self._hidden(batch.items)[sel]), batch.targets[sel]
        )

    def next_item_scores(self, batch: Batch) -> Tensor:
        return self.out(self._hidden(batch.items)[:, -1])


def train_tiny(run_dir: Path, resume: bool = False) -> dict[str, Tensor]:
    """Two epochs of a fresh TinyBag in ``run_dir`` (checkpointed); its final weights."""
    from seqrec.training.trainer import TrainSettings, train

    torch.manual_seed(0)
    model = TinyBag(ModelContext(n_items=20, n_event_types=2, max_len=6))
    items = torch.randint(1, 20, (48, 6), generator=torch.Generator().manual_seed(0))
    tensors = {
        "items": items,
        "types": torch.ones_like(items),
        "times": torch.zeros_like(items),
        "targets": items % 19 + 1,
        "labels": (items % 19 + 1)[:, -1],
    }

    def validate(m: SeqModel, device: torch.device) -> dict[str, float]:
        with torch.no_grad():
            probe = Batch(items=items[:8], types=items[:8] * 0 + 1, times=items[:8] * 0)
            return {"ndcg@10": float(m.score(probe).sum())}

    settings = TrainSettings(epochs=2, batch_size=16, seed=3, device="cpu")
    train(model, tensors, validate, settings, progress=False, run_dir=run_dir, resume=resume)
    return {k: v.clone() for k, v in model.state_dict().items()}
