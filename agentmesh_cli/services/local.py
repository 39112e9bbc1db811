"""In-process clients of the services (`CORTEX_DISTRIBUTED_MODE=false`): the same interface
as services.client.ServiceClient, without HTTP.

The tools run from the services' own catalogues (services.protocol), so arguments are
checked and results shaped exactly as over HTTP; an error a service would answer with a
status becomes the same ServiceError subclass the network client raises. The services'
async code runs on one private event loop in a daemon thread; calls from the agent's
thread wait for it. There is no network to fail, so there is no breaker and no retry:
`breaker_state` is always "closed".
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

from agentmesh_cli.errors import (
    ApiError,
    ServiceError,
    ServiceHTTPError,
    ServiceUnavailableError,
    StoreError,
)
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.services.answers import error_answer
from agentmesh_cli.services.protocol import Catalogue

T = TypeVar("T")
CALL_TIMEOUT_S = 5.0  # like the network client's read timeout


class _Loop:
    """One event loop in a daemon thread, shared by the in-process services of a process."""

    def __init__(self, users: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.users = users  # the clients sharing the loop: the last to close stops it
        self.thread = threading.Thread(target=self.loop.run_forever, name="services-local", daemon=True)
        self.thread.start()

    def run(self, awaitable: Awaitable[T], timeout: float = CALL_TIMEOUT_S) -> T:
        async def wait() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wait(), self.loop).result(timeout)

    def release(self) -> None:
        self.users -= 1
        if self.users == 0 and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(CALL_TIMEOUT_S)
            self.loop.close()


def _translated(service: str, what: str, exc: BaseException) -> ServiceError:
    if isinstance(exc, ApiError):
        return error_answer(service, what, exc.status, exc.code, exc.message, exc.details)
    if isinstance(exc, StoreError | TimeoutError | OSError):
        return ServiceUnavailableError(f"{service}: {what}: {exc}", service)
    return ServiceError(f"{service}: {what}: {type(exc).__name__}: {exc}", service)


class LocalClient:
    """A service's catalogue called in process, with ServiceClient's interface."""

    breaker_state = "closed"

    def __init__(self, catalogue: Catalogue, loop: _Loop,
                 health: Callable[[], Awaitable[dict[str, Any]]] | None = None,
                 on_close: Callable[[], Awaitable[None]] | None = None) -> None:
        self.catalogue = catalogue
        self.service = catalogue.service
        self.last_health: dict[str, Any] | None = None
        self._loop = loop
        self._health = health
        self._on_close = on_close
        self._closed = False

    def _run(self, what: str, awaitable: Awaitable[T]) -> T:
        try:
            return self._loop.run(awaitable)
        except Exception as exc:
            raise _translated(self.service, what, exc) from exc

    def call_tool(self, name: str, arguments: Mapping[str, Any] | None = None) -> Any:
        tool = self.catalogue.tool(name)
        if tool is None:
            raise ServiceHTTPError(f"{self.service}: no tool {name!r}", self.service, status=404,
                                   code="unknown_tool")
        return self._run(f"tool {name}", tool.handler(dict(arguments or {})))

    def read_resource(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        return self._run(f"resource {path}", self.catalogue.read_resource(path, dict(params or {})))

    def stream_resource(self, path: str, params: Mapping[str, Any] | None = None) -> Iterator[Any]:
        """The resource's items (one read, no follow), like the network client's stream."""
        value = self.read_resource(path, {k: str(v) for k, v in (params or {}).items()})
        yield from value.get("items", [value]) if isinstance(value, dict) else [value]

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": "healthy"}
        if self._health is not None:
            body = self._run("health", self._health())
        self.last_health = body
        return body

    def close(self) -> None:
        """Release what the service holds (memory: its Redis connections) and, with the
        last client, the loop."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._on_close is not None:
                self._loop.run(self._on_close())
        finally:
            self._loop.release()


class _AsyncMemory:
    """Memory in process, as cognition's async memory client (stream_resource, health)."""

    def __init__(self, catalogue: Catalogue, health: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self.catalogue = catalogue
        self._health = health

    async def stream_resource(self, path: str, params: Mapping[str, Any] | None = None
                              ) -> AsyncIterator[tuple[str, Any]]:
        try:
            value = await self.catalogue.read_resource(path, {k: str(v) for k, v in (params or {}).items()})
        except Exception as exc:
            raise _translated("memory", f"resource {path}", exc) from exc
        items = value.get("items", []) if isinstance(value, dict) else []
        for item in items:
            yield "message", item
        yield "end", {"count": len(items)}

    async def health(self) -> dict[str, Any]:
        return await self._health()

    async def close(self) -> None:
        """Nothing to close: the store lives as long as the process."""


def local_clients(mesh: Mesh) -> tuple[LocalClient, LocalClient]:
    """(memory, cognition) running in this process on the mesh's Redis."""
    from agentmesh_cli.services import cognition, memory

    loop = _Loop(users=2)
    store = memory.MemoryStore(mesh.redis_url, mesh.config.mesh)
    memory_catalogue = memory.build_catalogue(store)

    async def memory_health() -> dict[str, Any]:
        failure = await store.ping(memory.HEALTH_TIMEOUT_S)
        return {"status": "healthy"} if failure is None else {"status": "unhealthy",
                                                               "details": {"redis": failure}}

    core = cognition.Cognition(_AsyncMemory(memory_catalogue, memory_health))  # type: ignore[arg-type]

    async def cognition_health() -> dict[str, Any]:
        failure = await core.memory_failure()
        return {"status": "healthy"} if failure is None else {"status": "degraded",
                                                               "details": {"memory": failure}}

    return (LocalClient(memory_catalogue, loop, memory_health, on_close=store.close),
            LocalClient(cognition.build_catalogue(core), loop, cognition_health))
