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
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import orjson
import redis
from fastapi import FastAPI, Query, Request, Response
from pydantic import BaseModel, Field
from redis.asyncio.client import Pipeline
from sse_starlette import ServerSentEvent

from agentmesh_cli.constants import Keys
from agentmesh_cli.envelope import nests_deeper
from agentmesh_cli.errors import Conflict, FellBehind, MessageNotFound, StoreError, UnknownResource
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.services.aredis import AsyncRedis
from agentmesh_cli.services.auth import require_mesh, require_user
from agentmesh_cli.services.feed import ChannelFeed, Follower
from agentmesh_cli.services.http import (
    EVENT_STREAM,
    Health,
    OrjsonResponse,
    error_responses,
    event_stream,
    finite_number,
    serve,
    sse_comment,
    sse_json,
    wants_event_stream,
)
from agentmesh_cli.services.mcp import install_mcp, served_hosts
from agentmesh_cli.services.protocol import (
    ID_PATTERN,
    ID_RULE,
    Catalogue,
    ResourceSpec,
    ToolSpec,
    catalogue_of,
)
from agentmesh_cli.services.seed import (
    bad_argument,
    http_url,
    json_type,
    service_app,
    tool_call_body,
    without_422,
)
from agentmesh_cli.store import redis_errors

log = logging.getLogger(__name__)

PROGRAM = "memory"  # the supervisord program name; readiness goes to Keys.ready(PROGRAM)
MAX_METADATA_DEPTH = 32  # JSON nesting of metadata (the codec refuses 255; nobody needs 32)
MAX_ITEMS = 1000  # the largest list a resource answers (and the highest /limit/{n})
HEALTH_TIMEOUT_S = 0.5
REDIS_CONNECTIONS = 64  # the pool's bound: a request beyond waits (up to the command timeout)
EVENT_POLL_S = 0.5  # a follow stream wakes this often when nothing happens (to see shutdown)
FOLLOW_BUFFER = 1000  # changes queued for one follow stream before it is ended as too slow
READY_RETRY_S = 1.0
WATCH_ATTEMPTS = 5  # optimistic retries of an update or delete racing another change
SEQ_WIDTH = 16  # digits of the insertion counter in index members


