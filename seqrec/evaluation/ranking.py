"""Full-catalogue ranking of next-item examples, chunked over the items.

The evaluator and the per-epoch validator rank every example's target among all items. A model
that exposes :class:`seqrec.models.ItemFactors` is ranked ``chunk_items`` items at a time
(:func:`seqrec.evaluation.topk.chunked_topk`): memory is O(batch x chunk), not O(batch x
catalogue). Other models give full scores (:func:`seqrec.evaluation.topk.scores_topk`), with
the same masking, tie rule and results.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from seqrec.evaluation.topk import DEFAULT_CHUNK_ITEMS, TopK, chunked_topk, scores_topk
from seqrec.models import Batch, SeqModel
from seqrec.progress import bar
from seqrec.training.data import SequenceSet, iter_batches
from seqrec.training.trainer import autocast_for

#: for example indices, [b, E] item indices to leave out of their rankings (0 = none)
Exclude = Callable[[np.ndarray], torch.Tensor]


def topk_of_batch(
    model: SeqModel,
    batch: Batch,
    k: int,
    *,
    exclude: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    chunk_items: int = DEFAULT_CHUNK_ITEMS,
) -> TopK:
    """Top-``k`` items (and the ranks of ``targets``) of one batch on the model's device: in
    chunks when the model gives :class:`~seqrec.models.ItemFactors`, else from full scores."""
    factors = model.next_item_factors(batch)
    if factors is None:
        return scores_topk(model.score(batch), k, exclude=exclude, targets=targets)
    return chunked_topk(
        factors.hidden,
        factors.items,
        k,
        bias=factors.bias,
        history=factors.history,
        repeat=factors.repeat,
        exclude=exclude,
        targets=targets,
        chunk_items=chunk_items,
    )


@torch.no_grad()
def rank_next_items(
    model: SeqModel,
    data: SequenceSet,
    *,
    device: torch.device,
    batch_size: int = 512,
    exclude: Exclude | None = None,
    topk: int = 0,
    chunk_items: int = DEFAULT_CHUNK_ITEMS,
    progress: bool = False,
    desc: str = "evaluate",
) -> dict[str, np.ndarray]:
    """The 0-based full-catalogue rank of each example's label (``ranks``) and, with
    ``topk``, its top item indices (``topk``)."""
    model.eval()
    tensors = data.tensors(with_targets=False)
    ranks: list[np.ndarray] = []
    tops: list[np.ndarray] = []
    offset = 0
    for batch in bar(
        iter_batches(tensors, batch_size),
        total=math.ceil(len(data) / batch_size),
        desc=desc,
        disable=not progress,
        leave=False,
    ):
        n = len(batch.items)
        assert batch.labels is not None
        ex = exclude(np.arange(offset, offset + n)).to(device) if exclude else None
        with autocast_for(device):
            top = topk_of_batch(
                model,
                batch.to(device),
                topk,
                exclude=ex,
                targets=batch.labels.to(device),
                chunk_items=chunk_items,
            )
        assert top.ranks is not None
        ranks.append(top.ranks.cpu().numpy())
        if topk:
            tops.append(top.indices.cpu().numpy())
        offset += n
    out = {"ranks": np.concatenate(ranks)} if ranks else {}
    if tops:
        out["topk"] = np.concatenate(tops)
    return out


@torch.no_grad()
def slotted_ranks(
    model: SeqModel,
    data: SequenceSet,
    *,
    device: torch.device,
    cold: np.ndarray,
    ks: tuple[int, ...],
    slots: int,
    batch_size: int = 512,
    exclude: Exclude | None = None,
    progress: bool = False,
) -> dict[int, np.ndarray]:
    """Per cutoff k, each example's 0-based position in its top-k list with ``slots`` places
    for the ``cold`` [n_items] items (:mod:`seqrec.evaluation.slots`), or k when the target is
    not in it. Works from full scores: memory is batch x catalogue."""
    from seqrec.evaluation.slots import slotted_positions

    model.eval()
    cold_t = torch.from_numpy(np.asarray(cold, dtype=bool)).to(device)
    tensors = data.tensors(with_targets=False)
    out: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    offset = 0
    for batch in bar(
        iter_batches(tensors, batch_size),
        total=math.ceil(len(data) / batch_size),
        desc="evaluate (new-item slots)",
        disable=not progress,
        leave=False,
    ):
        n = len(batch.items)
        assert batch.labels is not None
        batch = batch.to(device)
        with autocast_for(device):
            scores = model.score(batch).float().clone()  # a model may return a view
        scores[:, 0] = -torch.inf
        if exclude is not None:
            ex = exclude(np.arange(offset, offset + n)).to(device)
            scores.scatter_(1, ex, -torch.inf)  # index 0 pads the rows: padding, -inf anyway
        for k in ks:
            out[k].append(slotted_positions(scores, batch.labels, cold_t, k, slots).cpu().numpy())
        offset += n
    return {k: np.concatenate(v) if v else np.zeros(0, dtype=np.int64) for k, v in out.items()}
