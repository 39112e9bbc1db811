"""The one exception tree of agentmesh: every exception class of the package is defined
here, and drawn below (tests/unit/test_errors.py holds the two to each other).

    AgentMeshError                 base; the CLI turns it into one red line + exit code
    ├── ConfigError                mesh.yaml or a setting is missing or invalid (exit 2)
    ├── PortInUseError             a port the mesh needs is taken (names the port), or none is free
    ├── SupervisorError            supervisord cannot be started or reached
    │   └── NotReadyError          a program failed or was not ready in time
    ├── BusError                   the Kafka layer (confluent-kafka errors, wrapped)
    │   ├── InvalidEnvelope        a record that does not parse or fit the schema
    │   │   └── WrongSender        a vote or proposal naming another author than its sender
    │   └── WireError              a broken stream between the host's inbox reader and an agent
    ├── StoreError                 the Redis layer (redis-py errors, wrapped)
    ├── RoleError                  a role cannot be found, imported or built
    ├── TopologyError              a graph query that has no answer (unknown agent, no route)
    │   └── SnapshotError          a topology snapshot that is not JSON or does not fit (a bad edge)
    ├── ConsensusError             the consensus core refused its rules or a proposal (quorum, type)
    ├── RoutingError               a replica router asked to choose among none, or told of a replica it lacks
    ├── WaitTimeout                a condition waited for (waiting.wait_until) did not hold in time
    ├── MeshDraining               operator input refused while `agentmesh down` drains the mesh
    ├── BenchError                 a bench cannot run or did not finish (a program did not start)
    ├── FellBehind                 a follow stream read too slowly and was dropped (services/feed.py)
    ├── FaultSkipped               chaos: a fault could not be injected (its program is not running)
    ├── AskError                   an ask (`ctx.ask`, `agentmesh ask`) got no answer it can return
    │   ├── AskTimeout                 no reply within the timeout: `.peer`, `.type`, `.timeout`
    │   ├── RemoteError                the answerer's handler raised: `.peer`, `.remote_type`, ...
    │   ├── UnknownAgent               the agent never joined and is not in mesh.yaml: `.peer`
    │   └── AskNotAllowed              a blocking ask where it could deadlock (a sync handler on the loop)
    ├── ModelError                 the llm role's model failed it: the asker's error reply (llm/)
    │   ├── ModelUnavailable           the model server cannot be reached (after the SDK's retries)
    │   ├── ModelTimeout               no answer within llm.timeout (after the SDK's retries)
    │   ├── ModelAuthFailed            401 or 403: the api_key is missing or wrong
    │   ├── ModelRateLimited           429 still, after the SDK's retries (which honour Retry-After)
    │   ├── ModelRefused               any other error answer (400, 5xx after retries): `.status`
    │   ├── ToolCallInvalid            a tool call whose arguments are not a JSON object
    │   ├── ToolNotAllowed             a tool the model was not offered (invented, or not in `tools`)
    │   ├── ToolRoundLimit             the model still calls tools after llm.max_tool_rounds
    │   └── EmptyAnswer                the model's final answer has no text
    ├── ServiceError               calling a service of the mesh failed (the client side); `.service`
    │   ├── CircuitOpenError           the client's breaker is open: failed fast, nothing sent
    │   ├── ServiceProtocolError       an answer that does not fit the protocol (bad JSON, no SSE)
    │   └── _AnsweredError             (private) may carry the answer: `.status`, `.code`, ...
    │       ├── ServiceUnavailableError    not reachable after retries (connection error, 503)
    │       │   └── ServiceTimeoutError    no answer in time after retries (httpx timeouts)
    │       └── ServiceHTTPError           an error answer: `.status`, `.code`, `.message`, `.details`
    │           ├── ServiceBadRequestError     400
    │           ├── ServiceAuthError           401, 403
    │           └── ServiceNotFoundError       404
    └── ApiError                   an error a service answers (the server side): `.status`, `.code`
        ├── BadRequest                 400 invalid_argument: names the argument
        ├── InvalidJson                400 invalid_json: the body does not parse
        ├── InvalidBody                400 invalid_body: the body is JSON but not the call's shape
        ├── Unauthorized               401 unauthorized: no bearer token, or a wrong one
        ├── Forbidden                  403 forbidden: a user token on what is not its user's
        ├── NotFound                   404 not_found
        │   ├── UnknownTool                404 unknown_tool
        │   ├── UnknownResource            404 unknown_resource
        │   ├── MessageNotFound            404 message_not_found (memory)
        │   ├── ConversationNotFound       404 conversation_not_found (cognition, gateway)
        │   └── AgentNotFound              404 unknown_agent (gateway): never joined, not in mesh.yaml
        ├── Conflict                   409 conflict
        ├── PayloadTooLarge            413 payload_too_large: by Content-Length
        │   └── BodyLimitExceeded          413 counted while the app read the body
        ├── UnsupportedMediaType       415 unsupported_media_type
        ├── DependencyError            502 dependency_error: memory answered cognition wrongly
        ├── ErrorReply                 502 error_reply (gateway): the agent's handler raised
        ├── Unavailable                503 store_unavailable: Redis failed
        ├── DependencyUnavailable      503 dependency_unavailable: cognition cannot reach memory
        ├── BrokerUnavailable          503 broker_unavailable (gateway): Kafka did not take the request
        ├── Draining                   503 draining (gateway): `agentmesh down` drains the mesh
        └── ReplyTimeout               504 ask_timeout (gateway): no reply within the timeout

ServiceError is what a caller of a service sees, ApiError what a service answers: the
JSON answer `{"error": {"code", "message", "details"}}` is made from an ApiError in
services/http.py, so this module imports no web framework (it is one of the pure cores).
"""

