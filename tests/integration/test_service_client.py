"""The service client against a real HTTP server (tests/scripted_service.py in a subprocess):
results, error mapping, retries, the circuit breaker, SSE streaming and discovery, each with
the exact number of requests the server saw. Sync and async clients pass the same cases.
The breaker's reset timeout passes on a fake clock (its state machine alone, with exact
times: tests/unit/test_service_client.py); the probes here are real requests."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentmesh_cli.embedded import free_port, stop
from agentmesh_cli.errors import (
    AgentMeshError,
    CircuitOpenError,
    ServiceBadRequestError,
    ServiceHTTPError,
    ServiceNotFoundError,
    ServiceTimeoutError,
    ServiceUnavailableError,
)
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.services.client import AsyncServiceClient, ServiceClient
from agentmesh_cli.waiting import wait_until
from tests.helpers.clock import FakeClock
from tests.helpers.tables import discovery_mesh

SERVER = Path(__file__).resolve().parents[1] / "helpers" / "scripted_service.py"
FAST = {"backoff": 0.01, "backoff_max": 0.05}  # retries in milliseconds, not seconds
RESET_S = 30.0  # the default reset timeout: it passes on a fake clock


class Scripted:
    """Remote control of the scripted server."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=5)

    def hits(self, tool: str) -> int:
        return int(self.http.get("/control/hits").json()["hits"].get(tool, 0))

    def reset(self) -> None:
        self.http.post("/control/reset").raise_for_status()

    def flaky(self, failures: int) -> None:
        self.http.post("/control/flaky", json={"failures": failures}).raise_for_status()

    def healthy(self, healthy: bool) -> None:
        self.http.post("/control/health", json={"healthy": healthy}).raise_for_status()


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def scripted_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp_path_factory.mktemp("scripted") / "server.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, str(SERVER), str(port)], stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _answers(url), 20, "the scripted service")
        yield url
    finally:
        stop(proc)


@pytest.fixture
def server(scripted_url: str) -> Iterator[Scripted]:
    control = Scripted(scripted_url)
    control.reset()
    try:
        yield control
    finally:
        control.http.close()


@pytest.fixture
def client(server: Scripted) -> Iterator[Callable[..., ServiceClient]]:
    """Factory of sync clients of the scripted server (fast backoff), closed afterwards."""
    made: list[ServiceClient] = []

    def make(url: str = "", **options: Any) -> ServiceClient:
        made.append(ServiceClient(url or server.url, service="scripted", **{**FAST, **options}))
        return made[-1]

    yield make
    for each in made:
        each.close()


def aclient(url: str, **options: Any) -> AsyncServiceClient:
    return AsyncServiceClient(url, service="scripted", **{**FAST, **options})


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused


# -- results and errors ---------------------------------------------------------------------

def test_call_tool_returns_the_result(server: Scripted, client: Callable[..., ServiceClient]) -> None:
    with client() as service:
        assert service.call_tool("ok", {"a": 1, "b": [1, 2]}) == {"echo": {"a": 1, "b": [1, 2]}}
        assert service.breaker_state == "closed"
    assert server.hits("ok") == 1


def test_400_raises_bad_request_with_the_error_body_and_is_never_retried(
        server: Scripted, client: Callable[..., ServiceClient]) -> None:
    with pytest.raises(ServiceBadRequestError) as caught:
        client().call_tool("bad", {})
    error = caught.value
    assert (error.status, error.code, error.message) == (400, "invalid_argument",
                                                         "argument 'x' is required")
    assert error.details == {"argument": "x"}
    assert error.service == "scripted" and error.attempts == 1
    assert isinstance(error, ServiceHTTPError) and isinstance(error, AgentMeshError)
    assert server.hits("bad") == 1


def test_404_raises_not_found(server: Scripted, client: Callable[..., ServiceClient]) -> None:
    with pytest.raises(ServiceNotFoundError) as caught:
        client().call_tool("nope", {})
    assert caught.value.details == {"tool": "nope"}
    assert server.hits("nope") == 1


def test_a_tool_that_fails_twice_succeeds_on_the_third_attempt(
        server: Scripted, client: Callable[..., ServiceClient]) -> None:
    server.flaky(2)
    assert client().call_tool("flaky", {}) == "recovered"
    assert server.hits("flaky") == 3


