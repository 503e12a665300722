"""The BentoML service: ``bentoml serve seqrec.service:SeqrecService`` (or ``seqrec serve``).

Configured by environment: ``SEQREC_PROJECT`` (workspace directory: its ``[serve]`` section sets
the limits and the device), ``SEQREC_MODEL`` (a model tag, short name or label selector such as
``stage=production``; default: the workspace's default model, latest version),
``SEQREC_MODEL_STORE=bentoml`` (a Bento sets it: the model comes from BentoML's own store),
``SEQREC_API_TOKEN`` (when set, every endpoint but /livez, /readyz and /admin/reload wants
``Authorization: Bearer <token>``), ``SEQREC_ADMIN_TOKEN`` (or the variable ``[serve]
admin_token_env`` names: the token of ``POST /admin/reload``), ``BENTOML_HOME`` (the model
store; ``seqrec serve`` sets it).

Hot reload: started with a label selector (``SEQREC_MODEL=stage=production``), the service
re-resolves it every ``[serve] reload_poll_s`` seconds and swaps in a newly labelled model
(:class:`seqrec.recommend.ModelReloader`); ``POST /admin/reload`` does it at once.

Cold-start items: serving a text-aware model (``item_text=true``), the service looks every
``[serve] items_poll_s`` seconds for items newer than the model that have a text embedding
online, and ranks them by their text (:mod:`seqrec.extra_items`); ``/status`` shows
``extra_items``.

Throughput: concurrent requests are coalesced by :class:`~seqrec.serving.batcher.MicroBatcher`
into one online lookup and one model call, on one worker thread; a request that arrives while
the thread is idle runs at once (no batching delay at low load), the ones arriving while it is
busy form the next batch.

This module is the service class alone; its pieces live in :mod:`seqrec.serving` (request and
response schemas, the batcher, the Prometheus metrics, the ASGI middleware and fast path).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

import bentoml
from pydantic_core import to_json
from starlette.responses import Response

from seqrec.bento import serving_project
from seqrec.recommend import ModelReloader
from seqrec.serving.batcher import MicroBatcher
from seqrec.serving.fastpath import API_PATHS, Guard, attach
from seqrec.serving.metrics import PrometheusMetrics
from seqrec.serving.schemas import (
    LIMITS,
    BatchRecommendation,
    EventsRequest,
    Prediction,
    PredictRequest,
    Recommendation,
    RecommendBatchRequest,
    RecommendRequest,
    SessionEvent,
    SessionRecommendation,
)

log = logging.getLogger("seqrec.serve")

R = TypeVar("R")


def _fail_startup(message: str) -> NoReturn:
    """Stop the whole server, not just this worker: BentoML's supervisor would otherwise keep
    an API server up with no worker behind it."""
    log.critical(message)
    print(message, file=sys.stderr, flush=True)
    if os.environ.get("BENTOML_WORKER_ID") or os.getppid() != 1:
        with contextlib.suppress(OSError):
            os.kill(os.getppid(), signal.SIGTERM)
    raise SystemExit(message)


def _threads(setting: int) -> int:
    return setting or max(1, min(4, (os.cpu_count() or 2) // 2))


@bentoml.service(
    name="seqrec",
    traffic={"timeout": 30},
    workers=1,
    logging={"access": {"enabled": LIMITS.access_log}},
    # BentoML traces every request by default (OpenTelemetry), spans dropped unless an exporter
    # is configured; at ~1 ms of CPU per request, seqrec's endpoints opt in with [serve] tracing
    tracing={} if LIMITS.tracing else {"excluded_urls": list(API_PATHS)},
)
class SeqrecService:
    """Recommendations (and class probabilities) from the served model and online features."""

    def __init__(self) -> None:
        import torch

        from seqrec.config import load_workspace
        from seqrec.errors import SeqrecError
        from seqrec.recommend import Query, Recommender, resolve_model_ref

        project, in_bento = serving_project()
        try:
            ws = load_workspace(project)
        except SeqrecError as exc:
            _fail_startup(f"seqrec: cannot start, no workspace: {exc}")
        cfg = ws.config.serve
        torch.set_num_threads(_threads(cfg.threads))
        self.metrics = PrometheusMetrics()
        ref = os.environ.get("SEQREC_MODEL") or ws.config.models.default
        try:
            self.recommender = Recommender(ws, ref, metrics=self.metrics, bentoml_store=in_bento)
        except SeqrecError as exc:
            _fail_startup(f"seqrec: cannot start, the model did not load: {exc}")
        rec = self.recommender
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="seqrec-model")
        # start the model thread now: its torch threads are set when it first uses torch, and
        # a reload lowers the default meanwhile (seqrec.recommend._torch_threads)
        self.executor.submit(torch.get_num_threads).result()
        self.started = time.time()
        self.Query = Query

        # these run under the model lock and read the serving recommender once: a swap (under
        # the same lock) falls between two batches, never inside one
        def recommend_many(queries: list[Query]) -> list[tuple[bytes, str]]:
            rec = self.recommender
            self.metrics.batch_size.observe(len(queries))
            tag = rec.tag
            return [(to_json(r), tag) for r in rec.recommend_many(queries)]

        def predict_many(users: list[str]) -> list[tuple[bytes, str]]:
            rec = self.recommender
            self.metrics.batch_size.observe(len(users))
            tag = rec.tag
            return [(to_json(r), tag) for r in rec.predict_many(users)]

        def quick() -> bool:
            return self.recommender.store_is_quick()

        self.model_lock = threading.Lock()
        self.recommend_batcher = MicroBatcher(
            recommend_many, self.executor, cfg.micro_batch, self.model_lock, quick
        )
        self.predict_batcher = MicroBatcher(
            predict_many, self.executor, cfg.micro_batch, self.model_lock, quick
        )
        self._probe_task: asyncio.Task[None] | None = None
        store, pointers = (None, None) if in_bento else (ws.model_store, ws)

        def load(tag: str, serving: Recommender) -> Recommender:
            return Recommender(
                ws, tag, metrics=self.metrics, bentoml_store=in_bento, share_store_with=serving
            )

        self.reloader = ModelReloader(
            self,
            self.model_lock,
            load,
            lambda want: resolve_model_ref(want, store, pointers),
            ref,
            cfg.reload_poll_s,
            self.metrics,
        )
        self.metrics.serving(rec.tag)
        self.items_poll_s = cfg.items_poll_s
        self._items_stop = threading.Event()
        attach(self)
        # everything loaded so far lives as long as the process: keep it out of the garbage
        # collector's full passes, which otherwise stall requests for hundreds of milliseconds
        gc.collect()
        gc.freeze()
        log.info(
            "seqrec: serving %s (%s) on %s%s, %d torch threads",
            rec.tag,
            rec.task,
            rec.device,
            " fp16" if rec.half else "",
            torch.get_num_threads(),
        )
        if self.reloader.polling:
            log.info("seqrec: following %s, checked every %gs", ref, self.reloader.poll_s)
        self.reloader.start()
        if self.items_poll_s > 0:
            threading.Thread(target=self._watch_items, name="seqrec-items", daemon=True).start()

    def _watch_items(self) -> None:
        """Every ``[serve] items_poll_s``: the serving text-aware model re-reads the items
        newer than it (a no-op for id-only models); failures keep the last block."""
        while not self._items_stop.wait(self.items_poll_s):
            try:
                self.recommender.refresh_extra_items()
            except Exception:  # the watcher must outlive any surprise
                log.exception("extra items: refresh failed")

    # -- helpers --------------------------------------------------------------------------------

    async def _call(self, method: str, *args: Any) -> tuple[Any, str]:
        """(``recommender.<method>(*args)``, its tag) on the model thread, under the model
        lock, with the recommender serving then."""
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, self._locked, self._on_serving, method, *args
        )

    def _on_serving(self, method: str, *args: Any) -> tuple[Any, str]:
        rec = self.recommender
        return getattr(rec, method)(*args), rec.tag

    async def _via_bentoml(self, answer: Awaitable[tuple[bytes, str]]) -> Response:
        """An answer for BentoML's endpoint, the same as the fast path's: a seqrec error is a
        400 naming the problem, a bug a 500 with its error id. Answered here, not raised:
        BentoML would wrap a 400 body in a list and replace a 500's message (and its id)."""
        from seqrec.errors import SeqrecError

        try:
            data, tag = await answer
        except SeqrecError as exc:
            return Response(to_json({"error": str(exc)}), 400, media_type="application/json")
        except Exception as exc:  # a bug: logged and counted under an error id, answered 500
            from seqrec.serving.metrics import internal_error

            msg = internal_error(exc, "request", self.metrics)
            return Response(to_json({"error": msg}), 500, media_type="application/json")
        return Response(data, media_type="application/json", headers={"x-seqrec-model": tag})

    def _locked(self, fn: Callable[..., R], *args: Any) -> R:
        with self.model_lock:
            return fn(*args)

    async def reload(self, ref: str | None) -> tuple[int, dict[str, Any]]:
        """``POST /admin/reload``: (HTTP status, body). Loads on a thread of its own; 422 when
        the model is refused (the old one keeps serving)."""
        from seqrec.errors import SeqrecError

        loop = asyncio.get_running_loop()
        body: dict[str, Any]
        try:
            changed = await loop.run_in_executor(None, self.reloader.reload, ref)
            status, body = 200, {"reloaded": changed}
        except SeqrecError as exc:
            status, body = 422, {"error": str(exc)}
        return status, {**body, "model": self.recommender.tag, "reload": self.reloader.status()}

    def _watch_store(self) -> None:
        """While degraded, probe the store in the background so recovery needs no traffic."""
        if self.recommender.health.up or (self._probe_task and not self._probe_task.done()):
            return
        self._probe_task = asyncio.get_running_loop().create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        while not self.recommender.health.up:
            await asyncio.sleep(self.recommender.health.retry_s)
            if not self.recommender.health.up:
                await self._call("probe")

    def status(self) -> dict[str, Any]:
        rec = self.recommender
        return {
            "model": rec.tag,
            "task": rec.task,
            "device": str(rec.device),
            "half_precision": rec.half,
            "degraded": not rec.health.up,
            **rec.health.status(),
            "uptime_s": round(time.time() - self.started, 1),
            "reload": self.reloader.status(),
            "extra_items": {**rec.extra_status(), "poll_s": self.items_poll_s},
        }

    # -- answers: (JSON bytes, model tag), shared by BentoML's endpoints and the fast path -------

    async def answer_recommend(self, r: RecommendRequest) -> tuple[bytes, str]:
        q = self.Query(r.user_id, r.k, r.exclude_seen, tuple(r.exclude_items))
        answer = await self.recommend_batcher(q)
        self._watch_store()
        return answer

    async def answer_recommend_batch(self, r: RecommendBatchRequest) -> tuple[bytes, str]:
        ex = tuple(r.exclude_items)
        args = (r.user_ids, r.k, r.exclude_seen, ex)
        results, tag = await self._call("recommend_batch", *args)
        self._watch_store()
        return to_json({"results": results}), tag

    async def answer_recommend_from_events(self, r: EventsRequest) -> tuple[bytes, str]:
        from seqrec.recommend import Event

        evs = [Event(e.item_id, e.event_type, e.timestamp) for e in r.events]
        ex = tuple(r.exclude_items)
        result, tag = await self._call("recommend_from_events", evs, r.k, r.exclude_seen, ex)
        return to_json(result), tag

    async def answer_predict(self, r: PredictRequest) -> tuple[bytes, str]:
        answer = await self.predict_batcher(r.user_id)
        self._watch_store()
        return answer

    # -- endpoints (BentoML's: they define the OpenAPI spec; see fastpath.FAST_ROUTES) ----------

    @bentoml.api(input_spec=RecommendRequest, output_spec=Recommendation)
    async def recommend(
        self,
        user_id: str,
        k: int = 10,
        exclude_seen: bool = True,
        exclude_items: Sequence[str] = (),
    ) -> Response:
        """Top-k next items for a user from their online sequence (popularity if none)."""
        r = RecommendRequest.model_construct(
            user_id=user_id, k=k, exclude_seen=exclude_seen, exclude_items=list(exclude_items)
        )
        return await self._via_bentoml(self.answer_recommend(r))

    @bentoml.api(input_spec=RecommendBatchRequest, output_spec=BatchRecommendation)
    async def recommend_batch(
        self,
        user_ids: list[str],
        k: int = 10,
        exclude_seen: bool = True,
        exclude_items: Sequence[str] = (),
    ) -> Response:
        """Top-k for many users with one batched online lookup and one model call."""
        r = RecommendBatchRequest.model_construct(
            user_ids=user_ids, k=k, exclude_seen=exclude_seen, exclude_items=list(exclude_items)
        )
        return await self._via_bentoml(self.answer_recommend_batch(r))

    @bentoml.api(input_spec=EventsRequest, output_spec=SessionRecommendation)
    async def recommend_from_events(
        self,
        events: list[SessionEvent],
        k: int = 10,
        exclude_seen: bool = True,
        exclude_items: Sequence[str] = (),
    ) -> Response:
        """Top-k for a live session given as events (oldest first); no store lookup. Events with
        items the model does not know are skipped and counted in ``unknown_items``."""
        r = EventsRequest.model_construct(
            events=events, k=k, exclude_seen=exclude_seen, exclude_items=list(exclude_items)
        )
        return await self._via_bentoml(self.answer_recommend_from_events(r))

    @bentoml.api(input_spec=PredictRequest, output_spec=Prediction)
    async def predict(self, user_id: str) -> Response:
        """Class probabilities for a user (classification models; uniform as the fallback)."""
        r = PredictRequest.model_construct(user_id=user_id)
        return await self._via_bentoml(self.answer_predict(r))


SeqrecService.add_asgi_middleware(  # type: ignore[attr-defined]
    Guard,
    max_body=LIMITS.max_body_bytes,
    fast_path=LIMITS.fast_path,
    admin_token_env=LIMITS.admin_token_env,
    rate_per_s=LIMITS.rate_limit_per_s,
    rate_burst=LIMITS.rate_limit_burst,
)

__all__ = ["SeqrecService"]
