"""The BentoML service: ``bentoml serve seqrec.service:SeqrecService`` (or ``seqrec serve``).

Configured by environment: ``SEQREC_PROJECT`` (workspace directory: its ``[serve]`` section sets
the limits and the device), ``SEQREC_MODEL`` (a model tag, short name or label selector such as
``stage=production``; default: the workspace's default model, latest version),
``SEQREC_MODEL_STORE=bentoml`` (a Bento sets it: the model comes from BentoML's own store),
``SEQREC_API_TOKEN`` (when set, every endpoint but /livez and /readyz wants
``Authorization: Bearer <token>``), ``BENTOML_HOME`` (the model store; ``seqrec serve`` sets it).

Throughput: concurrent requests are coalesced by :class:`MicroBatcher` into one online lookup and
one model call, on one worker thread; a request that arrives while the thread is idle runs at
once (no batching delay at low load), the ones arriving while it is busy form the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Generic, NoReturn, TypeVar

import bentoml
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json
from starlette.responses import Response

from seqrec.commands.serve import BENTO_MARKER, BUNDLED_WS
from seqrec.config import ServeConfig
from seqrec.recommend import Metrics

log = logging.getLogger("seqrec.serve")

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz"})
API_PATHS = ("/recommend", "/recommend_batch", "/recommend_from_events", "/predict", "/status")


def _project() -> tuple[str | None, bool]:
    """(workspace directory, whether it is a Bento's bundled one). Inside a Bento (cwd = its
    src/) the workspace is ``seqrec_ws`` and the model is in BentoML's own store."""
    bundled = Path(BUNDLED_WS)
    if (bundled / BENTO_MARKER).is_file() and not os.environ.get("SEQREC_PROJECT"):
        return str(bundled.resolve()), True
    project = os.environ.get("SEQREC_PROJECT")
    in_bento = project is not None and (Path(project) / BENTO_MARKER).is_file()
    return project, in_bento or os.environ.get("SEQREC_MODEL_STORE") == "bentoml"


def _serve_config() -> ServeConfig:
    """The workspace's [serve] section (defaults when there is none, e.g. at `bentoml build`)."""
    from seqrec.config import load_workspace
    from seqrec.errors import SeqrecError

    try:
        return load_workspace(_project()[0]).config.serve
    except SeqrecError:
        return ServeConfig()


LIMITS = _serve_config()

Id = Annotated[str, Field(min_length=1, max_length=LIMITS.max_id_len)]
K = Annotated[int, Field(ge=1, le=LIMITS.max_k, description="number of items to return")]
ExcludeItems = Annotated[
    list[Id],
    Field(max_length=LIMITS.max_events, description="item ids never to return"),
]


class _Request(bentoml.IODescriptor):
    model_config = ConfigDict(extra="forbid", strict=True)


class RecommendRequest(_Request):
    """POST /recommend body. Unknown fields are rejected (400), not silently ignored."""

    user_id: Id
    k: K = 10
    exclude_seen: bool = Field(True, description="leave out items already in the user's history")
    exclude_items: ExcludeItems = Field(default_factory=list)


class RecommendBatchRequest(_Request):
    """POST /recommend_batch body: the same k and exclusions for every user."""

    user_ids: Annotated[list[Id], Field(min_length=1, max_length=LIMITS.max_batch)]
    k: K = 10
    exclude_seen: bool = True
    exclude_items: ExcludeItems = Field(default_factory=list)


class SessionEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    item_id: Id
    event_type: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    timestamp: Annotated[float, Field(ge=0, le=1e11, description="epoch seconds")] | None = None


class EventsRequest(_Request):
    """POST /recommend_from_events body: a session (oldest event first) not in the store yet."""

    events: Annotated[list[SessionEvent], Field(max_length=LIMITS.max_events)]
    k: K = 10
    exclude_seen: bool = True
    exclude_items: ExcludeItems = Field(default_factory=list)


class PredictRequest(_Request):
    """POST /predict body (classification models)."""

    user_id: Id


class ScoredItem(BaseModel):
    item_id: str
    score: float


class Recommendation(bentoml.IODescriptor):
    items: list[ScoredItem]
    model: str = Field(description="tag of the model that answered")
    fallback: bool = Field(description="true: popularity ranking (unknown user or store outage)")
    feature_age_s: float | None = Field(description="seconds since the newest event used")


