"""Ask and reply for one agent runtime: what `ctx.ask` and `ctx.reply` do.

- `ask` builds the request (its id derived from the message being handled, `meta.deadline`
  = now + timeout, the handler's conversation), registers the wait, sends, and awaits
  the reply (a coroutine in an async hook; in a worker thread of a sync handler it
  blocks; on the loop it is refused: it would stop the agent).
- `reply` sends to the asker's inbox, or to the `replies` topic when the asker is not an
  agent (`meta.reply_to`), and keeps the reply for the reply cache.
- `answer_again` answers a repeated request from the cache (memory, then Redis).

The agent's side of waiting asks and of the cache is in agent/asking.py; the runtime
routes replies there (agent/runtime.py, `_intake`).
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

from agentmesh_cli import constants as C
from agentmesh_cli import events
from agentmesh_cli.agent.asking import Answered, Asks, Sent, reply_meta
from agentmesh_cli.agent.handling import current
from agentmesh_cli.envelope import Envelope, now_ms
from agentmesh_cli.errors import (
    AgentMeshError,
    AskNotAllowed,
    AskTimeout,
    RemoteError,
    RoutingError,
    UnknownAgent,
)
from agentmesh_cli.metrics.histogram import ASK_BUCKETS
from agentmesh_cli.routing.dispatch import ROLE_PREFIX

if TYPE_CHECKING:
    from agentmesh_cli.agent.runtime import AgentRuntime


class Exchange:
    def __init__(self, rt: AgentRuntime) -> None:
        self.rt = rt
        self.asks = Asks()
        self.answered = Answered()
        # request id -> more reply addresses (copies asked while the first is handled)
        self.also: dict[str, set[str]] = {}

    def ask(self, to: str, type: str, payload: dict[str, Any], timeout: float,
            meta: dict[str, Any] | None, key: str | None = None) -> Any:
        """AgentContext.ask: a coroutine in an async hook, the reply in a worker thread."""
        handling = current()
        if key is not None and handling is not None:
            request_id = handling.keyed_id(key)
        else:
            request_id = self.rt.next_id() or events.new_id()
        on_loop = self.rt.loop is not None and threading.get_ident() == self.rt.loop_thread
        if on_loop and (self.rt.sync_hook_running or handling is not None and handling.mode == "inline"):
            raise AskNotAllowed(
                f"ctx.ask({to!r}, {type!r}) in a sync hook that runs on the agent's loop would "
                "stop the agent while it waits: make the hook `async def` and await it, or, for "
                "on_message, set agents[].concurrency above 1 (sync handlers then run in threads)")
        coro = self.ask_async(to, type, payload, timeout, meta, request_id)
        if on_loop:
            return coro
        if self.rt.loop is None:
            coro.close()
            raise AskNotAllowed("ctx.ask before the agent's loop runs")
        return asyncio.run_coroutine_threadsafe(coro, self.rt.loop).result()

    async def ask_async(self, to: str, type: str, payload: dict[str, Any], timeout: float,
                         meta: dict[str, Any] | None, request_id: str) -> Envelope:
        config = self.rt.mesh.config
        dispatch = self.rt.dispatch
        if to.startswith(ROLE_PREFIX):
            raise RoutingError(f"ask one agent or group, not {to!r}: an ask waits for one reply")
        declared = {a.name for a in config.agents}
        if (to not in self.rt.registry() and config.spec_of(to) is None
                and not self.rt.store.may_answer(to, declared)):
            raise UnknownAgent(to)
        meta = {**(meta or {})}
        group = to if dispatch.is_group(to) else None
        conversation = meta.get("conversation")
        peer = dispatch.target(to, conversation if isinstance(conversation, str) else None)
        deadline = now_ms() + int(timeout * 1000)
        request = events.message(self.rt.name, peer, type, payload, {**meta, "deadline": deadline},
                                 id=request_id)
        future = self.asks.expect(request_id)
        started = self.rt.clock()
        self.rt.bus.send_message(request)
        if group is not None:
            dispatch.sent(peer, request_id, group, started)
        if request.meta.get("public") is True:
            self.rt.public.sent(request)
        self.rt.nudge()
        self.rt.counts[C.COUNTER_ASKS] += 1
        try:
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self.rt.counts[C.COUNTER_ASK_TIMEOUTS] += 1
            dispatch.forget(request_id)
            raise AskTimeout(peer, type, timeout) from None
        finally:
            self.asks.forget(request_id)
        dispatch.replied(request_id, self.rt.clock())
        ASK_BUCKETS.observe(self.rt.counts, C.COUNTER_ASK_MS, (self.rt.clock() - started) * 1000)
        if reply.type == C.TYPE_ERROR_REPLY:
            self.rt.counts[C.COUNTER_ERROR_REPLIES] += 1
            raise RemoteError(to, type, str(reply.payload.get("error", "Exception")),
                              str(reply.payload.get("message", "")))
        return reply

    def reply(self, request: Envelope, type: str, payload: dict[str, Any], public: bool = False) -> Envelope:
        """AgentContext.reply: to the asker's inbox, or to `replies` for an asker that is
        not an agent (`meta.reply_to`); kept in the reply cache. A reply to an asker outside
        the mesh, or to a public request, is public: its conversation's user sees it."""
        meta = reply_meta(request)
        address = request.meta.get("reply_to")
        outside = isinstance(address, str) and bool(address)
        if public or outside or request.meta.get("public") is True:
            meta["public"] = True
        reply = events.message(self.rt.name, request.from_agent_id, type, payload, meta, id=self.rt.next_id())
        value = reply.encode()
        if outside:
            sent = self._to_address(str(address), value)
        else:
            sent = Sent(C.TOPIC_MESSAGES, reply.to_agent_id,
                        C.inbox_partition(reply.to_agent_id, self.rt.mesh.config.kafka.partitions), value)
        self.rt.on_loop(self.send_reply, request.id, sent, reply)
        return reply

    def _to_address(self, address: str, value: bytes) -> Sent:
        partitions = self.rt.mesh.config.kafka.partitions
        return Sent(C.TOPIC_REPLIES, address, C.reply_partition(address, partitions), value)

    def send_reply(self, request_id: str, sent: Sent, reply: Envelope | None = None) -> None:
        self.rt.bus.produce_raw(sent.topic, sent.value, sent.key, sent.partition)
        for address in self.also.pop(request_id, ()):
            if address != sent.key:  # a copy of the request asked from elsewhere meanwhile
                copy = self._to_address(address, sent.value)
                self.rt.bus.produce_raw(copy.topic, copy.value, copy.key, copy.partition)
        self.answered.add(request_id, sent)
        if reply is not None and reply.meta.get("public") is True:
            self.rt.public.sent(reply)
        self.rt.nudge()

    def answer_also(self, request: Envelope) -> None:
        """A copy of a request whose first copy is still being handled (an asker outside the
        mesh that retried, maybe through another gateway): its reply goes to both addresses,
        now if the handler has replied already, else when it does."""
        address = request.meta.get("reply_to")
        if not (isinstance(address, str) and address):
            return
        if self.answered.recent(request.id) is not None:
            self.answer_again(request)
        else:
            self.also.setdefault(request.id, set()).add(address)

    def answer_again(self, request: Envelope) -> None:
        """A repeated request this agent handled: send its reply again from the cache, to
        where the repeated request waits (a retry from a restarted or another gateway has
        another reply address than the first copy)."""
        sent = self.answered.recent(request.id)
        if sent is None:
            try:
                raw = self.rt.store.cached_reply(self.rt.shared, request.id)
            except AgentMeshError as exc:
                self.rt.log.warning("reply cache unavailable for %s: %s", request.id, exc)
                return
            if raw is None:
                return  # not asked for a reply, or older than the cache
            sent = Sent.from_json(raw)
        address = request.meta.get("reply_to")
        if isinstance(address, str) and address and sent.topic == C.TOPIC_REPLIES and address != sent.key:
            sent = self._to_address(address, sent.value)
        self.rt.bus.produce_raw(sent.topic, sent.value, sent.key, sent.partition)
        self.rt.counts[C.COUNTER_CACHED_REPLIES] += 1
