"""The Role base class: what a user subclasses to give an agent its behaviour.

A role is given as `package.module:Class` in mesh.yaml. The runtime builds it with an
`AgentContext` and calls its hooks from one thread, so a role needs no locks:

    class Greeter(Role):
        def on_message(self, message: Envelope) -> None:
            if message.type == "hello":
                self.ctx.send(message.from_agent_id, "hello_back", {"to": message.payload})

Hooks: `on_start()` once, `on_message(envelope)` for every message addressed to this
agent, `on_tick(now)` about every 100 ms (monotonic seconds, for timers and workloads),
`on_stop()` once on SIGTERM/SIGINT before `agent_left` is published. An exception in a
hook is logged; in `on_message` it also sends the message to the dead-letter topic, so
one bad message never stops the agent.

Bee consensus: `evaluate(proposal)` is called for every open proposal whose electorate
holds this agent and returns a `Vote` (or None to abstain); the default supports when
the waggle intensity reaches `consensus.min_intensity`, with the role's `confidence` as
vote intensity. `on_decision(proposal)` is called for every decided proposal (the
proposer learns its outcome here). `self.ctx.propose(type, content)` opens one.

Services: `self.ctx.remember(user, text, conversation_id)` keeps history in Memory (in
the background), `self.ctx.context(user, query)` asks Cognition for ranked context.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentmesh_cli import events
from agentmesh_cli.config import MeshConfig
from agentmesh_cli.consensus.core import Proposal
from agentmesh_cli.envelope import Envelope

if TYPE_CHECKING:
    from agentmesh_cli.agent.services import AgentServices


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

    def send(
        self, to: str, type: str, payload: dict[str, Any], meta: dict[str, Any] | None = None
    ) -> Envelope:
        """Send a message to agent `to`; returns the envelope sent."""
        return self._send(events.message(self.name, to, type, payload, meta, id=self._next_id()))

    def propose(self, type: str, content: dict[str, Any]) -> str:
        """Open a Bee consensus proposal (decision | action | topology); returns its id."""
        return self._propose(type, content)

    def remember(self, user_id: str, content: str, conversation_id: str | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        """Store an item of `user_id`'s history in the Memory service. It never blocks: the
        write is queued, and kept while Memory is down."""
        if self._services is not None:
            self._services.remember(user_id, content, conversation_id, metadata)

    def context(self, user_id: str, query: str | None = None, limit: int = 5) -> list[dict[str, Any]] | None:
        """The Cognition service's most relevant and recent items of `user_id`'s history
        for `query`; None when Cognition cannot answer (the role goes on without)."""
        if self._services is None:
            return None
        return self._services.context(user_id, query, limit)

    def peers(self, role: str | None = None) -> list[str]:
        """Names of the other registered agents (optionally of one role), sorted."""
        return sorted(
            name
            for name, record in self._peers().items()
            if name != self.name and (role is None or record.get("role") == role)
        )


class Role:
    """Base class of every agent role; override the hooks you need."""

    confidence = 0.8  # the intensity of this role's votes

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    def evaluate(self, proposal: Proposal) -> Vote | None:
        """This agent's vote on an open proposal; None abstains."""
        support = proposal.waggle.intensity >= self.ctx.config.consensus.min_intensity
        return Vote(support, self.confidence)

    def on_decision(self, proposal: Proposal) -> None:
        """Called for every decided proposal (accepted, rejected or expired)."""

    def on_start(self) -> None:
        """Called once, after the agent has joined the mesh."""

    def on_message(self, message: Envelope) -> None:
        """Called for every message addressed to this agent."""

    def on_tick(self, now: float) -> None:
        """Called about every 100 ms with monotonic seconds."""

    def on_stop(self) -> None:
        """Called once when the agent is asked to stop."""
