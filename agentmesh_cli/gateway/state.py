"""The gateway's Redis: the registry it publishes, conversations and their event logs.

Nothing the gateway needs lives in its own memory only: conversations and their owners,
the event logs and the counters are in Redis, so several gateway processes serve the same
mesh and a restarted one misses nothing. What it caches is what agents publish anyway:
the registry and the declared accepts, read again every REGISTRY_REFRESH_S, and the
drain mark.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

from agentmesh_cli import constants as C
from agentmesh_cli import convlog
from agentmesh_cli.envelope import Envelope, now_ms
from agentmesh_cli.errors import StoreError
from agentmesh_cli.metrics.histogram import ASK_BUCKETS
from agentmesh_cli.services.aredis import AsyncRedis
from agentmesh_cli.services.feed import ChannelFeed, Follower
from agentmesh_cli.store import redis_errors

log = logging.getLogger(__name__)

REDIS_CONNECTIONS = 128
REGISTRY_REFRESH_S = 1.0  # the registry, accepts and drain mark are read again this often
COUNTER_FLUSH_S = 1.0  # the gateway's sent_to counters are written this often
FOLLOW_BUFFER = 1024  # feed messages a follower may fall behind before it is dropped
READ_BATCH = 200  # events read from a log per round trip

FeedItem = tuple[str, str | None, dict[str, Any] | None]


class GatewayState(AsyncRedis):
    def __init__(self, redis_url: str, mesh: str, declared: set[str], *, kept: int, ttl_s: float,
                 follow_buffer: int = FOLLOW_BUFFER) -> None:
        super().__init__(redis_url, mesh, REDIS_CONNECTIONS)
        self.declared = declared
        self.kept = kept
        self.ttl = max(1, int(ttl_s))
        self._append = self.redis.register_script(convlog.APPEND_SCRIPT)
        self._claim = self.redis.register_script(convlog.CLAIM_SCRIPT)
        self.feed: ChannelFeed[FeedItem] = ChannelFeed(self.redis, self.keys.conversation_channel,
                                                       convlog.parse_feed, follow_buffer,
                                                       key=_conversation_of)
        self.registry: dict[str, dict[str, Any]] = {}
        self.accepts: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, int] = {}  # replica group -> replicas it runs now (replicas.py)
        self.draining = False
        self.registry_error: str | None = "not read yet"
        self.sent: Counter[str] = Counter()
        self.kafka_epoch: str | None = None  # the broker incarnation (recovery.BrokerWatch)
        self.on_new_epoch: Callable[[], None] | None = None
        self._refresher: asyncio.Task[None] | None = None

    # the registry -----------------------------------------------------------------
    async def refresh(self) -> None:
        """Read the registry, the declared accepts, the drain mark and the replica groups'
        counts (one round trip)."""
        with redis_errors("read registry"):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(self.keys.agents)
                pipe.hgetall(self.keys.accepts)
                pipe.exists(self.keys.draining)
                pipe.get(self.keys.kafka_epoch)
                pipe.hgetall(self.keys.replicas)
                agents, accepts, draining, epoch, counts = await pipe.execute()
        self.registry = {_text(name): json.loads(value) for name, value in agents.items()}
        self.counts = {_text(group): int(n) for group, n in counts.items()}
        self.accepts = {_text(name): json.loads(value) for name, value in accepts.items()}
        self.draining = bool(draining)
        self.registry_error = None
        epoch = None if epoch is None else _text(epoch)
        if epoch != self.kafka_epoch:
            if self.kafka_epoch is not None and self.on_new_epoch is not None:
                self.on_new_epoch()  # the broker restarted empty: read the replies from its start
            self.kafka_epoch = epoch

    async def _refresh_forever(self) -> None:
        flushed = time.monotonic()
        while True:
            try:
                await self.refresh()
            except StoreError as exc:
                if self.registry_error is None:
                    log.warning("cannot read the registry: %s", self.hidden(str(exc)))
                self.registry_error = self.hidden(str(exc))
            if time.monotonic() - flushed >= COUNTER_FLUSH_S:
                flushed = time.monotonic()
                await self.flush_counters()
            await asyncio.sleep(REGISTRY_REFRESH_S)

    def start(self) -> None:
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    def may_answer(self, name: str) -> bool:
        """The rule of Store.may_answer, on the cached registry: declared in mesh.yaml, or
        registered now. (An agent that joined once and is gone for good is not in the
        registry: the gateway answers 404 for it rather than wait a whole timeout.)"""
        return name in self.declared or name in self.registry

    def count_sent(self, recipient: str) -> None:
        """Counted as agents count what they send (the drain and `status` compare)."""
        self.sent[C.sent_to_counter(recipient)] += 1

    def count(self, name: str, ms: float | None = None) -> None:
        """One of the gateway's own counters (written with the next flush); `ms` also
        observes the ask round trip histogram."""
        self.sent[name] += 1
        if ms is not None:
            ASK_BUCKETS.observe(self.sent, C.COUNTER_ASK_MS, ms)

    async def flush_counters(self) -> None:
        if not self.sent:
            return
        sent, self.sent = self.sent, Counter()
        try:
            with redis_errors("write counters"):
                async with self.redis.pipeline(transaction=True) as pipe:
                    key = self.keys.counters(C.GATEWAY_SENDER)
                    for name, value in sent.items():
                        pipe.hincrby(key, name, value)
                    pipe.sadd(self.keys.counter_owners, C.GATEWAY_SENDER)
                    await pipe.execute()
        except StoreError as exc:
            self.sent.update(sent)  # written with the next flush
            log.warning("counters not written: %s", self.hidden(str(exc)))

    # conversations ----------------------------------------------------------------
    async def claim(self, conversation: str, user: str | None, mesh: bool) -> bool:
        """Make the conversation if missing; False when it is another user's."""
        with redis_errors("claim conversation"):
            return bool(await self._claim(keys=[self.keys.conversation(conversation)],
                                          args=[convlog.actor(user, mesh), self.ttl, now_ms()]))

    async def append(self, conversation: str, envelope: Envelope, user: str | None, mesh: bool) -> bool:
        """Append the envelope the gateway sends; False when the conversation is another
        user's (nothing appended). One round trip: the owner check, the append, the publish."""
        data = orjson.dumps(convlog.event_data(envelope))
        with redis_errors("append event"):
            ok, _ = await self._append(
                keys=[self.keys.conversation(conversation), self.keys.conversation_events(conversation),
                      self.keys.conversation_seen(conversation)],
                args=[convlog.actor(user, mesh), envelope.id, convlog.EVENT_MESSAGE, data, self.kept,
                      self.ttl, self.keys.conversation_channel, conversation, now_ms()])
        return bool(ok)

    async def read_after(self, conversation: str, last: str,
                         count: int = READ_BATCH) -> tuple[bool, list[tuple[str, str, Any]]]:
        """Events after `last`, and convlog.is_gone for a reader that had `last`: one MULTI,
        so that no append trims between the test and the read."""
        events = self.keys.conversation_events(conversation)
        with redis_errors("read events"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.exists(events)
                pipe.hget(self.keys.conversation(conversation), "trimmed")
                pipe.xrange(events, min=f"({last}", count=count)
                exists, trimmed, entries = await pipe.execute()
        gone = convlog.is_gone(convlog.stream_id(last) or (0, 0), bool(exists),
                               convlog.stream_id(_text(trimmed)) if trimmed else None)
        return gone, [convlog.decode_entry(entry) for entry in entries or []]

    async def after(self, conversation: str, last: str,
                    count: int = READ_BATCH) -> list[tuple[str, str, Any]]:
        with redis_errors("read events"):
            entries = await self.redis.xrange(self.keys.conversation_events(conversation),
                                              min=f"({last}", count=count)
        return [convlog.decode_entry(entry) for entry in entries or []]

    async def follow(self, conversation: str) -> Follower[FeedItem]:
        return await self.feed.follow(_every, key=conversation)

    # what MCP resources show ------------------------------------------------------
    async def topology(self) -> Any:
        """The topology manager's latest snapshot (None before its first)."""
        with redis_errors("read topology"):
            raw = await self.redis.get(self.keys.topology_snapshot)
        return orjson.loads(raw) if raw else None

    async def proposals(self, limit: int = 20) -> list[Any]:
        """The newest proposals first (the consensus manager's records)."""
        with redis_errors("read proposals"):
            ids = await self.redis.zrevrange(self.keys.proposals, 0, limit - 1)
            if not ids:
                return []
            raw = await self.redis.mget([self.keys.proposal(_text(i)) for i in ids])
        return [orjson.loads(r) for r in raw if r]

    async def proposal(self, proposal_id: str) -> Any:
        with redis_errors("read proposal"):
            raw = await self.redis.get(self.keys.proposal(proposal_id))
        return orjson.loads(raw) if raw else None

    # service ----------------------------------------------------------------------
    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        await self.flush_counters()
        await self.feed.close()
        await self.redis.aclose()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _conversation_of(item: FeedItem) -> str:
    return item[0]


def _every(item: FeedItem) -> bool:
    return True  # a follower is filed under its conversation (the feed's key): all of it is its own
