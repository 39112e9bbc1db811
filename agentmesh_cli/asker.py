"""Asking agents from outside the mesh: `agentmesh ask` (and the gateway, later).

An asker that is not an agent has a reply address of its own. Its request carries it in
`meta.reply_to` (and `meta.deadline`, after which the agent skips the request); the
agent's reply goes to the `replies` topic, partition crc32(address) % partitions, key =
the address. The asker reads that partition from its end, taken before it sends, and
waits for the record whose `meta.in_reply_to` is its request's id. The topology manager
does not read `replies`: an operator's ask reinforces no edge.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli import events
from agentmesh_cli.bus import Bus
from agentmesh_cli.convlog import EVENT_DELTA, ConversationLog, parse_feed
from agentmesh_cli.dozing import ringing
from agentmesh_cli.envelope import Envelope, now_ms
from agentmesh_cli.errors import (
    AgentMeshError,
    AskTimeout,
    BusError,
    ConfigError,
    InvalidEnvelope,
    RemoteError,
    RoutingError,
    UnknownAgent,
)
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.reader import Reader
from agentmesh_cli.replicas import Groups
from agentmesh_cli.routing.dispatch import ROLE_PREFIX, Dispatch
from agentmesh_cli.signing import mesh_signer
from agentmesh_cli.store import Store, redis_errors
from agentmesh_cli.waiting import Deadline

POLL_S = 0.05


class Asker:
    def __init__(self, mesh: Mesh, sender: str = C.CLI_COUNTER_OWNER, address: str | None = None) -> None:
        """`sender`: the request's `from_agent_id` (an operator's name the agents accept:
        `cli`); `address`: the reply address (default: a new one)."""
        kafka = mesh.config.kafka
        self.mesh = mesh
        self.sender = sender
        self.address = address or f"{sender}-{uuid.uuid4().hex[:16]}"
        signer = mesh_signer(mesh)
        self.bus = Bus(kafka, client_id=f"agentmesh-ask-{sender}", signer=signer)
        self.partition = C.reply_partition(self.address, kafka.partitions)
        self.reader = Reader(kafka, f"{kafka.topic_prefix}.asker.{self.address}",
                             [(C.TOPIC_REPLIES, self.partition, None)], f"agentmesh-ask-{sender}",
                             fetch_wait=0.01, signer=signer)
        self.reader.start_at_end()
        self.store = Store(mesh.redis_url, mesh.config.mesh, timeout=2.0)
        self.doorbell = ringing(self.bus, self.store)  # a sleeping recipient is rung (dozing.py)
        # a request to a group goes to one of its replicas (routing/dispatch.py)
        self.dispatch = Dispatch(mesh.config, Groups(self.store), sender, time.monotonic)

    def ask(self, to: str, type: str, payload: dict[str, Any], timeout: float = 10.0,
            conversation: str | None = None, user: str | None = None,
            waiting: Callable[[], object] | None = None) -> Envelope:
        """Send the request and return the reply; raises UnknownAgent, AskTimeout,
        RemoteError (the agent's handler raised), BusError (the broker did not take it).
        In a conversation the request is appended to its events (convlog.py), as the
        gateway does, so its user sees it; `user` is the `meta.user` it acts for.
        `waiting()` is called between the polls for the reply (agentmesh ask --follow)."""
        config = self.mesh.config
        if to.startswith(ROLE_PREFIX):
            raise RoutingError(f"ask one agent or group, not {to!r}: an ask waits for one reply")
        if config.spec_of(to) is None and not self.store.may_answer(to, {a.name for a in config.agents}):
            raise UnknownAgent(to)
        meta: dict[str, Any] = {"reply_to": self.address, "deadline": now_ms() + int(timeout * 1000)}
        if conversation:
            meta["conversation"] = conversation
        if user:
            meta["user"] = user
        peer = self.dispatch.target(to, conversation)
        request = events.message(self.sender, peer, type, payload, meta)
        self.request_id = request.id
        deadline = Deadline(timeout)
        if conversation:
            self._append(conversation, request, user)
        self.bus.send_message(request)
        if self.bus.flush(deadline.left()) or self.bus.delivery_failures:
            raise BusError(f"request not delivered to {self.mesh.config.kafka.bootstrap} (is the mesh up?)")
        self._count_sent(peer)
        while not deadline.passed():
            if waiting is not None:
                waiting()
            for record in self.reader.poll_batch(timeout=min(POLL_S, deadline.left())):
                reply = self._reply_to(record.value, record.forged, request.id)
                if reply is None:
                    continue
                if reply.type == C.TYPE_ERROR_REPLY:
                    raise RemoteError(to, type, str(reply.payload.get("error", "Exception")),
                                      str(reply.payload.get("message", "")))
                return reply
        raise AskTimeout(to, type, timeout)

    def conversation_log(self) -> ConversationLog:
        settings = self.mesh.config.gateway
        return ConversationLog(self.store.redis, self.store.keys, settings.events_kept, settings.events_ttl)

    def _append(self, conversation: str, request: Envelope, user: str | None) -> None:
        with redis_errors("append the request to its conversation"):
            if self.conversation_log().append(conversation, request, user, mesh=True) is None:
                raise ConfigError(f"conversation {conversation!r} belongs to another user")

    @staticmethod
    def _reply_to(value: bytes | None, forged: str | None, request_id: str) -> Envelope | None:
        if forged is not None:
            return None  # not the mesh's: never taken for an answer
        try:
            reply = Envelope.decode(value)
        except InvalidEnvelope:
            return None
        return reply if reply.meta.get("in_reply_to") == request_id else None

    def _count_sent(self, recipient: str) -> None:
        """Counted as the agents count what they send (the drain and `status` compare)."""
        try:
            self.store.add_counters(C.CLI_COUNTER_OWNER, Counter({C.sent_to_counter(recipient): 1}))
        except AgentMeshError:
            pass  # the request is sent; only the backlog figure is one too low

    def close(self) -> None:
        self.bus.flush(1.0)
        self.doorbell.close()
        self.reader.close()
        self.store.close()


def round_trip(asker: Asker, to: str, type: str, payload: dict[str, Any], timeout: float,
               conversation: str | None = None, user: str | None = None,
               waiting: Callable[[], object] | None = None) -> tuple[Envelope, float]:
    """(reply, round trip in ms)."""
    started = time.perf_counter()
    reply = asker.ask(to, type, payload, timeout, conversation, user, waiting)
    return reply, (time.perf_counter() - started) * 1000


class Follow:
    """A conversation's events from now on, for `agentmesh ask --follow`: what is appended
    to its log (convlog.py) and the deltas published for it."""

    def __init__(self, asker: Asker, conversation: str) -> None:
        self.conversation = conversation
        self.log = asker.conversation_log()
        with redis_errors("follow the conversation"):
            self.pubsub = asker.store.redis.pubsub(ignore_subscribe_messages=True)
            self.pubsub.subscribe(asker.store.keys.conversation_channel)
            self.cursor = self.log.last_id(conversation)

    def poll(self) -> list[dict[str, Any]]:
        """What came since the last poll: {event, id?, data}, deltas first."""
        out: list[dict[str, Any]] = []
        with redis_errors("follow the conversation"):
            while (message := self.pubsub.get_message(timeout=0)) is not None:
                raw = message.get("data")
                parsed = parse_feed(raw.encode() if isinstance(raw, str) else raw) \
                    if isinstance(raw, str | bytes) else None
                if parsed is not None and parsed[0] == self.conversation and parsed[2] is not None:
                    out.append({"event": EVENT_DELTA, "data": parsed[2]})
            for entry_id, event, data in self.log.after(self.conversation, self.cursor):
                self.cursor = entry_id
                out.append({"event": event, "id": entry_id, "data": data})
        return out

    def close(self) -> None:
        try:
            self.pubsub.close()
        except Exception:  # noqa: BLE001  (closing a connection that may be gone)
            pass
