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


def _json(obj: Any) -> Response:
    return Response(to_json(obj), media_type="application/json")


# -- batching -------------------------------------------------------------------------------------

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Coalesce concurrent calls into batches of at most ``max_batch`` for ``fn``.

    ``fn`` runs on ``executor`` (one thread): one batch at a time; whatever queued up meanwhile
    becomes the next batch. An idle batcher starts a batch at once: no added delay at low load.
    """

    def __init__(
        self, fn: Callable[[list[T]], list[R]], executor: ThreadPoolExecutor, max_batch: int
    ):
        self.fn, self.executor, self.max_batch = fn, executor, max_batch
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
                try:
                    results = await loop.run_in_executor(
                        self.executor, self.fn, [item for item, _ in batch]
                    )
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
    data = to_json(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in hdr.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """Pure ASGI middleware: 401 without the bearer token (when ``SEQREC_API_TOKEN`` is set;
    /livez and /readyz stay open), ``GET /status``, 415 for a POST body that is not JSON, and
    413 past ``max_body`` bytes."""

    def __init__(self, app: Any, max_body: int) -> None:
        self.app, self.max_body = app, max_body
        token = os.environ.get("SEQREC_API_TOKEN", "")
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
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
        if path == "/status" and scope["method"] == "GET":
            status = _SERVICE.status() if _SERVICE is not None else {"ready": False}
            return await _send_json(send, 200, status)
        if scope["method"] == "POST":
            for name, value in scope["headers"]:
                if name == b"content-type":
                    media = value.split(b";", 1)[0].strip().lower()
                    if media != b"application/json":
                        return await _send_json(
                            send,
                            415,
                            {"error": f"Content-Type must be application/json, not {media!r}"},
                        )
                    break
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_body:
                    return await _send_json(
                        send, 413, {"error": f"request body larger than {self.max_body} bytes"}
                    )
                break
        else:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                return await self._chunked(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _chunked(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """A body without Content-Length: read it all (bounded) before the app sees it."""
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            size += len(msg.get("body", b""))
            if size > self.max_body:
                return await _send_json(
                    send, 413, {"error": f"request body larger than {self.max_body} bytes"}
                )
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        body, sent = b"".join(chunks), False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


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

        self.recommend_batcher = MicroBatcher(recommend_many, self.executor, cfg.micro_batch)
        self.predict_batcher = MicroBatcher(predict_many, self.executor, cfg.micro_batch)
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
        from bentoml.exceptions import InvalidArgument

        from seqrec.errors import SeqrecError

        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        except SeqrecError as exc:
            raise InvalidArgument(str(exc)) from None

    async def _batched(self, batcher: MicroBatcher[Any, bytes], item: Any) -> Response:
        from bentoml.exceptions import InvalidArgument

        from seqrec.errors import SeqrecError

        try:
            body = await batcher(item)
        except SeqrecError as exc:
            raise InvalidArgument(str(exc)) from None
        self._watch_store()
        return Response(body, media_type="application/json")

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
                    self.executor, self.recommender.probe
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

    # -- endpoints ------------------------------------------------------------------------------

    @bentoml.api(input_spec=RecommendRequest, output_spec=Recommendation)
    async def recommend(
        self,
        user_id: str,
        k: int = 10,
        exclude_seen: bool = True,
        exclude_items: Sequence[str] = (),
    ) -> Response:
        """Top-k next items for a user from their online sequence (popularity if none)."""
        return await self._batched(
            self.recommend_batcher, self.Query(user_id, k, exclude_seen, tuple(exclude_items))
        )

    @bentoml.api(input_spec=RecommendBatchRequest, output_spec=BatchRecommendation)
    async def recommend_batch(
        self,
        user_ids: list[str],
        k: int = 10,
        exclude_seen: bool = True,
        exclude_items: Sequence[str] = (),
    ) -> Response:
        """Top-k for many users with one batched online lookup and one model call."""
        results = await self._run(
            self.recommender.recommend_batch, user_ids, k, exclude_seen, tuple(exclude_items)
        )
        self._watch_store()
        return _json({"results": results})

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
        from seqrec.recommend import Event

        evs = [Event(e.item_id, e.event_type, e.timestamp) for e in events]
        return _json(
            await self._run(
                self.recommender.recommend_from_events, evs, k, exclude_seen, exclude_items
            )
        )

    @bentoml.api(input_spec=PredictRequest, output_spec=Prediction)
    async def predict(self, user_id: str) -> Response:
        """Class probabilities for a user (classification models; uniform as the fallback)."""
        return await self._batched(self.predict_batcher, user_id)


SeqrecService.add_asgi_middleware(Guard, max_body=LIMITS.max_body_bytes)  # type: ignore[attr-defined]

__all__ = ["SeqrecService"]