from __future__ import annotations

from typing import Any


class AgentMeshError(Exception):
    """Base of every error agentmesh raises on purpose."""

    exit_code = 1


class ConfigError(AgentMeshError):
    """mesh.yaml cannot be read or does not fit the schema, or a setting the mesh runs with
    (a secret, a TLS file, a client's settings, a listening address) cannot be used."""

    exit_code = 2


class PortInUseError(AgentMeshError):
    """A port the mesh wants to bind is already in use, or no free port could be found."""


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


class WrongSender(InvalidEnvelope):
    """A vote or proposal whose payload names someone else than the envelope's sender."""


class WireError(BusError):
    """The host's inbox reader and an agent (inbox_wire.py): a stream that does not hold
    the frames they write."""


class StoreError(AgentMeshError):
    """The Redis layer failed (wraps redis-py errors)."""


class RoleError(AgentMeshError):
    """An agent role cannot be resolved to a class."""


class TopologyError(AgentMeshError):
    """A topology query that cannot be answered (unknown agent, no path)."""


class SnapshotError(TopologyError):
    """A topology snapshot that is not JSON or does not fit its format (an agent listed
    twice, a bad edge, a field of the wrong type)."""


class ConsensusError(AgentMeshError):
    """The consensus core refused what it was given: a quorum outside (0, 1], a negative
    proposal timeout, a proposal type it does not know."""


class RoutingError(AgentMeshError):
    """A replica router (routing/models.py) was asked to choose among no replicas, or told
    of a send to a replica it does not route to: the caller's bookkeeping and the router's
    have drifted apart, which a silent guess would hide."""


class WaitTimeout(AgentMeshError):
    """A condition waited for (with `waiting.wait_until`, or a loop of its own) did not hold
    in time."""


class MeshDraining(AgentMeshError):
    """`agentmesh down` is draining the mesh (the draining mark is set): operator input
    (`send`, `propose`) is refused until the next `up` clears the mark."""


class BenchError(AgentMeshError):
    """A bench scenario cannot run (settings that do not fit, a program that did not start)
    or did not finish (a step that never happened, an error answer under load)."""