def test_500_is_tried_four_times_then_raised(server: Scripted,
                                             client: Callable[..., ServiceClient]) -> None:
    clock = FakeClock()  # the default backoff, paused on a fake clock
    with pytest.raises(ServiceHTTPError) as caught:
        client(backoff=0.1, backoff_max=10.0, sleep=clock.sleep).call_tool("fail500", {})
    assert caught.value.status == 500 and caught.value.code == "internal_error"
    assert caught.value.attempts == 4 and "after 4 attempts" in str(caught.value)
    assert server.hits("fail500") == 4
    # exponential from 0.1 s, plus a jitter of up to 0.1 s
    assert [int(pause * 10) for pause in clock.slept] == [1, 2, 4], clock.slept


def test_503_after_the_retries_is_unavailable(server: Scripted,
                                              client: Callable[..., ServiceClient]) -> None:
    server.flaky(100)
    with pytest.raises(ServiceUnavailableError) as caught:
        client().call_tool("flaky", {})
    assert (caught.value.status, caught.value.code) == (503, "unavailable")
    assert server.hits("flaky") == 4


def test_connection_refused_is_unavailable_after_the_retries(
        client: Callable[..., ServiceClient]) -> None:
    with pytest.raises(ServiceUnavailableError) as caught:
        client(dead_url()).call_tool("ok", {})
    assert caught.value.attempts == 4 and caught.value.status is None
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def test_a_slow_tool_times_out(server: Scripted, client: Callable[..., ServiceClient]) -> None:
    started = time.monotonic()
    with pytest.raises(ServiceTimeoutError) as caught:
        client(read_timeout=0.3, retries=1).call_tool("slow", {"seconds": 2})
    assert isinstance(caught.value, ServiceUnavailableError)
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert time.monotonic() - started < 1.5
    assert server.hits("slow") == 2  # a timeout is retried like any transient failure


# -- circuit breaker -------------------------------------------------------------------------

