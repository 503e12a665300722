"""Gradient-boosted trees (LightGBM) as a seqrec classifier.

The model has no gradient-trained parameters: the shared trainer calls
:meth:`GBDTClassifier.fit_classifier` once with the training tensors, then validates it once.
Inputs are the point-in-time sequences every model gets (see :mod:`seqrec_gbdt.features`):
recency, frequency, counts, shares and recency per event type, inter-event gaps
(mean/min/max/last), and the popularity of the newest items (log of their count in the
training inputs). None is a new SQL aggregate: the window of L events is the only history.

The number of trees is chosen by early stopping on the newest training cutoff (the examples
with the largest ``now``; a seeded 20% when there is a single cutoff), then the booster is
refit on all training examples with that many trees. Samples are weighted by the trainer's
class weights. LightGBM runs with ``deterministic=True`` and a seed drawn from torch's RNG,
which the trainer seeds, so a seed gives the same booster.

Saved like any model (safetensors): the booster's text model as a uint8 buffer, the feature
names (JSON, uint8) beside it, and the item counts. A booster cannot be traced by TorchScript,
so the class says ``traceable = False`` and the service runs it eagerly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from seqrec.errors import SeqrecError
from seqrec.models import Batch, ModelContext, SeqModel
from seqrec_gbdt.features import feature_names, sequence_features

DEFAULTS: dict[str, Any] = {
    "n_trees": 500,  # most boosting rounds (early stopping picks fewer)
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 20,
    "feature_fraction": 0.9,
    "l2": 1.0,
    "early_stopping": 50,  # rounds without improvement on the held-out cutoff
    "num_threads": 0,  # 0: torch's thread count
}

#: variable-size uint8 buffers, resized to the saved size when loading
_BLOBS = ("booster", "feature_names")


def _blob(text: str) -> Tensor:
    return torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8).clone()


class GBDTClassifier(SeqModel):
    """A LightGBM booster over :func:`~seqrec_gbdt.features.sequence_features`."""

    traceable = False

    def __init__(self, ctx: ModelContext):
        super().__init__(ctx)
        self.names = feature_names(ctx.n_event_types)
        self.booster: Tensor
        self.feature_names: Tensor
        self.item_pop: Tensor
        self.register_buffer("booster", torch.zeros(0, dtype=torch.uint8))
        self.register_buffer("feature_names", _blob(json.dumps(self.names)))
        self.register_buffer("item_pop", torch.zeros(ctx.n_items, dtype=torch.float32))
        self._lgb: Any = None  # the parsed booster, cached

    # -- features ---------------------------------------------------------------------------

    def features(self, batch: Batch) -> np.ndarray:
        """[B, F] float64 feature rows of ``batch``."""
        return self._features(batch.items, batch.types, batch.times, batch.now)

    def _features(self, items: Tensor, types: Tensor, times: Tensor, now: Tensor | None) -> Any:
        return sequence_features(
            items.cpu().numpy(),
            types.cpu().numpy(),
            times.cpu().numpy(),
            None if now is None else now.cpu().numpy(),
            self.ctx.n_event_types,
            self.item_pop.float().cpu().numpy().astype(np.float64),
        )

    # -- fit --------------------------------------------------------------------------------

    def fit_classifier(self, tensors: Mapping[str, Tensor]) -> None:
        import lightgbm as lgb

        items, labels = tensors["items"], tensors["labels"].cpu().numpy()
        counts = torch.bincount(items[items > 0].reshape(-1).cpu(), minlength=self.ctx.n_items)
        pop = torch.log1p(counts[: self.ctx.n_items].float())
        pop[0] = 0.0
        self.item_pop.copy_(pop)
        x = self._features(items, tensors["types"], tensors["times"], tensors.get("now"))
        weight = None
        if self.class_weights is not None:
            weight = self.class_weights.cpu().numpy()[labels]
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        params = self._params(seed)
        held = self._held_out(tensors.get("now"), len(labels), seed)
        rounds = int(self.ctx.params["n_trees"])
        if held.any() and (~held).any():
            fit, check = ~held, held
            train_set = lgb.Dataset(
                x[fit], labels[fit], weight=None if weight is None else weight[fit]
            )
            valid_set = lgb.Dataset(
                x[check],
                labels[check],
                weight=None if weight is None else weight[check],
                reference=train_set,
            )
            probe = lgb.train(
                params,
                train_set,
                num_boost_round=rounds,
                valid_sets=[valid_set],
                callbacks=[
                    lgb.early_stopping(int(self.ctx.params["early_stopping"]), verbose=False)
                ],
            )
            rounds = max(1, int(probe.best_iteration or rounds))
        full = lgb.Dataset(x, labels, weight=weight, feature_name=self.names)
        booster = lgb.train(params, full, num_boost_round=rounds)
        self.booster = _blob(booster.model_to_string())
        self._lgb = booster

    def _params(self, seed: int) -> dict[str, Any]:
        p = self.ctx.params
        binary = self.ctx.n_classes == 2
        return {
            "objective": "binary" if binary else "multiclass",
            **({} if binary else {"num_class": self.ctx.n_classes}),
            "learning_rate": float(p["learning_rate"]),
            "num_leaves": int(p["num_leaves"]),
            "min_child_samples": int(p["min_child_samples"]),
            "feature_fraction": float(p["feature_fraction"]),
            "lambda_l2": float(p["l2"]),
            "num_threads": int(p["num_threads"]) or torch.get_num_threads(),
            "seed": seed,
            "deterministic": True,
            "force_col_wise": True,
            "verbosity": -1,
        }

    @staticmethod
    def _held_out(now: Tensor | None, n: int, seed: int) -> np.ndarray:
        """[n] bool: the examples of the newest cutoff, or a seeded 20% with only one."""
        if now is not None:
            at = now.cpu().numpy()
            if len(np.unique(at)) > 1:
                return np.asarray(at == at.max())
        return np.random.default_rng(seed).random(n) < 0.2

    # -- score ------------------------------------------------------------------------------

    def class_logits(self, batch: Batch) -> Tensor:
        n, device = batch.items.shape[0], batch.items.device
        booster = self._booster()
        if booster is None:  # not fitted: uniform
            return torch.zeros(n, self.ctx.n_classes, device=device)
        raw = np.asarray(booster.predict(self.features(batch), raw_score=True), dtype=np.float32)
        if self.ctx.n_classes == 2:  # softmax([0, m]) = [1 - sigmoid(m), sigmoid(m)]
            raw = np.stack([np.zeros_like(raw), raw], axis=1)
        return torch.from_numpy(raw.reshape(n, self.ctx.n_classes)).to(device)

    def _booster(self) -> Any:
        if self._lgb is None and self.booster.numel():
            import lightgbm as lgb

            text = bytes(self.booster.cpu().numpy()).decode()
            self._lgb = lgb.Booster(model_str=text)
        return self._lgb

    # -- loading ----------------------------------------------------------------------------

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any, **kw: Any) -> None:
        for name in _BLOBS:  # the saved blobs' sizes are not known before loading
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kw)
        self._lgb = None
        saved_names = json.loads(bytes(self.feature_names.cpu().numpy()).decode())
        if saved_names != self.names:
            raise SeqrecError(
                "this gbdt model was saved with other features than this seqrec-gbdt computes",
                hint="retrain it with the installed seqrec-gbdt",
            )