class FellBehind(AgentMeshError):
    """A follower's queue (`limit` messages) filled up: it read too slowly and was dropped."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the stream fell more than {limit} changes behind and was ended; "
                         "open it again")
        self.limit = limit


class FaultSkipped(AgentMeshError):
    """The fault could not be injected (its program is not running)."""


class AskError(AgentMeshError):
    """An ask got no reply it can return (see its subclasses)."""


class AskTimeout(AskError):
    """No reply came within the timeout (the request's deadline)."""

    exit_code = 3

    def __init__(self, peer: str, type: str, timeout: float) -> None:
        super().__init__(f"no reply from {peer} to {type!r} within {timeout:g} s")
        self.peer, self.type, self.timeout = peer, type, timeout


class RemoteError(AskError):
    """The answerer's handler raised: its error reply names the exception's type and message."""

    exit_code = 1

    def __init__(self, peer: str, type: str, remote_type: str, remote_message: str) -> None:
        super().__init__(f"{peer} failed on {type!r}: {remote_type}: {remote_message}")
        self.peer, self.type = peer, type
        self.remote_type, self.remote_message = remote_type, remote_message


class UnknownAgent(AskError):
    """An ask to a name that never joined the mesh and is not in mesh.yaml."""

    exit_code = 4

    def __init__(self, peer: str) -> None:
        super().__init__(f"unknown agent {peer!r}: it never joined and is not in mesh.yaml")
        self.peer = peer


class AskNotAllowed(AskError):
    """A blocking ask where it would stop the agent's loop and could deadlock: in a sync
    handler that runs on the loop (concurrency 1), in on_tick, on_start or on_stop."""


# the llm role: what ends a model's turn with an error reply --------------------------------
class ModelError(AgentMeshError):
    """The llm role could not get an answer from its model; the asker gets an error reply
    naming this class and the message (which never holds the api key)."""


class ModelUnavailable(ModelError):
    """The model server cannot be reached (connection refused or reset), after the SDK's retries."""


class ModelTimeout(ModelError):
    """The model server did not answer within llm.timeout, after the SDK's retries."""


class ModelAuthFailed(ModelError):
    """The model server refused the api key (401 or 403); never retried."""


class ModelRateLimited(ModelError):
    """The model server still answered 429 after the SDK's retries."""


class ModelRefused(ModelError):
    """Any other error answer of the model server (400, 404, 5xx after retries)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ToolCallInvalid(ModelError):
    """The model called a tool with arguments that are not a JSON object."""


class ToolNotAllowed(ModelError):
    """The model called a tool it was not offered: one it invented, or an agent that the
    `tools` allowlist leaves out. Nothing is sent to that agent."""


class ToolRoundLimit(ModelError):
    """The model still called tools after llm.max_tool_rounds rounds."""


class EmptyAnswer(ModelError):
    """The model ended its turn without text and without a tool call."""


# the client side of the services: what a call to them raises ------------------------------
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


# the server side of the services: what they answer ---------------------------------------
class ApiError(AgentMeshError):
    """An error answer of a service: HTTP `status`, stable `code`, `message`, `details`
    (and response `headers`). services/http.py turns it into the JSON answer."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.headers = headers


class BadRequest(ApiError):
    status, code = 400, "invalid_argument"


class InvalidJson(ApiError):
    status, code = 400, "invalid_json"


class InvalidBody(ApiError):
    status, code = 400, "invalid_body"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class UnknownTool(NotFound):
    code = "unknown_tool"


class UnknownResource(NotFound):
    code = "unknown_resource"


class MessageNotFound(NotFound):
    code = "message_not_found"


class ConversationNotFound(NotFound):
    code = "conversation_not_found"


class AgentNotFound(NotFound):
    code = "unknown_agent"


class Conflict(ApiError):
    status, code = 409, "conflict"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class BodyLimitExceeded(PayloadTooLarge):
    """Raised from the body limit middleware's `receive` once more than the limit was read
    (a chunked body has no Content-Length to check first)."""


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class DependencyError(ApiError):
    status, code = 502, "dependency_error"


class Unavailable(ApiError):
    status, code = 503, "store_unavailable"


class DependencyUnavailable(ApiError):
    status, code = 503, "dependency_unavailable"


class ErrorReply(ApiError):
    """The agent answered an ask with an error reply (its handler raised)."""

    status, code = 502, "error_reply"


class BrokerUnavailable(ApiError):
    status, code = 503, "broker_unavailable"


class Draining(ApiError):
    status, code = 503, "draining"


class ReplyTimeout(ApiError):
    status, code = 504, "ask_timeout"
