"""Online recommendation: online feature lookup -> model scores -> mask -> top-k.

This is the serving logic, free of any web framework: the BentoML service wraps it (and batches
concurrent requests into one call of :meth:`Recommender.recommend_many`), the quickstart calls it
directly. Users with no history online get the training popularity ranking, flagged
``fallback``; so does everyone while the online store is unreachable, or slower than
``[serve] store_timeout_ms`` (:class:`StoreHealth` tracks that state and retries the store at
most once per ``retry_s`` until it answers again).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy.exc import DBAPIError

from seqrec.config import Workspace
from seqrec.contract import ScoreModule as _ScoreModule  # the form the kit checks, as served
from seqrec.errors import SeqrecError, StoreUnavailable
from seqrec.evaluation.topk import TopK, chunked_topk, pad_indices
from seqrec.extra_items import ExtraItems, ExtraItemsSource
from seqrec.features.readers import online_reader
from seqrec.features.sql import drop_unknown, left_pad
from seqrec.labels import is_selector, parse_selector
from seqrec.models import Batch
from seqrec.training.trainer import pick_device

log = logging.getLogger("seqrec.serve")


@dataclass(frozen=True, slots=True)
class Query:
    """One recommendation request: ``k`` items for ``user_id``."""

    user_id: str
    k: int = 10
    exclude_seen: bool = True
    exclude_items: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a session that is not in the store yet (``/recommend_from_events``)."""

    item_id: str
    event_type: str | None = None
    timestamp: float | None = None  # epoch seconds; None = now


class Metrics:
    """What the Recommender reports; the service forwards it to Prometheus. No-op here."""

    def fallback(self, reason: str, n: int) -> None: ...

    def store_error(self) -> None: ...

    def store_up(self, up: bool) -> None: ...

    def unknown_items(self, n: int) -> None: ...

    def model_reload(self, ok: bool) -> None: ...

    def serving(self, tag: str, previous: str | None = None) -> None: ...

    def internal_error(self, where: str) -> None:
        """A bug (not an outage) surfaced at ``where``; the caller logged its traceback."""


#: what a reader raises when the store is down or slow (sockets, timeouts): a fallback, not a bug
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (OSError,)

#: what refreshing the items newer than a model fails with while a store is down or a table
#: is missing (the last block stays); anything else is a bug, logged and counted
EXTRA_ITEMS_FAILURES: tuple[type[BaseException], ...] = (SeqrecError, OSError, DBAPIError)

#: what resolving or loading a model fails with when seqrec works as it should: no such model,
#: a damaged one, a store down (the model is refused); anything else is a bug, logged and counted
MODEL_LOAD_FAILURES: tuple[type[BaseException], ...] = (SeqrecError, OSError)


class StoreHealth:
    """Whether the online store answers; while it does not, retry it every ``retry_s`` only.

    ``should_try`` lets one lookup through per interval (the probe); the others go straight to
    the fallback instead of each paying a failing connection attempt.
    """

    def __init__(self, retry_s: float, metrics: Metrics):
        self.retry_s = retry_s
        self.metrics = metrics
        self.up = True
        self.since = time.time()
        self.errors = 0
        self.last_error: str | None = None
        self._next_try = 0.0
        self._lock = threading.Lock()

    def should_try(self) -> bool:
        if self.up:
            return True
        with self._lock:
            now = time.monotonic()
            if now < self._next_try:
                return False
            self._next_try = now + self.retry_s
            return True

    def succeeded(self) -> None:
        if not self.up:
            with self._lock:
                self.up, self.since = True, time.time()
            log.warning("online store reachable again: serving model recommendations")
            self.metrics.store_up(True)

    def failed(self, exc: Exception) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = str(exc).splitlines()[0][:500]
            self._next_try = time.monotonic() + self.retry_s
            went_down = self.up
            self.up = False
            if went_down:
                self.since = time.time()
        self.metrics.store_error()
        if went_down:
            log.error("online store unavailable, serving popularity fallback: %s", exc)
            self.metrics.store_up(False)

    def status(self) -> dict[str, Any]:
        return {
            "online_store": "ok" if self.up else "unavailable",
            "since": self.since,
            "errors": self.errors,
            "last_error": self.last_error,
            "retry_s": self.retry_s,
        }


def resolve_model_ref(ref: str, store: Path | None, ws: Workspace | None = None) -> str:
    """A model reference -> a stored tag: a tag or short name, or a BentoML label selector
    ``key=value[,key=value]`` (the newest stored model carrying all those labels). ``store``:
    a model store directory (None: BentoML's own, ``BENTOML_HOME``).

    ``ws`` (pass it when ``store`` is the workspace's model store): a single ``key=value`` with
    a promotion pointer (``stage=production`` once anything was promoted) is the pointer's
    model, one indexed query and no store scan (:mod:`seqrec.promotion`)."""
    from seqrec import model_store

    if not is_selector(ref):
        return model_store.locate(ref, store)[0]
    want = parse_selector(ref)
    if ws is not None and "," not in ref:
        from seqrec.promotion import pointer

        tag = pointer(ws, ref)
        if isinstance(tag, str):
            return tag
        if tag is None:
            raise SeqrecError(
                f"no model is {ref}: it was withdrawn",
                hint="`seqrec label TAG " + ref + "` makes one (`seqrec runs` shows the history)",
            )
    for row in model_store.list_models(store):  # newest first
        if all(row["labels"].get(k) == v for k, v in want.items()):
            return str(row["tag"])
    raise SeqrecError(
        f"no stored model has the labels {ref}",
        hint="`seqrec models --stored` lists stored models; `seqrec label TAG key=value` adds one",
    )


