"""The network client against the real Memory service when it fails for real: the process is
killed with SIGKILL and started again on the same port, or its Redis is down (503). The
client's breaker must open after exactly five failed calls, fail fast while open (no
connection is even attempted), let one probe through after the reset timeout, and close
again when the probe succeeds. A 400 is never retried and never counts. No mocks.

The breaker counts failed requests (it sits inside the retries), so the counting tests
use clients without retries: there one call is one request, and five failed calls are
five failures whichever way the breaker and the retries are stacked. Its reset timeout
passes on a fake clock: the probe is a real request, the 30 s are not waited.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from agentmesh_cli.embedded import free_port, stop
from agentmesh_cli.errors import (
    CircuitOpenError,
    ServiceBadRequestError,
    ServiceUnavailableError,
)
from agentmesh_cli.services.client import AsyncServiceClient, ServiceClient
from agentmesh_cli.waiting import wait_until
from tests.helpers.clock import FakeClock
from tests.helpers.services import TOKEN

E = TypeVar("E", bound=Exception)
RESET_S = 30.0  # the default reset timeout, on a fake clock
RETRIES = 3
# one request per call; a quick connect; retries (where used) in milliseconds
FAST: dict[str, Any] = {"retries": 0, "backoff": 0.01, "backoff_max": 0.05, "connect_timeout": 0.5,
                        "reset_timeout": RESET_S}


class MemoryProcess:
    """`agentmesh memory` on one fixed loopback port, which survives kill and restart."""

    def __init__(self, folder: Path, redis_url: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = folder / "mesh.yaml"
        self.config.write_text(yaml.safe_dump({
            "mesh": f"flt{uuid.uuid4().hex[:8]}", "redis": {"url": redis_url}, "agents": [],
            "services": {"memory": {"port": self.port}}}), encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = self.folder / f"memory-{self.starts}.log"
        env = {key: value for key, value in os.environ.items() if key != "MEMORY_SERVICE_PORT"}
        env["AGENTMESH_SERVICE_TOKEN"] = TOKEN
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agentmesh_cli", "memory", "--config", str(self.config),
                 "--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT, env=env)
        wait_until(self._answers, 20, f"the memory service on port {self.port}")

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            text = (self.folder / f"memory-{self.starts}.log").read_text(errors="replace")
            raise AssertionError(f"memory exited {self.proc.returncode}:\n{text}")
        try:
            httpx.get(self.url + "/health", timeout=1.0)
        except httpx.TransportError:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL by pid: no graceful shutdown, connections die mid-air."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


@pytest.fixture
def memory(valkey: str, tmp_path: Path) -> Iterator[MemoryProcess]:
    service = MemoryProcess(tmp_path / "memory", valkey)
    service.start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def memory_without_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemoryProcess]:
    """A live memory process whose Redis port has nothing behind it: valid calls answer 503,
    bad arguments still 400 (they are checked before Redis is asked)."""
    service = MemoryProcess(tmp_path_factory.mktemp("memory-no-redis"),
                            f"redis://127.0.0.1:{free_port()}/0")
    service.start()
    try:
        yield service
    finally:
        service.stop()


def store_args(user: str, content: str = "hello") -> dict[str, Any]:
    return {"user_id": user, "input_data": {"content": content}}


def timed(call: Callable[[], Any], expected: type[E]) -> tuple[float, E]:
    started = time.perf_counter()
    with pytest.raises(expected) as caught:
        call()
    return time.perf_counter() - started, caught.value


class Listener:
    """A bare listening socket on the dead service's port: proof of whether a client
    tried to connect (a connection would wait in its accept queue)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))  # SO_REUSEADDR on POSIX
        self.sock.setblocking(False)

    def connections(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1

    def close(self) -> None:
        self.sock.close()


# -- sync client -------------------------------------------------------------------------------

def test_killed_service_opens_the_breaker_and_a_restart_closes_it(memory: MemoryProcess) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    clock = FakeClock()
    with ServiceClient(memory.url, service="memory", token=TOKEN, clock=clock, **FAST) as client:
        item = client.call_tool("store_input", store_args(user, "before the crash"))
        get = {"user_id": user, "message_id": item["message_id"]}
        assert client.call_tool("get_message", get) == item
        assert client.breaker_state == "closed"

        memory.kill()
        for _ in range(5):
            assert client.breaker_state == "closed"
            _, error = timed(lambda: client.call_tool("get_message", get), ServiceUnavailableError)
            assert error.attempts == 1 and error.status is None, error  # refused: nothing listens
        assert client.breaker_state == "open"

        # the sixth call fails fast: something listens on the port again, and nothing
        # connects to it (no timing: the listener is the proof)
        listener = Listener(memory.port)
        try:
            _, refused = timed(lambda: client.call_tool("get_message", get), CircuitOpenError)
            assert refused.attempts == 1 and "circuit breaker open" in str(refused)
            for _ in range(20):
                timed(lambda: client.call_tool("get_message", get), CircuitOpenError)
            assert listener.connections() == 0
        finally:
            listener.close()
        assert client.breaker_state == "open"

        memory.start()
        assert client.breaker_state == "open"  # it stays open until a call arrives after reset
        clock.advance(RESET_S + 0.1)
        assert client.call_tool("get_message", get) == item  # the probe, on the new process
        assert client.breaker_state == "closed"
        again = client.call_tool("store_input", store_args(user, "after the restart"))
        assert client.call_tool("get_message", {"user_id": user, "message_id": again["message_id"]}) == again


def test_a_failed_probe_opens_the_breaker_again(memory: MemoryProcess) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    clock = FakeClock()
    with ServiceClient(memory.url, service="memory", token=TOKEN, clock=clock, **FAST) as client:
        client.call_tool("store_input", store_args(user))
        memory.kill()
        for _ in range(5):
            timed(lambda: client.call_tool("store_input", store_args(user)), ServiceUnavailableError)
        assert client.breaker_state == "open"
        clock.advance(RESET_S + 0.1)
        # the probe goes out, is refused, and opens the breaker for another period
        timed(lambda: client.call_tool("store_input", store_args(user)), ServiceUnavailableError)
        assert client.breaker_state == "open"
        timed(lambda: client.call_tool("store_input", store_args(user)), CircuitOpenError)


def test_400_is_not_retried_and_neither_counts_nor_resets_the_breaker(
        memory_without_redis: MemoryProcess) -> None:
    bad = {"user_id": "u", "input_data": {"content": ""}}
    with ServiceClient(memory_without_redis.url, service="memory", token=TOKEN,
                       **{**FAST, "retries": RETRIES}) as retrying:
        _, down = timed(lambda: retrying.call_tool("store_input", store_args("u")), ServiceUnavailableError)
        assert down.attempts == RETRIES + 1  # Redis is down: 503, retried
        assert (down.status, down.code) == (503, "store_unavailable")
    with ServiceClient(memory_without_redis.url, service="memory", token=TOKEN, **FAST) as client:
        for _ in range(4):  # four consecutive breaker failures
            timed(lambda: client.call_tool("store_input", store_args("u")), ServiceUnavailableError)
        with ServiceClient(memory_without_redis.url, service="memory", token=TOKEN,
                           **{**FAST, "retries": RETRIES}) as retrying:
            for each in (client, retrying):  # the caller's fault: one request, even with retries
                for _ in range(3):
                    _, refused = timed(lambda: each.call_tool("store_input", bad),  # noqa: B023
                                       ServiceBadRequestError)
                    assert refused.attempts == 1
                    assert (refused.status, refused.code) == (400, "invalid_argument")
                    assert refused.details == {"argument": "input_data.content"}
                    assert each.breaker_state == "closed"  # 400s do not open it...
        # ...and did not reset the count either: the fifth failure opens it
        timed(lambda: client.call_tool("store_input", store_args("u")), ServiceUnavailableError)
        assert client.breaker_state == "open"
        timed(lambda: client.call_tool("store_input", bad), CircuitOpenError)  # even a 400 fails fast


# -- async client ------------------------------------------------------------------------------

def test_async_client_opens_fails_fast_and_probes_back_to_closed(memory: MemoryProcess) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    clock = FakeClock()

    async def scenario() -> None:
        async with AsyncServiceClient(memory.url, service="memory", token=TOKEN, clock=clock,
                                      **FAST) as client:
            item = await client.call_tool("store_input", store_args(user, "async"))
            get = {"user_id": user, "message_id": item["message_id"]}
            memory.kill()
            for _ in range(5):
                with pytest.raises(ServiceUnavailableError) as caught:
                    await client.call_tool("get_message", get)
                assert caught.value.attempts == 1
            assert client.breaker_state == "open"

            listener = Listener(memory.port)
            try:
                # many calls at once while open: all fail fast, none connects
                outcomes = await asyncio.gather(*(client.call_tool("get_message", get) for _ in range(10)),
                                                return_exceptions=True)
                assert all(isinstance(o, CircuitOpenError) for o in outcomes), outcomes
                assert listener.connections() == 0
            finally:
                listener.close()

            await asyncio.to_thread(memory.start)
            clock.advance(RESET_S + 0.1)
            assert await client.call_tool("get_message", get) == item  # the probe
            assert client.breaker_state == "closed"

    asyncio.run(scenario())
