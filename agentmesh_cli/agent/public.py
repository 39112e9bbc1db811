"""What an agent shows a conversation's user: public envelopes and streamed deltas.

An envelope the agent sends with `meta.public` (a reply to an asker outside the mesh, a
reply to a public request, or anything sent with `public=True`) and a
`meta.conversation` is appended to the conversation's event log (convlog.py) once it is
handed to the broker. `ctx.delta(text)` queues streamed partial output for the
conversation being handled; the queue is published every `gateway.delta_interval`
(coalesced: one delta event per conversation per interval), never stored and never sent
to Kafka, and what is queued for a conversation is published before the next public
envelope of it, so the final message follows its deltas.

The Redis calls run in a worker thread of their own, in the order they were made, so a
reply leaves at once instead of after a Redis round trip on the agent's loop. Before the
ids of handled messages enter the ledger (Settlement), the worker is waited for
(`drain`): an event is appended before its handling counts as done, so a handler run
again after a crash appends what a crash lost (an envelope appended twice is kept once).

A Redis failure costs the user's view, never the message: it is logged and counted
(`events_failed`); the envelope itself went to Kafka.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
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
STREAMS_KEPT = 10_000  # handlings whose streamed length is kept (for the deltas' offsets)
DRAIN_TIMEOUT_S = 10.0  # the ledger waits this long at most for the events of what it records


class PublicEvents:
    def __init__(self, rt: AgentRuntime) -> None:
        settings = rt.mesh.config.gateway
        self.rt = rt
        self.log = convlog.ConversationLog(rt.store.redis, rt.store.keys, settings.events_kept,
                                           settings.events_ttl)
        self.interval = settings.delta_interval
        # (conversation, the request it answers) -> text queued, in order
        self.pending: dict[tuple[str, str | None], list[str]] = {}
        # ... -> characters published so far (a delta's offset), for the newest STREAMS_KEPT
        self.streamed: OrderedDict[tuple[str, str | None], int] = OrderedDict()
        self._flush_due = False
        self._work: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Condition()
        self._queued = self._done = 0  # jobs handed to the worker, and finished
        self._counts: Counter[str] = Counter()  # the worker's, taken by the runtime's flush

    # on the loop ---------------------------------------------------------------------
    def sent(self, envelope: Envelope) -> None:
        """On the loop, after the envelope was handed to the broker."""
        conversation = envelope.meta.get("conversation")
        if not isinstance(conversation, str):
            return
        self._flush(conversation)
        self._submit(lambda: self._append(conversation, envelope))

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
            offset = self.streamed.pop(key, 0)
            self.streamed[key] = offset + len(text)
            if len(self.streamed) > STREAMS_KEPT:
                self.streamed.popitem(last=False)
            self._submit(lambda key=key, text=text, offset=offset:  # type: ignore[misc]
                         self._publish(key[0], text, key[1], offset))

    def drain(self, timeout: float = DRAIN_TIMEOUT_S) -> bool:
        """Wait until the worker did what was handed to it so far (before the ledger)."""
        with self._lock:
            target = self._queued
            return self._lock.wait_for(lambda: self._done >= target, timeout)

    def take_counts(self) -> Counter[str]:
        with self._lock:
            counts, self._counts = self._counts, Counter()
        return counts

    def close(self) -> None:
        self._flush(None)
        self.drain()
        if self._worker is not None:
            self._work.put(None)

    def _submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            self._queued += 1
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name=f"{self.rt.name}-public", daemon=True)
            self._worker.start()
        self._work.put(job)

    # in the worker ---------------------------------------------------------------------
    def _run(self) -> None:
        while (job := self._work.get()) is not None:
            try:
                job()
            finally:
                with self._lock:
                    self._done += 1
                    self._lock.notify_all()

    def _append(self, conversation: str, envelope: Envelope) -> None:
        try:
            with redis_errors("append a conversation event"):
                self.log.append(conversation, envelope)
        except AgentMeshError as exc:
            self._count(COUNTER_FAILED)
            self.rt.log.warning("event of %s not kept for its user: %s", conversation, exc)
            return
        self._count(COUNTER_EVENTS)

    def _publish(self, conversation: str, text: str, in_reply_to: str | None, offset: int) -> None:
        try:
            with redis_errors("publish a delta"):
                self.log.publish_delta(conversation, self.rt.name, text, in_reply_to, offset)
        except AgentMeshError as exc:
            self._count(COUNTER_FAILED)
            self.rt.log.warning("delta of %s not published: %s", conversation, exc)
            return
        self._count(COUNTER_DELTAS)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1
