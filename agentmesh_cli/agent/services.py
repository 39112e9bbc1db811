"""What an agent uses of the mesh's services: it remembers what it handles in Memory and
asks Cognition for context, without ever stalling or crashing because a service is down.

- `remember(...)` queues a `store_input` call and returns at once. A writer thread sends
  the queue to Memory in order. While Memory is unreachable (its breaker open), the
  writes wait in the queue (up to `services.pending_limit`, dropping the oldest beyond,
  counted) and are retried every RETRY_PAUSE_S until a probe gets through; then the
  backlog drains. A 4xx answer is the agent's own mistake: that write is dropped and
  counted, never retried.
- `context(...)` calls Cognition's `get_context` on the agent's own thread and returns
  None when Cognition cannot answer (down, breaker open, timeout): the role goes on
  without context.
- the same thread checks each service's /health every `services.health_interval`.
- `state()` is what `status` shows: per service the breaker state, the last health,
  and the writes pending.
- every tool call is counted by outcome (ok, error, circuit_open) and its latency, as
  the caller waited it (retries included), goes into a histogram: in memory, flushed
  with the agent's other counters (`agentmesh metrics`).

The HTTP clients send the mesh's service token (the agent acts for the users it serves)
and trust `services.tls_ca` when the services speak HTTPS (ServiceClient.from_mesh).
`CORTEX_DISTRIBUTED_MODE=false` (the seed's switch) gives in-process clients with the
same interface instead of HTTP ones (services.local).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import Counter, deque
from typing import Any, Protocol

from agentmesh_cli import constants as C
from agentmesh_cli import environment
from agentmesh_cli.errors import CircuitOpenError, ServiceError, ServiceHTTPError, ServiceProtocolError
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.metrics.histogram import SERVICE_CALL_BUCKETS
from agentmesh_cli.waiting import Clock, Deadline

RETRY_PAUSE_S = 0.5  # a failed write waits this long before it is tried again
STOP_FLUSH_S = 2.0  # on stop, the writer gets this long to empty its queue


class Client(Protocol):
    """The part of services.client.ServiceClient an agent uses (LocalClient has it too)."""

    @property
    def breaker_state(self) -> str: ...

    last_health: dict[str, Any] | None

    def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> Any: ...

    def health(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def make_clients(mesh: Mesh, clock: Clock = time.monotonic) -> tuple[Client, Client]:
    """(memory, cognition) clients as the environment asks: HTTP (their breakers on
    `clock`), or in process."""
    if not environment.distributed_mode():
        from agentmesh_cli.services.local import local_clients

        return local_clients(mesh)
    from agentmesh_cli.services.client import ServiceClient

    cfg = mesh.config.services
    options = {"failure_threshold": cfg.breaker_failures, "reset_timeout": cfg.breaker_reset,
               "clock": clock}
    return (ServiceClient.from_mesh(mesh, "memory", **options),
            ServiceClient.from_mesh(mesh, "cognition", **options))


class AgentServices:
    def __init__(self, mesh: Mesh, owner: str, log: logging.Logger,
                 clients: tuple[Client, Client] | None = None, clock: Clock = time.monotonic) -> None:
        """`clock` times the health checks, the calls' latency, the flush at `stop` and
        the clients' breakers."""
        self.owner = owner
        self.clock = clock
        self.log = log
        cfg = mesh.config.services
        self.health_interval = cfg.health_interval
        self.pending_limit = cfg.pending_limit
        self.memory, self.cognition = clients or make_clients(mesh, clock)
        self._pending: deque[dict[str, Any]] = deque()
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._down_since: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"{owner}-services", daemon=True)
        self._thread.start()

    # what roles use ----------------------------------------------------------------
    def remember(self, user_id: str, content: str, conversation_id: str | None = None,
                 metadata: dict[str, Any] | None = None, message_id: str | None = None) -> None:
        """Store one item of `user_id`'s history in Memory, in the background, under
        `message_id` (default: a new one): a write sent again (the writer's retry after a
        lost answer, a handler's re-run) is stored once."""
        data: dict[str, Any] = {"content": content,
                                "metadata": {"agent": self.owner, **(metadata or {})},
                                "message_id": message_id or str(uuid.uuid4())}
        if conversation_id is not None:
            data["conversation_id"] = conversation_id
        with self._lock:
            if len(self._pending) >= self.pending_limit:
                self._pending.popleft()
                self._counts["memory_dropped"] += 1
            self._pending.append({"user_id": user_id, "input_data": data})
            self._counts["memory_queued"] += 1
            self._wake.notify()

    def context(self, user_id: str, query: str | None = None, limit: int = 5) -> list[dict[str, Any]] | None:
        """Cognition's ranked context of `user_id` for `query`, or None if it cannot answer."""
        arguments: dict[str, Any] = {"user_id": user_id, "limit": limit}
        if query:
            arguments["query"] = query
        try:
            result = self._call(C.PROGRAM_COGNITION, self.cognition, "get_context", arguments)
        except ServiceError as exc:
            self._count("context_failed")
            self.log.warning("no context for %s (cognition %s): %s", user_id,
                             self.cognition.breaker_state, exc)
            return None
        self._count("context_calls")
        items = result.get("items") if isinstance(result, dict) else result
        return items if isinstance(items, list) else []

    async def acontext(self, user_id: str, query: str | None = None,
                       limit: int = 5) -> list[dict[str, Any]] | None:
        """`context` awaited: the HTTP call runs in a worker thread (the client, its retries
        and its breaker are the sync ones), so the agent's loop goes on meanwhile."""
        return await asyncio.to_thread(self.context, user_id, query, limit)

    # what the runtime uses -----------------------------------------------------------
    def take_counts(self) -> Counter[str]:
        with self._lock:
            counts, self._counts = self._counts, Counter()
        return counts

    def state(self) -> dict[str, Any]:
        with self._lock:
            pending = len(self._pending)
        return {
            "memory": _client_state(self.memory, pending=pending),
            "cognition": _client_state(self.cognition),
        }

    def stop(self) -> int:
        """Give the writer STOP_FLUSH_S to send what is queued; return what is left."""
        deadline = Deadline(STOP_FLUSH_S, self.clock)
        with self._lock:
            # a condition variable's wait, not wait_until's: the writer wakes it at once
            while self._pending and not deadline.passed() and self._down_since is None:
                self._wake.wait(0.05)
            self._stopping = True
            self._wake.notify()
            left = len(self._pending)
        self._thread.join(STOP_FLUSH_S)
        for client in (self.memory, self.cognition):
            client.close()
        return left

    # the writer thread ----------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def _call(self, service: str, client: Client, tool: str, arguments: dict[str, Any]) -> Any:
        """One tool call, counted by outcome and timed (in memory: no Redis round trip)."""
        outcome = "error"
        started = self.clock()
        try:
            result = client.call_tool(tool, arguments)
            outcome = "ok"
            return result
        except CircuitOpenError:
            outcome = "circuit_open"
            raise
        finally:
            ms = (self.clock() - started) * 1000
            with self._lock:
                self._counts[C.service_calls_counter(service, outcome)] += 1
                SERVICE_CALL_BUCKETS.observe(self._counts, C.service_call_histogram(service), ms)

    def _run(self) -> None:
        next_health = self.clock()
        while True:
            with self._lock:
                while not self._pending and not self._stopping:
                    remaining = next_health - self.clock()
                    if remaining <= 0:
                        break
                    self._wake.wait(remaining)
                if self._stopping:
                    return
                item = self._pending[0] if self._pending else None
            if self.clock() >= next_health:
                next_health = self.clock() + self.health_interval
                self._check_health()
            if item is not None and not self._write(item):
                with self._lock:
                    self._wake.wait(RETRY_PAUSE_S)

    def _write(self, item: dict[str, Any]) -> bool:
        """Send the oldest pending write; False when Memory cannot take it now."""
        try:
            self._call(C.PROGRAM_MEMORY, self.memory, "store_input", item)
        except ServiceError as exc:
            if not _refused(exc):
                return self._failed(exc)
            # the write itself is wrong (4xx) or the answer unreadable: retrying would
            # only block the writes behind it
            self.log.error("memory refused a write, dropped: %s", exc)
            self._done(item, "memory_rejected")
            return True
        if self._down_since is not None:
            self.log.info("memory answers again after %.1fs; %d writes to catch up",
                          self.clock() - self._down_since, len(self._pending))
            self._down_since = None
        self._done(item, "memory_stored")
        return True

    def _failed(self, exc: ServiceError) -> bool:
        if self._down_since is None:
            self._down_since = self.clock()
            self.log.warning("memory unavailable, buffering writes: %s", exc)
        return False

    def _done(self, item: dict[str, Any], outcome: str) -> None:
        with self._lock:
            if self._pending and self._pending[0] is item:
                self._pending.popleft()
            self._counts[outcome] += 1
            self._wake.notify_all()

    def _check_health(self) -> None:
        for client in (self.memory, self.cognition):
            try:
                client.health()
            except ServiceError:
                pass  # recorded in client.last_health; the breaker is not touched by health


def _refused(exc: ServiceError) -> bool:
    if isinstance(exc, ServiceProtocolError):
        return True
    return isinstance(exc, ServiceHTTPError) and 400 <= exc.status < 500 and exc.status not in (408, 429)


def _client_state(client: Client, **extra: Any) -> dict[str, Any]:
    health = client.last_health or {}
    return {"breaker": client.breaker_state, "health": health.get("status"), **extra}
