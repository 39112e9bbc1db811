"""What an agent shows a conversation's user: public envelopes and streamed deltas.

An envelope the agent sends with `meta.public` (a reply to an asker outside the mesh, a
reply to a public request, or anything sent with `public=True`) and a
`meta.conversation` is appended to the conversation's event log (convlog.py) once it is
handed to the broker. `ctx.delta(text)` queues streamed partial output for the
conversation being handled; the queue is published every `gateway.delta_interval`
(coalesced: one delta event per conversation per interval), never stored and never sent
to Kafka, and what is queued for a conversation is published before the next public
envelope of it, so the final message follows its deltas.

A Redis failure costs the user's view, never the message: it is logged and counted
(`events_failed`); the envelope itself went to Kafka.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentmesh_cli import convlog
from agentmesh_cli.agent.handling import current
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.errors import AgentMeshError
from agentmesh_cli.store import redis_errors

if TYPE_CHECKING:
    from agentmesh_cli.agent.runtime import AgentRuntime

COUNTER_EVENTS = "events_out"  # public envelopes appended to conversation logs
COUNTER_DELTAS = "deltas_out"  # delta events published (after coalescing)
COUNTER_FAILED = "events_failed"  # appends or publishes that Redis refused


class PublicEvents:
    def __init__(self, rt: AgentRuntime) -> None:
        settings = rt.mesh.config.gateway
        self.rt = rt
        self.log = convlog.ConversationLog(rt.store.redis, rt.store.keys, settings.events_kept,
                                           settings.events_ttl)
        self.interval = settings.delta_interval
        # (conversation, the request it answers) -> text queued, in order
        self.pending: dict[tuple[str, str | None], list[str]] = {}
        self._flush_due = False

    def sent(self, envelope: Envelope) -> None:
        """On the loop, after the envelope was handed to the broker."""
        conversation = envelope.meta.get("conversation")
        if not isinstance(conversation, str):
            return
        self._flush(conversation)
        try:
            with redis_errors("append a conversation event"):
                self.log.append(conversation, envelope)
        except AgentMeshError as exc:
            self.rt.counts[COUNTER_FAILED] += 1
            self.rt.log.warning("event of %s not kept for its user: %s", conversation, exc)
            return
        self.rt.counts[COUNTER_EVENTS] += 1

    def delta(self, text: str) -> None:
        """AgentContext.delta: from a handler (any thread); ignored outside a conversation."""
        handling = current()
        if handling is None or handling.conversation is None or not text:
            return
        self.rt.on_loop(self._queue, handling.conversation, handling.message_id, text)

    def _queue(self, conversation: str, message_id: str, text: str) -> None:
        self.pending.setdefault((conversation, message_id), []).append(text)
        if not self._flush_due and self.rt.loop is not None:
            self._flush_due = True
            self.rt.loop.call_later(self.interval, self._flush_all)

    def _flush_all(self) -> None:
        self._flush_due = False
        self._flush(None)

    def _flush(self, conversation: str | None) -> None:
        if not self.pending:
            return
        keys = [key for key in self.pending if conversation is None or key[0] == conversation]
        for key in keys:
            text = "".join(self.pending.pop(key))
            try:
                with redis_errors("publish a delta"):
                    self.log.publish_delta(key[0], self.rt.name, text, key[1])
            except AgentMeshError as exc:
                self.rt.counts[COUNTER_FAILED] += 1
                self.rt.log.warning("delta of %s not published: %s", key[0], exc)
                continue
            self.rt.counts[COUNTER_DELTAS] += 1
