"""The gateway's HTTP API: the mesh's front door (docs/gateway.md).

    POST /agents/{name}/ask          ask an agent, answer with its reply (200, 502, 504)
    POST /agents/{name}/messages     send an agent a message (202 with the envelope id)
    POST /conversations              mint a conversation (201), to follow before asking
    GET  /conversations/{id}/events  the conversation's events, Server-Sent Events
    GET  /agents                     the registry, with what each agent accepts
    GET  /health, /openapi.json      open: no token
    /mcp                             the mesh as MCP tools and resources (gateway/mcp.py)

Tokens are the services' (services/auth.py): the service token acts for anyone (a body's
`user` says for whom), a user token for its user only, and the gateway puts that user in
the envelope's `meta.user`: roles read the user from there, never from the payload.
Errors are the services' JSON shape.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, Header, Path, Query, Request, Response
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from agentmesh_cli import constants as C
from agentmesh_cli import convlog, events
from agentmesh_cli.envelope import Envelope, nests_deeper, now_ms
from agentmesh_cli.errors import (
    AgentNotFound,
    BadRequest,
    BrokerUnavailable,
    ConversationNotFound,
    Draining,
    ErrorReply,
    Forbidden,
    ReplyTimeout,
)
from agentmesh_cli.gateway.kafka import GatewayBus
from agentmesh_cli.gateway.listing import agent_list
from agentmesh_cli.gateway.models import (
    AGENT,
    EVENT_ID_PATTERN,
    IDEMPOTENCY_KEY,
    Accepted,
    Agents,
    Ask,
    Conversation,
    NewConversation,
    Reply,
    Send,
    body_of,
    parsed,
)
from agentmesh_cli.gateway.routing import GatewayRouting
from agentmesh_cli.gateway.sse import conversation_events
from agentmesh_cli.gateway.state import GatewayState
from agentmesh_cli.services.auth import BearerAuthMiddleware, Caller, check_service_token, current_caller
from agentmesh_cli.services.http import (
    BodyLimitMiddleware,
    ErrorBoundaryMiddleware,
    Health,
    OrjsonResponse,
    error_responses,
    event_stream,
    install_error_handlers,
    read_json,
)
from agentmesh_cli.services.seed import without_422

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 1.0
MAX_NESTING = 64  # a deeper payload is refused (the envelope codec has a limit too)
SEND_TIMEOUT_S = 10.0  # POST messages waits this long for the broker to take the message
OPEN_PATHS = frozenset({"/health", "/openapi.json"})
class Gateway:
    """What the endpoints (and the MCP tools) share: the mesh's settings, Redis, Kafka."""

    def __init__(self, mesh: Any, state: GatewayState, address: str, signer: Any) -> None:
        self.mesh = mesh
        self.settings = mesh.config.gateway
        self.state = state
        self.address = address
        self.signer = signer
        self.bus: GatewayBus | None = None
        self.routing = GatewayRouting(mesh, lambda: state.registry)  # a group's name: one replica
        # (agent, type) -> the schema it was made from, and its validator
        self._validators: dict[tuple[str, str], tuple[dict[str, Any], Draft202012Validator]] = {}

    # who acts --------------------------------------------------------------------
    @staticmethod
    def acting(body_user: str | None) -> tuple[str | None, bool]:
        """(user, is the mesh): a user token acts for its user only."""
        caller: Caller = current_caller()
        if caller.is_mesh:
            return body_user, True
        if body_user is not None and body_user != caller.user:
            raise Forbidden(f"this token acts for {caller.user!r}, not {body_user!r}",
                            {"argument": "user", "user": body_user})
        return caller.user, False

    @staticmethod
    def derived(user: str | None, key: str, what: str) -> str:
        digest = hashlib.sha256(f"{user or ''}\n{key}\n{what}".encode()).hexdigest()
        return digest[:32]

    def open_bus(self) -> GatewayBus:
        """The bus, when a request may go in now: 503 while the mesh drains or no broker
        answers (the request would only wait out its timeout)."""
        if self.state.draining:
            raise Draining("the mesh is draining (agentmesh down): no new requests", {})
        if self.bus is None:
            raise Draining("the gateway is not running", {})
        if self.bus.broker_down is not None:
            raise BrokerUnavailable(f"no Kafka broker answers: {self.bus.broker_down}",
                                    {"kafka": self.bus.broker_down})
        return self.bus

    def _check_agent(self, name: str) -> None:
        if not self.state.may_answer(name):
            raise AgentNotFound(f"no agent {name!r}: it never joined and is not in mesh.yaml",
                                {"agent": name})

    async def _prepare(self, name: str, body: Send, key: str | None, request: bool,
                       timeout: float | None = None) -> tuple[Envelope, str, str | None, bool]:
        bus = self.open_bus()
        self._check_agent(name)
        if nests_deeper(body.payload, MAX_NESTING):
            raise BadRequest(f"payload nests deeper than {MAX_NESTING} levels", {"argument": "payload"})
        self.check_payload(name, body.type, body.payload)
        user, mesh = self.acting(body.user)
        kind = "ask" if request else "message"
        conversation = body.conversation or (
            "c-" + (self.derived(user, key, "conversation")[:24] if key else uuid.uuid4().hex[:24]))
        meta: dict[str, Any] = {"conversation": conversation}
        if user:
            meta["user"] = user
        if request:
            meta["reply_to"] = bus.address
            meta["deadline"] = now_ms() + int((timeout or 0) * 1000)
        envelope_id = self.derived(user, key, kind) if key else None
        target = await self.routing.target(name, conversation)
        envelope = events.message(C.GATEWAY_SENDER, target, body.type, body.payload, meta, id=envelope_id)
        if not await self.state.append(conversation, envelope, user, mesh):
            raise ConversationNotFound(f"no conversation {conversation!r}", {"conversation": conversation})
        return envelope, conversation, user, mesh

    def check_payload(self, name: str, type: str, payload: dict[str, Any]) -> None:
        """400 naming the field when `payload` does not fit the schema the agent's role
        declares for `type` (Role.accepts); a type it does not declare passes as is."""
        accepts = self.state.accepts.get(name)
        if accepts is None and self.routing.is_group(name):  # a group: what its replicas publish
            accepts = next((a for n, a in sorted(self.state.accepts.items())
                            if self.mesh.config.group_name(n) == name), None)
        schema = (accepts or {}).get(type)
        if not isinstance(schema, dict):
            return
        cached = self._validators.get((name, type))
        if cached is None or cached[0] != schema:  # the registry is read anew every second
            cached = self._validators[(name, type)] = (schema, Draft202012Validator(schema))
        validator = cached[1]
        error = best_match(validator.iter_errors(payload))
        if error is not None:
            where = ".".join(str(part) for part in ("payload", *error.absolute_path))
            raise BadRequest(f"argument {where!r}: {error.message}", {"argument": where})

    async def ask(self, name: str, body: Ask, key: str | None) -> dict[str, Any]:
        timeout = self.settings.ask_timeout if body.timeout is None else body.timeout
        if timeout > self.settings.max_ask_timeout:
            raise BadRequest(f"timeout {timeout} is over gateway.max_ask_timeout "
                             f"({self.settings.max_ask_timeout} s)", {"argument": "timeout"})
        started = time.perf_counter()
        envelope, conversation, _, _ = await self._prepare(name, body, key, True, timeout)
        bus = self.open_bus()
        future = bus.expect(envelope.id)
        try:
            bus.send_request(envelope, future)  # a failed delivery fails `future` (503)
            self.state.count_sent(envelope.to_agent_id)
            group = self.routing.is_group(name)
            if group:
                await self.routing.sent(envelope.to_agent_id, envelope.id, name)
            try:
                async with asyncio.timeout(timeout):
                    reply = await asyncio.shield(future)
            except TimeoutError:
                if group:
                    await self.routing.forget(envelope.id)
                self.state.count(C.gateway_asks_counter("timeout"))
                raise ReplyTimeout(f"{name} did not answer {body.type!r} within {timeout} s",
                                   {"agent": name, "type": body.type, "timeout": timeout,
                                    "conversation": conversation, "request_id": envelope.id}) from None
        finally:
            bus.forget(envelope.id, future)
        ms = (time.perf_counter() - started) * 1000
        if group:
            await self.routing.replied(envelope.id)
        if reply.type == C.TYPE_ERROR_REPLY:
            self.state.count(C.gateway_asks_counter("error_reply"), ms)
            raise ErrorReply(f"{name}'s handler raised {reply.payload.get('error', 'Exception')}: "
                             f"{reply.payload.get('message', '')}",
                             {"agent": name, "type": body.type, "conversation": conversation,
                              "request_id": envelope.id,
                              "remote_type": str(reply.payload.get("error", "Exception")),
                              "remote_message": str(reply.payload.get("message", ""))})
        self.state.count(C.gateway_asks_counter("ok"), ms)
        return {"id": reply.id, "type": reply.type, "from": reply.from_agent_id, "payload": reply.payload,
                "conversation": conversation, "in_reply_to": envelope.id, "round_trip_ms": round(ms, 2)}

    async def send(self, name: str, body: Send, key: str | None) -> dict[str, Any]:
        envelope, conversation, _, _ = await self._prepare(name, body, key, False)
        delivered = self.open_bus().send(envelope)
        self.state.count_sent(envelope.to_agent_id)
        self.state.count(C.COUNTER_GATEWAY_MESSAGES)
        try:
            with anyio.fail_after(SEND_TIMEOUT_S):
                await delivered
        except TimeoutError:
            raise BrokerUnavailable(f"the broker did not take the message within {SEND_TIMEOUT_S:.0f} s",
                                    {"id": envelope.id}) from None
        return {"id": envelope.id, "conversation": conversation}

    async def open_conversation(self, body_user: str | None) -> dict[str, Any]:
        user, mesh = self.acting(body_user)
        conversation = "c-" + uuid.uuid4().hex[:24]
        await self.state.claim(conversation, user if user else "", False)
        return {"conversation": conversation, "owner": user}

    async def may_follow(self, conversation: str) -> None:
        """404 unless the caller may read the conversation: the mesh may read any (and wait
        for one that does not exist yet); a user token its own, and one that does not exist
        yet becomes its own (a chat window may open before the first message is sent)."""
        caller = current_caller()
        if caller.is_mesh:
            return
        if not await self.state.claim(conversation, caller.user, False):
            raise ConversationNotFound(f"no conversation {conversation!r}", {"conversation": conversation})

    def agents(self) -> list[dict[str, Any]]:
        """The registry (and mesh.yaml's agents that never joined), with their accepts; a
        replica group once, with its replicas (listing.py)."""
        return agent_list(self.mesh.config, self.state.registry, self.state.accepts, self.state.counts,
                          now_ms())

    async def health(self) -> tuple[bool, dict[str, str]]:
        details: dict[str, str] = {}
        failure = await self.state.ping(HEALTH_TIMEOUT_S)
        if failure is not None:
            details["redis"] = failure
        if self.bus is not None and self.bus.broker_down:
            details["kafka"] = self.bus.broker_down
        return not details, details


