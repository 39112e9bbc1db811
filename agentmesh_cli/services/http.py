"""Shared HTTP pieces of the mesh's services: the JSON answers of the error model (the
ApiError tree of errors.py, which knows no web framework), the
request body limit, JSON body parsing, Server-Sent Events helpers, and serving an app
with uvicorn on a socket we bind ourselves.

Every error a service answers has one shape, `{"error": {"code", "message", "details"}}`,
with a status that says what went wrong; a Redis failure (StoreError) is a 503, never a
500 with a traceback.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import math
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any

import anyio
import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentmesh_cli.errors import (
    ApiError,
    BadRequest,
    BodyLimitExceeded,
    ConfigError,
    InvalidJson,
    PayloadTooLarge,
    PortInUseError,
    StoreError,
    Unavailable,
    UnsupportedMediaType,
)
from agentmesh_cli.waiting import wait_until_async

log = logging.getLogger(__name__)

EVENT_STREAM = "text/event-stream"
GRACEFUL_SHUTDOWN_S = 5.0  # below supervisord's stopwaitsecs (10), so TERM never needs a KILL
SSE_SHUTDOWN_GRACE_S = 2.0  # an endless stream's generator gets this long to end on shutdown


# errors: errors.ApiError and its subclasses, as JSON answers -------------------------
class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_argument.")
    message: str = Field(description="What went wrong, for people.")
    details: dict[str, Any] = Field(default_factory=dict,
                                    description="e.g. {'argument': 'user_id'} for a 400.")


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorBody


class Health(BaseModel):
    status: str = Field(description="healthy | unhealthy")
    details: dict[str, str] | None = Field(None, description="What failed, when unhealthy.")


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries: these statuses answer with ErrorResponse."""
    return {status: {"model": ErrorResponse, "description": HTTPStatus(status).phrase}
            for status in statuses}


class OrjsonResponse(JSONResponse):
    """JSON via orjson (the project's codec): compact, and fast for long item lists."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(status: int, code: str, message: str, details: dict[str, Any] | None = None,
                   headers: Mapping[str, str] | None = None) -> OrjsonResponse:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return OrjsonResponse(body, status_code=status, headers=headers)


def _from_api_error(exc: ApiError) -> OrjsonResponse:
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


def _from_store_error(exc: StoreError) -> OrjsonResponse:
    cause = exc.__cause__ or exc
    return error_response(503, Unavailable.code, str(exc), {"redis": str(cause)})


def _from_http_exception(request: Request, exc: StarletteHTTPException) -> OrjsonResponse:
    """Starlette's own 404 (no route) and 405 (wrong method), in our shape."""
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return error_response(405, "method_not_allowed",
                              f"{request.method} is not allowed on {request.url.path}",
                              {"allowed": [m.strip() for m in allowed.split(",") if m.strip()]},
                              exc.headers)
    if exc.status_code == 404:
        return error_response(404, "not_found", f"no endpoint {request.url.path}",
                              {"path": request.url.path}, exc.headers)
    phrase = HTTPStatus(exc.status_code).phrase
    return error_response(exc.status_code, phrase.lower().replace(" ", "_").replace("-", "_"),
                          str(exc.detail), None, exc.headers)


def _from_validation_error(exc: RequestValidationError) -> OrjsonResponse:
    """FastAPI's parameter validation (e.g. ?follow=maybe) as a 400 naming the parameter."""
    first = exc.errors()[0] if exc.errors() else {}
    argument = str(first.get("loc", ("", ""))[-1])
    message = f"argument {argument!r}: {first.get('msg', 'invalid')}"
    return error_response(400, BadRequest.code, message, {"argument": argument})


def install_error_handlers(app: FastAPI) -> None:
    """Map every error the app can raise on purpose to the JSON error shape."""

    async def api_error(request: Request, exc: Exception) -> OrjsonResponse:
        assert isinstance(exc, ApiError)
        return _from_api_error(exc)

    async def store_error(request: Request, exc: Exception) -> OrjsonResponse:
        assert isinstance(exc, StoreError)
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return _from_store_error(exc)

    async def http_exception(request: Request, exc: Exception) -> OrjsonResponse:
        assert isinstance(exc, StarletteHTTPException)
        return _from_http_exception(request, exc)

    async def validation_error(request: Request, exc: Exception) -> OrjsonResponse:
        assert isinstance(exc, RequestValidationError)
        return _from_validation_error(exc)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StoreError, store_error)
    app.add_exception_handler(StarletteHTTPException, http_exception)
    app.add_exception_handler(RequestValidationError, validation_error)


# middleware ---------------------------------------------------------------------------
def _too_large(limit: int, kind: type[PayloadTooLarge] = PayloadTooLarge) -> PayloadTooLarge:
    return kind(f"request body is larger than {limit} bytes", {"max_bytes": limit})


