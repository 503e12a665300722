"""The model contract shared by plugins, the trainer, the evaluator and the service.

A plugin registers a :class:`ModelSpec` whose ``build(ctx)`` returns a :class:`SeqModel`. A
``SeqModel`` is a ``torch.nn.Module`` with two methods: ``loss(batch)`` for training and
``score(batch)`` for ranking (next-item scores after the last position). Sequences are
**left-padded**: position ``-1`` is always the newest event, index 0 is padding everywhere.
Saving and loading (safetensors + JSON) is done here, once, for every model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from seqrec.errors import SeqrecError
from seqrec.losses import NegativeSampler, sampled_logq_loss, sparse_offset_cross_entropy
from seqrec.now_features import NowFeatures
from seqrec.transitions import BUFFERS as TRANSITION_BUFFERS
from seqrec.transitions import TransitionBias

TASKS = ("next-item", "classify")
#: the platform's next-item losses (``params["loss"]``): full softmax; sampled softmax over
#: uniform negatives; sampled softmax over popularity-mixed negatives with logQ correction
LOSSES = ("full", "sampled", "sampled_logq")

#: hyperparameters every model accepts; the loss policy belongs to the platform. The repeat bias
#: is on by default: it starts at 0 and learns from the data whether users come back to items
#: (re-purchases) or never do (ratings), so it costs nothing where repeats do not happen.
COMMON_PARAMS: dict[str, Any] = {"loss": "full", "num_negatives": 256, "repeat_bias": True}
#: trainer settings a preset may set (the rest, e.g. seed and device, belong to the run)
PRESET_TRAIN_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_ratio",
    "grad_clip",
    "patience",
    "ema_decay",
)
#: the preset ``seqrec train`` uses when none is named
DEFAULT_PRESET = "default"
#: recency buckets of the learned repeat bias: bucket = floor(log2(distance + 1)), capped
REPEAT_BUCKETS = 8
#: buffers that hold data handed to the model (item text), not weights: a warm start never
#: copies them from the old model, the new model is built with the current data
DATA_BUFFERS = frozenset({"text_table", "id_known", *TRANSITION_BUFFERS})
WEIGHTS_FILE = "model.safetensors"
CONTEXT_FILE = "seqrec_model.json"


@dataclass
class Batch:
    """A batch of left-padded sequences. Shapes: B sequences of length L.

    items, types, times: [B, L] (item index, event-type index, epoch seconds; 0 = padding)
    targets: [B, L] next item after each position (0 = no target there), next-item training only
    labels: [B] class index, classification only
    now: [B] epoch seconds the prediction is made at (the cutoff of a training example, the
        request time in serving), or None where unknown; classifiers read it through
        :meth:`SeqModel.with_now`
    """

    items: Tensor
    types: Tensor
    times: Tensor
    targets: Tensor | None = None
    labels: Tensor | None = None
    now: Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        moved = {
            f.name: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return Batch(**moved)

    @property
    def mask(self) -> Tensor:
        """[B, L] bool, True at real (non-padding) positions."""
        return self.items > 0


@dataclass
class ItemFactors:
    """Next-item scores as factors, for ranking a catalogue in chunks
    (:func:`seqrec.evaluation.topk.chunked_topk`) or with an approximate index.

    ``scores = hidden @ items.T + bias``, plus ``repeat`` [B, H] added at the ``history`` item
    indices [B, H]: sparse learned offsets (the repeat bias of seen items, the transition bias
    of the newest item's counted successors; an index may appear more than once, the offsets
    add up); ``repeat`` is None without either.
    ``hidden`` [B, d], ``items`` [V, d] (row = item index, row 0 padding), ``bias`` [V].
    """

    hidden: Tensor
    items: Tensor
    bias: Tensor | None = None
    history: Tensor | None = None
    repeat: Tensor | None = None

    def scores(self) -> Tensor:
        """[B, V] the full scores these factors stand for; column 0 (padding) at the dtype's
        minimum."""
        s = self.hidden @ self.items.T
        if self.bias is not None:
            s = s + self.bias
        s[:, 0] = torch.finfo(s.dtype).min
        if self.history is not None and self.repeat is not None:  # padding history adds 0
            s = s.scatter_add(1, self.history, self.repeat.to(s.dtype))
        return s


@dataclass(frozen=True)
class ItemText:
    """Item text embeddings handed to a text-aware model at build time (``item_text=true``).

    ``matrix`` [n_items, dim] float32: row = item index, zeros for padding and items without
    text. ``trained`` [n_items] bool: items with events in the training data (their id
    embedding is used); None = every item. The model keeps both as buffers, so they are saved
    with it."""

    matrix: np.ndarray
    trained: np.ndarray | None = None


@dataclass
class ModelContext:
    """What a model is built from: vocabulary sizes, sequence length, task, hyperparameters.

    ``text_dim``: width of the item text embeddings of a text-aware model (0: ids only); saved
    with the model. ``item_text``: the embeddings themselves, filled by the platform when the
    params ask for ``item_text`` (None when loading: the saved buffers hold them)."""

    n_items: int  # item vocabulary size including padding index 0
    n_event_types: int  # event-type vocabulary size including padding index 0
    max_len: int
    task: str = "next-item"
    n_classes: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    text_dim: int = 0
    item_text: ItemText | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise SeqrecError(f"unknown task '{self.task}'", hint=f"choose one of {TASKS}")
        if self.n_items < 2:
            raise SeqrecError("the item vocabulary is empty", hint="import events first")


class SeqModel(nn.Module):
    """Base class for models.

    Next-item models implement ``next_item_loss`` and ``next_item_scores``; classifiers
    implement ``class_logits`` (the loss is cross-entropy, class-weighted by the trainer for
    imbalanced labels). ``loss`` and ``score`` dispatch on ``ctx.task``; the trainer, evaluator
    and service only call those two. Models that do not learn by gradient fit in
    ``fit_statistics`` (next-item) or ``fit_classifier`` (classification) instead.
    """

    #: whether ``score`` can run as a TorchScript trace; False (e.g. a model calling a native
    #: library such as LightGBM) makes the service run it eagerly without trying
    traceable: ClassVar[bool] = True

    def __init__(self, ctx: ModelContext):
        super().__init__()
        #: the context without the text matrix (the model holds that as buffers)
        self.ctx = ctx if ctx.item_text is None else replace(ctx, item_text=None)
        #: the item text fusion of a text-aware model (``ctx.text_dim > 0``), set by the plugin;
        #: the service scores items newer than the model with it
        self.text_fusion: Any = None
        #: the registered model name; set by ``ModelSpec.make``
        self.spec_name: str = ""
        #: per-class loss weights for classification, set by the trainer
        self.class_weights: Tensor | None = None
        #: learned score offset for items already in the input sequence, per recency bucket
        #: (``params["repeat_bias"]``, next-item only); see :meth:`repeat_scores`
        self.repeat_bias: nn.Parameter | None = None
        #: where ``loss = "sampled_logq"`` draws negatives from (fitted by ``fit_statistics``)
        self.negative_sampler: NegativeSampler | None = None
        if ctx.task == "next-item" and ctx.params.get("repeat_bias", False):
            self.repeat_bias = nn.Parameter(torch.zeros(REPEAT_BUCKETS))
        #: learned offsets for the counted successors of the newest item
        #: (``params["transition_bias"]``, next-item models; :mod:`seqrec.transitions`)
        self.transitions: TransitionBias | None = None
        if ctx.task == "next-item" and ctx.params.get("transition_bias", False):
            self.transitions = TransitionBias(ctx.n_items)
        #: classifiers: the embedding of the events' times relative to ``Batch.now``
        #: (:mod:`seqrec.now_features`), made by :meth:`add_now_features`
        self.now_emb: NowFeatures | None = None
        self.state_dropout = 0.0  # set from the params by add_now_features

    def add_now_features(self, d: int) -> None:
        """For a plugin's classifier of width ``d``: with ``params["now_features"]`` (task
        classify only), make :attr:`now_emb`; :meth:`with_now` then adds it to the state."""
        if self.ctx.task == "classify" and self.ctx.params.get("now_features", False):
            norm = bool(self.ctx.params.get("now_norm", False))
            self.now_emb = NowFeatures(self.ctx.n_event_types, d, norm=norm)
        p = self.ctx.params.get("state_dropout", 0.0)
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p < 1.0:
            raise SeqrecError(
                f"state_dropout must be a number in [0, 1), got {p!r}",
                hint="e.g. --param state_dropout=0.5 (0 turns it off)",
            )
        self.state_dropout = float(p)  # validated; what with_now applies

    def with_now(self, h: Tensor, batch: Batch) -> Tensor:
        """[B, d] ``h`` (the sequence state, after the plugin's dropout) plus the embedding of
        ``batch``'s times relative to ``batch.now`` (unchanged without :attr:`now_emb`).

        In training, ``params["state_dropout"]`` is the probability that an example's whole
        sequence state is dropped (the rest scaled up to keep its expected value), so the
        classifier learns to predict from the prediction-time features alone too: on a few
        thousand labelled examples the sequence state is what overfits first, and without this
        it drowns the features (docs/benchmarks.md, sequence classification). At inference
        nothing is dropped.
        """
        if self.now_emb is None:
            return h
        p = self.state_dropout
        if self.training and p > 0:
            keep = torch.rand(h.shape[0], 1, device=h.device) >= p
            h = h * keep.to(h.dtype) / (1.0 - p)
        return h + self.now_emb(batch.items, batch.types, batch.times, batch.now)

    @property
    def reads_now(self) -> bool:
        """Whether :meth:`score` reads ``Batch.now``: the service then traces it with the
        request time as a fourth input."""
        return self.now_emb is not None

    def loss(self, batch: Batch) -> Tensor:
        """Scalar training loss for ``batch``."""
        if self.ctx.task == "classify":
            assert batch.labels is not None
            weight = None
            if self.class_weights is not None:
                weight = self.class_weights.to(batch.labels.device)
            return F.cross_entropy(self.class_logits(batch).float(), batch.labels, weight=weight)
        return self.next_item_loss(batch)

    def score(self, batch: Batch) -> Tensor:
        """Next-item: [B, n_items] scores for the item after the last position.
        Classification: [B, n_classes] logits."""
        if self.ctx.task == "classify":
            return self.class_logits(batch)
        return self.next_item_scores(batch)

    def next_item_loss(self, batch: Batch) -> Tensor:
        """Next-item training loss; ``batch.targets`` [B, L] holds the item after each position."""
        raise NotImplementedError(f"{type(self).__name__} has no next-item loss")

    def next_item_scores(self, batch: Batch) -> Tensor:
        """[B, n_items] scores for the next item after position -1 (column 0 is padding)."""
        raise NotImplementedError(f"{type(self).__name__} does not rank items")

    def next_item_factors(self, batch: Batch) -> ItemFactors | None:
        """Optional: the next-item scores after position -1 as :class:`ItemFactors`, so that
        evaluation and serving rank a large catalogue in chunks (never [B, V] at once) and
        serving may use an approximate index. None (the default): only full scores."""
        return None

    def next_item_scores_and_state(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Text-aware models: (``next_item_scores(batch)``, the user state [B, d] those scores
        are dot products with). An item the model has no row for scores ``state @
        text_fusion.vectors(text)`` (+ its text bias): the service ranks items newer than the
        model that way."""
        raise NotImplementedError(f"{type(self).__name__} does not score items by text")

    def class_logits(self, batch: Batch) -> Tensor:
        """[B, n_classes] logits for the sequence's label."""
        raise NotImplementedError(f"{type(self).__name__} does not classify")

    @torch.no_grad()
    def grow_from(self, state: Mapping[str, Tensor], ctx: ModelContext) -> int:
        """Warm start from ``state``, the weights of a model of this kind built for ``ctx``
        (an item vocabulary at most as large: ``seqrec retrain`` after new items arrived);
        returns how many of its tensors were used.

        Tensors of the same shape are copied. One whose first dimension grew keeps its leading
        rows (the known items, padding row 0 among them); the rows after them keep this
        model's fresh initialisation. Data buffers (:data:`DATA_BUFFERS`: the item text
        matrix) are never copied: they come from the current data. A model with special rows after the items (a MASK
        token) overrides this to move them to their new index.
        """
        own = self.state_dict()
        used = 0
        for k, v in state.items():
            mine = own.get(k)
            if mine is None or k.rsplit(".", 1)[-1] in DATA_BUFFERS:
                continue
            if mine.shape == v.shape:
                mine.copy_(v)
            elif mine.ndim == v.ndim and mine.shape[1:] == v.shape[1:] and len(mine) >= len(v):
                mine[: len(v)].copy_(v)
            else:
                continue
            used += 1
        return used

    def repeat_scores(self, history: Tensor, distance: Tensor) -> Tensor | None:
        """[N, H] learned score offsets of the ``history`` items [N, H] (0 = padding) at
        ``distance`` [N, H] events before the predicted position, or None when the model has no
        repeat bias.

        Whether users come back to items they already interacted with is a property of the data
        (re-purchases: yes; ratings: never), so the offset is learned, one value per recency
        bucket, starting at 0 (no effect). It is part of the model's scores, not a filter: the
        evaluator still ranks every item.
        """
        if self.repeat_bias is None:
            return None
        bucket = torch.log2(distance.float() + 1).floor().long().clamp(0, REPEAT_BUCKETS - 1)
        return self.repeat_bias[bucket] * (history > 0)

    def score_offsets(self, items: Tensor, distance: Tensor) -> tuple[Tensor, Tensor | None]:
        """The sparse part of the scores for the item after ``items`` [B, L] (left-padded, the
        newest at -1): (item indices [B, H], offsets [B, H] or None), for
        :class:`ItemFactors`' ``history``/``repeat``. The repeat bias of the ``items`` at
        ``distance`` [B, L], then the transition bias of the newest item's successors."""
        rep = self.repeat_scores(items, distance)
        if self.transitions is None:
            return items, rep
        return _join(None if rep is None else (items, rep), self.transitions.offsets(items[:, -1]))

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """The parameters whose gradient norms the trainer clips apart: the model's own, and
        the transition bias fitted on top of them, so that its gradients never rescale the
        model's steps."""
        if self.transitions is None:
            return [list(self.parameters())]
        head = {id(p) for p in self.transitions.parameters()}
        own = [p for p in self.parameters() if id(p) not in head]
        return [own, list(self.transitions.parameters())]

    def add_repeat_bias(self, scores: Tensor, history: Tensor, distance: Tensor) -> Tensor:
        """``scores`` [N, V] (column = item index) plus the repeat offsets of ``history``."""
        vals = self.repeat_scores(history, distance)
        if vals is None:
            return scores
        return scores.scatter_add(1, history, vals.to(scores.dtype))

    def item_loss(
        self,
        hidden: Tensor,
        targets: Tensor,
        embeddings: Tensor,
        bias: Tensor | None = None,
        history: Tensor | None = None,
        distance: Tensor | None = None,
        prev: Tensor | None = None,
    ) -> Tensor:
        """Cross-entropy of ``hidden`` [N, d] against item ``targets`` [N] over item
        ``embeddings`` [V, d] (padding row 0 excluded).

        The loss policy is the platform's, not the plugin's: full softmax by default; with
        ``ctx.params["loss"] == "sampled"``, a sampled softmax over
        ``ctx.params["num_negatives"]`` uniform negatives shared by the batch (accidental hits
        masked) for catalogues too big for a full softmax; with ``"sampled_logq"``, negatives
        drawn by training popularity (mixed with uniform) and the logQ correction
        (:mod:`seqrec.losses`). ``ctx.params["label_smoothing"]``
        smooths the full softmax. ``history``/``distance`` [N, H]: the items each row has seen
        and how many events ago, for the learned repeat bias (ignored when it is off).
        ``prev`` [N]: the item each row predicts the successor of, for the learned transition
        bias (ignored when it is off; each row's own transition is left out of its counts).

        The transition bias is fitted on top of the model, not with it: its loss is the same
        cross-entropy of the model's scores with gradients stopped, plus the offsets. With the
        full softmax the model trains exactly as it would without them (the offsets cannot take
        over what its embeddings would have learned), and the offsets learn what the model's
        scores lack. The value returned is the model's own loss.
        """
        rep = None
        if history is not None and distance is not None:
            rep = self.repeat_scores(history, distance)
        repeat = None if rep is None or history is None else (history, rep)
        if self.transitions is None or prev is None:
            return self._item_loss(hidden, targets, embeddings, bias, repeat)
        cols, offsets = self.transitions.offsets(prev, targets)
        if self.ctx.params.get("loss", "full") == "full":  # the model's logits, computed once
            logits = self._full_logits(hidden, embeddings, bias, repeat).float()
            smoothing = float(self.ctx.params.get("label_smoothing", 0.0))
            loss = F.cross_entropy(logits, targets - 1, label_smoothing=smoothing)
            fitted = sparse_offset_cross_entropy(
                logits, targets - 1, (cols - 1).clamp(min=0), offsets, cols > 0, smoothing
            )
            # the value is the model's loss (logs compare with runs without the offsets); the
            # gradient is both
            return loss + (fitted - fitted.detach())
        # sampled losses: the offsets get their own draw of negatives (so the model's steps
        # follow another random stream than without them)
        frozen = None if repeat is None else (repeat[0], repeat[1].detach())
        loss = self._item_loss(hidden, targets, embeddings, bias, repeat)
        fitted = self._item_loss(
            hidden.detach(),
            targets,
            embeddings.detach(),
            None if bias is None else bias.detach(),
            _join(frozen, (cols, offsets)),
        )
        return loss + (fitted - fitted.detach())

    def _full_logits(
        self,
        hidden: Tensor,
        embeddings: Tensor,
        bias: Tensor | None,
        repeat: tuple[Tensor, Tensor] | None,
    ) -> Tensor:
        """[N, V - 1] full-softmax logits of items 1.. (padding never enters the softmax)."""
        logits = hidden @ embeddings[1:].T
        if bias is not None:
            logits = logits + bias[1:]
        if repeat is not None:  # padding adds 0 (to column 0)
            hist, vals = repeat
            logits = logits.scatter_add(1, (hist - 1).clamp(min=0), vals.to(logits.dtype))
        return logits

    def _item_loss(
        self,
        hidden: Tensor,
        targets: Tensor,
        embeddings: Tensor,
        bias: Tensor | None,
        repeat: tuple[Tensor, Tensor] | None,
    ) -> Tensor:
        """:meth:`item_loss` with the sparse offsets ``repeat`` (item indices [N, H], offsets
        [N, H]) given."""
        smoothing = float(self.ctx.params.get("label_smoothing", 0.0))
        loss = self.ctx.params.get("loss", "full")
        if loss == "sampled_logq":
            sampler = self.negative_sampler
            if sampler is None:  # not fitted (a model trained outside the trainer): this batch
                sampler = NegativeSampler.from_targets(targets, embeddings.shape[0])
            elif sampler.probs.device != hidden.device:
                sampler = self.negative_sampler = sampler.to(hidden.device)
            return sampled_logq_loss(
                hidden,
                targets,
                embeddings,
                bias,
                int(self.ctx.params.get("num_negatives", 256)),
                sampler,
                repeat,
            )
        if loss == "sampled":
            return sampled_softmax_loss(
                hidden,
                targets,
                embeddings,
                bias,
                int(self.ctx.params.get("num_negatives", 256)),
                repeat,
            )
        logits = self._full_logits(hidden, embeddings, bias, repeat)
        return F.cross_entropy(logits.float(), targets - 1, label_smoothing=smoothing)

    def fit_statistics(self, items: Tensor, targets: Tensor) -> None:
        """Optional: non-gradient models (popularity) fit here from the training tensors.

        The trainer calls it once before the first epoch. Here: with ``loss = "sampled_logq"``,
        the negative sampler is fitted to the training targets; a gradient model that
        overrides this calls ``super().fit_statistics(items, targets)``."""
        if self.ctx.params.get("loss") == "sampled_logq":
            self.negative_sampler = NegativeSampler.from_targets(targets, self.ctx.n_items)
        if self.transitions is not None:
            self.transitions.fit(items, targets)

    def prepare(self, ws: Any) -> None:
        """Optional: read what the model needs from the workspace ``ws`` besides the training
        tensors (item titles, event type names), once, right after it is built for training
        (:func:`seqrec.pipeline.build_model`). A stored model is loaded without a workspace:
        keep what was read in buffers, which are saved with the weights."""

    def fit_classifier(self, tensors: Mapping[str, Tensor]) -> None:
        """Optional: non-gradient classifiers (gbdt) fit here, once, before any epoch.

        ``tensors`` are the training set's ``items``, ``types``, ``times`` [N, L], ``labels``
        [N] and ``now`` [N] (when known); ``self.class_weights`` is already set. The trainer
        has seeded torch's RNG, so a seed drawn from it makes the fit deterministic.
        """

    @property
    def trainable(self) -> bool:
        """Whether the trainer runs gradient steps: the repeat bias alone does not count (a
        statistics model like popularity has nothing else, and its scores do not use it)."""
        return any(p.requires_grad for name, p in self.named_parameters() if name != "repeat_bias")


#: time-gap buckets: 0 = padding / first event / unknown, k = 1 + floor(log2(gap_seconds + 1)), capped
GAP_BUCKETS = 32


def time_gap_buckets(times: Tensor, mask: Tensor) -> Tensor:
    """[B, L] bucketised log2 of seconds since the previous event (0 for padding and first).

    Shared by the built-in plugins so every model reads time the same way; ``mask`` [B, L] marks
    real events (a position whose own or previous time is unknown gets bucket 0).
    """
    gap = (times[:, 1:] - times[:, :-1]).clamp(min=0).float()  # [B, L-1]
    bucket = (1 + torch.log2(gap + 1).floor().long()).clamp(max=GAP_BUCKETS - 1)
    bucket = bucket.masked_fill(~(mask[:, 1:] & mask[:, :-1]), 0)
    return F.pad(bucket, (1, 0))  # [B, L]


def _join(a: tuple[Tensor, Tensor] | None, b: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Two sets of (item indices [N, *], offsets [N, *]) side by side (offsets add up)."""
    if a is None:
        return b
    return torch.cat([a[0], b[0]], 1), torch.cat([a[1], b[1].to(a[1].dtype)], 1)


def prefix_history(items: Tensor) -> tuple[Tensor, Tensor]:
    """For causal training at every position of left-padded ``items`` [B, L]: [B, L, L] the
    items seen up to each position (0 after it) and their distance back from it."""
    L = items.shape[1]
    idx = torch.arange(L, device=items.device)
    dist = idx[:, None] - idx[None, :]  # [t, j] = t - j
    seen = items[:, None, :].masked_fill(dist < 0, 0)
    return seen, dist.clamp(min=0).expand_as(seen)


def newest_distance(items: Tensor, offset: int = 0) -> Tensor:
    """[B, L] distance of each column of left-padded ``items`` from the newest one (+ offset)."""
    L = items.shape[1]
    return (L - 1 + offset - torch.arange(L, device=items.device)).expand_as(items)


def sampled_softmax_loss(
    hidden: Tensor,
    targets: Tensor,
    embeddings: Tensor,
    bias: Tensor | None,
    num_negatives: int,
    repeat: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Sampled softmax: the target against ``num_negatives`` uniform items shared by the batch.

    Memory is O(N * num_negatives) instead of O(N * V). Uniform sampling needs no logQ
    correction; negatives equal to a row's target are masked out (accidental hits).
    """
    n_items = embeddings.shape[0]
    negatives = torch.randint(1, n_items, (num_negatives,), device=hidden.device)  # never padding
    pos = (hidden * embeddings[targets]).sum(-1, keepdim=True)  # [N, 1]
    neg = hidden @ embeddings[negatives].T  # [N, K]
    if bias is not None:
        pos = pos + bias[targets].unsqueeze(1)
        neg = neg + bias[negatives].unsqueeze(0)
    if repeat is not None:  # history items [N, H] and their learned offsets [N, H]
        hist, vals = repeat
        pos = pos + ((hist == targets[:, None]) * vals).sum(1, keepdim=True)
        neg = neg + ((hist[:, :, None] == negatives[None, None, :]) * vals[:, :, None]).sum(1)
    neg = neg.float().masked_fill(
        negatives.unsqueeze(0) == targets.unsqueeze(1), torch.finfo(torch.float32).min
    )
    logits = torch.cat([pos.float(), neg], dim=1)
    return F.cross_entropy(logits, torch.zeros_like(targets))


@dataclass(frozen=True)
class Preset:
    """A named configuration: model hyperparameters and trainer settings that belong together.

    ``params`` override the spec's ``defaults``; ``train`` overrides the spec's
    ``train_defaults`` (keys from :data:`PRESET_TRAIN_KEYS`: lr, batch_size, epochs, ...).
    """

    params: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class Float:
    """Search space entry: a float in [low, high], log-uniform with ``log=True``."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Int:
    """Search space entry: an integer in [low, high] (``step`` apart)."""

    low: int
    high: int
    step: int = 1


@dataclass(frozen=True)
class Choice:
    """Search space entry: one of ``values``."""

    values: tuple[Any, ...]


SearchSpace = Mapping[str, Float | Int | Choice]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: name, what it builds, which tasks it supports, and its configuration.

    ``defaults`` are every hyperparameter the model accepts with its best known value, and
    ``train_defaults`` the trainer settings that go with them (lr, batch_size, epochs,
    patience...): together they are what ``seqrec train --model NAME`` trains with no options.
    ``presets`` are other named configurations (``seqrec train --preset NAME``).
    ``search_space`` is what ``seqrec tune`` searches: keys are hyperparameters or trainer
    settings from :data:`PRESET_TRAIN_KEYS`.
    ``absent_means``: for an option added later whose default is not a plain off, what a
    stored model without the key was built with (lstm: ``{"cell": "lstm"}``); a missing
    boolean option means False (the build reads options with ``.get(key, False)``).
    ``text_defaults``: defaults that differ for a text-aware model (``item_text=true``; lstm:
    ``{"dropout": 0.5}``); they replace ``defaults`` only, never a value that seqrec.toml, a
    preset or an option sets (:meth:`defaults_for`).
    """

    name: str
    build: Callable[[ModelContext], SeqModel]
    tasks: tuple[str, ...] = ("next-item",)
    description: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    train_defaults: Mapping[str, Any] = field(default_factory=dict)
    presets: Mapping[str, Preset] = field(default_factory=dict)
    search_space: SearchSpace = field(default_factory=dict)
    absent_means: Mapping[str, Any] = field(default_factory=dict)
    text_defaults: Mapping[str, Any] = field(default_factory=dict)
    plugin: str = ""  # filled in by the registry

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9][\w.-]*", self.name):
            raise SeqrecError(
                f"model name {self.name!r} is not a name",
                hint="letters, digits, '_', '-' and '.', starting with a letter or digit",
            )
        if not callable(self.build):
            raise SeqrecError(
                f"model '{self.name}': build is a {type(self.build).__name__}, not callable",
                hint="pass the model class (or a function of a ModelContext)",
            )
        tasks = (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks)
        if not tasks or set(tasks) - set(TASKS):
            raise SeqrecError(
                f"model '{self.name}': tasks {tasks!r} are not a non-empty selection of {TASKS}",
                hint='e.g. tasks=("next-item",) or tasks=("next-item", "classify")',
            )
        object.__setattr__(self, "tasks", tasks)  # a single task string becomes a tuple
        bad = sorted(set(self.train_defaults) - set(PRESET_TRAIN_KEYS))
        if bad:
            raise SeqrecError(
                f"model '{self.name}': unknown trainer setting(s) in train_defaults: "
                f"{', '.join(bad)}",
                hint=f"known: {', '.join(PRESET_TRAIN_KEYS)}",
            )
        if DEFAULT_PRESET in self.presets:
            raise SeqrecError(
                f"model '{self.name}': a preset may not be called '{DEFAULT_PRESET}'",
                hint="the defaults and train_defaults are the default preset",
            )
        stray = sorted(set(self.absent_means) - set(self.defaults))
        if stray:
            raise SeqrecError(
                f"model '{self.name}': absent_means names options it does not have: "
                f"{', '.join(stray)}",
                hint="absent_means keys must be keys of defaults",
            )
        stray = sorted(set(self.text_defaults) - set(self.defaults))
        if stray or (self.text_defaults and "item_text" not in self.defaults):
            raise SeqrecError(
                f"model '{self.name}': text_defaults names options it does not have: "
                f"{', '.join(stray) or 'item_text'}",
                hint="text_defaults keys must be keys of defaults, which must have item_text",
            )
        known = {*self.defaults, *COMMON_PARAMS, *PRESET_TRAIN_KEYS}
        for where, keys in [
            *((f"preset '{n}'", [*p.params, *p.train]) for n, p in self.presets.items()),
            ("search_space", list(self.search_space)),
        ]:
            unknown = sorted(set(keys) - known)
            if unknown:
                raise SeqrecError(
                    f"model '{self.name}': unknown key(s) in {where}: {', '.join(unknown)}",
                    hint=f"known: {', '.join(sorted(known))}",
                )

    def defaults_for(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults under ``params``: with ``text_defaults`` over them where ``params``
        (or the defaults) turn ``item_text`` on."""
        if not self.text_defaults or not params.get("item_text", self.defaults.get("item_text")):
            return dict(self.defaults)
        return {**self.defaults, **self.text_defaults}

    def absent_params(self, stored: Mapping[str, Any]) -> dict[str, Any]:
        """What a model stored with hyperparameters ``stored`` was built with for the options
        it predates (missing keys): ``absent_means``, else False for a boolean option. Retraining
        keeps them, so a candidate is production's configuration, not today's defaults."""
        return {
            k: self.absent_means.get(k, False)
            for k, v in self.defaults.items()
            if k not in stored and (k in self.absent_means or isinstance(v, bool))
        }

    def preset(self, name: str | None) -> Preset:
        """The named preset; ``None`` or ``"default"`` gives the defaults themselves."""
        if name in (None, DEFAULT_PRESET):
            return Preset(dict(self.defaults), dict(self.train_defaults), "the plugin's defaults")
        if name not in self.presets:
            raise SeqrecError(
                f"model '{self.name}' has no preset '{name}'",
                hint=f"presets: {', '.join([DEFAULT_PRESET, *self.presets])} "
                "(workspace presets: `seqrec models --presets`)",
            )
        p = self.presets[name]
        return Preset(
            {**self.defaults, **p.params}, {**self.train_defaults, **p.train}, p.description
        )

    def make(self, ctx: ModelContext) -> SeqModel:
        """Build the model, checking the task and merging default hyperparameters."""
        if ctx.task not in self.tasks:
            raise SeqrecError(
                f"model '{self.name}' does not support task '{ctx.task}'",
                hint=f"it supports: {', '.join(self.tasks)}",
            )
        unknown = sorted(set(ctx.params) - set(self.defaults) - set(COMMON_PARAMS))
        if unknown:
            raise SeqrecError(
                f"unknown hyperparameter(s) for model '{self.name}': {', '.join(unknown)}",
                hint=f"known: {', '.join(sorted({*self.defaults, *COMMON_PARAMS}))}",
            )
        ctx = replace(ctx, params={**COMMON_PARAMS, **self.defaults_for(ctx.params), **ctx.params})
        if ctx.params.get("loss") not in LOSSES:
            raise SeqrecError(
                f"model '{self.name}': unknown loss {ctx.params.get('loss')!r}",
                hint=f"choose one of {', '.join(LOSSES)} (--param loss=sampled_logq)",
            )
        model = self.build(ctx)
        model.spec_name = self.name
        return model


def model_registry(pm: Any = None) -> dict[str, ModelSpec]:
    """All models registered by loaded plugins, by name.

    Each plugin's ``register_models`` runs on its own: one that raises, registers something
    that is not a :class:`ModelSpec`, or returns a value instead of calling ``register`` is
    marked broken (``seqrec plugins`` shows why) and none of its models are used; the other
    plugins' models are. The same model name from two plugins is an error naming both.
    """
    from seqrec.plugins import get_plugin_manager

    pm = pm or get_plugin_manager()
    specs: dict[str, ModelSpec] = {}
    for impl in pm.hook.register_models.get_hookimpls():
        plugin = impl.plugin_name
        mine: list[ModelSpec] = []
        try:
            returned = impl.function(register=_collector(plugin, mine))
        except _NotAModelSpec as exc:
            pm.fail(plugin, str(exc), "broke")
            continue
        except Exception as exc:
            what = "" if isinstance(exc, SeqrecError) else f"{type(exc).__name__}: "
            pm.fail(plugin, f"register_models raised {what}{exc}", "broke", exc)
            continue
        if returned is not None:
            pm.fail(
                plugin,
                f"register_models returned a {type(returned).__name__} instead of calling "
                "register(spec) for each model (it must return None)",
                "broke",
            )
            continue
        for spec in mine:
            if spec.name in specs:
                raise SeqrecError(
                    f"model '{spec.name}' registered twice "
                    f"(plugins '{specs[spec.name].plugin}' and '{plugin}')"
                )
            specs[spec.name] = spec
    return specs


class _NotAModelSpec(SeqrecError):
    """``register`` was called with something that is not a ModelSpec."""


def _collector(plugin: str, into: list[ModelSpec]) -> Callable[[ModelSpec], None]:
    """The ``register`` callable handed to one plugin's ``register_models``."""

    def register(spec: ModelSpec) -> None:
        if not isinstance(spec, ModelSpec):
            raise _NotAModelSpec(
                f"register_models registered a {type(spec).__name__} ({spec!r:.80}), "
                "not a seqrec.models.ModelSpec"
            )
        into.append(replace(spec, plugin=plugin))

    return register


def get_spec(name: str, pm: Any = None) -> ModelSpec:
    specs = model_registry(pm)
    if name not in specs:
        raise SeqrecError(
            f"no model named '{name}'",
            hint=f"registered models: {', '.join(sorted(specs)) or 'none'} (see `seqrec models`)",
        )
    return specs[name]


def save_weights(model: SeqModel, directory: Path) -> None:
    """Write ``model.safetensors`` and ``seqrec_model.json`` (spec name + context)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / WEIGHTS_FILE))
    context = {k: v for k, v in asdict(model.ctx).items() if k != "item_text"}
    if not context["text_dim"]:
        del context["text_dim"]  # id-only models: the file as before
    meta = {"model": model.spec_name, "context": context}
    (directory / CONTEXT_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))


def load_weights(directory: Path, pm: Any = None, device: str | torch.device = "cpu") -> SeqModel:
    """Rebuild a model from a directory written by :func:`save_weights`."""
    meta_path = directory / CONTEXT_FILE
    if not meta_path.is_file():
        raise SeqrecError(f"not a seqrec model directory: {directory} (no {CONTEXT_FILE})")
    meta = json.loads(meta_path.read_text())
    spec = get_spec(meta["model"], pm)
    ctx = ModelContext(**meta["context"])
    model = spec.build(ctx)
    model.spec_name = spec.name
    load_model(model, str(directory / WEIGHTS_FILE), device=str(device))
    model.eval()
    return model.to(device)
