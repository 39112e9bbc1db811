"""Roles used by the end-to-end tests (imported by real agent processes)."""

from __future__ import annotations

import time
from pathlib import Path

import agentmesh
from agentmesh_cli.agent.base import Role
from agentmesh_cli.envelope import Envelope


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


class SlowRecorder(Role):
    """A slow handler for the drain tests: each message takes DELAY_S, then its id is
    appended to `handled/<agent>.ids` in the mesh folder (supervisord runs agents there),
    so a test can check that every id was handled, and exactly once."""

    DELAY_S = 0.005

    def on_start(self) -> None:
        folder = Path("handled")
        folder.mkdir(exist_ok=True)
        self.out = (folder / f"{self.ctx.name}.ids").open("a", encoding="utf-8", buffering=1)

    def on_message(self, message: Envelope) -> None:
        time.sleep(self.DELAY_S)  # the work this role stands for, not a wait
        self.out.write(message.id + "\n")  # line-buffered: on disk at once

    def on_stop(self) -> None:
        self.out.close()


class SlowReplica(SlowRecorder):
    """SlowRecorder as a replicable role: any replica may take any job (its only state is
    the file it appends to, one per replica)."""

    replicable = True
    DELAY_S = 0.01
