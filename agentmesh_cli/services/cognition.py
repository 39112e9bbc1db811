"""The Cognition service (seed protocol): context, search and analysis over users' messages,
which it reads from the Memory service through the network client (it has no store).

    POST /tool/{name}        {"arguments": {...}} -> {"result": ...}
                             get_context, search_history, analyze_conversation
    GET  /resource/{path}    context/{user_id}?query=&limit=&recency_weight=,
                             conversation_analysis/{conversation_id}/{type}?user_id=
                             as JSON, or as SSE (Accept: text/event-stream): `message`
                             events (one per item of a list, else one), then `end`
    GET  /health             {"status": "healthy"} while memory is healthy, else 503
                             {"status": "degraded", "details": {"memory": ...}}

Ranking: relevance is BM25 (bm25s, Lucene variant) of the query's content words over each
message, divided by the best score so it lies in [0, 1]; recency is 2 ** (-age / half-life)
with a half-life of RECENCY_HALF_LIFE_S; score = (1 - w) * relevance + w * recency. Without
a query the score is the recency alone. With a query and w = 0, messages sharing no word
with it are left out (their score is 0 and their order would mean nothing). Ties: newer first.

Every request but /health needs a bearer token (services.auth): the service token acts for
any user, a user token only for its user, on every tool and resource (403 otherwise;
conversation_analysis names its user by ?user_id=). Cognition itself reads memory with the
service token. A user analyses only conversations they wrote in; any other answers 404
conversation_not_found, the same as a conversation that does not exist. Memory down,
timing out or behind an open breaker is a 503 dependency_unavailable naming memory; an
answer from memory that breaks the protocol is a 502 dependency_error.

The text cores (tokenise, rank_items, search_items, summary, topics, sentiment) are pure
functions of item dicts, with the clock as an argument.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import aclosing, contextmanager
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import FastAPI, Query, Request, Response
from pydantic import BaseModel, Field
from sse_starlette import ServerSentEvent

from agentmesh_cli.errors import (
    BadRequest,
    CircuitOpenError,
    ConfigError,
    ConversationNotFound,
    DependencyError,
    DependencyUnavailable,
    NotFound,
    ServiceBadRequestError,
    ServiceError,
    ServiceHTTPError,
    ServiceNotFoundError,
    ServiceProtocolError,
    ServiceUnavailableError,
    UnknownResource,
)
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.services.auth import check_service_token
from agentmesh_cli.services.client import AsyncServiceClient, service_url, tls_verify
from agentmesh_cli.services.http import (
    EVENT_STREAM,
    OrjsonResponse,
    error_responses,
    event_stream,
    finite_number,
    serve,
    sse_json,
    wants_event_stream,
)
from agentmesh_cli.services.mcp import install_mcp, served_hosts
from agentmesh_cli.services.memory_args import (
    MAX_ITEMS,
    check_fields,
    check_id,
    check_limit,
    check_owner,
)
from agentmesh_cli.services.protocol import ID_PATTERN, Catalogue, ResourceSpec, ToolSpec, catalogue_of
from agentmesh_cli.services.seed import (
    bad_argument,
    http_url,
    json_type,
    service_app,
    tool_call_body,
    without_422,
)
from agentmesh_cli.services.text import (
    ANALYSES,
    query_terms,
    rank_items,
    search_items,
    takes_part,
    tokenise,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
logging.getLogger("bm25s").setLevel(logging.WARNING)  # it sets itself to DEBUG on import

SERVICE = "cognition"
DEFAULT_LIMIT = 10
DEFAULT_RECENCY_WEIGHT = 0.5
ANALYSIS_TYPES = ("summary", "topics", "sentiment")
HEALTH_TIMEOUT_S = 1.5
DEFAULT_MAX_BODY = 1_048_576  # services.max_body_bytes' default, for an app made without a mesh
CONVERSATION_FETCHES = 8  # concurrent conversation reads of one search_history call


# argument checks ---------------------------------------------------------------------------
def check_count(value: Any, argument: str = "limit") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ITEMS:
        raise bad_argument(argument, f"must be an integer from 1 to {MAX_ITEMS}, not {value!r}")
    return value


def check_weight(value: Any, argument: str = "recency_weight") -> float:
    if not finite_number(value) or not 0 <= value <= 1:
        raise bad_argument(argument, f"must be a number from 0 to 1, not {value!r}")
    return float(value)


def check_query(value: Any) -> str:
    """A search text with at least one word."""
    if not isinstance(value, str):
        raise bad_argument("query", f"must be a string, not {json_type(value)}")
    if not tokenise(value):
        raise bad_argument("query", "must contain at least one word")
    return value


def check_optional_query(value: Any) -> str | None:
    """get_context's query: absent, null or without words means none (recency only)."""
    if value is None or (isinstance(value, str) and not tokenise(value)):
        return None
    return check_query(value)


