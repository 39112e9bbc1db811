"""The memory service's Redis: each message, its three indexes (the user's history, the
conversation, the user's part of it) and the change channel follow streams read. Storing
is one Lua script (STORE_SCRIPT); an update or a delete reads, checks and writes under
WATCH."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from redis.asyncio.client import Pipeline

from agentmesh_cli.errors import Conflict, MessageNotFound
from agentmesh_cli.services.aredis import AsyncRedis
from agentmesh_cli.services.feed import ChannelFeed, Follower
from agentmesh_cli.services.memory_args import (
    Resource,
)
from agentmesh_cli.store import redis_errors

log = logging.getLogger(__name__)

REDIS_CONNECTIONS = 64  # the pool's bound: a request beyond waits (up to the command timeout)
FOLLOW_BUFFER = 1000  # changes queued for one follow stream before it is ended as too slow
WATCH_ATTEMPTS = 5  # optimistic retries of an update or delete racing another change
SEQ_WIDTH = 16  # digits of the insertion counter in index members


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
