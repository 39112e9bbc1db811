"""The service client's pure parts: discovery from mesh.yaml and the environment, and the one
error tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentmesh_cli.config import parse_config
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
from agentmesh_cli.services.client import ServiceClient, service_url
from tests.helpers.tables import ENV

# -- results and errors ---------------------------------------------------------------------


# -- circuit breaker -------------------------------------------------------------------------


# -- streams and health ----------------------------------------------------------------------


# -- the async client --------------------------------------------------------------------------


# -- discovery -------------------------------------------------------------------------------

@pytest.fixture
def mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Mesh:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    config = parse_config({"mesh": "t", "services": {"memory": {"host": "127.0.0.1", "port": 9001}}})
    return Mesh(config, tmp_path / "mesh.yaml")


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
