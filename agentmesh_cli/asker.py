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
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli import events
from agentmesh_cli.bus import Bus
from agentmesh_cli.envelope import Envelope, now_ms
from agentmesh_cli.errors import (
    AgentMeshError,
    AskTimeout,
    BusError,
    InvalidEnvelope,
    RemoteError,
    UnknownAgent,
)
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.reader import Reader
from agentmesh_cli.signing import mesh_signer
from agentmesh_cli.store import Store
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

    def ask(self, to: str, type: str, payload: dict[str, Any], timeout: float = 10.0,
            conversation: str | None = None) -> Envelope:
        """Send the request and return the reply; raises UnknownAgent, AskTimeout,
        RemoteError (the agent's handler raised), BusError (the broker did not take it)."""
        if not self.store.may_answer(to, {agent.name for agent in self.mesh.config.agents}):
            raise UnknownAgent(to)
        meta: dict[str, Any] = {"reply_to": self.address, "deadline": now_ms() + int(timeout * 1000)}
        if conversation:
            meta["conversation"] = conversation
        request = events.message(self.sender, to, type, payload, meta)
        deadline = Deadline(timeout)
        self.bus.send_message(request)
        if self.bus.flush(deadline.left()) or self.bus.delivery_failures:
            raise BusError(f"request not delivered to {self.mesh.config.kafka.bootstrap} (is the mesh up?)")
        self._count_sent(to)
        while not deadline.passed():
            for record in self.reader.poll_batch(timeout=min(POLL_S, deadline.left())):
                reply = self._reply_to(record.value, record.forged, request.id)
                if reply is None:
                    continue
                if reply.type == C.TYPE_ERROR_REPLY:
                    raise RemoteError(to, type, str(reply.payload.get("error", "Exception")),
                                      str(reply.payload.get("message", "")))
                return reply
        raise AskTimeout(to, type, timeout)

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
        self.reader.close()
        self.store.close()


def round_trip(asker: Asker, to: str, type: str, payload: dict[str, Any], timeout: float,
               conversation: str | None = None) -> tuple[Envelope, float]:
    """(reply, round trip in ms)."""
    started = time.perf_counter()
    reply = asker.ask(to, type, payload, timeout, conversation)
    return reply, (time.perf_counter() - started) * 1000