# argument checks ----------------------------------------------------------------------
def _path(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def check_fields(value: Any, where: str, required: tuple[str, ...],
                 optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """An object with all of `required`, some of `optional` and nothing else.
    `where` is its argument path ("" for the top level)."""
    if not isinstance(value, dict):
        raise bad_argument(where or "arguments", f"must be an object, not {json_type(value)}")
    unknown = sorted(set(value) - set(required) - set(optional))
    if unknown:
        raise bad_argument(_path(where, unknown[0]), "is not known here")
    for name in required:
        if name not in value:
            raise bad_argument(_path(where, name), "is required")
    return value


def check_id(value: Any, argument: str) -> str:
    """A user, conversation or message id: safe inside a Redis key, no path tricks."""
    if not isinstance(value, str):
        raise bad_argument(argument, f"must be a string, not {json_type(value)}")
    if not ID_PATTERN.fullmatch(value):
        raise bad_argument(argument, f"must be {ID_RULE}")
    if not value.strip("."):
        # "." and ".." are path steps wherever an id goes into a URL (cognition reads
        # memory's history/{user_id}): a client would normalise them away
        raise bad_argument(argument, "must not be only dots")
    return value


def check_content(value: Any, argument: str) -> str:
    if not isinstance(value, str):
        raise bad_argument(argument, f"must be a string, not {json_type(value)}")
    if not value:
        raise bad_argument(argument, "must not be empty")
    return value


def check_metadata(value: Any, argument: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_argument(argument, f"must be an object, not {json_type(value)}")
    if nests_deeper(value, MAX_METADATA_DEPTH):
        raise bad_argument(argument, f"nests deeper than {MAX_METADATA_DEPTH} levels")
    return value


def check_timestamp(value: Any, argument: str) -> float:
    """Epoch seconds, from a number or an ISO-8601 string (no zone means UTC); default now."""
    if value is None:
        return time.time()
    if finite_number(value):
        return float(value)
    if not isinstance(value, str):
        raise bad_argument(argument, f"must be epoch seconds or an ISO-8601 string, not {json_type(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise bad_argument(argument, f"is not an ISO-8601 date-time: {value!r}") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def check_limit(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_ITEMS:
        raise bad_argument("limit", f"must be an integer from 1 to {MAX_ITEMS}, not {text!r}")
    return int(text)


# resources ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Resource:
    """One list: the index it reads, how many, and which changes a follower sees."""

    key: str
    limit: int
    user_id: str | None = None
    conversation_id: str | None = None

    def matches(self, item: dict[str, Any]) -> bool:
        return ((self.user_id is None or item.get("user_id") == self.user_id)
                and (self.conversation_id is None or item.get("conversation_id") == self.conversation_id))


def check_owner(value: Any, argument: str = "user_id") -> str:
    """A user id (check_id) that the caller may act for (services.auth.require_user: 403
    when a user token names someone else)."""
    return require_user(check_id(value, argument), argument)


def parse_resource(path: str, keys: Keys) -> Resource:
    """The list `path` names, every part checked before it goes into a key. A user token
    reads only its own user's lists; `conversation/{id}` holds every participant's messages,
    so it is the mesh's alone (403 for a user token, who reads their own part with
    `conversation/{id}/user/{user_id}`)."""
    match path.split("/"):
        case ["history", user]:
            uid = check_owner(user)
            return Resource(keys.memory_user(uid), MAX_ITEMS, user_id=uid)
        case ["history", user, "limit", n]:
            uid = check_owner(user)
            return Resource(keys.memory_user(uid), check_limit(n), user_id=uid)
        case ["conversation", conversation]:
            cid = check_id(conversation, "conversation_id")
            require_mesh(f"conversation/{cid}")
            return Resource(keys.memory_conversation(cid), MAX_ITEMS, conversation_id=cid)
        case ["conversation", conversation, "user", user]:
            cid, uid = check_id(conversation, "conversation_id"), check_owner(user)
            return Resource(keys.memory_conversation_user(cid, uid), MAX_ITEMS, uid, cid)
    raise UnknownResource(
        f"no resource {path!r}: use history/{{user_id}}, history/{{user_id}}/limit/{{n}}, "
        "conversation/{conversation_id} or conversation/{conversation_id}/user/{user_id}",
        {"path": path})


# Redis --------------------------------------------------------------------------------
def _member(seq: int, message_id: str) -> str:
    return f"{seq:0{SEQ_WIDTH}d}:{message_id}"


# Storing a message in one round trip (atomic like a MULTI, and the counter is taken inside
# it, so insertion order is also the order of the writes and of the `stored` events).
# KEYS: the counter, the message, its indexes. ARGV: message id, timestamp (the score),
# the item's JSON, the events channel, the `stored` event. The record is the item's JSON
# with "seq" appended: the bytes orjson gives for {**item, "seq": seq}.
STORE_SCRIPT = f"""
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
local seq = redis.call('INCR', KEYS[1])
local member = string.format('%0{SEQ_WIDTH}d:%s', seq, ARGV[1])
redis.call('SET', KEYS[2], string.sub(ARGV[3], 1, -2) .. string.format(',"seq":%d}}', seq))
for i = 3, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[2], member)
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return seq
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _public(record: dict[str, Any]) -> dict[str, Any]:
    """The item as the protocol shows it (the stored record also holds its seq)."""
    return {name: value for name, value in record.items() if name != "seq"}


def _event(kind: str, item: dict[str, Any]) -> bytes:
    return orjson.dumps({"event": kind, "item": item})


@dataclass(frozen=True)
class Change:
    """One message of the events channel, decoded once for every follow stream."""

    kind: str
    item: dict[str, Any]
    data: str  # the item as compact JSON: the SSE data of every stream that gets it


def decode_change(raw: bytes) -> Change | None:
    try:
        data = orjson.loads(raw)
        kind, item = data["event"], data["item"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        kind = item = None
    if not isinstance(kind, str) or not isinstance(item, dict):
        log.warning("ignored a foreign message on the events channel")
        return None
    return Change(kind, item, orjson.dumps(item).decode())


class MemoryStore(AsyncRedis):
    """The service's Redis: messages, their three indexes and the change channel."""

    def __init__(self, redis_url: str, mesh: str, follow_buffer: int = FOLLOW_BUFFER) -> None:
        super().__init__(redis_url, mesh, REDIS_CONNECTIONS)
        self._store_script = self.redis.register_script(STORE_SCRIPT)
        # every follow stream of the process reads this one subscription
        self.feed = ChannelFeed(self.redis, self.keys.memory_events, decode_change, follow_buffer)

    def _indexes(self, item: dict[str, Any]) -> list[str]:
        keys = [self.keys.memory_user(item["user_id"])]
        if item["conversation_id"] is not None:
            keys.append(self.keys.memory_conversation(item["conversation_id"]))
            keys.append(self.keys.memory_conversation_user(item["conversation_id"], item["user_id"]))
        return keys

    async def add(self, item: dict[str, Any]) -> dict[str, Any]:
        """One round trip: STORE_SCRIPT numbers, writes, indexes and publishes the item; the
        item stored. A message id already stored (the client chose it: a retry) stores
        nothing: the stored item is returned when it is the same user's, else a Conflict."""
        encoded = orjson.dumps(item)
        keys = [self.keys.memory_seq, self.keys.memory_message(item["message_id"]),
                *self._indexes(item)]
        args = [item["message_id"], repr(item["timestamp"]), encoded, self.keys.memory_events,
                b'{"event":"stored","item":' + encoded + b"}"]  # what _event("stored", item) gives
        with redis_errors("store"):
            seq = await self._store_script(keys=keys, args=args)
        if int(seq) != 0:
            return item
        try:
            return await self.get(item["message_id"], item["user_id"])
        except MessageNotFound:
            raise Conflict(f"message_id {item['message_id']} is taken",
                           {"argument": "input_data.message_id"}) from None

    @staticmethod
    def _owned(raw: bytes | str | None, message_id: str, user_id: str) -> dict[str, Any]:
        record = orjson.loads(raw) if raw is not None else None
        if record is None or record.get("user_id") != user_id:
            # the same answer for "missing" and "someone else's": nothing leaks
            raise MessageNotFound(f"no message {message_id} for user {user_id}",
                                  {"message_id": message_id, "user_id": user_id})
        return dict(record)

    async def get(self, message_id: str, user_id: str) -> dict[str, Any]:
        with redis_errors("read message"):
            raw = await self.redis.get(self.keys.memory_message(message_id))
        return _public(self._owned(raw, message_id, user_id))

    async def _change(self, message_id: str, user_id: str,
                      write: Callable[[Pipeline, dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Read-check-write under WATCH: `write` queues the commands of the MULTI and returns
        the result; a concurrent change to the message makes us read it again."""
        key = self.keys.memory_message(message_id)
        with redis_errors("change message"):
            async with self.redis.pipeline(transaction=True) as pipe:
                for _ in range(WATCH_ATTEMPTS):
                    await pipe.watch(key)
                    record = self._owned(await pipe.get(key), message_id, user_id)
                    pipe.multi()
                    result = write(pipe, record)
                    try:
                        await pipe.execute()
                    except redis.WatchError:
                        continue
                    return result
        raise Conflict(f"message {message_id} kept changing; try again", {"message_id": message_id})

    async def update(self, message_id: str, user_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        def write(pipe: Pipeline, record: dict[str, Any]) -> dict[str, Any]:
            record.update(changes)
            pipe.set(self.keys.memory_message(message_id), orjson.dumps(record))
            pipe.publish(self.keys.memory_events, _event("updated", _public(record)))
            return _public(record)

        return await self._change(message_id, user_id, write)

    async def delete(self, message_id: str, user_id: str) -> dict[str, Any]:
        def write(pipe: Pipeline, record: dict[str, Any]) -> dict[str, Any]:
            item = _public(record)
            member = _member(int(record["seq"]), message_id)
            pipe.delete(self.keys.memory_message(message_id))
            for key in self._indexes(item):
                pipe.zrem(key, member)
            pipe.publish(self.keys.memory_events, _event("deleted", item))
            return item

        return await self._change(message_id, user_id, write)

    async def items(self, resource: Resource) -> list[dict[str, Any]]:
        """Newest first: one ZREVRANGE, then one MGET."""
        with redis_errors("read list"):
            members = await self.redis.zrevrange(resource.key, 0, resource.limit - 1)
            if not members:
                return []
            ids = [_text(m).split(":", 1)[1] for m in members]
            raws = await self.redis.mget([self.keys.memory_message(i) for i in ids])
        # a message deleted between the two reads is simply not listed
        return [_public(orjson.loads(raw)) for raw in raws if raw is not None]

    async def follow(self, resource: Resource) -> Follower[Change]:
        """Register for `resource`'s changes; read its backlog only after this returns."""
        return await self.feed.follow(lambda change: resource.matches(change.item))

    async def close(self) -> None:
        await self.feed.close()
        await self.redis.aclose()


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
