"""The network client of the mesh's HTTP services (memory, cognition): one policy, sync and async.

The services speak a small protocol: `POST /tool/{name}` with `{"arguments": {...}}` answers
`{"result": ...}`; an error answer is `{"error": {"code", "message", "details"}}`;
`GET /resource/{path}` streams server-sent events (`message` items, then one `end`);
`GET /health` answers 200 `{"status": "healthy"}` or 503 with details.

`ServiceClient` (agents are single-threaded sync processes) and `AsyncServiceClient` (an async
service that calls another) share one policy:

- one pooled httpx client per service client (20 connections); timeouts connect 1 s, read 5 s
  (an event stream may be silent up to `stream_read_timeout`, 30 s, between events);
- retries with tenacity: at most 3 more attempts, exponential backoff from 0.1 s with jitter,
  capped at 10 s, only on connection errors, timeouts, 408, 429 and 5xx; never on another 4xx;
- a circuit breaker inside the retries, so it judges every request (the order resilience4j
  uses): 5 consecutive failed requests (a connection error, a timeout, 408, 429 or 5xx)
  open it for 30 s; a call whose retry meets the open breaker stops there with
  CircuitOpenError. After the 30 s one probe request goes through: success closes it,
  failure opens it again. While open, calls raise CircuitOpenError without touching the
  network. A 4xx answer is the caller's fault: it is no failure and resets nothing. So a
  service that dies is noticed within about a second (a call's 4 requests and the next
  one's first), even if supervisord has it back two seconds later.
- the breaker's reset is timed on the client's `clock` (time.monotonic), the pauses between
  retries are its `sleep`: a test passes fake ones and replays the 30 s in microseconds.

Every httpx error leaves as one of the ServiceError tree (agentmesh_cli.errors), `from` the
httpx error. `from_mesh` finds a service from mesh.yaml and the environment.

Security (docs/security.md): a client made with `token` sends `Authorization: Bearer
<token>` on every request (tool calls, event streams, health checks); `from_mesh` uses the
mesh's service token. With `services.tls_cert` set the services speak HTTPS
(`service_url` says https), and `verify` (from_mesh: `tls_verify`, the `services.tls_ca`
bundle, else the system's store) checks their certificate. The token is a header of the
httpx client only: no error message or log line of this module holds it.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Mapping
from contextlib import AsyncExitStack, ExitStack
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import urlsplit

import httpx
from httpx_sse import EventSource, aconnect_sse, connect_sse
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from agentmesh_cli.errors import (
    ConfigError,
    ServiceError,
    ServiceUnavailableError,
)
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.services import answers
from agentmesh_cli.services.answers import END_EVENT
from agentmesh_cli.services.breaker import Breaker, transient
from agentmesh_cli.services.probe import service_url, tls_verify

log = logging.getLogger(__name__)

T = TypeVar("T")
ServiceName = Literal["memory", "cognition"]

# -- discovery: services/probe.py (service_url, tls_verify); answers: services/answers.py --

# -- circuit breaker: services/breaker.py ----------------------------------------------------

# -- the clients ------------------------------------------------------------------------------

class _ClientBase:
    """Settings, breaker and discovery shared by the sync and the async client."""

    def __init__(
        self,
        base_url: str,
        *,
        service: str = "",
        connect_timeout: float = 1.0,
        read_timeout: float = 5.0,
        stream_read_timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.1,
        backoff_max: float = 10.0,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        max_connections: int = 20,
        token: str | None = None,
        verify: ssl.SSLContext | bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] | None = None,
    ) -> None:
        """`clock` times the breaker's reset; `sleep` makes the pauses between retries
        (default time.sleep, asyncio.sleep for the async client): a test passes fake ones."""
        if retries < 0 or failure_threshold < 1 or max_connections < 1:
            raise ConfigError(f"a service client needs retries >= 0, failure_threshold >= 1 and "
                              f"max_connections >= 1, not {retries}, {failure_threshold} and "
                              f"{max_connections}")
        if min(connect_timeout, read_timeout, stream_read_timeout, reset_timeout) <= 0:
            raise ConfigError("a service client's timeouts must be greater than 0")
        self.base_url = base_url.rstrip("/")
        self.service = service or urlsplit(self.base_url).netloc or self.base_url
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.last_health: dict[str, Any] | None = None
        # write and pool waits get the read timeout: a call never waits longer on any step
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        # a stream waits between events; a service pings an idle stream well inside this
        self._stream_timeout = httpx.Timeout(stream_read_timeout, connect=connect_timeout)
        self._limits = httpx.Limits(max_connections=max_connections,
                                    max_keepalive_connections=max_connections)
        self._breaker = Breaker(self.service, failure_threshold, reset_timeout, clock)
        self._sleep = sleep
        # sent with every request of the pooled client: calls, streams and health checks
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._verify = verify
        self._connect()

    def _connect(self) -> None:
        """Create the pooled httpx client (`self._http`) of the concrete client."""
        raise NotImplementedError

    @classmethod
    def from_mesh(cls, mesh: Mesh, service: ServiceName, **options: Any) -> Self:
        """The client of `service` as mesh.yaml and the environment place it (`service_url`),
        with the mesh's service token and TLS trust (`tls_verify`)."""
        settings = {"token": mesh.credentials.service_token, "verify": tls_verify(mesh), **options}
        return cls(service_url(mesh, service), service=service, **settings)

    @property
    def breaker_state(self) -> str:
        """"closed", "open" or "half_open" (open stays open until a call arrives after the
        reset timeout; that call is the probe)."""
        return self._breaker.state

    def _retry_policy(self) -> dict[str, Any]:
        # a fresh Retrying per call: tenacity keeps per-run state on the object, which
        # concurrent async calls must not share
        return {
            "stop": stop_after_attempt(self.retries + 1),
            "wait": wait_exponential_jitter(multiplier=self.backoff, max=self.backoff_max,
                                            jitter=self.backoff),
            "retry": retry_if_exception(transient),
            "before_sleep": self._log_retry,
            "reraise": True,
            **({"sleep": self._sleep} if self._sleep is not None else {}),
        }

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        pause = state.next_action.sleep if state.next_action else 0.0
        log.info("%s: attempt %d failed (%s); retrying in %.2fs", self.service,
                 state.attempt_number, error, pause)

    def _record_health(self, body: dict[str, Any] | None, exc: ServiceError | None) -> None:
        if exc is None:
            self.last_health = body
        else:
            status = "unreachable" if isinstance(exc, ServiceUnavailableError) else "error"
            self.last_health = {"status": status, "error": str(exc)}


