"""agentmesh: the public API for the roles you write.

A role is a class that an agent process runs; mesh.yaml names it as `package.module:Class`:

    from agentmesh import Envelope, Role

    class Greeter(Role):
        def on_message(self, message: Envelope) -> None:
            if message.type == "hello":
                self.ctx.send(message.from_agent_id, "hello_back", {"you_said": message.payload})

Import these names from here, not from `agentmesh_cli.*`: those paths are internal and may
move; these stay. What each one is:

- `Role`: the base class; override `on_start`, `on_message`, `on_tick`, `on_stop`, and for
  Bee consensus `evaluate` (return a `Vote`, or None to abstain) and `on_decision`.
- `AgentContext`: `self.ctx` of a role: name, role, config, log, rng, send, ask (with
  `key=` for a handler whose re-run may ask other things), reply, respond, delta, user,
  conversation, propose, peers, accepts, count, once, remember, context.
- `Envelope`: one message as the agent receives or sends it.
- `Vote`: what `evaluate` returns (support, intensity).
- `Proposal`, `ProposalStatus`, `Waggle`: a Bee consensus proposal as `evaluate` and
  `on_decision` see it, its status, and its waggle dance.
- `MeshConfig`: `self.ctx.config`, the validated mesh.yaml.
- `AgentMeshError`: the root of every error agentmesh raises.
- `AskError` and its kinds, what `await self.ctx.ask(...)` raises: `AskTimeout` (no reply
  in time), `RemoteError` (the answerer's handler raised), `UnknownAgent` (no such agent),
  `AskNotAllowed` (a blocking ask where it would stop the agent).
"""

from agentmesh_cli import __version__
from agentmesh_cli.agent.base import AgentContext, Role, Vote
from agentmesh_cli.config import MeshConfig
from agentmesh_cli.consensus.core import Proposal, Waggle
from agentmesh_cli.consensus.core import Status as ProposalStatus
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.errors import (
    AgentMeshError,
    AskError,
    AskNotAllowed,
    AskTimeout,
    RemoteError,
    UnknownAgent,
)

__all__ = [
    "AgentContext",
    "AgentMeshError",
    "AskError",
    "AskNotAllowed",
    "AskTimeout",
    "Envelope",
    "MeshConfig",
    "Proposal",
    "ProposalStatus",
    "RemoteError",
    "Role",
    "UnknownAgent",
    "Vote",
    "Waggle",
    "__version__",
]
