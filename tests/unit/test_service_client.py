"""The service client's parts that need no server: the circuit breaker against a fake clock
(scripted histories, exact times), discovery from mesh.yaml and the environment, and the one
error tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentmesh_cli.errors import (
    AgentMeshError,
    CircuitOpenError,
    ConfigError,
    ServiceBadRequestError,
    ServiceError,
    ServiceHTTPError,
    ServiceNotFoundError,
    ServiceTimeoutError,
    ServiceUnavailableError,
)
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.services.client import Breaker, ServiceClient, service_url
from tests.helpers.clock import FakeClock
from tests.helpers.tables import discovery_mesh

# -- circuit breaker -------------------------------------------------------------------------

FAILED = ServiceUnavailableError("scripted: connection refused", "scripted")
REFUSED = ServiceBadRequestError("scripted: -> 400", "scripted", status=400)
OUTCOMES: dict[str, Exception | None] = {"ok": None, "fail": FAILED, "400": REFUSED}


def call(breaker: Breaker, outcome: str) -> str:
    """One request under the breaker: "ran", or the message of its CircuitOpenError."""
    try:
        with breaker.guard():
            error = OUTCOMES[outcome]
            if error is not None:
                raise error
    except CircuitOpenError as exc:
        return str(exc)
    except ServiceError:
        pass
    return "ran"


def open_message(seconds: float) -> str:
    return f"scripted: circuit breaker open, next probe in {seconds:.1f}s"


# (seconds since the start, the request's outcome, what the breaker did, its state after):
# 5 failures open it for 30 s (on its clock); at 30 s it is still open, after them one
# probe goes out; a failed probe opens it for 30 s more, a good one closes it and the count
# starts again; a 4xx neither counts nor resets the count
HISTORY = [
    *[(0.0, "fail", "ran", "closed")] * 4,
    (0.0, "fail", "ran", "open"),
    (0.0, "ok", open_message(30), "open"),
    (10.0, "ok", open_message(20), "open"),
    (29.75, "fail", open_message(0.25), "open"),
    (30.0, "ok", open_message(0), "open"),
    (30.5, "fail", "ran", "open"),  # the probe fails: open again, from now
    (45.0, "ok", open_message(15.5), "open"),
    (60.5, "ok", open_message(0), "open"),
    (61.0, "ok", "ran", "closed"),  # the probe succeeds
    *[(61.0, "fail", "ran", "closed")] * 4,
    (61.0, "ok", "ran", "closed"),  # a success resets the count
    *[(62.0, "fail", "ran", "closed")] * 4,
    (62.0, "400", "ran", "closed"),
    (62.0, "400", "ran", "closed"),
    (62.0, "fail", "ran", "open"),  # the 5th failure in a row: the 4xx reset nothing
    (92.0, "400", open_message(0), "open"),  # a 4xx fails fast too while open
    (92.25, "400", "ran", "half_open"),  # a neutral probe leaves it half open...
    (92.25, "ok", "ran", "closed"),  # ...and the next call is the probe
]


def test_the_breaker_replays_a_history_on_its_clock() -> None:
    clock = FakeClock(5000.0)
    breaker = Breaker("scripted", 5, 30.0, clock)
    assert breaker.state == "closed"
    for at, outcome, did, state in HISTORY:
        clock.now = 5000.0 + at
        assert (at, outcome, call(breaker, outcome), breaker.state) == (at, outcome, did, state)


def test_half_open_lets_one_probe_through_at_a_time() -> None:
    clock = FakeClock()
    breaker = Breaker("scripted", 1, 30.0, clock)
    assert call(breaker, "fail") == "ran" and breaker.state == "open"
    clock.advance(31.0)
    with breaker.guard():  # the probe, still in flight
        assert breaker.state == "half_open"
        assert call(breaker, "ok") == "scripted: circuit breaker half open, its probe call is in flight"
    assert breaker.state == "closed"


def test_a_stream_that_breaks_after_its_call_counts_as_a_failure() -> None:
    clock = FakeClock()
    breaker = Breaker("scripted", 2, 30.0, clock)
    assert call(breaker, "ok") == "ran"
    breaker.report_failure(FAILED)
    breaker.report_failure(REFUSED)  # not the service's trouble: not counted
    assert breaker.state == "closed"
    breaker.report_failure(FAILED)
    assert breaker.state == "open" and call(breaker, "ok") == open_message(30)


# -- discovery -------------------------------------------------------------------------------

@pytest.fixture
def mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Mesh:
    return discovery_mesh(tmp_path, monkeypatch)


def test_discovery_from_mesh_yaml(mesh: Mesh) -> None:
    assert service_url(mesh, "memory") == "http://127.0.0.1:9001"
    assert service_url(mesh, "cognition") == "http://127.0.0.1:9100"  # the default
    with ServiceClient.from_mesh(mesh, "cognition") as client:
        assert client.base_url == "http://127.0.0.1:9100" and client.service == "cognition"
    with pytest.raises(ConfigError):
        service_url(mesh, "billing")


def test_discovery_env_port_and_url_override_mesh_yaml(mesh: Mesh,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMORY_SERVICE_PORT", "9555")
    assert service_url(mesh, "memory") == "http://127.0.0.1:9555"
    monkeypatch.setenv("MEMORY_SERVICE_URL", "http://10.1.2.3:7000/")
    assert service_url(mesh, "memory") == "http://10.1.2.3:7000"  # the full URL wins
    monkeypatch.setenv("COGNITION_SERVICE_PORT", "http")
    with pytest.raises(ConfigError, match="COGNITION_SERVICE_PORT"):
        service_url(mesh, "cognition")
    monkeypatch.setenv("COGNITION_SERVICE_URL", "10.1.2.3:7000")
    with pytest.raises(ConfigError, match="COGNITION_SERVICE_URL"):
        service_url(mesh, "cognition")


@pytest.mark.parametrize(("settings", "problem"), [
    ({"retries": -1}, "retries >= 0"),
    ({"failure_threshold": 0}, "failure_threshold >= 1"),
    ({"max_connections": 0}, "not 3, 5 and 0"),
    ({"read_timeout": 0}, "timeouts must be greater than 0"),
])
def test_client_settings_that_cannot_work_are_a_config_error(settings: dict[str, int],
                                                             problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        ServiceClient("http://127.0.0.1:1", **settings)  # type: ignore[arg-type]


def test_every_service_error_is_one_tree() -> None:
    for cls in (ServiceUnavailableError, ServiceTimeoutError, CircuitOpenError, ServiceHTTPError,
                ServiceBadRequestError, ServiceNotFoundError):
        assert issubclass(cls, ServiceError) and issubclass(cls, AgentMeshError)