def _count_attempts(exc: ServiceError, retrying: Retrying | AsyncRetrying) -> None:
    exc.attempts = int(retrying.statistics.get("attempt_number", 1))


class ServiceClient(_ClientBase):
    """Sync client of one service: pooled, retried, behind a circuit breaker.

    `ServiceClient("http://127.0.0.1:9000")` or `ServiceClient.from_mesh(mesh, "memory")`;
    use it as a context manager or call `close()`.
    """

    _http: httpx.Client

    def _connect(self) -> None:
        self._http = httpx.Client(base_url=self.base_url, timeout=self._timeout,
                                  limits=self._limits, headers=self._headers, verify=self._verify)

    def call_tool(self, name: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Call tool `name` and return its `result`."""
        path = answers.tool_path(name)
        response = self._retried(self._post, path, {"arguments": dict(arguments or {})})
        return answers.result(response, self.service, f"POST {path}")

    def stream_resource(self, path: str, params: Mapping[str, Any] | None = None
                        ) -> Generator[tuple[str, Any], None, None]:
        """Yield `(event, data)` of the resource's event stream as the events arrive, the
        `end` event last. Opening the stream is retried and judged by the breaker; a stream
        that breaks later raises (no retry: events were already handed out) and counts as
        one breaker failure. Nothing is sent before the first `next()`."""
        resource = answers.resource_path(path)
        what = f"GET {resource}"
        with ExitStack() as stack:
            source = self._retried(self._open_stream, stack, resource, params)
            try:
                with answers.translated(self.service, what):
                    for sse in source.iter_sse():
                        yield sse.event, answers.event_data(sse.data)
                        if sse.event == END_EVENT:
                            return
                raise ServiceUnavailableError(f"{self.service}: {what}: the stream closed "
                                              "before its end event", self.service)
            except ServiceError as exc:
                self._breaker.report_failure(exc)
                raise

    def health(self) -> dict[str, Any]:
        """`GET /health` once (no retry, no breaker: it must work while the breaker is
        open): the service's answer, 200 or 503, as a dict; kept in `last_health`."""
        try:
            with answers.translated(self.service, "GET /health"):
                response = self._http.get("/health")
            body = answers.health_body(response, self.service, "GET /health")
        except ServiceError as exc:
            self._record_health(None, exc)
            raise
        self._record_health(body, None)
        return body

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _retried(self, fn: Callable[..., T], *args: Any) -> T:
        retrying = Retrying(**self._retry_policy())
        try:
            return retrying(self._guarded, fn, *args)
        except ServiceError as exc:
            _count_attempts(exc, retrying)
            raise

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        with self._breaker.guard():
            return fn(*args)

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        with answers.translated(self.service, f"POST {path}"):
            response = self._http.post(path, json=body)
        return answers.check_answer(response, self.service, f"POST {path}")

    def _open_stream(self, stack: ExitStack, path: str, params: Mapping[str, Any] | None
                     ) -> EventSource:
        what = f"GET {path}"
        with ExitStack() as attempt:
            with answers.translated(self.service, what):
                source = attempt.enter_context(connect_sse(
                    self._http, "GET", path, params=params, timeout=self._stream_timeout))
                if not source.response.is_success:
                    source.response.read()  # the error body names the problem
            answers.check_stream(source.response, self.service, what)
            stack.push(attempt.pop_all())  # the caller's stack closes the response now
            return source


class AsyncServiceClient(_ClientBase):
    """Async client of one service, with the same policy and methods as ServiceClient.

    Close a stream that you leave early: `async with contextlib.aclosing(client.stream_resource(p))`.
    """

    _http: httpx.AsyncClient

    def _connect(self) -> None:
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=self._timeout,
                                       limits=self._limits, headers=self._headers,
                                       verify=self._verify)

    async def call_tool(self, name: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Call tool `name` and return its `result`."""
        path = answers.tool_path(name)
        response = await self._retried(self._post, path, {"arguments": dict(arguments or {})})
        return answers.result(response, self.service, f"POST {path}")

    async def stream_resource(self, path: str, params: Mapping[str, Any] | None = None
                              ) -> AsyncGenerator[tuple[str, Any], None]:
        """Yield `(event, data)` as the events arrive, `end` last (see ServiceClient)."""
        resource = answers.resource_path(path)
        what = f"GET {resource}"
        async with AsyncExitStack() as stack:
            source = await self._retried(self._open_stream, stack, resource, params)
            try:
                with answers.translated(self.service, what):
                    async for sse in source.aiter_sse():
                        yield sse.event, answers.event_data(sse.data)
                        if sse.event == END_EVENT:
                            return
                raise ServiceUnavailableError(f"{self.service}: {what}: the stream closed "
                                              "before its end event", self.service)
            except ServiceError as exc:
                self._breaker.report_failure(exc)
                raise

    async def health(self) -> dict[str, Any]:
        """`GET /health` once, no retry, no breaker (see ServiceClient.health)."""
        try:
            with answers.translated(self.service, "GET /health"):
                response = await self._http.get("/health")
            body = answers.health_body(response, self.service, "GET /health")
        except ServiceError as exc:
            self._record_health(None, exc)
            raise
        self._record_health(body, None)
        return body

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def _retried(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        # fn must be a coroutine function: AsyncRetrying awaits only those
        retrying = AsyncRetrying(**self._retry_policy())
        try:
            return await retrying(self._guarded, fn, *args)
        except ServiceError as exc:
            _count_attempts(exc, retrying)
            raise

    async def _guarded(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        with self._breaker.guard():
            return await fn(*args)

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        with answers.translated(self.service, f"POST {path}"):
            response = await self._http.post(path, json=body)
        return answers.check_answer(response, self.service, f"POST {path}")

    async def _open_stream(self, stack: AsyncExitStack, path: str,
                           params: Mapping[str, Any] | None) -> EventSource:
        what = f"GET {path}"
        async with AsyncExitStack() as attempt:
            with answers.translated(self.service, what):
                source = await attempt.enter_async_context(aconnect_sse(
                    self._http, "GET", path, params=params, timeout=self._stream_timeout))
                if not source.response.is_success:
                    await source.response.aread()  # the error body names the problem
            answers.check_stream(source.response, self.service, what)
            stack.push_async_exit(attempt.pop_all())  # the caller's stack closes it now
            return source
