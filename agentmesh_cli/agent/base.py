"""The Role base class: what a user subclasses to give an agent its behaviour.

A role is given as `package.module:Class` in mesh.yaml. The runtime builds it with an
`AgentContext` and calls its hooks; a role needs no locks:

    class Greeter(Role):
        def on_message(self, message: Envelope) -> None:
            if message.type == "hello":
                self.ctx.send(message.from_agent_id, "hello_back", {"to": message.payload})

Every hook may be `async def`. An async `on_message` may await (a model, a tool,
`await self.ctx.ask(peer, type, payload)`) while the agent goes on reading; with
`agents[].concurrency` > 1 in mesh.yaml, messages of different conversations
(`meta.conversation`, else the sender) are handled at once, each conversation in order.
A sync `on_message` at concurrency > 1 runs in a worker thread (every `ctx` call is
handed to the agent's loop); at concurrency 1 it runs on the loop, one message at a time.

Hooks: `on_start()` once, `on_message(envelope)` for every message addressed to this
agent, `on_tick(now)` about every 100 ms (every 500 ms while the agent is idle and its reader
sleeps; monotonic seconds, for timers and workloads),
`on_stop()` once on SIGTERM/SIGINT before `agent_left` is published. An exception in a
hook is logged; in `on_message` it also sends the message to the dead-letter topic, so
one bad message never stops the agent.

Bee consensus: `evaluate(proposal)` is called for every open proposal whose electorate
holds this agent and returns a `Vote` (or None to abstain); the default supports when
the waggle intensity reaches `consensus.min_intensity`, with the role's `confidence` as
vote intensity. `on_decision(proposal)` is called for every decided proposal (the
proposer learns its outcome here). `self.ctx.propose(type, content)` opens one.

Services: `self.ctx.remember(user, text, conversation_id)` keeps history in Memory (in
the background), `self.ctx.context(user, query)` asks Cognition for ranked context
(`await self.ctx.acontext(...)` in an async hook).

Request and reply: `reply = await self.ctx.ask(to, type, payload, timeout=10.0)` and, on
the other side, `self.ctx.reply(message, type, payload)`; see `AgentContext.ask`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from agentmesh_cli import events
from agentmesh_cli.agent.handling import current
from agentmesh_cli.config import MeshConfig
from agentmesh_cli.consensus.core import Proposal
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.errors import AskNotAllowed, RoleError

if TYPE_CHECKING:
    from agentmesh_cli.agent.services import AgentServices


def type_of_request(message: Envelope) -> bool:
    """Does `message` wait for a reply (an ask sets its `meta.deadline`)?"""
    return type(message.meta.get("deadline")) is int


@dataclass(frozen=True)
class Vote:
    support: bool
    intensity: float


@dataclass
class AgentContext:
    """What a role may use: its identity, the config, sending, and the peers present."""

    name: str
    role: str
    capabilities: list[str]
    config: MeshConfig
    log: logging.Logger
    rng: random.Random
    _send: Callable[[Envelope], Envelope] = field(repr=False)
    _peers: Callable[[], dict[str, dict[str, Any]]] = field(repr=False)
    _propose: Callable[[str, dict[str, Any]], str] = field(repr=False)
    _services: AgentServices | None = field(default=None, repr=False)
    # the id the next envelope sent must have (while a handler runs: one derived from the
    # message handled, see agent/ledger.py), or None for a fresh one
    _next_id: Callable[[], str | None] = field(default=lambda: None, repr=False)
    _ask: Callable[..., Any] | None = field(default=None, repr=False)
    _reply: Callable[[Envelope, str, dict[str, Any], bool], Envelope] | None = field(default=None, repr=False)
    _draining: Callable[[], bool] = field(default=lambda: False, repr=False)
    _delta: Callable[[str], None] = field(default=lambda text: None, repr=False)
    _accepts: Callable[[str], dict[str, dict[str, Any]]] = field(default=lambda agent: {}, repr=False)
    _count: Callable[[dict[str, int]], None] = field(default=lambda counts: None, repr=False)
    _once: Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]] | None = field(default=None,
                                                                                     repr=False)

    def send(
        self, to: str, type: str, payload: dict[str, Any], meta: dict[str, Any] | None = None,
        *, public: bool = False,
    ) -> Envelope:
        """Send a message to agent `to`; returns the envelope sent. Sent while handling a
        message of a conversation (`meta.conversation`), it belongs to it too, unless
        `meta` names another, and acts for the same user (`meta.user`). `public=True`
        shows it to the conversation's user too (an event of GET /conversations/ID/events
        at the gateway); agent-to-agent traffic is not shown otherwise."""
        handling = current()
        meta = self.conversation_meta(meta, public)
        if handling is None:  # not while handling a message (on_tick, on_start): a fresh id
            return self._send(events.message(self.name, to, type, payload, meta, id=self._next_id()))
        return self._send(events.message(self.name, to, type, payload, meta, id=handling.next_id()))

    def conversation_meta(self, meta: dict[str, Any] | None, public: bool = False) -> dict[str, Any] | None:
        """`meta` with the conversation and the user of the message being handled (where
        `meta` names none), and `public` when asked for."""
        handling = current()
        if public:
            meta = {**(meta or {}), "public": True}
        if handling is None:
            return meta
        if handling.conversation is not None and not (meta and "conversation" in meta):
            meta = {**(meta or {}), "conversation": handling.conversation}
        if handling.user is not None and not (meta and "user" in meta):
            meta = {**(meta or {}), "user": handling.user}
        return meta

    @property
    def conversation(self) -> str | None:
        """The conversation of the message being handled (`meta.conversation`), or None."""
        handling = current()
        return None if handling is None else handling.conversation

    @property
    def user(self) -> str | None:
        """The user the message being handled acts for (`meta.user`: the gateway sets it from
        the caller's token; read the user from here, never from the payload), or None."""
        handling = current()
        return None if handling is None else handling.user

    def delta(self, text: str) -> None:
        """Stream partial output (a model's tokens) to the user of the conversation being
        handled: ephemeral `delta` events at the gateway, coalesced every
        gateway.delta_interval, never sent as Kafka messages. Send the whole result as a
        normal (public) message or reply after them."""
        self._delta(text)

    @property
    def draining(self) -> bool:
        """True while `agentmesh down` drains the mesh: start no new work (a workload's
        tick returns at once); what is in flight is still handled."""
        return self._draining()

    def ask(self, to: str, type: str, payload: dict[str, Any], timeout: float = 10.0,
            meta: dict[str, Any] | None = None, *, public: bool = False, key: str | None = None) -> Any:
        """Send a request to agent `to` and get its reply (an `Envelope`): `reply = await
        self.ctx.ask("Inventory", "check_stock", {...})` in an async hook. In a sync
        `on_message` at concurrency > 1 (a worker thread) it blocks and returns the reply;
        anywhere else a blocking ask could stop the agent and raises AskNotAllowed.

        Raises AskTimeout (no reply within `timeout` seconds: the request's deadline, after
        which the answerer skips it), RemoteError (the answerer's handler raised),
        UnknownAgent (`to` never joined and is not in mesh.yaml; an agent that is only
        restarting is waited for). Asked while handling a message, the request's id is
        derived from it: a handler run again after a crash asks again under the same id,
        and the answerer's reply cache answers it without handling it twice. The id follows
        the order of the handler's sends; with `key` it is derived from the message and the
        key instead, for a handler whose re-run may ask other things or in another order
        (a language model's tool calls): the same key is the same request, answered once."""
        if self._ask is None:
            raise AskNotAllowed("this context cannot ask: it belongs to no agent runtime")
        meta = self.conversation_meta(meta, public)
        if key is None:
            return self._ask(to, type, payload, timeout, meta)
        return self._ask(to, type, payload, timeout, meta, key)

    def respond(self, message: Envelope, type: str, payload: dict[str, Any], *,
                public: bool = False) -> Envelope:
        """Answer `message` whichever way it came: `reply` to a request (an ask waits for
        it), else `send` to its sender (a plain message, answered by a message)."""
        if type_of_request(message):
            return self.reply(message, type, payload, public=public)
        return self.send(message.from_agent_id, type, payload, public=public)

    def reply(self, message: Envelope, type: str, payload: dict[str, Any], *,
              public: bool = False) -> Envelope:
        """Answer `message` (a request from `ctx.ask`, `agentmesh ask` or the gateway): the
        reply goes to the asker's waiting ask, never through its conversation queue. The
        reply is kept (the reply cache) to answer a repeated request again. A reply to an
        asker outside the mesh (the gateway, `agentmesh ask`) or to a public request is
        shown to the conversation's user; `public=True` shows any reply."""
        if self._reply is None:
            raise AskNotAllowed("this context cannot reply: it belongs to no agent runtime")
        return self._reply(message, type, payload, public)

    def propose(self, type: str, content: dict[str, Any]) -> str:
        """Open a Bee consensus proposal (decision | action | topology); returns its id."""
        return self._propose(type, content)

    def remember(self, user_id: str, content: str, conversation_id: str | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        """Store an item of `user_id`'s history in the Memory service. It never blocks: the
        write is queued, and kept while Memory is down. Made while handling a message, its
        id is derived from the message: a handler run again after a crash writes it once."""
        if self._services is not None:
            handling = current()
            message_id = None if handling is None else handling.remember_id()
            self._services.remember(user_id, content, conversation_id, metadata, message_id)

    def context(self, user_id: str, query: str | None = None, limit: int = 5) -> list[dict[str, Any]] | None:
        """The Cognition service's most relevant and recent items of `user_id`'s history
        for `query`; None when Cognition cannot answer (the role goes on without)."""
        if self._services is None:
            return None
        return self._services.context(user_id, query, limit)

    async def acontext(self, user_id: str, query: str | None = None,
                       limit: int = 5) -> list[dict[str, Any]] | None:
        """`context` for an async hook: awaited, it leaves the agent's loop free."""
        if self._services is None:
            return None
        return await self._services.acontext(user_id, query, limit)

    def accepts(self, agent: str) -> dict[str, dict[str, Any]]:
        """What agent `agent` declares it accepts (its role's `accepts`): message type -> the
        payload's JSON schema, as the agent published it when it joined ({} if it declares
        nothing or never joined). Read from Redis at most once a second."""
        return self._accepts(agent)

    async def once(self, key: str, compute: Callable[[], Awaitable[Any]]) -> Any:
        """`await compute()` once for the message being handled and `key`: its result
        (JSON: dicts, lists, str, numbers, bool, None) is kept in Redis until the message is
        recorded as handled, so a handler run again after a crash gets the first run's
        result back instead of computing it again (a model's answer: the same words, the
        same tool calls, no tokens spent twice). Outside a handler it computes every time.
        In an async hook (it is awaited on the agent's loop)."""
        if self._once is None:
            return await compute()
        return await self._once(key, compute)

    def count(self, name: str, n: int = 1) -> None:
        """Add `n` to the agent's counter `name` (from any thread). Counters reach Redis
        once a second with the agent's own (`agentmesh status --json`: the agent's
        `counters`)."""
        self._count({name: n})

    def peers(self, role: str | None = None) -> list[str]:
        """Names of the other registered agents (optionally of one role), sorted; the
        replicas of a group as the group's one name (a message to it is routed)."""
        peers = self._peers()
        mine = peers.get(self.name, {}).get("group")
        return sorted({
            str(record.get("group") or name)
            for name, record in peers.items()
            if name != self.name and (role is None or record.get("role") == role)
            and not (mine and record.get("group") == mine)
        })


class Role:
    """Base class of every agent role; override the hooks you need."""

    confidence = 0.8  # the intensity of this role's votes
    # may run as several replicas (mesh.yaml `replicas:`): its state lives outside its
    # process (Redis, the services) or it has none, so any replica may handle any message
    replicable: ClassVar[bool] = False
    # the message types this role handles and their payloads' models, e.g.
    # {"ticket": Ticket} with `class Ticket(pydantic.BaseModel)`: the gateway publishes
    # them (GET /agents, MCP tools) and checks a request's payload against the schema
    accepts: ClassVar[dict[str, type[BaseModel]]] = {}

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    def evaluate(self, proposal: Proposal) -> Vote | None:
        """This agent's vote on an open proposal; None abstains."""
        support = proposal.waggle.intensity >= self.ctx.config.consensus.min_intensity
        return Vote(support, self.confidence)

    # Each hook may be overridden as `async def` too (an async tick is not run again while
    # the last one still runs).
    def on_decision(self, proposal: Proposal) -> Any:
        """Called for every decided proposal (accepted, rejected or expired)."""

    def on_start(self) -> Any:
        """Called once, after the agent has joined the mesh."""

    def on_message(self, message: Envelope) -> Any:
        """Called for every message addressed to this agent (replies to this agent's asks
        go to the waiting ask instead)."""

    def on_tick(self, now: float) -> Any:
        """Called about every 100 ms with monotonic seconds."""

    def on_stop(self) -> Any:
        """Called once when the agent is asked to stop."""


def accepts_schemas(role: Role) -> dict[str, dict[str, Any]]:
    """What a role accepts as message type -> JSON schema of the payload (published at join)."""
    accepts = getattr(type(role), "accepts", None) or {}
    schemas: dict[str, dict[str, Any]] = {}
    for type_, model in accepts.items():
        if not (isinstance(type_, str) and isinstance(model, type) and issubclass(model, BaseModel)):
            raise RoleError(f"{type(role).__name__}.accepts maps message types to pydantic models; "
                            f"{type_!r}: {model!r} is not one")
        schemas[type_] = model.model_json_schema()
    return schemas