class SessionRecommendation(Recommendation):
    unknown_items: int = Field(description="events whose item the model does not know (skipped)")


class BatchRecommendation(bentoml.IODescriptor):
    results: list[Recommendation]


class Prediction(bentoml.IODescriptor):
    probabilities: dict[str, float]
    model: str
    fallback: bool
    feature_age_s: float | None


# -- batching -------------------------------------------------------------------------------------

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Coalesce concurrent calls into batches of at most ``max_batch`` for ``fn``.

    ``fn`` runs on ``executor`` (one thread): one batch at a time; whatever queued up meanwhile
    becomes the next batch. An idle batcher starts a batch on the next turn of the event loop:
    no added delay at low load, and requests that arrived together are scored together.

    ``lock`` serializes every call of ``fn`` with whatever else uses the model. While
    ``inline()`` says so (the online store answers quickly), a batch of one runs on the event
    loop itself when the lock is free: the hop to the worker thread and back costs more than it
    saves when nothing else is waiting. A slow or failing store never blocks the event loop for
    more than the one lookup that showed it (health probes stay answered).
    """

    def __init__(
        self,
        fn: Callable[[list[T]], list[R]],
        executor: ThreadPoolExecutor,
        max_batch: int,
        lock: threading.Lock,
        inline: Callable[[], bool] = lambda: True,
    ):
        self.fn, self.executor, self.max_batch = fn, executor, max_batch
        self.lock, self.inline = lock, inline
        self.pending: list[tuple[T, asyncio.Future[R]]] = []
        self.running = False
        self.task: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self.pending.append((item, fut))
        if not self.running:
            self.running = True
            self.task = loop.create_task(self._drain(loop))
        return await fut

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while self.pending:
                batch = self.pending[: self.max_batch]
                del self.pending[: self.max_batch]
                items = [item for item, _ in batch]
                try:
                    if len(items) == 1 and self.inline() and self.lock.acquire(blocking=False):
                        try:
                            results = self.fn(items)
                        finally:
                            self.lock.release()
                    else:
                        results = await loop.run_in_executor(self.executor, self._locked, items)
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                else:
                    for (_, fut), res in zip(batch, results, strict=True):
                        if not fut.done():
                            fut.set_result(res)
        finally:
            self.running = False

    def _locked(self, items: list[T]) -> list[R]:
        with self.lock:
            return self.fn(items)


# -- metrics --------------------------------------------------------------------------------------


class PrometheusMetrics(Metrics):
    """seqrec's own series on /metrics, beside BentoML's request counts and latencies."""

    def __init__(self) -> None:
        # imported here: BentoML sets PROMETHEUS_MULTIPROC_DIR before creating the service
        from prometheus_client import Counter, Gauge, Histogram

        self.fallbacks = Counter(
            "seqrec_fallbacks_total", "answers served by the popularity fallback", ["reason"]
        )
        self.store_errors = Counter("seqrec_store_errors_total", "online store lookups that failed")
        self.store_up_gauge = Gauge(
            "seqrec_online_store_up",
            "1 while the online store answers, 0 while serving degraded (fallback)",
            multiprocess_mode="livemin",
        )
        self.unknown = Counter(
            "seqrec_unknown_items_total", "session events skipped: item unknown to the model"
        )
        self.batch_size = Histogram(
            "seqrec_batch_size",
            "requests scored together in one lookup + model call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.store_up_gauge.set(1)

    def fallback(self, reason: str, n: int) -> None:
        self.fallbacks.labels(reason=reason).inc(n)

    def store_error(self) -> None:
        self.store_errors.inc()

    def store_up(self, up: bool) -> None:
        self.store_up_gauge.set(1 if up else 0)

    def unknown_items(self, n: int) -> None:
        self.unknown.inc(n)


# -- ASGI guard: body size, bearer token, GET /status ---------------------------------------------

_SERVICE: SeqrecService | None = None


async def _send_json(
    send: Callable[..., Awaitable[None]], status: int, body: Any, **hdr: str
) -> None:
    await _send_bytes(send, status, to_json(body), **hdr)


async def _send_bytes(
    send: Callable[..., Awaitable[None]], status: int, data: bytes, **hdr: str
) -> None:
    """One whole JSON response (``data`` already serialized)."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in hdr.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """Pure ASGI middleware: 401 without the bearer token (when ``SEQREC_API_TOKEN`` is set;
    /livez and /readyz stay open), ``GET /status``, 415 for a POST body that is not JSON, 413
    past ``max_body`` bytes, and (``fast_path``) the POST endpoints of :data:`FAST_ROUTES`.

    BentoML's own middleware (request metrics, tracing, timeout, concurrency limit) wraps this
    one, so it applies to the fast path too."""

    def __init__(self, app: Any, max_body: int, fast_path: bool = True) -> None:
        self.app, self.max_body = app, max_body
        self.fast_path = fast_path and not _cors_enabled()
        token = os.environ.get("SEQREC_API_TOKEN", "")
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        if self.expected is not None and path not in OPEN_PATHS:
            got = b""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    got = value
                    break
            if not hmac.compare_digest(got, self.expected):
                return await _send_json(
                    send,
                    401,
                    {"error": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                    **{"www-authenticate": "Bearer"},
                )
        if path == "/status" and method == "GET":
            status = _SERVICE.status() if _SERVICE is not None else {"ready": False}
            return await _send_json(send, 200, status)
        length: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-type" and method == "POST":
                media = value.split(b";", 1)[0].strip().lower()
                if media != b"application/json":
                    return await _send_json(
                        send,
                        415,
                        {"error": f"Content-Type must be application/json, not {media!r}"},
                    )
            elif name == b"content-length" and length is None:
                if not value.isdigit() or int(value) > self.max_body:
                    return await self._too_large(send)
                length = int(value)
        route = FAST_ROUTES.get(path) if method == "POST" and self.fast_path else None
        bounded = length is None and method in ("POST", "PUT", "PATCH")
        if (route is not None and _SERVICE is not None) or bounded:
            body = await self._body(receive)
            if body is _GONE:  # the client left mid-body: nobody to answer
                return None
            if body is None:
                return await self._too_large(send)
            assert isinstance(body, bytes)
            if route is not None and _SERVICE is not None:
                return await _fast(_SERVICE, route, body, send)
            return await self.app(scope, _replay(body), send)
        return await self.app(scope, receive, send)

    async def _too_large(self, send: Any) -> None:
        await _send_json(send, 413, {"error": f"request body larger than {self.max_body} bytes"})

    async def _body(self, receive: Any) -> bytes | object | None:
        """The whole request body; None past ``max_body`` bytes, ``_GONE`` if the client left."""
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return _GONE
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not msg.get("more_body"):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_GONE = object()


def _cors_enabled() -> bool:
    """Whether BentoML's CORS middleware is on: it sits inside this middleware, so the fast
    path would answer without its headers; seqrec then leaves the endpoints to BentoML."""
    try:
        from bentoml._internal.configuration.containers import BentoMLContainer

        return bool(BentoMLContainer.http.cors.enabled.get())
    except Exception:  # a BentoML without that setting: no CORS middleware either
        return False


def _replay(body: bytes) -> Callable[[], Awaitable[dict[str, Any]]]:
    """An ASGI ``receive`` that hands the app a body already read."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _fast(
    service: SeqrecService, route: tuple[type[_Request], str], body: bytes, send: Any
) -> None:
    """Validate ``body`` with the endpoint's request model and answer it: the same statuses
    and error bodies as BentoML's endpoints (400 names the field), never a traceback."""
    from pydantic import ValidationError

    from seqrec.errors import SeqrecError

    model, answer = route
    try:
        req = model.model_validate_json(body or b"{}")
        data = await getattr(service, answer)(req)
    except ValidationError as exc:
        return await _send_json(
            send,
            400,
            {
                "error": f"{exc.error_count()} validation error for {exc.title}",
                "detail": exc.errors(include_context=False, include_input=False),
            },
        )
    except SeqrecError as exc:
        return await _send_json(send, 400, {"error": str(exc)})
    except Exception:
        log.exception("request to %s failed", answer)
        return await _send_json(
            send, 500, {"error": "An unexpected error has occurred, please check the server log."}
        )
    await _send_bytes(send, 200, data)