def check_flag(value: Any, argument: str) -> bool:
    if not isinstance(value, bool):
        raise bad_argument(argument, f"must be true or false, not {value!r}")
    return value


def check_analysis_type(value: Any) -> str:
    if value not in ANALYSIS_TYPES:
        raise bad_argument("analysis_type", f"must be one of {', '.join(ANALYSIS_TYPES)}, not {value!r}")
    return str(value)


def _weight_text(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise bad_argument("recency_weight", f"must be a number from 0 to 1, not {text!r}") from None
    return check_weight(value)


# memory -------------------------------------------------------------------------------------
@contextmanager
def _memory_errors() -> Iterator[None]:
    """The client's ServiceError tree -> this service's answers, naming memory."""
    try:
        yield
    except (ServiceUnavailableError, CircuitOpenError) as exc:
        raise DependencyUnavailable(f"the memory service is unavailable: {exc}",
                                    {"memory": str(exc)}) from exc
    except ServiceNotFoundError as exc:
        raise NotFound(f"memory: {exc.message}", {"memory": exc.code}) from exc
    except ServiceBadRequestError as exc:
        details = exc.details if isinstance(exc.details, dict) else {}
        raise BadRequest(f"memory: {exc.message}", {**details, "memory": exc.code}) from exc
    except (ServiceHTTPError, ServiceProtocolError) as exc:
        raise DependencyError(f"the memory service answered wrongly: {exc}", {"memory": str(exc)}) from exc
    except ServiceError as exc:
        raise DependencyUnavailable(f"the memory service cannot be called: {exc}",
                                    {"memory": str(exc)}) from exc


async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
    """A pure core in a worker thread: 1000 messages take tens of ms, which would stall
    every other request (and /health) if run on the event loop."""
    return await anyio.to_thread.run_sync(partial(fn, *args))


class Cognition:
    """The tools and resources, over a memory client and a clock."""

    def __init__(self, memory: AsyncServiceClient, clock: Callable[[], float] = time.time) -> None:
        self.memory = memory
        self.clock = clock

    async def items(self, path: str) -> list[dict[str, Any]]:
        """A memory resource's items (newest first), read from its event stream."""
        items: list[dict[str, Any]] = []
        with _memory_errors():
            async with aclosing(self.memory.stream_resource(path)) as events:
                async for event, data in events:
                    if event == "message" and isinstance(data, dict):
                        items.append(data)
                    elif event == "error":  # memory's store failed after its 200
                        raise ServiceUnavailableError(f"memory: GET /resource/{path}: {data}", "memory")
                    elif event == "end":
                        break
        return items

    async def get_context(self, args: dict[str, Any]) -> dict[str, Any]:
        check_fields(args, "", ("user_id",), ("query", "limit", "recency_weight"))
        user_id = check_owner(args["user_id"])
        query = check_optional_query(args.get("query"))
        limit = check_count(args.get("limit", DEFAULT_LIMIT))
        weight = check_weight(args.get("recency_weight", DEFAULT_RECENCY_WEIGHT))
        history = await self.items(f"history/{user_id}")
        terms = query_terms(query) if query else []
        ranked = await _off_loop(rank_items, history, terms, self.clock(), weight, limit)
        return {"user_id": user_id, "query": query, "terms": terms, "recency_weight": weight,
                "items": ranked}

    async def search_history(self, args: dict[str, Any]) -> dict[str, Any]:
        check_fields(args, "", ("user_id", "query"), ("limit", "include_conversations"))
        user_id = check_owner(args["user_id"])
        query = check_query(args["query"])
        limit = check_count(args.get("limit", DEFAULT_LIMIT))
        include = check_flag(args.get("include_conversations", True), "include_conversations")
        terms = query_terms(query)
        matches = await _off_loop(search_items, await self.items(f"history/{user_id}"), terms, limit)
        conversations = await self._conversations(matches) if include else []
        return {"user_id": user_id, "query": query, "terms": terms, "items": matches,
                "conversations": conversations}

    async def _conversations(self, matches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The whole conversations (every participant) of the matches, best match first: the
        user wrote in each, so they saw it all."""
        matched: dict[str, list[str]] = {}
        for entry in matches:
            cid = entry["item"].get("conversation_id")
            if cid is not None:
                matched.setdefault(cid, []).append(entry["item"]["message_id"])
        gate = asyncio.Semaphore(CONVERSATION_FETCHES)

        async def fetch(cid: str) -> list[dict[str, Any]]:
            async with gate:
                return await self.items(f"conversation/{cid}")

        lists = await asyncio.gather(*(fetch(cid) for cid in matched))
        return [{"conversation_id": cid, "matched": ids, "items": items}
                for (cid, ids), items in zip(matched.items(), lists, strict=True)]

    async def analyze_conversation(self, args: dict[str, Any]) -> dict[str, Any]:
        check_fields(args, "", ("user_id", "conversation_id"), ("analysis_type",))
        user_id = check_owner(args["user_id"])
        cid = check_id(args["conversation_id"], "conversation_id")
        kind = check_analysis_type(args.get("analysis_type", "summary"))
        items = await self.items(f"conversation/{cid}")
        # the user's own index settles it when their messages are older than the newest MAX_ITEMS
        if not takes_part(items, user_id) and not await self.items(f"conversation/{cid}/user/{user_id}"):
            # the same answer for "no such conversation" and "not yours": nothing leaks
            raise ConversationNotFound(f"no conversation {cid} for user {user_id}",
                                       {"conversation_id": cid, "user_id": user_id})
        analysis = await _off_loop(ANALYSES[kind], items)
        return {"conversation_id": cid, "analysis_type": kind, **analysis}

    async def read_resource(self, path: str, params: Mapping[str, str]) -> Any:
        match path.split("/"):
            case ["context", user]:
                _only(params, ("query", "limit", "recency_weight"))
                args: dict[str, Any] = {"user_id": user, "query": params.get("query")}
                if "limit" in params:
                    args["limit"] = check_limit(params["limit"])
                if "recency_weight" in params:
                    args["recency_weight"] = _weight_text(params["recency_weight"])
                return await self.get_context(args)
            case ["conversation_analysis", cid, kind]:
                _only(params, ("user_id",))
                if "user_id" not in params:
                    raise bad_argument("user_id", "is required (the query parameter ?user_id=)")
                return await self.analyze_conversation(
                    {"user_id": params["user_id"], "conversation_id": cid, "analysis_type": kind})
        raise UnknownResource(
            f"no resource {path!r}: use context/{{user_id}} or "
            "conversation_analysis/{conversation_id}/{analysis_type}", {"path": path})

    async def memory_failure(self) -> str | None:
        """None when memory's /health answers healthy in time, else what is wrong."""
        try:
            body = await asyncio.wait_for(self.memory.health(), HEALTH_TIMEOUT_S)
        except TimeoutError:
            return f"no answer from /health within {HEALTH_TIMEOUT_S} s"
        except ServiceError as exc:
            return str(exc)
        if body.get("status") == "healthy":
            return None
        details = body.get("details")
        return f"{body.get('status')}: {details}" if details else str(body.get("status"))


def _only(params: Mapping[str, str], known: tuple[str, ...]) -> None:
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise bad_argument(unknown[0], "is not a parameter of this resource")


# the catalogue ------------------------------------------------------------------------------
_ID_SCHEMA = {"type": "string", "pattern": f"^{ID_PATTERN.pattern}$"}
_LIMIT_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_ITEMS, "default": DEFAULT_LIMIT}


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required,
            "additionalProperties": False}


