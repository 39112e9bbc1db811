"""Roles used by the end-to-end tests (imported by real agent processes)."""

from __future__ import annotations

import agentmesh
from agentmesh_cli.agent.base import Role


class BrokenRole(Role):
    def on_start(self) -> None:
        raise RuntimeError("this role cannot start")


class Echo(agentmesh.Role):
    """A user's role, written against the public API only: it answers every `ping` with a
    `pong` carrying the payload back, and supports every proposal at full intensity."""

    def on_message(self, message: agentmesh.Envelope) -> None:
        if message.type == "ping":
            self.ctx.send(message.from_agent_id, "pong", {"echo": message.payload,
                                                          "by": self.ctx.name})

    def evaluate(self, proposal: agentmesh.Proposal) -> agentmesh.Vote | None:
        return agentmesh.Vote(support=True, intensity=1.0)