class Recommender:
    """A stored model plus an online feature store, ready to answer requests."""

    def __init__(
        self,
        ws: Workspace,
        ref: str | None = None,
        device: str | None = None,
        metrics: Metrics | None = None,
        bentoml_store: bool = False,
        share_store_with: Recommender | None = None,
    ):
        """``bentoml_store``: load the model from BentoML's own model store (``BENTOML_HOME``;
        inside a Bento) instead of the workspace's. ``share_store_with``: a recommender already
        serving (a hot reload) whose online reader and store health to reuse when it reads the
        same feature service."""
        from seqrec import model_store

        self.metrics = metrics or Metrics()
        self.device = pick_device(device or ws.config.serve.device)
        store = None if bentoml_store else ws.model_store
        # the workspace's store: a promotion pointer answers stage=production (one query)
        tag = resolve_model_ref(
            ref or ws.config.models.default, store, None if store is None else ws
        )
        self.stored = model_store.load(tag, device=self.device, store=store)
        self.model = self.stored.model.eval()
        #: whether its score reads ``Batch.now`` (the request time; traced as a fourth input)
        self._reads_now = bool(getattr(self.model, "reads_now", False))
        self.half = self.device.type == "cuda"
        if self.half:
            self.model = self.model.half()
        self.tag = self.stored.tag
        self.task = self.model.ctx.task
        self.max_len = self.model.ctx.max_len
        self.n_items = self.model.ctx.n_items
        self.n_types = self.model.ctx.n_event_types
        self.vocab = self.stored.vocab
        self.item_index = self.stored.item_index()
        self.type_index = {t: i for i, t in enumerate(self.stored.event_types) if i > 0}
        # an event of unnamed type counts as the most basic interaction the log has
        self.default_type = self.type_index.get("view", 1 if self.n_types > 1 else 0)
        self.class_names: list[str] = list(self.stored.info.get("class_names") or [])
        pop = np.asarray(self.stored.popularity, dtype=np.float64).copy()
        if len(pop) < 1:
            pop = np.zeros(self.n_items)
        pop[0] = -np.inf
        self._pop_order = [int(i) for i in np.argsort(-pop, kind="stable") if i > 0]
        self._pop = pop
        self._pop_cache: dict[int, list[dict[str, Any]]] = {}
        self._traced: Any = None
        self._buckets: list[int] = []
        #: a text-aware next-item model: scores come with the user state, and items newer
        #: than the model are ranked by their text (:mod:`seqrec.extra_items`)
        self.text_aware = self.task == "next-item" and self.model.text_fusion is not None
        if self.text_aware:
            with torch.inference_mode():  # the fused item table, cached before tracing
                self.model.score(Batch(*self._example(1, 1, 0)))
        #: ``[serve] new_item_slots`` (text-aware models): places of every list for cold items
        #: (:mod:`seqrec.evaluation.slots`); the model's own cold rows: no training events
        self.new_item_slots = ws.config.serve.new_item_slots if self.text_aware else 0
        self._cold_rows = (
            torch.nonzero(~self.model.text_fusion.id_known.bool()).flatten().to(self.device)
            if self.new_item_slots
            else None
        )
        self._init_ranking(ws)
        if ws.config.serve.trace and type(self.model).traceable and not self.chunked:
            self._traced = self._trace()
            if self._traced is not None:
                self._warm(ws.config.serve.micro_batch)
        self.feature_service = str(
            self.stored.info.get("feature_service", ws.config.features.feature_service)
        )
        self.health: StoreHealth
        self.reader: Any
        self.lookup_s: float  # moving average of online lookup time (seconds)
        share = share_store_with
        if share is not None and share.feature_service == self.feature_service:
            self.health, self.reader, self.lookup_s = share.health, share.reader, share.lookup_s
        else:
            self.health = StoreHealth(ws.config.serve.store_retry_s, self.metrics)
            self.reader = online_reader(ws, self.feature_service)
            bound = getattr(self.reader, "set_timeout", None)  # Redis: a slow store is an outage
            if bound is not None:
                bound(ws.config.serve.store_timeout_ms / 1000)
            self.lookup_s = 0.0
        self.extra: ExtraItems | None = None
        self._extra_source: ExtraItemsSource | None = None
        self._extra_error: str | None = None
        if self.text_aware:
            text_reader = getattr(share, "_extra_source", None)
            self.extra = ExtraItems(self.n_items)
            self._extra_source = ExtraItemsSource(
                ws, self.model, self.device, text_reader.reader if text_reader else None
            )
            self.refresh_extra_items()

    def _init_ranking(self, ws: Workspace) -> None:
        """How next-item requests are ranked: a model giving item factors ranks a catalogue
        over ``[serve] topk_chunk_items`` in chunks (eager), or with a FAISS index (``[serve]
        ann``); otherwise from full scores (traced)."""
        serve = ws.config.serve
        self.chunk_items = serve.topk_chunk_items
        self.ann: Any = None
        self._item_rows: torch.Tensor | None = None
        self._item_bias: torch.Tensor | None = None
        factors = None
        if self.task == "next-item":
            with torch.inference_mode():
                factors = self.model.next_item_factors(Batch(*self._example(1, 1, 0)))
        if factors is not None:
            self._item_rows, self._item_bias = factors.items, factors.bias
        elif serve.ann:
            raise SeqrecError(
                f"[serve] ann = true: model {self.tag} does not expose item factors "
                "(next_item_factors), so no index can be built over its items",
                hint="set [serve] ann = false for this model",
            )
        self.chunked = factors is not None and (self.n_items > self.chunk_items or serve.ann)
        if serve.ann and self._item_rows is not None:
            from seqrec.serving.ann import AnnIndex

            t0 = time.perf_counter()
            self.ann = AnnIndex(
                self._item_rows, self._item_bias, kind=serve.ann_index, search=serve.ann_search
            )
            log.info(
                "ann: %s index over %d items of %s built in %.1f s",
                serve.ann_index,
                self.n_items - 1,
                self.tag,
                time.perf_counter() - t0,
            )

    # -- items newer than the model (text-aware models) ------------------------------------

    def refresh_extra_items(self) -> bool:
        """Re-read the items newer than a text-aware model and swap the new block in (one
        assignment: a request sees the old block or the new one). On failure (online store
        down, database unreachable) the last block stays, logged once per distinct error.
        False for id-only models and on failure."""
        if self._extra_source is None:
            return False
        try:
            with _torch_threads(1):
                block = self._extra_source.load()
        except Exception as exc:
            bug = not isinstance(exc, EXTRA_ITEMS_FAILURES)
            msg = _describe(exc, bug)
            if bug:
                self.metrics.internal_error("extra_items")
            if msg != self._extra_error:
                log.log(
                    logging.ERROR if bug else logging.WARNING,
                    "extra items: refresh failed, keeping %d: %s",
                    len(self.extra or ()),
                    msg,
                    exc_info=exc if bug else None,
                )
            self._extra_error = msg
            return False
        if self._extra_error is not None:
            log.warning("extra items: refreshed again (%d items)", len(block))
        self._extra_error = None
        if self.extra is None or block.ids != self.extra.ids:
            log.info("extra items: %d items newer than %s ranked by text", len(block), self.tag)
        self.extra = block
        return True

    def extra_status(self) -> dict[str, Any]:
        """``/status``'s ``extra_items``: how many items newer than the model are ranked by
        their text, when the block was last refreshed, the last refresh error."""
        extra = self.extra
        return {
            "enabled": extra is not None,
            "count": len(extra) if extra is not None else 0,
            "refreshed_at": extra.refreshed_at if extra is not None else None,
            "last_error": self._extra_error,
        }

    # -- online features --------------------------------------------------------------------

    def lookup(self, user_ids: list[str]) -> dict[str, list[Any]]:
        """One batched online lookup for ``user_ids`` (Feast ``to_dict()`` shape, None for
        users not online); raises :class:`seqrec.errors.StoreUnavailable` when the store is
        down (or cannot be read for any other reason: serving treats that as an outage)."""
        try:
            return self.reader.read(user_ids)
        except StoreUnavailable:
            raise
        except OUTAGE_ERRORS as exc:  # connection refused/reset, timeouts: an outage
            raise StoreUnavailable(
                f"online store read failed: {type(exc).__name__}: {exc}"
            ) from exc
        except Exception:  # a TypeError or KeyError is a bug: surface it, never a fallback
            log.exception("online lookup: internal error (not a store outage)")
            self.metrics.internal_error("online_lookup")
            raise

    def features(self, user_ids: list[str]) -> dict[str, list[Any]] | None:
        """Online features, or None while the store is unavailable (health updated)."""
        if not self.health.should_try():
            return None
        t0 = time.perf_counter()
        try:
            feats = self.lookup(user_ids)
        except StoreUnavailable as exc:
            self.health.failed(exc)
            return None
        finally:
            self.lookup_s = 0.8 * self.lookup_s + 0.2 * (time.perf_counter() - t0)
        self.health.succeeded()
        return feats

    def store_is_quick(self, limit_s: float = 0.005) -> bool:
        """The store answers, and recent lookups took under ``limit_s`` on average."""
        return self.health.up and self.lookup_s < limit_s

    def probe(self) -> bool:
        """Try the store once (used while degraded, so recovery needs no traffic)."""
        return self.features(["__seqrec_probe__"]) is not None

    # -- ranking ----------------------------------------------------------------------------

    def popular(self, k: int, exclude: set[int] | None = None) -> list[dict[str, Any]]:
        """The training popularity top-k (minus ``exclude``)."""
        if not exclude and k in self._pop_cache:
            return self._pop_cache[k]
        out: list[dict[str, Any]] = []
        for idx in self._pop_order:
            if len(out) >= k:
                break
            if exclude and idx in exclude:
                continue
            out.append({"item_id": self.vocab[idx], "score": float(self._pop[idx])})
        if not exclude and len(self._pop_cache) < 64:
            self._pop_cache[k] = out
        return out

    def _indices(self, item_ids: Sequence[str]) -> set[int]:
        get = self.item_index.get
        return {i for i in (get(x) for x in item_ids) if i is not None}

    def _example(self, b: int, n_real: int, seed: int) -> tuple[torch.Tensor, ...]:
        """A left-padded batch of ``b`` random sequences with ``n_real`` events each."""
        g = torch.Generator().manual_seed(seed)
        shape, real = (b, self.max_len), (b, n_real)
        items = torch.zeros(shape, dtype=torch.long)
        types = torch.zeros(shape, dtype=torch.long)
        items[:, -n_real:] = torch.randint(1, self.n_items, real, generator=g)
        types[:, -n_real:] = torch.randint(1, max(2, self.n_types), real, generator=g)
        times = torch.zeros(shape, dtype=torch.long)
        times[:, -n_real:] = 1_700_000_000 + torch.arange(n_real) * 60
        return tuple(t.to(self.device) for t in (items, types, times))

    def _trace_inputs(self, b: int, n_real: int, seed: int) -> tuple[torch.Tensor, ...]:
        """:meth:`_example`'s tensors, and for a model that reads ``now`` a request time a
        few hours after each row's newest event: the traced ``score``'s inputs."""
        x = self._example(b, n_real, seed)
        if not self._reads_now:
            return x
        hours = torch.arange(1, b + 1, device=self.device) * 3 * 3600
        return (*x, x[2][:, -1] + hours)

    def _trace(self) -> Any:
        """The model's ``score`` as a TorchScript trace (no Python per layer: a batch of one is
        about 3x faster on CPU), kept only if it matches eager scores on other batch shapes and
        paddings; else None (eager), with a warning."""
        import warnings

        wrapper = (_StateModule if self.text_aware else _ScoreModule)(self.model).eval()
        try:
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(
                    wrapper, self._trace_inputs(2, self.max_len, 0), check_trace=False
                )
                for b, n in ((1, self.max_len), (3, max(1, self.max_len // 3)), (5, 1)):
                    x = self._trace_inputs(b, n, b)
                    wants, gots = _outputs(wrapper(*x)), _outputs(traced(*x))
                    for want, got in zip(wants, gots, strict=True):
                        finite = torch.isfinite(want)
                        if not torch.equal(finite, torch.isfinite(got)) or not torch.allclose(
                            want[finite], got[finite], rtol=1e-3, atol=1e-3
                        ):
                            raise ValueError(
                                f"traced scores differ from eager (batch {b}, {n} events)"
                            )
        except Exception as exc:
            from seqrec.plugins import model_origin

            log.warning(
                "serving %s eagerly (about 3x slower per request on CPU): the score of %s "
                "cannot be traced: %s (a model that cannot be sets traceable = False)",
                self.tag,
                model_origin(self.model.spec_name),
                exc,
                # not a tracing failure (RuntimeError, or scores that differ): a bug in the
                # model's code or seqrec's, shown with its traceback
                exc_info=None if isinstance(exc, RuntimeError | ValueError) else exc,
            )
            return None
        return traced

    def _warm(self, largest: int) -> None:
        """TorchScript optimizes a graph per input shape on its first calls (tens of ms): run
        every batch-size bucket up to ``largest`` now, so no request pays for it later."""
        sizes, b = [], 1
        while b < largest:
            sizes.append(b)
            b = b + 1 if b < 4 else b + b // 2 if (b & (b - 1)) == 0 else (b // 3) * 4
        self._buckets = [*sizes, largest]
        with torch.inference_mode():
            for b in self._buckets:
                x = self._trace_inputs(b, self.max_len, 0)
                for _ in range(2):
                    self._traced(*x)

    @torch.inference_mode()
    def check(self) -> None:
        """Score a warm-up batch (before this model replaces a serving one): a SeqrecError
        unless no score is NaN or +inf and every row has a finite one."""
        try:
            items, types, times = (t.cpu().numpy() for t in self._example(3, self.max_len, 7))
            now = np.full(3, int(time.time()), dtype=np.int64)
            scores = self._scores(items, types, times, now)
        except Exception as exc:  # a model that loaded and cannot score: a bug, in its code or ours
            log.error("model %s failed to score a warm-up batch", self.tag, exc_info=exc)
            self.metrics.internal_error("model_load")
            raise SeqrecError(
                f"model {self.tag} failed to score a warm-up batch: {type(exc).__name__}: {exc}"
            ) from None
        bad = torch.isnan(scores).any() or torch.isposinf(scores).any()
        if bad or not torch.isfinite(scores).any(dim=1).all():
            raise SeqrecError(
                f"model {self.tag} gives non-finite scores on a warm-up batch",
                hint="its weights are broken (NaN or inf): retrain it or pick another version",
            )

    def _known(self, items: np.ndarray, types: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Drop events whose item is newer than the model (unknown to it) and left-pad those
        rows again, in place, as ``/recommend_from_events`` skips unknown items; returns, per
        row, whether any event is left."""
        return drop_unknown(items, types, times, self.n_items, self.n_types)

    def _scores(
        self,
        items: np.ndarray,
        types: np.ndarray,
        times: np.ndarray,
        now: np.ndarray | None = None,
    ) -> torch.Tensor:
        """[B, n_items] (or [B, n_classes]) float32 scores on the model's device; ``now`` [B]:
        the request time (epoch seconds), for models that read it."""
        if self.text_aware:
            return self._scores_and_state(items, types, times)[0]
        self._known(items, types, times)
        if now is None and self._reads_now:  # traced or eager alike: the time of the call
            now = np.full(len(items), int(time.time()), np.int64)
        if self._traced is not None:
            n = len(items)
            size = next((b for b in self._buckets if b >= n), n)  # beyond: as is
            if size > n:  # pad to a warmed-up batch size with empty rows
                pad = ((0, size - n), (0, 0))
                items, types, times = (np.pad(a, pad) for a in (items, types, times))
            t = [torch.from_numpy(a).to(self.device) for a in (items, types, times)]
            if now is not None and self._reads_now:  # the padding rows' is 0, unread
                at = np.pad(now.astype(np.int64), (0, size - n))
                t.append(torch.from_numpy(at).to(self.device))
            return self._traced(*t)[:n].float()  # type: ignore[no-any-return]
        return self.model.score(self._eager_batch(items, types, times, now)).float()

    def _eager_batch(
        self, items: np.ndarray, types: np.ndarray, times: np.ndarray, now: np.ndarray | None
    ) -> Batch:
        """Drop the columns that are padding in every row (left padding: a prefix); position
        ids count real events only, so the scores do not change, the work shrinks."""
        used = np.flatnonzero(items.any(axis=0))
        if len(used) and used[0] > 0:
            start = int(used[0])
            items, types, times = items[:, start:], types[:, start:], times[:, start:]
        return Batch(
            items=torch.from_numpy(items),
            types=torch.from_numpy(types),
            times=torch.from_numpy(times),
            now=None if now is None else torch.from_numpy(now),
        ).to(self.device)

    def _scores_and_state(
        self, items: np.ndarray, types: np.ndarray, times: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A text-aware model's ([B, n_items] scores, [B, d] user states), float32."""
        self._known(items, types, times)
        if self._traced is not None:
            n = len(items)
            size = next((b for b in self._buckets if b >= n), n)
            if size > n:
                pad = ((0, size - n), (0, 0))
                items, types, times = (np.pad(a, pad) for a in (items, types, times))
            t = [torch.from_numpy(a).to(self.device) for a in (items, types, times)]
            scores, state = self._traced(*t)
            return scores[:n].float(), state[:n].float()
        scores, state = self.model.next_item_scores_and_state(
            self._eager_batch(items, types, times, None)
        )
        return scores.float(), state.float()

    @torch.inference_mode()
    def _rank(
        self,
        items: np.ndarray,
        types: np.ndarray,
        times: np.ndarray,
        queries: Sequence[Query],
        extra: ExtraItems | None = None,
        extra_seen: Sequence[Sequence[int]] = (),
    ) -> list[list[dict[str, Any]]]:
        """Top-k per row (row i answers queries[i]); seen/excluded items masked out.

        ``extra``: items newer than a text-aware model, ranked after its own columns by their
        text; ``extra_seen[i]``: their columns in row i's history (masked with exclude_seen)."""
        if self.chunked:
            return self._rank_factored(items, types, times, queries, extra, extra_seen)
        if extra:
            known, state = self._scores_and_state(items, types, times)
            scores = torch.cat([known, extra.scores(state)], dim=1)
        else:
            scores = self._scores(items, types, times)
        # mask padding and each row's history (padding is item 0: masked anyway) in one scatter
        scores[:, 0] = -torch.inf
        seen = [r for r, q in enumerate(queries) if q.exclude_seen]
        if len(seen) == len(queries):
            scores.scatter_(1, torch.from_numpy(items).to(scores.device), -torch.inf)
        elif seen:
            sel = torch.tensor(seen, device=scores.device)
            hist = torch.from_numpy(items[seen]).to(scores.device)
            scores[sel] = scores[sel].scatter(1, hist, -torch.inf)
        rows: list[int] = []
        cols: list[int] = []
        for r, q in enumerate(queries):
            if q.exclude_items:
                ex = self._indices(q.exclude_items)
                if extra:  # extra items by id; a stored vocabulary index past n_items is none
                    ex = {i for i in ex if i < self.n_items}
                    ex |= {c for c in (extra.column.get(x) for x in q.exclude_items) if c}
                rows += [r] * len(ex)
                cols += ex
            if extra and q.exclude_seen and r < len(extra_seen) and extra_seen[r]:
                rows += [r] * len(extra_seen[r])
                cols += extra_seen[r]
        if rows:
            scores[torch.tensor(rows), torch.tensor(cols)] = -torch.inf
        kmax = min(max(q.k for q in queries), scores.shape[1] - 1)
        top = torch.topk(scores, kmax, dim=1)
        if self.new_item_slots:
            assert self._cold_rows is not None
            cold = torch.cat(
                [
                    self._cold_rows,
                    torch.arange(self.n_items, scores.shape[1], device=scores.device),
                ]
            )
            return self._slotted(top.values, top.indices, scores[:, cold], cold, queries, extra)
        return self._answers(top.values, top.indices, queries, extra)

    def _slotted(
        self,
        values: torch.Tensor,
        indices: torch.Tensor,
        cold_scores: torch.Tensor,
        cold: torch.Tensor,
        queries: Sequence[Query],
        extra: ExtraItems | None,
    ) -> list[list[dict[str, Any]]]:
        """:meth:`_answers` with ``new_item_slots`` places of each query's k for cold items:
        ``cold`` [C] their columns (the model's untrained rows, then the extra items),
        ``cold_scores`` [B, C] their scores with exclusions at -inf."""
        from seqrec.evaluation.slots import slotted_lists

        n = self.new_item_slots
        cv, cpos = cold_scores.topk(min(n, cold_scores.shape[1]), dim=1)
        ci = cold[cpos]
        is_cold = indices >= self.n_items
        if len(self._cold_rows):  # type: ignore[arg-type]
            is_cold |= torch.isin(indices, self._cold_rows)  # type: ignore[arg-type]
        out_v = torch.full_like(values, -torch.inf)
        out_i = torch.zeros_like(indices)
        for r, q in enumerate(queries):
            k = min(q.k, values.shape[1])
            v, i = slotted_lists(
                values[r : r + 1],
                indices[r : r + 1],
                cv[r : r + 1],
                ci[r : r + 1],
                is_cold[r : r + 1],
                k,
                n,
            )
            out_v[r, :k], out_i[r, :k] = v[0], i[0]
        return self._answers(out_v, out_i, queries, extra)

    def _rank_factored(
        self,
        items: np.ndarray,
        types: np.ndarray,
        times: np.ndarray,
        queries: Sequence[Query],
        extra: ExtraItems | None,
        extra_seen: Sequence[Sequence[int]],
    ) -> list[list[dict[str, Any]]]:
        """:meth:`_rank` of a model giving item factors: the catalogue in chunks of
        ``chunk_items`` (or the ANN index's candidates, re-scored), never [B, n_items]."""
        assert self._item_rows is not None
        self._known(items, types, times)
        f = self.model.next_item_factors(self._eager_batch(items, types, times, None))
        assert f is not None
        excluded: list[list[int]] = []
        for r, q in enumerate(queries):
            ex = [i for i in self._indices(q.exclude_items) if i < self.n_items]
            if q.exclude_seen:
                ex += [int(i) for i in items[r] if i > 0]
            excluded.append(ex)
        exclude = pad_indices(excluded, f.hidden.device)
        # every rankable item counts, the newer ones too (as the [B, n_items + m] scores do)
        kmax = min(max(q.k for q in queries), self.n_items - 1 + len(extra or ()))
        kknown = min(kmax, self.n_items - 1)  # of the model's own items
        rows, bias = self._item_rows, self._item_bias
        top: TopK
        if self.ann is not None:
            top = self.ann.topk(
                f.hidden,
                kknown,
                items=rows,
                bias=bias,
                history=f.history,
                repeat=f.repeat,
                exclude=exclude,
            )
        else:
            top = chunked_topk(
                f.hidden,
                rows,
                kknown,
                bias=bias,
                history=f.history,
                repeat=f.repeat,
                exclude=exclude,
                chunk_items=self.chunk_items,
            )
        vals, idxs = top.scores, top.indices
        if extra:  # items newer than the model, by text: their own top-k, merged in
            more = extra.scores(f.hidden)
            rows_ex: list[int] = []
            cols_ex: list[int] = []
            for r, q in enumerate(queries):
                cols = [extra.column.get(x) for x in q.exclude_items]
                if q.exclude_seen and r < len(extra_seen):
                    cols += list(extra_seen[r])
                found = [c for c in cols if c]
                rows_ex += [r] * len(found)
                cols_ex += [c - self.n_items for c in found]
            if rows_ex:
                more[torch.tensor(rows_ex), torch.tensor(cols_ex)] = -torch.inf
            v2, i2 = more.topk(min(kmax, more.shape[1]), dim=1)
            both = torch.cat([vals, v2], 1)
            vals, pos = both.topk(min(kmax, both.shape[1]), dim=1)
            idxs = torch.cat([idxs, i2 + self.n_items], 1).gather(1, pos)
        if self.new_item_slots:
            assert self._cold_rows is not None
            own = f.hidden.float() @ rows[self._cold_rows].float().T  # the untrained rows
            if bias is not None:
                own = own + bias[self._cold_rows].float()
            col = {int(c): j for j, c in enumerate(self._cold_rows.tolist())}
            if f.history is not None and f.repeat is not None and col:  # as the full scores
                for r, (hist, rep) in enumerate(zip(f.history.tolist(), f.repeat, strict=True)):
                    for h, i in enumerate(hist):
                        if i in col:
                            own[r, col[i]] += rep[h].float()
            hit = [(r, col[i]) for r, ex in enumerate(excluded) for i in ex if i in col]
            if hit:
                own[
                    torch.tensor([h[0] for h in hit]), torch.tensor([h[1] for h in hit])
                ] = -torch.inf
            cold_scores, cold = own, self._cold_rows
            if extra:
                cold_scores = torch.cat([own, more.float()], 1)
                cold = torch.cat(
                    [
                        cold,
                        torch.arange(self.n_items, self.n_items + len(extra), device=cold.device),
                    ]
                )
            return self._slotted(vals, idxs, cold_scores, cold, queries, extra)
        return self._answers(vals, idxs, queries, extra)

    def _answers(
        self,
        values: torch.Tensor,
        indices: torch.Tensor,
        queries: Sequence[Query],
        extra: ExtraItems | None,
    ) -> list[list[dict[str, Any]]]:
        """Per query, its first ``k`` of the top items [B, kmax] (sorted), up to the first
        masked one."""
        vals, idxs = values.float().cpu().numpy().tolist(), indices.cpu().numpy().tolist()
        vocab, n, out = self.vocab, self.n_items, []
        for r, q in enumerate(queries):
            recs = []
            for j, v in zip(idxs[r][: q.k], vals[r][: q.k], strict=True):
                if v == -np.inf:
                    break  # sorted: the rest is masked too
                item = vocab[j] if j < n else extra.item_id(j)  # type: ignore[union-attr]
                recs.append({"item_id": item, "score": v})
            out.append(recs)
        return out

    def _extra_seen(self, extra: ExtraItems | None, seqs: Sequence[Any]) -> list[list[int]]:
        """Per history in ``seqs`` (vocabulary indices), the extra columns it holds."""
        if not extra:
            return []
        get = extra.by_index.get
        return [[c for c in (get(int(i)) for i in seq or ()) if c is not None] for seq in seqs]

    def _fallback(self, q: Query, reason: str) -> dict[str, Any]:
        exclude = self._indices(q.exclude_items) if q.exclude_items else None
        return {
            "items": self.popular(q.k, exclude),
            "model": self.tag,
            "fallback": True,
            "feature_age_s": None,
        }

    def recommend_many(self, queries: Sequence[Query]) -> list[dict[str, Any]]:
        """Answers for ``queries``, in order, with one online lookup and one model call."""
        self._require("next-item")
        users = list(dict.fromkeys(q.user_id for q in queries))
        feats = self.features(users)
        if feats is None:
            self.metrics.fallback("store_unavailable", len(queries))
            return [self._fallback(q, "store_unavailable") for q in queries]
        extra = self.extra  # one block for the whole batch (a refresh swaps it meanwhile)
        row_of = {u: i for i, u in enumerate(users)}
        seqs, tss = feats.get("item_seq") or [None] * len(users), feats.get("ts_seq")
        type_seqs = feats.get("type_seq")
        live = [i for i, q in enumerate(queries) if seqs[row_of[q.user_id]]]
        results: list[dict[str, Any]] = [{}] * len(queries)
        n_cold = len(queries) - len(live)
        if n_cold:
            self.metrics.fallback("unknown_user", n_cold)
            live_set = set(live)
            for i, q in enumerate(queries):
                if i not in live_set:
                    results[i] = self._fallback(q, "unknown_user")
        if live:
            rows = [row_of[queries[i].user_id] for i in live]
            items = left_pad([seqs[r] for r in rows], self.max_len)
            types = left_pad([type_seqs[r] if type_seqs else None for r in rows], self.max_len)
            times = left_pad([tss[r] if tss else None for r in rows], self.max_len)
            known = self._known(items, types, times)
            if not known.all():  # every event's item is newer than the model
                for j in np.flatnonzero(~known):
                    results[live[j]] = self._fallback(queries[live[j]], "empty_history")
                self.metrics.fallback("empty_history", int((~known).sum()))
                keep = np.flatnonzero(known)
                live, rows = [live[j] for j in keep], [rows[j] for j in keep]
                items, types, times = items[keep], types[keep], times[keep]
        if live:
            seen_extra = self._extra_seen(extra, [seqs[r] for r in rows])
            ranked = self._rank(items, types, times, [queries[i] for i in live], extra, seen_extra)
            now = time.time()
            for i, r, recs in zip(live, rows, ranked, strict=True):
                ts = tss[r] if tss else None
                results[i] = {
                    "items": recs,
                    "model": self.tag,
                    "fallback": False,
                    "feature_age_s": round(now - ts[-1], 3) if ts else None,
                }
        return results

    def recommend_batch(
        self,
        user_ids: list[str],
        k: int = 10,
        exclude_seen: bool = True,
        exclude_items: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """Top-k items per user, one online lookup for all of them."""
        ex = tuple(exclude_items)
        return self.recommend_many([Query(u, k, exclude_seen, ex) for u in user_ids])

    def recommend(self, user_id: str, k: int = 10, exclude_seen: bool = True) -> dict[str, Any]:
        return self.recommend_many([Query(user_id, k, exclude_seen)])[0]

    def recommend_from_events(
        self,
        events: Sequence[Event],
        k: int = 10,
        exclude_seen: bool = True,
        exclude_items: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Top-k for a session given as events (oldest first); no store lookup. Unknown items
        are skipped and counted in ``unknown_items``; none known -> popularity fallback."""
        self._require("next-item")
        now = time.time()
        extra = self.extra
        items, types, times, unknown = [], [], [], 0
        seen_extra: list[int] = []
        for e in events:
            col = extra.column.get(e.item_id) if extra else None
            if col is not None:  # newer than the model: not an input, but seen
                seen_extra.append(col)
                unknown += 1
                continue
            idx = self.item_index.get(e.item_id)
            if idx is None:
                unknown += 1
                continue
            items.append(idx)
            types.append(self.type_index.get(e.event_type or "", self.default_type))
            times.append(int(e.timestamp if e.timestamp is not None else now))
        if unknown:
            self.metrics.unknown_items(unknown)
        q = Query("", k, exclude_seen, tuple(exclude_items))
        if not items:
            self.metrics.fallback("empty_history", 1)
            return {**self._fallback(q, "empty_history"), "unknown_items": unknown}
        recs = self._rank(
            left_pad([items], self.max_len),
            left_pad([types], self.max_len),
            left_pad([times], self.max_len),
            [q],
            extra,
            [seen_extra],
        )[0]
        return {
            "items": recs,
            "model": self.tag,
            "fallback": False,
            "feature_age_s": round(now - times[-1], 3),
            "unknown_items": unknown,
        }

    # -- classification ---------------------------------------------------------------------

    @torch.inference_mode()
    def predict_many(self, user_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Class probabilities per user (classification models); uniform as the fallback."""
        self._require("classify")
        users = list(dict.fromkeys(user_ids))
        names = self.class_names or [str(i) for i in range(self.model.ctx.n_classes)]
        uniform = {n: 1.0 / len(names) for n in names}
        feats = self.features(users)
        if feats is None:
            self.metrics.fallback("store_unavailable", len(user_ids))
            return [self._predict_fallback(uniform) for _ in user_ids]
        seqs = feats.get("item_seq") or [None] * len(users)
        live = [i for i, s in enumerate(seqs) if s]
        by_user: dict[str, dict[str, Any]] = {}
        if live:
            get = feats.get
            items = left_pad([seqs[i] for i in live], self.max_len)
            types = left_pad(
                [(get("type_seq") or [None] * len(users))[i] for i in live], self.max_len
            )
            tss = get("ts_seq") or [None] * len(users)
            times = left_pad([tss[i] for i in live], self.max_len)
            known = self._known(items, types, times)
            now = time.time()
            at = np.full(len(live), int(now), dtype=np.int64)
            probs = torch.softmax(self._scores(items, types, times, at), dim=1).cpu().numpy()
            for row, i in enumerate(live):
                if not known[row]:  # every event's item is newer than the model: fallback
                    continue
                ts = tss[i]
                by_user[users[i]] = {
                    "probabilities": {n: float(p) for n, p in zip(names, probs[row], strict=True)},
                    "model": self.tag,
                    "fallback": False,
                    "feature_age_s": round(now - ts[-1], 3) if ts else None,
                }
        cold = sum(1 for u in user_ids if u not in by_user)
        if cold:
            self.metrics.fallback("unknown_user", cold)
        return [by_user.get(u) or self._predict_fallback(uniform) for u in user_ids]

    def _predict_fallback(self, uniform: dict[str, float]) -> dict[str, Any]:
        return {
            "probabilities": uniform,
            "model": self.tag,
            "fallback": True,
            "feature_age_s": None,
        }

    def _require(self, task: str) -> None:
        if self.task != task:
            other = "/predict" if self.task == "classify" else "/recommend"
            raise SeqrecError(
                f"model {self.tag} is a {self.task} model; this endpoint needs a {task} model "
                f"(use {other}, or serve a {task} model)"
            )


def _outputs(out: Any) -> list[torch.Tensor]:
    """A traced module's output(s) as float tensors."""
    return [t.float() for t in (out if isinstance(out, tuple) else (out,))]


class _StateModule(torch.nn.Module):
    """``model.next_item_scores_and_state`` over plain tensors (text-aware models)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, items: torch.Tensor, types: torch.Tensor, times: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = Batch(items=items, types=types, times=times)
        return self.model.next_item_scores_and_state(batch)  # type: ignore[operator,no-any-return]


# -- hot reload -----------------------------------------------------------------------------------


class ModelReloader:
    """Swaps a newly promoted model into a running service without dropping a request.

    ``holder.recommender`` is the serving :class:`Recommender`; everything answering requests
    reads it at call time. A new model is loaded and traced by ``load(tag, serving)`` on the
    calling thread (a background one: the poll thread or an executor, never the model thread or
    the event loop), checked (it scores a warm-up batch, and has the serving task unless named
    explicitly), then swapped in with one assignment under ``lock`` (the model lock): a request
    is answered wholly by the old or wholly by the new model. A model that fails is refused and
    the old one keeps serving; polling does not try that tag again until the selector names
    another one, or an admin reload asks for it.

    While a label selector is followed (the startup reference, or one an admin reload named),
    a daemon thread re-resolves it every ``poll_s`` seconds. An admin reload that names a tag
    pins that model: polling pauses until a reload names a selector, or none (the startup one).
    """

    def __init__(
        self,
        holder: Any,
        lock: threading.Lock,
        load: Callable[[str, Recommender], Recommender],
        resolve: Callable[[str], str],
        ref: str,
        poll_s: float = 0.0,
        metrics: Metrics | None = None,
    ):
        """``ref``: what the service was started with (a tag, or a selector to follow);
        ``poll_s``: seconds between polls (0: never poll)."""
        self.holder, self.lock, self.load, self.resolve = holder, lock, load, resolve
        self.ref = ref
        self.selector = ref if is_selector(ref) else None
        self.poll_s = poll_s
        self.metrics = metrics or Metrics()
        self.loaded_at = time.time()
        self.last_attempt: dict[str, Any] | None = None
        self.last_error: str | None = None
        #: tags refused since the selector last named another one (newest last)
        self.refused: dict[str, None] = {}
        self.polls = self.reloads = self.failures = 0
        self._resolve_error: str | None = None
        self._busy = threading.Lock()  # one poll or reload at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def polling(self) -> bool:
        return self.poll_s > 0 and self.selector is not None

    @property
    def serving_tag(self) -> str:
        return str(self.holder.recommender.tag)

    # -- polling ------------------------------------------------------------------------------

    def start(self) -> None:
        """Watch the selector on a daemon thread (none without a selector, or poll_s 0)."""
        if self.polling and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="seqrec-reload", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception:  # the watcher must outlive any surprise (a bug: counted)
                log.exception("model reload: poll failed")
                self.metrics.internal_error("model_load")

    def poll(self) -> bool:
        """Re-resolve the selector; swap in the model it names when that is new and not
        refused. True when a new model serves now."""
        with self._busy:
            if self.selector is None:
                return False
            self.polls += 1
            tag = self._resolve_quietly(self.selector)
            if tag is None:
                return False
            if tag not in self.refused:
                self.refused.clear()  # the selector moved on: a later promotion may be tried
            if tag in self.refused or tag == self.serving_tag:
                return False
            try:
                return self._swap(tag, by="poll", same_task=True)
            except SeqrecError:
                return False  # refused: logged, counted, remembered

    def _resolve_quietly(self, selector: str) -> str | None:
        """The tag ``selector`` names, or None (logged once per distinct problem: a label
        being moved, a store out of reach, must not flood the log every poll)."""
        try:
            tag = self.resolve(selector)
        except Exception as exc:
            bug = self._counted_if_bug(exc)
            msg = f"cannot resolve {selector}: {_describe(exc, bug)}"
            if msg != self._resolve_error:
                log.log(
                    logging.ERROR if bug else logging.WARNING,
                    "model reload: %s; still serving %s",
                    msg,
                    self.serving_tag,
                    exc_info=exc if bug else None,
                )
                self._resolve_error = self.last_error = msg
            return None
        if self._resolve_error is not None:
            if self.last_error == self._resolve_error:
                self.last_error = None
            self._resolve_error = None
        return tag

    # -- on request -----------------------------------------------------------------------------

    def reload(self, ref: str | None = None) -> bool:
        """Serve ``ref`` now (default: the startup reference, re-resolved), even a tag refused
        before; a model of another task only when named. A selector is followed from then on,
        a tag pins. True when a new model serves now; a SeqrecError (the old model keeps
        serving) when ``ref`` cannot be served."""
        want = ref or self.ref
        with self._busy:
            try:
                tag = self.resolve(want)
            except Exception as exc:
                reason = self._refuse(want, "admin", exc, remember=False)  # no tag to remember
                raise SeqrecError(f"cannot reload {want}: {reason}") from None
            changed = self._swap(tag, by="admin", same_task=ref is None)
            self.selector = want if is_selector(want) else None
        self.start()
        return changed

    # -- the swap -------------------------------------------------------------------------------

    def _swap(self, tag: str, by: str, same_task: bool) -> bool:
        """Load, check and swap in ``tag`` (the caller holds ``_busy``)."""
        old = self.holder.recommender
        if tag == old.tag:
            self.refused.pop(tag, None)
            return False
        try:
            with _torch_threads(1):  # leave the cores to the serving model
                new = self.load(tag, old)
                if same_task and new.task != old.task:
                    raise SeqrecError(
                        f"{tag} is a {new.task} model; this service serves {old.task}",
                        hint='name it to switch tasks: POST /admin/reload {"model": TAG}',
                    )
                new.check()
        except Exception as exc:
            reason = self._refuse(tag, by, exc)
            raise SeqrecError(f"model {tag} refused: {reason}") from None
        with self.lock:
            self.holder.recommender = new
        self.loaded_at = time.time()
        self.last_attempt = {"tag": tag, "by": by, "at": self.loaded_at, "ok": True}
        self.last_error = None
        self.refused.clear()
        self.reloads += 1
        self.metrics.model_reload(True)
        self.metrics.serving(new.tag, old.tag)
        if new.health is not old.health:
            self.metrics.store_up(new.health.up)
        log.warning("model reload: serving %s (was %s), by %s", new.tag, old.tag, by)
        gone = weakref.ref(old)
        del old, new
        _release(gone)
        return True

    def _refuse(self, tag: str, by: str, exc: BaseException, remember: bool = True) -> str:
        """Record and log the refusal of ``tag`` (a bug with its traceback); returns why."""
        if remember:
            self.refused.pop(tag, None)
            self.refused[tag] = None
        bug = self._counted_if_bug(exc)
        reason = _describe(exc, bug)
        self.last_error = f"{tag}: {reason}"
        self.last_attempt = {"tag": tag, "by": by, "at": time.time(), "ok": False}
        self.failures += 1
        self.metrics.model_reload(False)
        log.error(
            "model reload: refused %s; still serving %s",
            self.last_error,
            self.serving_tag,
            exc_info=exc if bug else None,
        )
        return reason

    def _counted_if_bug(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a bug rather than a model that cannot be served (no such model,
        a damaged one, a store down): counted as an internal error; the caller logs its
        traceback."""
        if isinstance(exc, MODEL_LOAD_FAILURES):
            return False
        self.metrics.internal_error("model_load")
        return True

    def status(self) -> dict[str, Any]:
        return {
            "model": self.serving_tag,
            "loaded_at": self.loaded_at,
            "following": self.selector,
            "poll_s": self.poll_s if self.polling else 0,
            "polls": self.polls,
            "last_attempt": self.last_attempt,
            "last_error": self.last_error,
            "refused_tag": next(reversed(self.refused), None),
            "reloads": self.reloads,
            "failures": self.failures,
        }


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:500]


def _describe(exc: BaseException, bug: bool) -> str:
    """The first line of ``exc``; a bug's says so and names its type (``KeyError: 'x'``)."""
    return f"internal error: {type(exc).__name__}: {_first_line(exc)}" if bug else _first_line(exc)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """This thread's torch CPU threads set to ``n`` meanwhile. ``set_num_threads`` sets the
    calling thread's OpenMP/MKL team, and the default of threads that first use torch later:
    restored after, and the serving threads have theirs already (the service starts them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _release(gone: weakref.ref[Any]) -> None:
    """Free a model swapped out (its GPU memory too), then freeze what serves now out of the
    garbage collector's full passes (as the service does at startup). A recommender is freed by
    reference counting when the last request using it ends; were it still held (a reference
    cycle among objects frozen at startup), unfreeze and collect everything once."""
    gc.collect()
    if gone() is not None:
        gc.unfreeze()
        gc.collect()
    gc.freeze()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()  # hand the old weights' blocks back to the GPU
