"""Every envelope the mesh writes, one builder per type: the payload keys of each are
spelled here and nowhere else (readers check them in `consensus.intake` and the cores).

Pure: builders return an `Envelope`; who sends it where is the caller's business
(`bus.Bus`). The topic each type goes to is in docs/architecture.md, Kafka.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from agentmesh_cli import constants as C
from agentmesh_cli.envelope import Envelope, new_id


def message(sender: str, recipient: str, type: str, payload: dict[str, Any],
            meta: dict[str, Any] | None = None, id: str | None = None) -> Envelope:
    """An agent-to-agent message (`messages` topic, the recipient's inbox partition); `id`
    defaults to a new one."""
    return Envelope(type=type, from_agent_id=sender, to_agent_id=recipient, payload=payload,
                    meta=meta or {}, id=id if id is not None else new_id())


Presence = Literal["agent_joined", "heartbeat", "agent_left"]  # C.EVENT_JOINED, ...
Broadcast = Literal["proposal_opened", "proposal_decided"]  # C.EVENT_OPENED, C.EVENT_DECIDED


def presence(kind: Presence, agent: str, role: str, capabilities: list[str]) -> Envelope:
    """`agent_joined`, `heartbeat` or `agent_left` of `agent` (`topology` topic, key = agent)."""
    return Envelope(type=kind, from_agent_id=agent,
                    payload={"role": role, "capabilities": list(capabilities)})


def new_proposal_id(proposer: str, suffix: str | None = None) -> str:
    """`<proposer>-<12 hex>`: from `suffix` (a derived id, the same on every run of one
    handling) or random."""
    token = (suffix or uuid.uuid4().hex).replace("-", "")
    return f"{proposer}-{token[:12]}"


def proposal(proposer: str, proposal_id: str, type: str, content: dict[str, Any]) -> Envelope:
    """A proposal for Bee consensus (`proposals` topic, key = proposal id)."""
    return Envelope(type=C.EVENT_PROPOSAL, from_agent_id=proposer,
                    payload={"proposal_id": proposal_id, "type": type, "content": content})


def vote(voter: str, proposal_id: str, support: bool, intensity: float) -> Envelope:
    """A vote on an open proposal (`votes` topic, key = proposal id)."""
    return Envelope(type=C.EVENT_VOTE, from_agent_id=voter,
                    payload={"proposal_id": proposal_id, "support": bool(support),
                             "intensity": float(intensity)})


def proposal_broadcast(kind: Broadcast, sender: str, proposal_id: str,
                       record: dict[str, Any]) -> Envelope:
    """`proposal_opened` or `proposal_decided` with the proposal's record (`consensus`
    topic): its id is derived from the proposal, so a broadcast sent again is the same one."""
    return Envelope(type=kind, from_agent_id=sender, payload=record, id=f"{kind}:{proposal_id}")


def manager_mark(sender: str, marker_id: str) -> Envelope:
    """The consensus manager's reconcile marker (`consensus` topic)."""
    return Envelope(type=C.EVENT_MANAGER_MARK, from_agent_id=sender, id=marker_id)


def dead_letter(sender: str, payload: dict[str, Any]) -> Envelope:
    """A record that could not be handled, with why and where it was (`dlq` topic)."""
    return Envelope(type=C.EVENT_DEAD_LETTER, from_agent_id=sender, payload=payload)