def build_catalogue(cognition: Cognition) -> Catalogue:
    """What the service offers, bound to `cognition`: the seed endpoints dispatch through it."""
    tools = [
        ToolSpec("get_context", "The user's messages ranked by relevance to `query` (BM25) and "
                 "recency: score = (1 - recency_weight) * relevance + recency_weight * recency.",
                 _schema({"user_id": {**_ID_SCHEMA, "description": "Whose history."},
                          "query": {"type": ["string", "null"],
                                    "description": "Optional; without it, newest first."},
                          "limit": _LIMIT_SCHEMA,
                          "recency_weight": {"type": "number", "minimum": 0, "maximum": 1,
                                             "default": DEFAULT_RECENCY_WEIGHT}}, ["user_id"]),
                 cognition.get_context),
        ToolSpec("search_history", "The user's messages that share words with `query`, best "
                 "first; with include_conversations, the whole conversations they belong to.",
                 _schema({"user_id": _ID_SCHEMA, "query": {"type": "string", "minLength": 1},
                          "limit": _LIMIT_SCHEMA,
                          "include_conversations": {"type": "boolean", "default": True}},
                         ["user_id", "query"]),
                 cognition.search_history),
        ToolSpec("analyze_conversation", "A summary, the topics or the sentiment of a "
                 "conversation the user wrote in.",
                 _schema({"user_id": _ID_SCHEMA, "conversation_id": _ID_SCHEMA,
                          "analysis_type": {"enum": list(ANALYSIS_TYPES), "default": "summary"}},
                         ["user_id", "conversation_id"]),
                 cognition.analyze_conversation),
    ]
    resources = (
        ResourceSpec("context/{user_id}", "context",
                     "get_context with ?query=, ?limit= and ?recency_weight= as parameters."),
        ResourceSpec("conversation_analysis/{conversation_id}/{analysis_type}",
                     "conversation_analysis",
                     "analyze_conversation; ?user_id= (required) names who asks."),
    )
    return Catalogue(SERVICE, catalogue_of(tools), resources, cognition.read_resource,
                     instructions="Context, search and analysis over users' stored messages.")