# -- the service ----------------------------------------------------------------------------------


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
        global _SERVICE
        import torch

        from seqrec.config import load_workspace
        from seqrec.errors import SeqrecError
        from seqrec.recommend import Query, Recommender

        project, in_bento = _project()
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
        self.started = time.time()
        self.Query = Query

        def recommend_many(queries: list[Query]) -> list[bytes]:
            self.metrics.batch_size.observe(len(queries))
            return [to_json(r) for r in rec.recommend_many(queries)]

        def predict_many(users: list[str]) -> list[bytes]:
            self.metrics.batch_size.observe(len(users))
            return [to_json(r) for r in rec.predict_many(users)]

        self.model_lock = threading.Lock()
        quick = rec.store_is_quick
        self.recommend_batcher = MicroBatcher(
            recommend_many, self.executor, cfg.micro_batch, self.model_lock, quick
        )
        self.predict_batcher = MicroBatcher(
            predict_many, self.executor, cfg.micro_batch, self.model_lock, quick
        )
        self._probe_task: asyncio.Task[None] | None = None
        _SERVICE = self
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

    # -- helpers --------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., R], *args: Any) -> R:
        """``fn(*args)`` on the model thread, under the model lock."""
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, self._locked, fn, *args
        )

    async def _via_bentoml(self, answer: Awaitable[bytes]) -> Response:
        """An answer for BentoML's endpoint: a seqrec error is a 400 naming the problem."""
        from bentoml.exceptions import InvalidArgument

        from seqrec.errors import SeqrecError

        try:
            return Response(await answer, media_type="application/json")
        except SeqrecError as exc:
            raise InvalidArgument(str(exc)) from None

    def _locked(self, fn: Callable[..., R], *args: Any) -> R:
        with self.model_lock:
            return fn(*args)

    def _watch_store(self) -> None:
        """While degraded, probe the store in the background so recovery needs no traffic."""
        if self.recommender.health.up or (self._probe_task and not self._probe_task.done()):
            return
        self._probe_task = asyncio.get_running_loop().create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        health = self.recommender.health
        while not health.up:
            await asyncio.sleep(health.retry_s)
            if not health.up:
                await asyncio.get_running_loop().run_in_executor(
                    self.executor, self._locked, self.recommender.probe
                )

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
        }

    # -- answers: JSON bytes, shared by BentoML's endpoints and the fast path -----------------

    async def answer_recommend(self, r: RecommendRequest) -> bytes:
        q = self.Query(r.user_id, r.k, r.exclude_seen, tuple(r.exclude_items))
        body = await self.recommend_batcher(q)
        self._watch_store()
        return body

    async def answer_recommend_batch(self, r: RecommendBatchRequest) -> bytes:
        rec = self.recommender
        ex = tuple(r.exclude_items)
        results = await self._run(rec.recommend_batch, r.user_ids, r.k, r.exclude_seen, ex)
        self._watch_store()
        return to_json({"results": results})

    async def answer_recommend_from_events(self, r: EventsRequest) -> bytes:
        from seqrec.recommend import Event

        evs = [Event(e.item_id, e.event_type, e.timestamp) for e in r.events]
        rec = self.recommender
        ex = tuple(r.exclude_items)
        return to_json(await self._run(rec.recommend_from_events, evs, r.k, r.exclude_seen, ex))

    async def answer_predict(self, r: PredictRequest) -> bytes:
        body = await self.predict_batcher(r.user_id)
        self._watch_store()
        return body

    # -- endpoints (BentoML's: they define the OpenAPI spec; see FAST_ROUTES) --------------------

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


#: POST path -> (request model, answer method): served by :class:`Guard` directly when
#: ``[serve] fast_path`` is on, with the same validation and the same answers as BentoML's
#: endpoints, but without BentoML's per-request routing, request context and IO descriptors.
FAST_ROUTES: dict[str, tuple[type[_Request], str]] = {
    "/recommend": (RecommendRequest, "answer_recommend"),
    "/recommend_batch": (RecommendBatchRequest, "answer_recommend_batch"),
    "/recommend_from_events": (EventsRequest, "answer_recommend_from_events"),
    "/predict": (PredictRequest, "answer_predict"),
}

SeqrecService.add_asgi_middleware(  # type: ignore[attr-defined]
    Guard, max_body=LIMITS.max_body_bytes, fast_path=LIMITS.fast_path
)

__all__ = ["SeqrecService"]