ERRORS_SEND = (400, 401, 403, 404, 413, 415, 503)


def create_app(gateway: Gateway, *, keepalive_s: float = 15.0, start_bus: Any = None) -> FastAPI:
    """The gateway's app. `start_bus(loop)` makes its GatewayBus when the app starts (the
    bus needs the running loop); `app.state.gateway` is the Gateway."""
    check_service_token(gateway.mesh.credentials.service_token, "gateway")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if start_bus is not None:
            gateway.bus = await asyncio.to_thread(start_bus, asyncio.get_running_loop())
        gateway.state.start()
        try:
            yield
        finally:
            if gateway.bus is not None:
                await asyncio.to_thread(gateway.bus.close)
            gateway.routing.close()
            await gateway.state.close()

    app = FastAPI(title="agentmesh gateway", version="1", lifespan=lifespan,
                  description="The mesh's front door: ask and message agents, follow conversations.")
    app.state.gateway = gateway
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=gateway.settings.max_body_bytes)
    app.add_middleware(BearerAuthMiddleware, token=gateway.mesh.credentials.service_token,
                       open_paths=OPEN_PATHS)
    app.add_middleware(ErrorBoundaryMiddleware)

    @app.post("/agents/{name}/ask", summary="Ask an agent and get its reply",
              response_model=Reply, response_model_by_alias=True, openapi_extra=body_of(Ask),
              responses={**error_responses(*ERRORS_SEND, 502, 504)})
    async def ask(name: AGENT, request: Request, idempotency_key: IDEMPOTENCY_KEY = None) -> Response:
        body = parsed(Ask, await read_json(request))
        return OrjsonResponse(await gateway.ask(name, body, idempotency_key))

    @app.post("/agents/{name}/messages", summary="Send an agent a message", status_code=202,
              response_model=Accepted, openapi_extra=body_of(Send),
              responses={**error_responses(*ERRORS_SEND)})
    async def message(name: AGENT, request: Request, idempotency_key: IDEMPOTENCY_KEY = None) -> Response:
        body = parsed(Send, await read_json(request))
        return OrjsonResponse(await gateway.send(name, body, idempotency_key), status_code=202)

    @app.post("/conversations", summary="Start a conversation", status_code=201,
              response_model=Conversation, openapi_extra=body_of(NewConversation, required=False),
              responses={**error_responses(400, 401, 403, 413, 415, 503)})
    async def new_conversation(request: Request) -> Response:
        raw = await request.body()
        body = parsed(NewConversation, await read_json(request)) if raw.strip() else NewConversation()
        result = await gateway.open_conversation(body.user)
        return OrjsonResponse(result, status_code=201)

    @app.get("/conversations/{conversation}/events", summary="Follow a conversation (Server-Sent Events)",
             responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                              "description": "`message` events (id: the stream id), ephemeral `delta` "
                                             "events, `gone` when Last-Event-ID is past the retention."},
                        **error_responses(400, 401, 404, 503)})
    async def follow(
        conversation: Annotated[str, Path(pattern=convlog.CONVERSATION_PATTERN)],
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=64,
                                                    pattern=EVENT_ID_PATTERN)] = None,
        after: Annotated[str | None, Query(max_length=64, pattern=EVENT_ID_PATTERN, description=(
            "Resume after this event id (for clients that cannot set Last-Event-ID)."))] = None,
    ) -> Response:
        resume = last_event_id or after
        last = convlog.stream_id(resume) if resume else None
        if resume and last is None:
            raise BadRequest(f"Last-Event-ID {resume!r} is not an event id", {"argument": "Last-Event-ID"})
        await gateway.may_follow(conversation)
        follower = await gateway.state.follow(conversation)
        gateway.state.count(C.COUNTER_GATEWAY_STREAMS)
        shutdown = anyio.Event()
        stream = conversation_events(gateway.state, conversation, follower, last, resume, shutdown)
        return event_stream(stream, keepalive_s, shutdown=shutdown, on_close=_closer(follower))

    @app.get("/agents", summary="The agents, their state and what they accept", response_model=Agents,
             responses={**error_responses(401)})
    async def agents() -> Response:
        return OrjsonResponse({"agents": gateway.agents()})

    @app.get("/health", summary="Are Redis and Kafka answering?",
             responses={200: {"model": Health, "description": "Healthy."},
                        503: {"model": Health, "description": "Redis or Kafka does not answer."}})
    async def health() -> Response:
        ok, details = await gateway.health()
        if ok:
            return OrjsonResponse({"status": "healthy"})
        return OrjsonResponse({"status": "unhealthy", "details": details}, status_code=503)

    without_422(app)
    return app


def _closer(follower: Any) -> Any:
    async def close() -> None:
        follower.close()
    return close
