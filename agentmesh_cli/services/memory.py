"""The Memory service (seed protocol): users' messages kept in Redis, served over HTTP.

    POST /tool/{name}        {"arguments": {...}} -> {"result": ...}
                             store_input, get_message, update_message, delete_message
    GET  /resource/{path}    history/{user}, history/{user}/limit/{n}, conversation/{cid},
                             conversation/{cid}/user/{user}: items newest first, as SSE
                             (Accept: text/event-stream; ?follow=true keeps streaming
                             changes) or as JSON {"items": [...]}
    GET  /health             {"status": "healthy"} or 503 with what failed
    /mcp                     the same tools and resources (memory://...) over the Model
                             Context Protocol (services/mcp.py)

Both protocols dispatch through the service's Catalogue (`app.state.catalogue`).

Every request but /health needs a bearer token (services.auth): the mesh's service token
acts for any user, a user token only for its user (403 otherwise; `conversation/{id}`, which
holds every participant's messages, is the mesh's alone). A user reads, changes and deletes
only their own messages; another user's message answers 404 like a missing one, so its
existence does not leak. Lists hold at most MAX_ITEMS.

Storage (every key from constants.Keys): one JSON string per message, and sorted sets
scored by timestamp per user, per conversation and per (conversation, user). Members are
"<seq>:<message id>" with a zero-padded insertion counter, so equal timestamps list the
later insertion first. Storing is one Lua script (STORE_SCRIPT: the counter, the writes
and the event in one round trip); an update or delete is one MULTI under WATCH. Each
change publishes {event, item} on the events channel. The process subscribes to it once
(services/feed.py) and fans the changes out to its follow streams, each through a queue
of FOLLOW_BUFFER changes: a stream that falls further behind ends with an `error` event
(`fell_behind`), and so do all streams (`store_unavailable`) when the subscription breaks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import anyio
from fastapi import FastAPI, Query, Request, Response
from pydantic import BaseModel, Field
from sse_starlette import ServerSentEvent

from agentmesh_cli.errors import FellBehind, StoreError
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.services.feed import Follower
from agentmesh_cli.services.http import (
    EVENT_STREAM,
    Health,
    OrjsonResponse,
    error_responses,
    event_stream,
    serve,
    sse_comment,
    sse_json,
    wants_event_stream,
)
from agentmesh_cli.services.mcp import install_mcp, served_hosts
from agentmesh_cli.services.memory_args import (
    MAX_ITEMS,
    check_content,
    check_fields,
    check_id,
    check_metadata,
    check_owner,
    check_timestamp,
    parse_resource,
)
from agentmesh_cli.services.memory_store import FOLLOW_BUFFER, Change, MemoryStore
from agentmesh_cli.services.protocol import (
    ID_PATTERN,
    Catalogue,
    ResourceSpec,
    ToolSpec,
    catalogue_of,
)
from agentmesh_cli.services.seed import (
    bad_argument,
    http_url,
    service_app,
    tool_call_body,
    without_422,
)

log = logging.getLogger(__name__)

PROGRAM = "memory"  # the supervisord program name; readiness goes to Keys.ready(PROGRAM)
HEALTH_TIMEOUT_S = 0.5
EVENT_POLL_S = 0.5  # a follow stream wakes this often when nothing happens (to see shutdown)
READY_RETRY_S = 1.0


# tools --------------------------------------------------------------------------------
Tool = Callable[[MemoryStore, dict[str, Any]], Awaitable[Any]]


async def store_input(store: MemoryStore, args: dict[str, Any]) -> dict[str, Any]:
    check_fields(args, "", ("user_id", "input_data"))
    user_id = check_owner(args["user_id"])
    data = check_fields(args["input_data"], "input_data", ("content",),
                        ("conversation_id", "timestamp", "metadata", "message_id"))
    conversation = data.get("conversation_id")
    chosen = data.get("message_id")
    item = {
        "message_id": str(uuid.uuid4()) if chosen is None else check_id(chosen, "input_data.message_id"),
        "user_id": user_id,
        "conversation_id": None if conversation is None
        else check_id(conversation, "input_data.conversation_id"),
        "timestamp": check_timestamp(data.get("timestamp"), "input_data.timestamp"),
        "content": check_content(data["content"], "input_data.content"),
        "metadata": check_metadata(data.get("metadata"), "input_data.metadata"),
    }
    return await store.add(item)


def _owner_and_message(args: dict[str, Any], *more: str) -> tuple[str, str]:
    check_fields(args, "", ("user_id", "message_id", *more))
    return check_owner(args["user_id"]), check_id(args["message_id"], "message_id")


async def get_message(store: MemoryStore, args: dict[str, Any]) -> dict[str, Any]:
    user_id, message_id = _owner_and_message(args)
    return await store.get(message_id, user_id)


async def update_message(store: MemoryStore, args: dict[str, Any]) -> dict[str, Any]:
    user_id, message_id = _owner_and_message(args, "updates")
    updates = check_fields(args["updates"], "updates", (), ("content", "metadata"))
    if not updates:
        raise bad_argument("updates", "must change content or metadata (or both)")
    changes: dict[str, Any] = {}
    if "content" in updates:
        changes["content"] = check_content(updates["content"], "updates.content")
    if "metadata" in updates:
        changes["metadata"] = check_metadata(updates["metadata"], "updates.metadata")
    return await store.update(message_id, user_id, changes)


async def delete_message(store: MemoryStore, args: dict[str, Any]) -> dict[str, Any]:
    user_id, message_id = _owner_and_message(args)
    await store.delete(message_id, user_id)
    return {"deleted": True, "message_id": message_id}


TOOLS: dict[str, Tool] = {
    "store_input": store_input,
    "get_message": get_message,
    "update_message": update_message,
    "delete_message": delete_message,
}


# the catalogue ------------------------------------------------------------------------
# JSON Schemas of the tools' arguments: what the check_* functions above accept, no more
ID_SCHEMA = {"type": "string", "pattern": f"^{ID_PATTERN.pattern}$",
             "description": "1 to 128 characters of A-Z a-z 0-9 _ . : @ -"}
CONTENT_SCHEMA = {"type": "string", "minLength": 1, "description": "The message text."}
METADATA_SCHEMA = {"type": ["object", "null"], "description": "Free-form JSON object (null: {})."}


def _object(properties: dict[str, Any], required: tuple[str, ...], **more: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False, **more}


def _id(description: str) -> dict[str, Any]:
    return {**ID_SCHEMA, "description": f"{description} ({ID_SCHEMA['description']})."}


OWNER_AND_MESSAGE = {"user_id": _id("The owner of the message"),
                     "message_id": _id("The message_id that store_input returned")}
TOOL_SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "store_input": (
        "Store a user's message; returns the item with its new message_id (or, for a "
        "message_id given again, the item stored the first time).",
        _object({
            "user_id": _id("The user the message belongs to"),
            "input_data": _object({
                "content": CONTENT_SCHEMA,
                "conversation_id": {**_id("The conversation it is part of"),
                                    "type": ["string", "null"]},
                "timestamp": {"type": ["number", "string", "null"], "description": (
                    "Epoch seconds, or an ISO-8601 date-time string (no zone means UTC); "
                    "default: now.")},
                "metadata": METADATA_SCHEMA,
                "message_id": {**_id("An id of the client's choosing (one derived from what it "
                                     "handles): storing it again stores nothing and returns the "
                                     "stored item, so a retry after a crash is not kept twice; "
                                     "default: a new one"), "type": ["string", "null"]},
            }, ("content",)),
        }, ("user_id", "input_data"))),
    "get_message": (
        "One of the user's messages by id (another user's message is not found).",
        _object(OWNER_AND_MESSAGE, ("user_id", "message_id"))),
    "update_message": (
        "Change the content and/or metadata of one of the user's messages; returns the item.",
        _object({**OWNER_AND_MESSAGE, "updates": _object(
            {"content": CONTENT_SCHEMA, "metadata": METADATA_SCHEMA}, (), minProperties=1)},
            ("user_id", "message_id", "updates"))),
    "delete_message": (
        "Delete one of the user's messages; returns {deleted: true, message_id}.",
        _object(OWNER_AND_MESSAGE, ("user_id", "message_id"))),
}
RESOURCES = (
    ResourceSpec("history/{user_id}", "history", "A user's messages, newest first."),
    ResourceSpec("history/{user_id}/limit/{n}", "history_limited",
                 f"A user's n newest messages (n from 1 to {MAX_ITEMS}), newest first."),
    ResourceSpec("conversation/{conversation_id}", "conversation",
                 "A conversation's messages from every user, newest first."),
    ResourceSpec("conversation/{conversation_id}/user/{user_id}", "conversation_user",
                 "A user's messages in one conversation, newest first."),
)


def build_catalogue(store: MemoryStore) -> Catalogue:
    """What the service offers, bound to `store`: the seed endpoints and /mcp use it."""
    tools = [ToolSpec(name, description, schema, partial(TOOLS[name], store))
             for name, (description, schema) in TOOL_SPECS.items()]

    async def read_resource(path: str, params: Mapping[str, str]) -> dict[str, Any]:
        return {"items": await store.items(parse_resource(path, store.keys))}

    return Catalogue(PROGRAM, catalogue_of(tools), RESOURCES, read_resource,
                     instructions="Users' messages: tools to store and change them, "
                                  "resources (memory://...) to list them newest first.")


# streams ------------------------------------------------------------------------------
def _stream_error(code: str, exc: Exception, details: dict[str, Any]) -> ServerSentEvent:
    return sse_json("error", {"error": {"code": code, "message": str(exc), "details": details}})


async def _event_stream(items: list[dict[str, Any]], follower: Follower[Change] | None,
                        shutdown: anyio.Event) -> AsyncIterator[ServerSentEvent]:
    """The backlog, then `end`; or, following, the backlog and then every matching change
    until the server shuts down (or the stream falls behind, or Redis breaks: then an
    `error` event ends it)."""
    try:
        for item in items:
            yield sse_json("message", item)
        if follower is None:
            yield sse_json("end", {"count": len(items)})
            return
        yield sse_comment("following")  # the backlog is out; what comes now is live
        listed = {item["message_id"] for item in items}
        while not shutdown.is_set():
            change = await follower.next(EVENT_POLL_S)
            if change is None:
                continue
            # stored after we registered but before the backlog read: already sent
            if change.kind == "stored" and change.item.get("message_id") in listed:
                listed.discard(change.item["message_id"])
                continue
            yield ServerSentEvent(data=change.data, event=change.kind)
    except StoreError as exc:
        # the 200 is out; say what broke in the stream's own terms, then end it
        yield _stream_error("store_unavailable", exc, {"redis": str(exc.__cause__ or exc)})
    except FellBehind as exc:
        yield _stream_error("fell_behind", exc, {"buffer": exc.limit})
    finally:
        if follower is not None:
            follower.close()


async def _leave(follower: Follower[Change]) -> None:
    follower.close()  # also when the stream was never iterated


# OpenAPI models -----------------------------------------------------------------------
class ToolResult(BaseModel):
    result: Any = Field(description="What the tool returns (an item, or {deleted, message_id}).")


class Item(BaseModel):
    message_id: str
    user_id: str
    conversation_id: str | None
    timestamp: float = Field(description="Epoch seconds.")
    content: str
    metadata: dict[str, Any]


class ItemList(BaseModel):
    items: list[Item]


TOOL_CALL_BODY = tool_call_body()
RESOURCE_200 = {"model": ItemList, "description": "The items, newest first.", "content": {
    EVENT_STREAM: {"schema": {"type": "string"}, "description": (
        "With Accept: text/event-stream: one `message` event per item (data: item JSON), "
        "then `end` (data: {\"count\": N}); with ?follow=true no `end`, but `stored`, "
        "`updated` and `deleted` events as changes happen, and a comment as keep-alive.")}}}


# the app ------------------------------------------------------------------------------
def create_app(redis_url: str, mesh: str, *, service_token: str, max_body_bytes: int = 1_048_576,
               keepalive_s: float = 15.0, follow_buffer: int = FOLLOW_BUFFER,
               mcp_hosts: Sequence[str] = (), cors_origins: Sequence[str] = ()) -> FastAPI:
    """The Memory service for mesh `mesh` on Redis `redis_url` (nothing connects until the
    first request), letting in `service_token` and the user tokens made from it.
    `app.state.store` is its MemoryStore, `app.state.catalogue` what it offers; /mcp
    accepts loopback Hosts and `mcp_hosts`, loopback Origins and `cors_origins` (which
    also switch CORS on); a follow stream more than `follow_buffer` changes behind is ended."""
    store = MemoryStore(redis_url, mesh, follow_buffer)
    catalogue = build_catalogue(store)
    app = service_app(catalogue, title="agentmesh memory",
                      description="Users' messages: tools to store and change them, resources to list them.",
                      close=store.close, max_body_bytes=max_body_bytes, tool_body=TOOL_CALL_BODY,
                      tool_result=ToolResult, tool_errors=(400, 401, 403, 404, 409, 413, 415, 503),
                      service_token=service_token, cors_origins=cors_origins)
    app.state.store = store

    @app.get("/resource/{path:path}", summary="List messages (JSON or Server-Sent Events)",
             responses={200: RESOURCE_200, **error_responses(400, 401, 403, 404, 503)})
    async def read_resource(
        path: str, request: Request,
        follow: Annotated[bool, Query(description="SSE only: keep streaming changes.")] = False,
    ) -> Response:
        if not wants_event_stream(request):
            return OrjsonResponse(await catalogue.read_resource(path, request.query_params))
        resource = parse_resource(path, store.keys)
        # register with the feed before reading the backlog, so nothing falls between
        follower = await store.follow(resource) if follow else None
        try:
            items = await store.items(resource)
        except BaseException:
            if follower is not None:
                follower.close()
            raise
        shutdown = anyio.Event()
        return event_stream(_event_stream(items, follower, shutdown), keepalive_s, shutdown=shutdown,
                            on_close=partial(_leave, follower) if follower is not None else None)

    @app.get("/health", summary="Is Redis answering?",
             responses={200: {"model": Health, "description": "Healthy."},
                        503: {"model": Health, "description": "Redis does not answer."}})
    async def health() -> Response:
        failure = await store.ping(HEALTH_TIMEOUT_S)
        if failure is None:
            return OrjsonResponse({"status": "healthy"})
        # open to anyone: what failed, never where Redis is or its password
        return OrjsonResponse({"status": "unhealthy", "details": {"redis": store.hidden(failure)}},
                              status_code=503)

    without_422(app)
    install_mcp(app, catalogue, hosts=mcp_hosts, origins=cors_origins, max_body_bytes=max_body_bytes)
    return app


# the process --------------------------------------------------------------------------
def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


async def _announce(store: MemoryStore, where: str, stopping: Callable[[], bool]) -> None:
    """Once serving: one INFO line, then the readiness record (retried while Redis is
    down, so `up`'s gate passes as soon as it answers)."""
    log.info("serving on %s", where)
    failures = 0
    # a retry of the write, with no deadline (the service serves meanwhile): not a wait
    while not stopping():
        try:
            await store.mark_ready(PROGRAM, os.getpid())
        except StoreError as exc:
            if failures == 0:
                log.warning("not ready yet, retrying every %.0f s: %s", READY_RETRY_S, exc)
            failures += 1
            await asyncio.sleep(READY_RETRY_S)
            continue
        if failures:
            log.info("ready: Redis answers again")
        return


def run(mesh: Mesh, host: str, port: int) -> None:
    """Serve the Memory service until SIGTERM or SIGINT (the `agentmesh memory` process):
    the mesh's Redis, service token and services settings (body limit, CORS, TLS)."""
    settings = mesh.config.services
    app = create_app(mesh.redis_url, mesh.config.mesh, service_token=mesh.credentials.service_token,
                     max_body_bytes=settings.max_body_bytes, mcp_hosts=served_hosts(host),
                     cors_origins=settings.cors_origins)
    where = (f"{http_url(host, port, settings.scheme)} "
             f"(mesh {mesh.config.mesh}, redis {_redacted(mesh.redis_url)})")

    async def on_started(stopping: Callable[[], bool]) -> None:
        await _announce(app.state.store, where, stopping)

    serve(app, host, port, on_started, certfile=settings.tls_cert, keyfile=settings.tls_key)