class BodyLimitMiddleware:
    """413 for a body over `max_bytes`: by Content-Length before the app runs, and by
    counting the bytes the app actually reads."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _from_api_error(_too_large(self.max_bytes))(scope, receive, send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _too_large(self.max_bytes, BodyLimitExceeded)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyLimitExceeded as exc:
            # normally the app's handler for ApiError answers; this covers a reader outside it
            if started:
                raise
            await _from_api_error(exc)(scope, receive, send)


class ErrorBoundaryMiddleware:
    """Anything unexpected: one log line with the traceback, and a JSON 500 for the client
    (instead of Starlette's plain-text 500), when the answer has not started yet."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                return  # the status line is out; closing the answer early is all we can do
            response = error_response(500, ApiError.code, f"internal error: {type(exc).__name__}")
            await response(scope, receive, send)


# request bodies -----------------------------------------------------------------------
def _is_json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_json(request: Request) -> Any:
    """The body as JSON: 415 when it is declared as something else, 400 when it does not
    parse. No Content-Type is read as JSON (handy with bare clients)."""
    content_type = request.headers.get("content-type")
    if content_type is not None and not _is_json_type(content_type):
        raise UnsupportedMediaType(f"the body must be application/json, not {content_type}",
                                   {"content_type": content_type})
    body = await request.body()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"the body is not JSON: {exc}") from exc


def finite_number(value: Any) -> bool:
    """A JSON number that is not a boolean, NaN or infinite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# server-sent events -------------------------------------------------------------------
def wants_event_stream(request: Request) -> bool:
    return EVENT_STREAM in request.headers.get("accept", "").lower()


def sse_json(event: str, data: Any) -> ServerSentEvent:
    """One event whose data is compact JSON (orjson never writes a newline into it)."""
    return ServerSentEvent(data=orjson.dumps(data).decode(), event=event)


def sse_comment(text: str) -> ServerSentEvent:
    return ServerSentEvent(comment=text)


def event_stream(events: AsyncIterator[ServerSentEvent], keepalive_s: float, *,
                 shutdown: anyio.Event | None = None,
                 on_close: Callable[[], Awaitable[None]] | None = None) -> EventSourceResponse:
    """An SSE answer with a comment every `keepalive_s` (proxies drop silent streams).

    At server shutdown `shutdown` is set and the generator has SSE_SHUTDOWN_GRACE_S to
    return, so the stream ends properly instead of being cut. `on_close` (a coroutine
    function) runs after the stream, also when it was never iterated.
    """
    background = BackgroundTask(on_close) if on_close is not None else None
    return EventSourceResponse(events, ping=keepalive_s, background=background,
                               headers={"Cache-Control": "no-store"},
                               shutdown_event=shutdown,
                               shutdown_grace_period=SSE_SHUTDOWN_GRACE_S if shutdown else 0)


# serving ------------------------------------------------------------------------------
def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves, so a taken port is a PortInUseError naming it."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(f"port {port} on {host} is already in use, so the service "
                                 "cannot start; stop what holds it or pick another port") from exc
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    # accepted connections inherit it: without, Nagle and the client's delayed ACK hold
    # every answer on a kept-alive connection ~40 ms (asyncio sets it only when the
    # listening socket says proto=TCP, and create_server leaves proto 0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def check_tls_files(certfile: str, keyfile: str) -> None:
    """The certificate and key load (a readable PEM pair that matches), or a ConfigError
    naming services.tls_cert / tls_key, before anything listens."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"services.tls_cert {certfile!r} / services.tls_key {keyfile!r} "
                          f"cannot be used: {reason}") from exc


def serve(app: FastAPI, host: str, port: int,
          on_started: Callable[[Callable[[], bool]], Awaitable[None]], *,
          certfile: str = "", keyfile: str = "",
          loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> None:
    """Run `app` with uvicorn (one process) until SIGTERM/SIGINT. Once it accepts
    connections, `on_started(stopping)` runs as a task; `stopping()` turns True at shutdown.
    With `certfile` and `keyfile` (PEM) it serves HTTPS only: a plain-HTTP request on the
    port fails its TLS handshake.

    uvicorn's INFO lines are silenced (the service logs its own), and so is the access
    log (one line per request would drown the program's log).
    """
    tls: dict[str, Any] = {}
    if certfile:
        check_tls_files(certfile, keyfile)
        tls = {"ssl_certfile": certfile, "ssl_keyfile": keyfile}
    sock = bind(host, port)
    config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False,
                            lifespan="on", server_header=False,
                            timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S), **tls)
    server = uvicorn.Server(config)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(server, sock, on_started))


async def _serve(server: uvicorn.Server, sock: socket.socket,
                 on_started: Callable[[Callable[[], bool]], Awaitable[None]]) -> None:
    def stopping() -> bool:
        return bool(server.should_exit)

    async def after_start() -> None:
        await wait_until_async(lambda: server.started or server.should_exit, None, "uvicorn to start",
                               interval=0.01)
        if not server.started:
            return  # told to stop before it served
        # what exists now (modules, the app, the MCP SDK) lives as long as the process:
        # frozen, a full collection no longer walks it (measured: 161 -> 64 ms longest pause)
        gc.collect()
        gc.freeze()
        await on_started(stopping)

    task = asyncio.create_task(after_start())
    try:
        await server.serve(sockets=[sock])
    finally:
        task.cancel()
        sock.close()
