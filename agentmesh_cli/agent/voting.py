"""Bee consensus on the agent's side: read the manager's broadcasts, vote on the proposals
this agent may vote on (`Role.evaluate`), tell the role of decisions (`on_decision`).

Sync hooks run as the broadcast is read. Async ones run in one worker task, one
broadcast at a time, in order; their records are finished (for the offset commit) when
the worker is done with them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from agentmesh_cli import constants as C
from agentmesh_cli import events
from agentmesh_cli.agent.base import Vote
from agentmesh_cli.consensus.core import Proposal
from agentmesh_cli.envelope import Envelope, RecentIds, now_ms
from agentmesh_cli.errors import InvalidEnvelope
from agentmesh_cli.records import Record

if TYPE_CHECKING:
    from agentmesh_cli.agent.runtime import AgentRuntime
    from agentmesh_cli.agent.settle import Finished

BROADCASTS_REMEMBERED = 10_000  # consensus broadcast ids kept to recognise copies


class Voting:
    def __init__(self, rt: AgentRuntime) -> None:
        self.rt = rt
        self.broadcasts = RecentIds(BROADCASTS_REMEMBERED)  # broadcasts seen
        self.queue: asyncio.Queue[tuple[Envelope, Proposal, Record]] | None = None
        self.pending: deque[Finished] = deque()  # records the worker finishes, in order
        if rt.is_async["evaluate"] or rt.is_async["on_decision"]:
            self.queue = asyncio.Queue()

    def take(self, record: Record, finished: Finished) -> bool:
        """Vote on opened proposals this agent may vote on; tell the role of decisions.
        True when an async hook will finish the record later."""
        if record.forged is not None:  # not the manager's: a forged decision or opening
            self.rt.counts["consensus_invalid"] += 1
            self.rt.refuse(record, record.forged)
            return False
        try:
            event = Envelope.decode(record.value, max_bytes=self.rt.mesh.config.kafka.max_record_bytes)
            if event.type == C.EVENT_MANAGER_MARK:
                return False
            if event.type not in (C.EVENT_OPENED, C.EVENT_DECIDED):
                raise InvalidEnvelope(f"unexpected type {event.type[:64]!r} on the consensus topic")
            proposal = Proposal.from_dict(event.payload)
            if not self.broadcasts.add(event.id):  # sent again after a broker restart
                self.rt.counts["consensus_duplicates"] += 1
                return False
        except Exception as exc:  # whatever a hostile record makes from_dict raise
            # the manager is the only writer: whatever else is here is dead-lettered by
            # every agent that reads it (the dead letter names the agent)
            self.rt.counts["consensus_invalid"] += 1
            self.rt.dead_letter(record, f"not a consensus broadcast: {exc}")
            return False
        hook = "on_decision" if event.type == C.EVENT_DECIDED else "evaluate"
        if self.queue is not None and self.rt.is_async[hook]:
            self.queue.put_nowait((event, proposal, record))
            self.pending.append(finished)
            return True
        if event.type == C.EVENT_DECIDED:
            self.rt.safely_sync("on_decision", self.rt.role.on_decision, proposal)
        elif self.may_vote(proposal):
            try:
                vote = self.rt.role.evaluate(proposal)
            except Exception:  # a role's bug must not stop the agent; it abstains
                self.rt.log.exception("evaluate raised on %s", proposal.id)
                return False
            self.vote(proposal, vote)
        return False

    def may_vote(self, proposal: Proposal) -> bool:
        # not ours to vote on, or already over (an agent catching up)
        return self.rt.name in proposal.electorate and now_ms() < proposal.expires_at

    def vote(self, proposal: Proposal, vote: Vote | None) -> None:
        if vote is None:
            return
        ballot = events.vote(self.rt.name, proposal.id, vote.support, vote.intensity)
        self.rt.bus.send(C.TOPIC_VOTES, ballot, key=proposal.id)
        self.rt.counts["votes"] += 1
        self.rt.nudge()

    async def worker(self) -> None:
        """The async `evaluate` and `on_decision`, one broadcast at a time, in order."""
        assert self.queue is not None
        while True:
            event, proposal, _record = await self.queue.get()
            if event.type == C.EVENT_DECIDED:
                await self.rt.hook("on_decision", proposal)
            elif self.may_vote(proposal):
                self.vote(proposal, await self.rt.hook("evaluate", proposal))
            self.rt.settlement.finish(self.pending.popleft())