# OpenAPI models -----------------------------------------------------------------------------
class ToolResult(BaseModel):
    result: Any = Field(description="What the tool returns: a dict with `items` (ranked "
                                    "entries) or a conversation analysis.")


class ClientState(BaseModel):
    breaker: str = Field(description="closed | open | half_open")


class CognitionHealth(BaseModel):
    status: str = Field(description="healthy | degraded")
    details: dict[str, str] | None = Field(None, description="{'memory': what is wrong}, when degraded.")
    clients: dict[str, ClientState] = Field(description="{'memory': its client's breaker state}.")


RESOURCE_200 = {"description": "The resource's JSON value.", "content": {
    "application/json": {"schema": {"type": "object"}},
    EVENT_STREAM: {"schema": {"type": "string"}, "description": (
        "With Accept: text/event-stream: a `message` event per ranked entry (context) or one "
        "with the analysis, then `end` (data: {\"count\": N}).")}}}


TOOL_EXAMPLES = {
    "get_context": {"user_id": "alice", "query": "delivery of my order", "limit": 5,
                    "recency_weight": 0.3},
    "search_history": {"user_id": "alice", "query": "refund", "include_conversations": True},
    "analyze_conversation": {"user_id": "alice", "conversation_id": "order-42",
                             "analysis_type": "sentiment"},
}


def _tool_call_body(tools: Mapping[str, ToolSpec]) -> dict[str, Any]:
    return tool_call_body({name: {"summary": spec.description, "value": {"arguments": TOOL_EXAMPLES[name]}}
                           for name, spec in tools.items()})


async def _resource_events(value: Any) -> AsyncIterator[ServerSentEvent]:
    """A value with an `items` list: one event per item; any other value: one event."""
    entries = value["items"] if isinstance(value, dict) and isinstance(value.get("items"), list) else [value]
    for entry in entries:
        yield sse_json("message", entry)
    yield sse_json("end", {"count": len(entries)})


