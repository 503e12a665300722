"""The service's ASGI middleware (:class:`Guard`): bearer tokens, body limits, ``GET /status``,
``POST /admin/reload``, and the fast path that answers the POST endpoints itself, with the
same validation and answers as BentoML's endpoints but without their per-request overhead."""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from pydantic_core import to_json

from seqrec.compat.bentoml_private import cors_enabled
from seqrec.serving.ratelimit import RateLimiter, retry_after
from seqrec.serving.schemas import (
    ApiRequest,
    EventsRequest,
    PredictRequest,
    RecommendBatchRequest,
    RecommendRequest,
    ReloadRequest,
)

log = logging.getLogger("seqrec.serve")

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz"})
API_PATHS = ("/recommend", "/recommend_batch", "/recommend_from_events", "/predict", "/status")
ADMIN_RELOAD = "/admin/reload"


class Answers(Protocol):
    """What the middleware needs of the service: its status, a reload, and the ``answer_*``
    coroutines :data:`FAST_ROUTES` names (``(JSON bytes, model tag)`` for a request model)."""

    def status(self) -> dict[str, Any]: ...

    async def reload(self, ref: str | None) -> tuple[int, dict[str, Any]]: ...


_SERVICE: Answers | None = None


def attach(service: Answers) -> None:
    """Make ``service`` the one this process's middleware answers for (set when it is ready;
    until then /status says not ready and requests go to BentoML)."""
    global _SERVICE
    _SERVICE = service


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
    /livez and /readyz stay open), 429 past the per-client rate limit (``rate_per_s`` > 0; the
    same two exempt), ``GET /status``, ``POST /admin/reload`` (its own token, from
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
        rate_per_s: float = 0.0,
        rate_burst: int = 20,
    ) -> None:
        self.app, self.max_body = app, max_body
        self.limiter = RateLimiter(rate_per_s, rate_burst) if rate_per_s > 0 else None
        self.fast_path = fast_path and not cors_enabled()
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
        if self.limiter is not None and path not in OPEN_PATHS:
            wait = self.limiter.take(_client(scope))
            if wait > 0:
                return await _send_json(
                    send,
                    429,
                    {"error": "too many requests from this client: retry later"},
                    **{"retry-after": retry_after(wait)},
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


def _client(scope: dict[str, Any]) -> str:
    """The client's address (the peer's: behind a proxy, the proxy's)."""
    client = scope.get("client")
    return str(client[0]) if client else "-"


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
    service: Answers, route: tuple[type[ApiRequest], str], body: bytes, send: Any
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
    except Exception as exc:  # a bug: logged with its traceback and counted, answered 500
        from seqrec.serving.metrics import internal_error

        msg = internal_error(exc, "request", getattr(service, "metrics", None))
        return await _send_json(send, 500, {"error": msg})
    await _send_bytes(send, 200, data, tag)


#: POST path -> (request model, answer method): served by :class:`Guard` directly when
#: ``[serve] fast_path`` is on, with the same validation and the same answers as BentoML's
#: endpoints, but without BentoML's per-request routing, request context and IO descriptors.
FAST_ROUTES: dict[str, tuple[type[ApiRequest], str]] = {
    "/recommend": (RecommendRequest, "answer_recommend"),
    "/recommend_batch": (RecommendBatchRequest, "answer_recommend_batch"),
    "/recommend_from_events": (EventsRequest, "answer_recommend_from_events"),
    "/predict": (PredictRequest, "answer_predict"),
}
