"""Online recommendation: online feature lookup -> model scores -> mask -> top-k.

This is the serving logic, free of any web framework: the BentoML service wraps it and the
quickstart calls it directly. Users with no history online get the training popularity ranking,
flagged ``fallback``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from seqrec.config import Workspace
from seqrec.evaluation.metrics import mask_scores
from seqrec.features import store as feature_store
from seqrec.features.sql import left_pad
from seqrec.models import Batch
from seqrec.training.trainer import pick_device


class Recommender:
    """A stored model plus an online feature store, ready to answer requests."""

    def __init__(self, ws: Workspace, ref: str | None = None, device: str | None = None):
        from seqrec import model_store

        self.device = pick_device(device or ws.config.train.device)
        self.stored = model_store.load(
            ref or ws.config.models.default, device=self.device, store=ws.model_store
        )
        self.model = self.stored.model
        self.tag = self.stored.tag
        self.max_len = self.model.ctx.max_len
        self.n_items = self.model.ctx.n_items
        self.vocab = self.stored.vocab
        pop = np.asarray(self.stored.popularity, dtype=np.float64).copy()
        pop[0] = -np.inf
        self._pop_order = np.argsort(-pop, kind="stable")
        self._pop = pop
        self.reader = feature_store.online_reader(
            ws, self.stored.info.get("feature_service", ws.config.features.feature_service)
        )

    def lookup(self, user_ids: list[str]) -> dict[str, list[Any]]:
        """One batched online lookup for ``user_ids`` (Feast ``to_dict()`` shape, None for
        users not online); raises :class:`seqrec.errors.StoreUnavailable` when the store is
        down."""
        return self.reader.read(user_ids)

    def popular(self, k: int, exclude: set[int] | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for idx in self._pop_order:
            if len(out) >= k:
                break
            if idx == 0 or (exclude and idx in exclude):
                continue
            out.append({"item_id": self.vocab[idx], "score": float(self._pop[idx])})
        return out

    @torch.no_grad()
    def recommend_batch(
        self, user_ids: list[str], k: int = 10, exclude_seen: bool = True
    ) -> list[dict[str, Any]]:
        """Top-k items per user, newest-first history from the online store."""
        feats = self.lookup(user_ids)
        now = time.time()
        seqs = feats.get("item_seq") or [None] * len(user_ids)
        results: list[dict[str, Any] | None] = [None] * len(user_ids)
        live = [i for i, s in enumerate(seqs) if s]
        live_set = set(live)
        for i in range(len(user_ids)):
            if i not in live_set:
                results[i] = {
                    "items": self.popular(k),
                    "model": self.tag,
                    "fallback": True,
                    "feature_age_s": None,
                }
        if live:
            items = left_pad([seqs[i] for i in live], self.max_len)
            items[items >= self.n_items] = 0  # items newer than the model are unknown to it
            types = left_pad([feats["type_seq"][i] for i in live], self.max_len)
            types[types >= self.model.ctx.n_event_types] = 0
            times = left_pad([feats["ts_seq"][i] for i in live], self.max_len)
            batch = Batch(
                items=torch.from_numpy(items),
                types=torch.from_numpy(types),
                times=torch.from_numpy(times),
            ).to(self.device)
            exclude = None
            if exclude_seen:
                exclude = torch.zeros(
                    (len(live), self.n_items), dtype=torch.bool, device=self.device
                )
                exclude.scatter_(1, batch.items, True)
            scores = mask_scores(self.model.score(batch), exclude)
            kk = min(k, self.n_items - 1)
            top = torch.topk(scores, kk, dim=1)
            vals, idxs = top.values.cpu().numpy(), top.indices.cpu().numpy()
            for row, i in enumerate(live):
                recs = [
                    {"item_id": self.vocab[j], "score": float(v)}
                    for j, v in zip(idxs[row], vals[row], strict=True)
                    if np.isfinite(v)
                ]
                last_ts = feats["ts_seq"][i][-1] if feats["ts_seq"][i] else None
                results[i] = {
                    "items": recs,
                    "model": self.tag,
                    "fallback": False,
                    "feature_age_s": round(now - last_ts, 1) if last_ts else None,
                }
        return [r for r in results if r is not None]

    def recommend(self, user_id: str, k: int = 10, exclude_seen: bool = True) -> dict[str, Any]:
        return self.recommend_batch([user_id], k, exclude_seen)[0]