# the app ------------------------------------------------------------------------------------
def create_app(mesh: Mesh | None = None, *, memory_url: str | None = None,
               service_token: str | None = None, clock: Callable[[], float] = time.time,
               max_body_bytes: int | None = None, keepalive_s: float = 15.0,
               client_options: Mapping[str, Any] | None = None, mcp_hosts: Sequence[str] = (),
               cors_origins: Sequence[str] | None = None) -> FastAPI:
    """The Cognition service, reading memory at `memory_url`, or where mesh.yaml and the
    environment place it. It lets in `service_token` (default: the mesh's) and the user
    tokens made from it, and calls memory with it. `max_body_bytes` and `cors_origins`
    default to mesh.yaml's services section. `app.state.catalogue` is its Catalogue."""
    options: dict[str, Any] = {}
    origins: Sequence[str] = ()
    if mesh is not None:
        services = mesh.config.services
        options = {"failure_threshold": services.breaker_failures, "reset_timeout": services.breaker_reset,
                   "verify": tls_verify(mesh)}
        memory_url = memory_url or service_url(mesh, "memory")
        service_token = service_token or mesh.credentials.service_token
        max_body_bytes = max_body_bytes or services.max_body_bytes
        origins = services.cors_origins
    if memory_url is None:
        raise ConfigError("create_app needs a mesh or a memory_url")
    origins = origins if cors_origins is None else cors_origins
    token = check_service_token(service_token or "", SERVICE)
    client = AsyncServiceClient(memory_url, service="memory", token=token,
                                **{**options, **(client_options or {})})
    cognition = Cognition(client, clock)
    tools = build_catalogue(cognition)

    app = service_app(tools, title="agentmesh cognition",
                      description="Context, search and analysis over users' messages, read from memory.",
                      close=client.close, max_body_bytes=max_body_bytes or DEFAULT_MAX_BODY,
                      tool_body=_tool_call_body(tools.tools), tool_result=ToolResult,
                      tool_errors=(400, 401, 403, 404, 413, 415, 502, 503),
                      service_token=token, cors_origins=origins)
    app.state.memory_url = memory_url

    @app.get("/resource/{path:path}", summary="Read a resource (JSON or Server-Sent Events)",
             description="Resources: " + ", ".join(r.template for r in tools.resources) + ".",
             responses={200: RESOURCE_200, **error_responses(400, 401, 403, 404, 502, 503)})
    async def read_resource(
        path: str, request: Request,
        query: Annotated[str | None, Query(description="context: the search text.")] = None,
        limit: Annotated[str | None, Query(description="context: 1 to 1000 entries.")] = None,
        recency_weight: Annotated[str | None, Query(description="context: 0 to 1.")] = None,
        user_id: Annotated[str | None, Query(description="conversation_analysis: who asks.")] = None,
    ) -> Response:
        value = await tools.read_resource(path, dict(request.query_params))
        if not wants_event_stream(request):
            return OrjsonResponse(value)
        return event_stream(_resource_events(value), keepalive_s)

    @app.get("/health", summary="Is memory answering?",
             responses={200: {"model": CognitionHealth, "description": "Healthy."},
                        503: {"model": CognitionHealth, "description": "Memory is not healthy."}})
    async def health() -> Response:
        failure = await cognition.memory_failure()
        clients = {"memory": {"breaker": client.breaker_state}}
        if failure is None:
            return OrjsonResponse({"status": "healthy", "clients": clients})
        return OrjsonResponse({"status": "degraded", "details": {"memory": failure}, "clients": clients},
                              status_code=503)

    install_mcp(app, tools, hosts=mcp_hosts, origins=origins,
                max_body_bytes=max_body_bytes or DEFAULT_MAX_BODY)
    without_422(app)
    return app


# the process --------------------------------------------------------------------------------
def run(mesh: Mesh, host: str, port: int) -> None:
    """Serve the Cognition service until SIGTERM or SIGINT (the `agentmesh cognition` process)."""
    settings = mesh.config.services
    app = create_app(mesh, mcp_hosts=served_hosts(host))
    where = (f"{http_url(host, port, settings.scheme)} "
             f"(mesh {mesh.config.mesh}, memory {app.state.memory_url})")

    async def on_started(stopping: Callable[[], bool]) -> None:
        log.info("serving on %s", where)

    serve(app, host, port, on_started, certfile=settings.tls_cert, keyfile=settings.tls_key)
