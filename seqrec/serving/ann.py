"""Approximate top-k for serving: a FAISS index over a model's item embeddings.

Built once when a model is loaded (``[serve] ann = true``) from its
:class:`~seqrec.models.ItemFactors`: item rows 1..V-1 with the output bias as one more
dimension (queries get a 1 there), so the inner product is the model's score. A request's
candidates are the index's ``CANDIDATES_PER_K * k + E`` nearest items (``E``: the row's
exclusions) plus the items in its history (the learned repeat offset may lift them); every
candidate is re-scored exactly, padding, excluded and duplicate candidates are dropped, and the
best ``k`` returned. So exclusions and the repeat bias hold exactly; only an item the index
misses can be missed. On a 1M-item gpt2 (bench/large_catalogue.py), IVF-Flat with nprobe 256
finds 0.998 of the exact top 10; HNSW, built on inner product (not a distance), 0.83-0.86.

FAISS is an optional extra: ``pip install seqrec[ann]`` (``faiss-cpu``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from seqrec.errors import SeqrecError
from seqrec.evaluation.topk import TopK

#: HNSW graph degree (links per node) and construction breadth
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
#: IVF: at most this many training vectors for the coarse quantizer
IVF_TRAIN_MAX = 200_000
#: candidates fetched from the index per place of the top k, all re-scored exactly
CANDIDATES_PER_K = 4


def import_faiss() -> Any:
    """The faiss module, or a SeqrecError saying how to install it."""
    try:
        import faiss
    except ImportError as exc:
        raise SeqrecError(
            f"[serve] ann = true needs FAISS, which is not installed ({exc})",
            hint="pip install 'seqrec[ann]' (faiss-cpu), or set [serve] ann = false",
        ) from None
    return faiss


class AnnIndex:
    """An inner-product index over ``items`` [V, d] (+ ``bias`` [V]); row 0 (padding) is left
    out. ``kind``: ``hnsw`` (HNSW, flat storage) or ``ivf`` (IVF-Flat, sqrt-sized lists);
    ``search``: HNSW efSearch or IVF nprobe."""

    def __init__(
        self,
        items: Tensor,
        bias: Tensor | None = None,
        *,
        kind: Literal["hnsw", "ivf"] = "hnsw",
        search: int = 128,
        seed: int = 0,
    ):
        faiss = import_faiss()
        if len(items) < 2:
            raise SeqrecError("ann: the model has no items to index")
        self.kind = kind
        vectors = self._rows(items, bias)
        dim = vectors.shape[1]
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index.add(vectors)
            index.hnsw.efSearch = search
        elif kind == "ivf":
            n_lists = max(1, min(len(vectors) // 39, int(4 * math.sqrt(len(vectors)))))
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, n_lists, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            train = vectors
            if len(vectors) > IVF_TRAIN_MAX:
                train = vectors[rng.choice(len(vectors), IVF_TRAIN_MAX, replace=False)]
            index.cp.seed = seed
            index.train(train)
            index.add(vectors)
            index.nprobe = min(search, n_lists)
        else:
            raise SeqrecError(f"ann: unknown index kind {kind!r}", hint="hnsw or ivf")
        self.index = index
        self.has_bias = bias is not None

    def set_search(self, search: int) -> None:
        """Change the search breadth (HNSW efSearch or IVF nprobe) of the built index."""
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = int(search)
        else:
            self.index.nprobe = min(int(search), self.index.nlist)

    @staticmethod
    def _rows(items: Tensor, bias: Tensor | None) -> np.ndarray:
        """Item rows 1.. as float32 [V-1, d (+1)]: the bias as the last column."""
        x = items[1:].detach().float().cpu()
        if bias is not None:
            x = torch.cat([x, bias[1:].detach().float().cpu()[:, None]], dim=1)
        return np.ascontiguousarray(x.numpy())

    def search(self, hidden: Tensor, n: int) -> Tensor:
        """[B, n] item indices nearest to ``hidden`` [B, d] by inner product (0 where the
        index has fewer)."""
        q = hidden.detach().float().cpu()
        if self.has_bias:
            q = torch.cat([q, torch.ones(len(q), 1)], dim=1)
        _, ids = self.index.search(np.ascontiguousarray(q.numpy()), n)
        return torch.from_numpy(np.where(ids >= 0, ids + 1, 0)).long()

    def topk(
        self,
        hidden: Tensor,
        k: int,
        *,
        items: Tensor,
        bias: Tensor | None = None,
        history: Tensor | None = None,
        repeat: Tensor | None = None,
        exclude: Tensor | None = None,
    ) -> TopK:
        """The ``k`` best candidates of ``hidden`` [B, d], re-scored exactly as
        :func:`seqrec.evaluation.topk.chunked_topk` scores them (same arguments)."""
        device = hidden.device
        n_excluded = 0 if exclude is None or not len(exclude) else int((exclude > 0).sum(1).max())
        n = min(len(items) - 1, CANDIDATES_PER_K * k + n_excluded)
        cand = self.search(hidden, n).to(device)  # [B, n]
        if history is not None and repeat is not None:
            cand = torch.cat([cand, history.to(device)], dim=1)  # repeat offsets may lift them
        h = hidden.float()
        scores = (h[:, None, :] * items[cand].float()).sum(-1)  # [B, C]
        if bias is not None:
            scores = scores + bias[cand].float()
        if history is not None and repeat is not None:
            same = cand[:, :, None] == history.to(device)[:, None, :]  # [B, C, H]
            scores = scores + (same * repeat.float().to(device)[:, None, :]).sum(-1)
        drop = cand == 0
        if exclude is not None:
            drop |= (cand[:, :, None] == exclude.to(device)[:, None, :]).any(-1)
        later = torch.ones(cand.shape[1], cand.shape[1], dtype=torch.bool, device=device).tril(-1)
        drop |= ((cand[:, :, None] == cand[:, None, :]) & later).any(-1)  # a repeat of an earlier
        scores = scores.masked_fill(drop, -torch.inf)
        v, pos = scores.topk(min(k, scores.shape[1]), dim=1)
        return TopK(v, cand.gather(1, pos))