def _fail_fast(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    with pytest.raises(CircuitOpenError):
        call()
    return time.perf_counter() - started


def test_five_failed_requests_open_the_breaker_mid_call_and_later_calls_fail_fast(
        server: Scripted, client: Callable[..., ServiceClient]) -> None:
    """The breaker judges every request, retries included (retry around breaker, as in
    resilience4j): a call's 4 failed requests, then the next call's first request is the
    5th failure and opens it; that call's retry is refused without a request."""
    service = client()  # 3 retries: a failed call is 4 requests
    with pytest.raises(ServiceHTTPError) as first:
        service.call_tool("fail500", {})
    assert first.value.attempts == 4 and service.breaker_state == "closed"
    with pytest.raises(CircuitOpenError) as second:
        service.call_tool("fail500", {})
    assert second.value.attempts == 2
    assert service.breaker_state == "open"
    assert server.hits("fail500") == 5
    assert _fail_fast(lambda: service.call_tool("fail500", {})) < 0.05
    assert _fail_fast(lambda: service.call_tool("ok", {})) < 0.05
    assert _fail_fast(lambda: list(service.stream_resource("feed"))) < 0.05
    assert server.hits("fail500") == 5 and server.hits("ok") == 0


def test_after_the_reset_timeout_a_successful_probe_closes_the_breaker(
        server: Scripted, client: Callable[..., ServiceClient]) -> None:
    clock = FakeClock()
    service = client(retries=0, clock=clock)
    server.flaky(5)
    for _ in range(5):
        with pytest.raises(ServiceUnavailableError):
            service.call_tool("flaky", {})
    assert service.breaker_state == "open"
    clock.advance(RESET_S)
    _fail_fast(lambda: service.call_tool("flaky", {}))  # at the reset timeout, not yet after it
    assert server.hits("flaky") == 5
    clock.advance(0.1)
    assert service.call_tool("flaky", {}) == "recovered"  # the probe
    assert service.breaker_state == "closed"
    assert service.call_tool("ok", {"n": 1}) == {"echo": {"n": 1}}
    assert server.hits("flaky") == 6


def test_after_the_reset_timeout_a_failed_probe_reopens_the_breaker(
        server: Scripted, client: Callable[..., ServiceClient]) -> None:
    clock = FakeClock()
    service = client(retries=0, clock=clock)
    for _ in range(5):
        with pytest.raises(ServiceHTTPError):
            service.call_tool("fail500", {})
    clock.advance(RESET_S + 0.1)
    with pytest.raises(ServiceHTTPError):
        service.call_tool("fail500", {})  # the probe reaches the server and fails
    assert service.breaker_state == "open"
    clock.advance(RESET_S)
    assert _fail_fast(lambda: service.call_tool("fail500", {})) < 0.05  # open for a full period
    assert server.hits("fail500") == 6


def test_4xx_answers_neither_open_the_breaker_nor_reset_its_count(
        server: Scripted, client: Callable[..., ServiceClient]) -> None:
    service = client(retries=0)
    for _ in range(8):
        with pytest.raises(ServiceBadRequestError):
            service.call_tool("bad", {})
    assert service.breaker_state == "closed" and server.hits("bad") == 8
    for _ in range(4):
        with pytest.raises(ServiceHTTPError):
            service.call_tool("fail500", {})
    with pytest.raises(ServiceNotFoundError):
        service.call_tool("nope", {})
    with pytest.raises(ServiceBadRequestError):
        service.call_tool("bad", {})
    assert service.breaker_state == "closed"
    with pytest.raises(ServiceHTTPError):
        service.call_tool("fail500", {})  # the fifth consecutive failure: 4xx reset nothing
    assert service.breaker_state == "open"


# -- streams and health ----------------------------------------------------------------------

def test_stream_yields_items_as_they_arrive_and_stops_after_end(
        client: Callable[..., ServiceClient]) -> None:
    stream = client().stream_resource("feed/a", {"count": 5, "delay": 0.2})
    received: list[tuple[str, Any, float]] = []
    for event, data in stream:
        received.append((event, data, time.time()))
    assert [event for event, _, _ in received] == ["message"] * 5 + ["end"]
    assert [data["i"] for _, data, _ in received[:5]] == [0, 1, 2, 3, 4]
    assert received[0][1]["path"] == "feed/a" and received[-1][1] == {"count": 5}
    first_received, last_sent = received[0][2], received[4][1]["sent_at"]
    assert first_received < last_sent - 0.5  # the first item came ~0.8 s before the last left
    assert next(stream, None) is None


def test_stream_stops_at_end_and_closes_when_left_early(
        client: Callable[..., ServiceClient]) -> None:
    service = client()
    stream = service.stream_resource("feed", {"count": 50, "delay": 0.05})
    assert next(stream)[0] == "message"
    stream.close()  # closes the response: the pooled connection is not left half read
    assert service.call_tool("ok", {}) == {"echo": {}}


def test_a_stream_that_stalls_times_out_and_counts_as_a_breaker_failure(
        client: Callable[..., ServiceClient]) -> None:
    service = client(stream_read_timeout=0.2, failure_threshold=1)
    stream = service.stream_resource("feed", {"count": 3, "delay": 1.0})
    assert next(stream)[0] == "message"
    with pytest.raises(ServiceTimeoutError):
        next(stream)  # no retry: an item was already handed out
    assert service.breaker_state == "open"


def test_stream_of_a_missing_resource_raises_not_found(
        client: Callable[..., ServiceClient]) -> None:
    with pytest.raises(ServiceNotFoundError) as caught:
        list(client().stream_resource("missing"))
    assert caught.value.details == {"path": "missing"}


def test_health_and_last_health(server: Scripted, client: Callable[..., ServiceClient]) -> None:
    service = client()
    assert service.last_health is None
    assert service.health() == {"status": "healthy"} == service.last_health
    server.healthy(False)
    unhealthy = service.health()
    assert unhealthy == {"status": "unhealthy", "details": {"redis": "scripted outage"}}
    assert service.last_health == unhealthy
    dead = client(dead_url())
    with pytest.raises(ServiceUnavailableError):
        dead.health()
    assert dead.last_health is not None and dead.last_health["status"] == "unreachable"


# -- the async client --------------------------------------------------------------------------

def test_async_results_errors_and_retries(server: Scripted) -> None:
    async def scenario() -> None:
        async with aclient(server.url) as service:
            assert await service.call_tool("ok", {"a": 1}) == {"echo": {"a": 1}}
            with pytest.raises(ServiceBadRequestError) as bad:
                await service.call_tool("bad", {})
            assert (bad.value.code, bad.value.details) == ("invalid_argument", {"argument": "x"})
            server.flaky(2)
            assert await service.call_tool("flaky", {}) == "recovered"
            with pytest.raises(ServiceHTTPError) as failed:
                await service.call_tool("fail500", {})
            assert failed.value.attempts == 4
            assert await service.health() == {"status": "healthy"} == service.last_health

    asyncio.run(scenario())
    assert [server.hits(tool) for tool in ("ok", "bad", "flaky", "fail500")] == [1, 1, 3, 4]


def test_async_connection_refused_and_timeout(server: Scripted) -> None:
    async def scenario() -> None:
        async with aclient(dead_url()) as dead:
            with pytest.raises(ServiceUnavailableError) as refused:
                await dead.call_tool("ok", {})
            assert refused.value.attempts == 4
            assert isinstance(refused.value.__cause__, httpx.ConnectError)
        async with aclient(server.url, read_timeout=0.3, retries=1) as service:
            with pytest.raises(ServiceTimeoutError):
                await service.call_tool("slow", {"seconds": 2})

    asyncio.run(scenario())
    assert server.hits("slow") == 2


def test_async_breaker_opens_fails_fast_and_a_probe_closes_it(server: Scripted) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        async with aclient(server.url, retries=0, clock=clock) as service:
            server.flaky(5)
            for _ in range(5):
                with pytest.raises(ServiceUnavailableError):
                    await service.call_tool("flaky", {})
            assert service.breaker_state == "open"
            started = time.perf_counter()
            with pytest.raises(CircuitOpenError):
                await service.call_tool("flaky", {})
            assert time.perf_counter() - started < 0.05
            assert server.hits("flaky") == 5
            clock.advance(RESET_S + 0.1)
            assert await service.call_tool("flaky", {}) == "recovered"
            assert service.breaker_state == "closed"

    asyncio.run(scenario())
    assert server.hits("flaky") == 6


def test_async_failed_probe_reopens_and_only_one_probe_goes_through(server: Scripted) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        async with aclient(server.url, retries=0, clock=clock) as service:
            for _ in range(5):
                with pytest.raises(ServiceHTTPError):
                    await service.call_tool("fail500", {})
            clock.advance(RESET_S + 0.1)
            with pytest.raises(ServiceHTTPError):
                await service.call_tool("fail500", {})  # the probe fails: open again
            assert service.breaker_state == "open"
            assert server.hits("fail500") == 6
            clock.advance(RESET_S + 0.1)
            # five calls at once while half open: one probe reaches the server, four fail fast
            calls = [service.call_tool("slow", {"seconds": 0.3}) for _ in range(5)]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            assert outcomes.count("slept") == 1
            assert sum(isinstance(o, CircuitOpenError) for o in outcomes) == 4
            assert service.breaker_state == "closed"

    asyncio.run(scenario())
    assert server.hits("slow") == 1


def test_async_stream_yields_items_as_they_arrive(server: Scripted) -> None:
    async def scenario() -> list[tuple[str, Any, float]]:
        received: list[tuple[str, Any, float]] = []
        async with aclient(server.url) as service:
            async for event, data in service.stream_resource("feed", {"count": 5, "delay": 0.2}):
                received.append((event, data, time.time()))
            async with aclosing(service.stream_resource("feed", {"count": 50})) as early:
                async for event, _ in early:
                    assert event == "message"
                    break
            with pytest.raises(ServiceNotFoundError):
                async for _ in service.stream_resource("missing"):
                    pass
        return received

    received = asyncio.run(scenario())
    assert [event for event, _, _ in received] == ["message"] * 5 + ["end"]
    assert received[0][2] < received[4][1]["sent_at"] - 0.5


# -- discovery -------------------------------------------------------------------------------

@pytest.fixture
def mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Mesh:
    return discovery_mesh(tmp_path, monkeypatch)


def test_discovered_clients_reach_the_service(server: Scripted, mesh: Mesh,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    port = server.url.rsplit(":", 1)[1]
    monkeypatch.setenv("MEMORY_SERVICE_PORT", port)
    with ServiceClient.from_mesh(mesh, "memory", **FAST) as memory:
        assert memory.call_tool("ok", {"via": "port"}) == {"echo": {"via": "port"}}
    monkeypatch.setenv("COGNITION_SERVICE_URL", server.url)

    async def scenario() -> Any:
        async with AsyncServiceClient.from_mesh(mesh, "cognition", **FAST) as cognition:
            return await cognition.call_tool("ok", {"via": "url"})

    assert asyncio.run(scenario()) == {"echo": {"via": "url"}}
    assert server.hits("ok") == 2


