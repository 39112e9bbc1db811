"""What the consensus manager reads, checked, and the votes it holds; pure.

`parse_proposal` and `parse_vote` turn an envelope into what the book needs or raise
InvalidEnvelope saying what does not fit (WrongSender when the record names another
author than its sender: a vote counts for its sender only, a proposal is its sender's).
`EarlyVotes` holds the votes read before their proposal (proposals and votes are two
topics, so a replay can read a vote first), bounded, each with enough of its record to
become a dead letter if its proposal never comes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.consensus.core import PROPOSAL_TYPES
from agentmesh_cli.envelope import Envelope, nests_deeper, shown
from agentmesh_cli.errors import InvalidEnvelope, WrongSender
from agentmesh_cli.records import RAW_PREVIEW_BYTES, Record

MAX_ID_CHARS = 200
MAX_CONTENT_DEPTH = 32  # deeper content could not be broadcast (the encoder's nesting limit)
MAX_EARLY_VOTES = 20_000  # held votes (each keeps at most RAW_PREVIEW_BYTES of its record)


def _check_author(named: Any, sender: str, field: str) -> None:
    """The optional `field` of the payload (the voter, the proposer) must be the sender:
    identity is the envelope's `from_agent_id` (signed with the mesh key when
    security.sign_envelopes is on), never what the payload says."""
    if named is not None and named != sender:
        raise WrongSender(f"{field} {shown(str(named))} is not the sender {shown(sender)}")


def _check_id(pid: Any, what: str) -> str:
    if not isinstance(pid, str) or not pid or len(pid) > MAX_ID_CHARS:
        raise InvalidEnvelope(f"{what} proposal_id missing, empty or longer than {MAX_ID_CHARS} characters")
    return pid


def parse_proposal(event: Envelope) -> tuple[str, str, dict[str, Any]]:
    """(proposal_id, type, content) of a proposal event; InvalidEnvelope if it does not fit.
    The proposer is the sender; a payload `proposer_id` (optional) must name it."""
    p = event.payload
    ptype, content = p.get("type"), p.get("content", {})
    if event.type != C.EVENT_PROPOSAL:
        raise InvalidEnvelope(f"unexpected type {event.type[:64]!r} on the proposals topic")
    pid = _check_id(p.get("proposal_id"), "proposal")
    _check_author(p.get("proposer_id"), event.from_agent_id, "proposal's proposer_id")
    if ptype not in PROPOSAL_TYPES:
        raise InvalidEnvelope(f"proposal type {repr(ptype)[:80]} is not one of {', '.join(PROPOSAL_TYPES)}")
    if not isinstance(content, dict):
        raise InvalidEnvelope("proposal content is not an object")
    if nests_deeper(content, MAX_CONTENT_DEPTH):
        raise InvalidEnvelope(f"proposal content is nested deeper than {MAX_CONTENT_DEPTH} levels")
    return pid, ptype, content


def parse_vote(event: Envelope) -> tuple[str, bool, float]:
    """(proposal_id, support, intensity) of a vote event; InvalidEnvelope if it does not fit.
    The voter is the sender; a payload `voter` (optional) must name it."""
    return vote_fields(event.type, event.from_agent_id, event.payload)


def vote_fields(kind: str, sender: str, p: dict[str, Any]) -> tuple[str, bool, float]:
    """`parse_vote` on the fields of a vote envelope (`envelope.decode_fields`): its type,
    sender and payload."""
    support, intensity = p.get("support"), p.get("intensity", 1.0)
    if kind != C.EVENT_VOTE:
        raise InvalidEnvelope(f"unexpected type {kind[:64]!r} on the votes topic")
    pid = _check_id(p.get("proposal_id"), "vote")
    _check_author(p.get("voter"), sender, "vote's voter")
    if not isinstance(support, bool):
        raise InvalidEnvelope("vote 'support' is not true or false")
    if isinstance(intensity, bool) or not isinstance(intensity, int | float) or not math.isfinite(intensity):
        raise InvalidEnvelope("vote 'intensity' is not a number")
    return pid, support, float(intensity)


@dataclass(frozen=True)
class EarlyVote:
    """A vote held until its proposal opens; `record.value` is cut to RAW_PREVIEW_BYTES and
    `size` is the record's own size (for its dead letter, should the proposal never come)."""

    voter: str
    support: bool
    intensity: float
    held_at: int  # when it was read (epoch ms)
    record: Record
    size: int

    @classmethod
    def of(cls, record: Record, voter: str, support: bool, intensity: float, now: int) -> EarlyVote:
        value = record.value or b""
        return cls(voter, support, intensity, now, record._replace(value=value[:RAW_PREVIEW_BYTES]),
                   len(value))


class EarlyVotes:
    """Held votes by proposal id, at most `limit` in all."""

    def __init__(self, limit: int = MAX_EARLY_VOTES) -> None:
        self.limit = limit
        self.by_id: dict[str, list[EarlyVote]] = {}
        self.count = 0

    def hold(self, pid: str, vote: EarlyVote) -> bool:
        """Hold a vote; False (and nothing held) when `limit` votes are held already."""
        if self.count >= self.limit:
            return False
        self.by_id.setdefault(pid, []).append(vote)
        self.count += 1
        return True

    def pop(self, pid: str) -> list[EarlyVote]:
        votes = self.by_id.pop(pid, [])
        self.count -= len(votes)
        return votes

    def take_older(self, before: int) -> list[tuple[str, EarlyVote]]:
        """Remove the votes of every proposal whose newest held vote was read before `before`:
        that proposal did not come in time."""
        old = [pid for pid, votes in self.by_id.items() if votes[-1].held_at < before]
        return [(pid, vote) for pid in old for vote in self.pop(pid)]

    def take_all(self) -> list[tuple[str, EarlyVote]]:
        return self.take_older(2**63)

    def to_json(self) -> dict[str, list[list[Any]]]:
        # the records' coordinates, not their bytes (a dead letter after a restart carries
        # no preview)
        return {pid: [[v.voter, v.support, v.intensity, v.held_at, v.record.partition,
                       v.record.offset, v.size] for v in votes] for pid, votes in self.by_id.items()}

    @classmethod
    def from_json(cls, data: dict[str, list[list[Any]]]) -> EarlyVotes:
        """Inverse of to_json; also reads [voter, support, intensity, ts] (before coordinates)."""
        early = cls()
        for pid, votes in data.items():
            for item in votes:
                voter, support, intensity, held_at, partition, offset, size = [*item, 0, -1, 0][:7]
                record = Record(C.TOPIC_VOTES, int(partition), int(offset), None, None)
                early.by_id.setdefault(str(pid), []).append(
                    EarlyVote(str(voter), bool(support), float(intensity), int(held_at), record, int(size)))
                early.count += 1
        return early
