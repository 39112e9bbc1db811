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
    ├── TopologyError              a graph query that has no answer (unknown agent, no route)
    ├── WaitTimeout                a condition waited for (waiting.wait_until) did not hold in time
    └── ServiceError               an HTTP service of the mesh (memory, cognition); `.service`
        ├── ServiceUnavailableError    not reachable after retries (connection error, 503)
        │   └── ServiceTimeoutError    no answer in time after retries (httpx timeouts)
        ├── CircuitOpenError           the client's breaker is open: failed fast, nothing sent
        ├── ServiceProtocolError       an answer that does not fit the protocol (bad JSON, no SSE)
        └── ServiceHTTPError           an error answer: `.status`, `.code`, `.message`, `.details`
            ├── ServiceBadRequestError     400
            ├── ServiceAuthError           401, 403
            └── ServiceNotFoundError       404
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


class WaitTimeout(AgentMeshError):
    """A condition waited for with `waiting.wait_until` did not hold in time."""


class ServiceError(AgentMeshError):
    """A call to an HTTP service of the mesh failed; `service` names it, `attempts` counts
    the requests made (more than 1 when it was retried)."""

    def __init__(self, message: str, service: str = "") -> None:
        super().__init__(message)
        self.service = service
        self.attempts = 1

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} (after {self.attempts} attempts)" if self.attempts > 1 else text


class _AnsweredError(ServiceError):
    """A ServiceError that may carry the service's error answer: `status`, and `code`,
    `message`, `details` from its JSON body `{"error": {...}}`."""

    status: int | None

    def __init__(self, text: str, service: str = "", status: int | None = None, code: str = "",
                 message: str = "", details: object = None) -> None:
        super().__init__(text, service)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class ServiceUnavailableError(_AnsweredError):
    """The service could not be reached or said 503, still after the retries. For a 503
    answer `status`, `code`, `message`, `details` are as in ServiceHTTPError; for a
    connection failure or a timeout `status` is None."""


class ServiceTimeoutError(ServiceUnavailableError):
    """The service did not connect or answer within the timeout, still after the retries."""


class CircuitOpenError(ServiceError):
    """The client's circuit breaker is open: the call failed fast without a request."""


class ServiceProtocolError(ServiceError):
    """The service answered, but not as the protocol says (no JSON, no `result`, no SSE)."""


class ServiceHTTPError(_AnsweredError):
    """The service answered with an error status; `code`, `message` and `details` come from
    its JSON body `{"error": {...}}` (or from the status when the body has none)."""

    status: int


class ServiceBadRequestError(ServiceHTTPError):
    """400: the call's arguments were refused (the caller's fault; never retried)."""


class ServiceAuthError(ServiceHTTPError):
    """401 or 403: the caller is not authenticated or not allowed."""


class ServiceNotFoundError(ServiceHTTPError):
    """404: no such tool or resource."""
