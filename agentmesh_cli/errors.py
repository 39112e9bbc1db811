"""The one exception tree of agentmesh.

    AgentMeshError                 base; the CLI turns it into one red line + exit code
    ├── ConfigError                mesh.yaml is missing or invalid (exit 2)
    ├── PortInUseError             a port the mesh needs is taken (names the port)
    ├── SupervisorError            supervisord cannot be started or reached
    │   └── NotReadyError          a program failed or was not ready in time
    ├── BusError                   the Kafka layer (confluent-kafka errors, wrapped)
    │   └── InvalidEnvelope        a record that does not parse or fit the schema
    ├── StoreError                 the Redis layer (redis-py errors, wrapped)
    ├── RoleError                  a role cannot be found, imported or built
    └── TopologyError              a graph query that has no answer (unknown agent, no route)
"""

from __future__ import annotations


class AgentMeshError(Exception):
    """Base of every error agentmesh raises on purpose."""

    exit_code = 1


class ConfigError(AgentMeshError):
    """mesh.yaml cannot be read or does not fit the schema."""

    exit_code = 2


class PortInUseError(AgentMeshError):
    """A port the mesh wants to bind is already in use."""


class SupervisorError(AgentMeshError):
    """supervisord cannot be started, reached or controlled."""


class NotReadyError(SupervisorError):
    """A program failed to start or did not report ready before the timeout."""

    def __init__(self, message: str, program: str = "", log_tail: str = "") -> None:
        super().__init__(message)
        self.program = program
        self.log_tail = log_tail


class BusError(AgentMeshError):
    """The Kafka layer failed (wraps confluent-kafka's KafkaError/KafkaException)."""


class InvalidEnvelope(BusError):
    """A record that does not decode as JSON or does not fit the envelope schema."""


class StoreError(AgentMeshError):
    """The Redis layer failed (wraps redis-py errors)."""


class RoleError(AgentMeshError):
    """An agent role cannot be resolved to a class."""


class TopologyError(AgentMeshError):
    """A topology query that cannot be answered (unknown agent, no path)."""
