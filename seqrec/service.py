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
from seqrec.recommend import Metrics, ModelReloader

log = logging.getLogger("seqrec.serve")

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz"})
API_PATHS = ("/recommend", "/recommend_batch", "/recommend_from_events", "/predict", "/status")
ADMIN_RELOAD = "/admin/reload"


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


class ReloadRequest(BaseModel):
    """POST /admin/reload body (optional): the model to serve; default: the startup one."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: Annotated[str, Field(min_length=1, max_length=LIMITS.max_id_len)] | None = None


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
        self.reloads = Counter(
            "seqrec_model_reloads", "models swapped in while serving, by result", ["result"]
        )
        for result in ("ok", "failed"):
            self.reloads.labels(result=result)
        self.model_info = Gauge(
            "seqrec_model_info",
            "1 for the tag of the model serving (0 for ones it served before)",
            ["tag"],
            multiprocess_mode="livemax",
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

    def model_reload(self, ok: bool) -> None:
        self.reloads.labels(result="ok" if ok else "failed").inc()

    def serving(self, tag: str, previous: str | None = None) -> None:
        if previous is not None:
            self.model_info.labels(tag=previous).set(0)
        self.model_info.labels(tag=tag).set(1)


# -- ASGI guard: body size, bearer token, GET /status ---------------------------------------------

_SERVICE: SeqrecService | None = None


async def _send_json(
    send: Callable[..., Awaitable[None]], status: int, body: Any, **hdr: str
) -> None:
    await _send_bytes(send, status, to_json(body), **hdr)


async def _send_bytes(
    send: Callable[..., Awaitable[None]],
    status: int,
    data: bytes,
    model: str | None = None,
    **hdr: str,
) -> None:
    """One whole JSON response (``data`` already serialized); ``model``: the tag that answered
    (header ``X-Seqrec-Model``)."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if model is not None:
        headers.append((b"x-seqrec-model", model.encode()))
    if hdr:
        headers += [(k.encode(), v.encode()) for k, v in hdr.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """Pure ASGI middleware: 401 without the bearer token (when ``SEQREC_API_TOKEN`` is set;
    /livez and /readyz stay open), ``GET /status``, ``POST /admin/reload`` (its own token, from
    the variable ``admin_token_env`` names), 415 for a POST body that is not JSON, 413 past
    ``max_body`` bytes, and (``fast_path``) the POST endpoints of :data:`FAST_ROUTES`.

    BentoML's own middleware (request metrics, tracing, timeout, concurrency limit) wraps this
    one, so it applies to the fast path too."""

    def __init__(
        self,
        app: Any,
        max_body: int,
        fast_path: bool = True,
        admin_token_env: str = "SEQREC_ADMIN_TOKEN",
    ) -> None:
        self.app, self.max_body = app, max_body
        self.fast_path = fast_path and not _cors_enabled()
        token = os.environ.get("SEQREC_API_TOKEN", "")
        self.expected = f"Bearer {token}".encode() if token else None
        self.admin_env = admin_token_env
        admin = os.environ.get(admin_token_env, "")
        self.admin = f"Bearer {admin}".encode() if admin else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        if path == ADMIN_RELOAD:  # its own token, not the API one
            return await self._admin_reload(scope, receive, send)
        if (
            self.expected is not None
            and path not in OPEN_PATHS
            and not hmac.compare_digest(_authorization(scope), self.expected)
        ):
            return await _unauthorized(send)
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

    async def _admin_reload(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """``POST /admin/reload`` (body ``{"model": ref}`` optional): swap a model in now."""
        if scope["method"] != "POST":
            return await _send_json(send, 405, {"error": "use POST"}, allow="POST")
        if self.admin is None:
            return await _send_json(
                send,
                403,
                {
                    "error": f"admin reload is off: set the environment variable {self.admin_env} "
                    "to a secret token and send Authorization: Bearer <token> "
                    "([serve] admin_token_env names the variable)"
                },
            )
        if not hmac.compare_digest(_authorization(scope), self.admin):
            return await _unauthorized(send)
        body = await self._body(receive)
        if body is _GONE:
            return None
        if body is None:
            return await self._too_large(send)
        assert isinstance(body, bytes)
        from pydantic import ValidationError

        try:
            ref = ReloadRequest.model_validate_json(body.strip() or b"{}").model
        except ValidationError as exc:
            return await _send_json(
                send,
                400,
                {
                    "error": f"{exc.error_count()} validation error for {exc.title}",
                    "detail": exc.errors(include_context=False, include_input=False),
                },
            )
        if _SERVICE is None:
            return await _send_json(send, 503, {"error": "the service is still starting"})
        status, answer = await _SERVICE.reload(ref)
        return await _send_json(send, status, answer)

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


def _authorization(scope: dict[str, Any]) -> bytes:
    for name, value in scope["headers"]:
        if name == b"authorization":
            got: bytes = value
            return got
    return b""


async def _unauthorized(send: Any) -> None:
    await _send_json(
        send,
        401,
        {"error": "missing or wrong bearer token (Authorization: Bearer <token>)"},
        **{"www-authenticate": "Bearer"},
    )


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
        data, tag = await getattr(service, answer)(req)
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
    await _send_bytes(send, 200, data, tag)


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
        from seqrec.recommend import Query, Recommender, resolve_model_ref

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
        """An answer for BentoML's endpoint: a seqrec error is a 400 naming the problem."""
        from bentoml.exceptions import InvalidArgument

        from seqrec.errors import SeqrecError

        try:
            data, tag = await answer
        except SeqrecError as exc:
            raise InvalidArgument(str(exc)) from None
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
    Guard,
    max_body=LIMITS.max_body_bytes,
    fast_path=LIMITS.fast_path,
    admin_token_env=LIMITS.admin_token_env,
)

__all__ = ["SeqrecService"]
