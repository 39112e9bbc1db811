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
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentmesh_cli.config import MeshConfig
from agentmesh_cli.envelope import Envelope


@dataclass
class AgentContext:
    """What a role may use: its identity, the config, sending, and the peers present."""

    name: str
    role: str
    capabilities: list[str]
    config: MeshConfig
    log: logging.Logger
    rng: random.Random
    _send: Callable[[Envelope], None] = field(repr=False)
    _peers: Callable[[], dict[str, dict[str, Any]]] = field(repr=False)

    def send(
        self, to: str, type: str, payload: dict[str, Any], meta: dict[str, Any] | None = None
    ) -> Envelope:
        """Send a message to agent `to`; returns the envelope sent."""
        envelope = Envelope(type=type, from_agent_id=self.name, to_agent_id=to, payload=payload,
                            meta=meta or {})
        self._send(envelope)
        return envelope

    def peers(self, role: str | None = None) -> list[str]:
        """Names of the other registered agents (optionally of one role), sorted."""
        return sorted(
            name
            for name, record in self._peers().items()
            if name != self.name and (role is None or record.get("role") == role)
        )


class Role:
    """Base class of every agent role; override the hooks you need."""

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx

    def on_start(self) -> None:
        """Called once, after the agent has joined the mesh."""

    def on_message(self, message: Envelope) -> None:
        """Called for every message addressed to this agent."""

    def on_tick(self, now: float) -> None:
        """Called about every 100 ms with monotonic seconds."""

    def on_stop(self) -> None:
        """Called once when the agent is asked to stop."""
