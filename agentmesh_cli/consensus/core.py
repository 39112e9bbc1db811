"""The pure Bee consensus core: the waggle dance and the proposal state machine.

A proposal carries a waggle dance (how loudly it is announced, derived from its
content) and is decided by the votes of an electorate frozen when it is opened:
ACCEPTED as soon as the supporting votes reach the quorum, REJECTED as soon as
they no longer can, EXPIRED at its timeout. A proposal is decided exactly once.

This module has no I/O and no clock: times are epoch milliseconds passed in, so
the consensus manager owns time, Kafka and Redis, and this core stays testable.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any

from agentmesh_cli.errors import ConsensusError

PROPOSAL_TYPES = ("decision", "action", "topology")

_PRIORITY = {"critical": 0.9, "high": 0.9, "medium": 0.6, "low": 0.3}
_ANGLE = {"approval": 90.0, "rejection": 270.0, "action": 180.0, "topology": 0.0}
_DEFAULT_ANGLE = 180.0


def _number(value: Any) -> float | None:
    """The value as a float if it is a finite int or float (bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


# -- waggle dance ---------------------------------------------------------------


@dataclass(frozen=True)
class Waggle:
    """How a proposal is danced: loudness, length, direction and repeats."""

    intensity: float
    duration_ms: int
    angle: float
    repetitions: int

    def as_dict(self) -> dict[str, Any]:
        # by hand: dataclasses.asdict deep-copies, and this runs for every broadcast
        return {"intensity": self.intensity, "duration_ms": self.duration_ms, "angle": self.angle,
                "repetitions": self.repetitions}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Waggle:
        return cls(float(data["intensity"]), int(data["duration_ms"]), float(data["angle"]),
                   int(data["repetitions"]))


def _intensity(content: Mapping[str, Any]) -> float:
    i = 0.5
    priority = content.get("priority")
    if isinstance(priority, str):
        i = _PRIORITY.get(priority, i)
    if content.get("urgent") is True:
        i = min(1.0, i + 0.2)
    if (confidence := _number(content.get("confidence"))) is not None:
        i = (i + confidence) / 2
    # log10 is undefined at a <= -1: such an amount says nothing, so the step is skipped.
    if (amount := _number(content.get("amount"))) is not None and amount > -1:
        i = (i + min(1.0, math.log10(amount + 1) / 10)) / 2
    return max(0.0, min(1.0, i))


def _angle(content: Mapping[str, Any]) -> float:
    kind = content.get("type")
    angle = _ANGLE.get(kind, _DEFAULT_ANGLE) if isinstance(kind, str) else _DEFAULT_ANGLE
    if (quality := _number(content.get("quality"))) is not None:
        angle += (quality - 0.5) * 90
    return angle % 360


def waggle_dance(content: Mapping[str, Any]) -> Waggle:
    """The waggle dance of a proposal's content (the formula is a contract)."""
    i = _intensity(content)
    return Waggle(intensity=i, duration_ms=int(i * 1000), angle=_angle(content),
                  repetitions=max(1, int(i * 10)))


# -- proposals ------------------------------------------------------------------


def needed_votes(quorum: float, electorate: int) -> int:
    """Smallest k with k / electorate >= quorum (0 for an empty electorate)."""
    if electorate == 0:
        return 0
    # Rounding first keeps 0.28 * 25 = 7.000000000000001 from needing 8 votes.
    return max(1, math.ceil(round(quorum * electorate, 9)))


class Status(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    EXPIRED = "expired"


class VoteResult(StrEnum):
    COUNTED = "counted"
    REPLACED = "replaced"
    NOT_MEMBER = "not_member"
    UNKNOWN = "unknown"
    LATE = "late"


@dataclass(frozen=True)
class Ballot:
    """One voter's current vote."""

    support: bool
    intensity: float
    ts: int


@dataclass
class Proposal:
    """A proposal, its frozen electorate and the votes so far."""

    id: str
    proposer_id: str
    type: str
    content: dict[str, Any]
    waggle: Waggle
    electorate: list[str]
    quorum: float
    created_at: int
    expires_at: int
    votes: dict[str, Ballot] = field(default_factory=dict)
    status: Status = Status.PENDING
    decided_at: int | None = None
    late_votes: int = 0

    @property
    def needed(self) -> int:
        """Smallest k with k / n >= quorum (0 for an empty electorate)."""
        return needed_votes(self.quorum, len(self.electorate))

    @cached_property
    def members(self) -> frozenset[str]:
        """The electorate as a set (it is frozen at opening), for membership at any size."""
        return frozenset(self.electorate)

    @property
    def support(self) -> int:
        return sum(1 for b in self.votes.values() if b.support)

    @property
    def oppose(self) -> int:
        return sum(1 for b in self.votes.values() if not b.support)

    def tally(self) -> dict[str, Any]:
        return {"for": self.support, "against": self.oppose, "needed": self.needed,
                "electorate": len(self.electorate), "voted": len(self.votes)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form; from_dict(to_dict()) equals the original."""
        return {
            "id": self.id, "proposer_id": self.proposer_id, "type": self.type,
            "content": dict(self.content), "waggle": self.waggle.as_dict(),
            "electorate": list(self.electorate), "quorum": self.quorum,
            "created_at": self.created_at, "expires_at": self.expires_at,
            "votes": {v: {"support": b.support, "intensity": b.intensity, "ts": b.ts}
                      for v, b in self.votes.items()},
            "status": self.status.value, "decided_at": self.decided_at, "late_votes": self.late_votes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Proposal:
        """Inverse of to_dict; extra keys (e.g. a broadcast's "tally") are ignored."""
        decided_at = data.get("decided_at")
        return cls(
            id=str(data["id"]), proposer_id=str(data["proposer_id"]), type=str(data["type"]),
            content=dict(data["content"]), waggle=Waggle.from_dict(data["waggle"]),
            electorate=[str(v) for v in data["electorate"]], quorum=float(data["quorum"]),
            created_at=int(data["created_at"]), expires_at=int(data["expires_at"]),
            votes={str(v): Ballot(bool(b["support"]), float(b["intensity"]), int(b["ts"]))
                   for v, b in data.get("votes", {}).items()},
            status=Status(data.get("status", Status.PENDING)),
            decided_at=None if decided_at is None else int(decided_at),
            late_votes=int(data.get("late_votes", 0)),
        )


# -- the book -------------------------------------------------------------------


class _Open:
    """What the book keeps of a pending proposal so that a vote costs the same at any
    electorate size: the supports it needs, and how many of its ballots support it."""

    __slots__ = ("proposal", "needed", "support")

    def __init__(self, proposal: Proposal) -> None:
        self.proposal = proposal
        self.needed = proposal.needed
        self.support = proposal.support


class ProposalBook:
    """Every known proposal by id, with the rules that decide them."""

    def __init__(self, quorum: float, timeout_ms: int) -> None:
        if not 0 < quorum <= 1:
            raise ConsensusError(f"quorum must be in (0, 1], got {quorum!r}")
        if timeout_ms < 0:
            raise ConsensusError(f"proposal timeout must not be negative, got {timeout_ms!r} ms")
        self.quorum = quorum
        self.timeout_ms = timeout_ms
        self.counts: Counter[str] = Counter()
        self._all: dict[str, Proposal] = {}
        # Pending proposals only, so a vote finds its running tally at once.
        self._pending: dict[str, _Open] = {}
        # Heaps of (expires_at, id) of pending proposals and (decided_at, id) of decided
        # ones, so expire() (every loop turn) and forget_decided() (every snapshot) touch only
        # what is due, not every proposal. An entry whose proposal was decided, forgotten or
        # replaced since is skipped when it comes up.
        self._expiries: list[tuple[int, str]] = []
        self._decisions: list[tuple[int, str]] = []

    def open(self, proposal_id: str, proposer_id: str, type: str, content: dict[str, Any],
             electorate: Iterable[str], now: int) -> Proposal | None:
        """Open a proposal; None (and no change) if its id is already in the book."""
        if type not in PROPOSAL_TYPES:
            raise ConsensusError(f"proposal type {type!r} is not one of {', '.join(PROPOSAL_TYPES)}")
        if proposal_id in self._all:
            self.counts["duplicate"] += 1
            return None
        proposal = Proposal(id=proposal_id, proposer_id=proposer_id, type=type, content=dict(content),
                            waggle=waggle_dance(content), electorate=sorted(set(electorate)),
                            quorum=self.quorum, created_at=now, expires_at=now + self.timeout_ms)
        self._all[proposal_id] = proposal
        self._track_pending(proposal)
        self.counts["opened"] += 1
        # needed is 0 for nobody, but nobody can ever vote for it: it can never pass.
        if not proposal.electorate:
            self._decide(proposal, Status.REJECTED, now)
        return proposal

    def vote(self, proposal_id: str, voter: str, support: bool, intensity: float,
             now: int) -> tuple[VoteResult, Proposal | None]:
        """Record a vote; the proposal is returned only when this call decided it."""
        result, decided = self._vote(proposal_id, voter, support, intensity, now)
        self.counts[result.value] += 1
        return result, decided

    def _vote(self, proposal_id: str, voter: str, support: bool, intensity: float,
              now: int) -> tuple[VoteResult, Proposal | None]:
        tally = self._pending.get(proposal_id)
        if tally is None:
            proposal = self._all.get(proposal_id)
            if proposal is None:
                return VoteResult.UNKNOWN, None
            proposal.late_votes += 1
            return VoteResult.LATE, None
        proposal = tally.proposal
        if now >= proposal.expires_at:
            self._decide(proposal, Status.EXPIRED, proposal.expires_at)
            proposal.late_votes += 1
            # An expiry this call found is still a decision the caller must hear about.
            return VoteResult.LATE, proposal
        if voter not in proposal.members:
            return VoteResult.NOT_MEMBER, None
        support = bool(support)
        earlier = proposal.votes.get(voter)
        proposal.votes[voter] = Ballot(support, float(intensity), now)
        tally.support += support - (earlier is not None and earlier.support)
        if tally.support >= tally.needed:
            self._decide(proposal, Status.ACCEPTED, now)
        elif tally.support + (len(proposal.electorate) - len(proposal.votes)) < tally.needed:
            self._decide(proposal, Status.REJECTED, now)
        result = VoteResult.COUNTED if earlier is None else VoteResult.REPLACED
        return result, (None if proposal.status is Status.PENDING else proposal)

    def expire(self, now: int) -> list[Proposal]:
        """Expire every pending proposal whose time is up; returns them by (expires_at, id)."""
        due = []
        while self._expiries and self._expiries[0][0] <= now:
            at, pid = heapq.heappop(self._expiries)
            tally = self._pending.get(pid)
            if tally is not None and tally.proposal.expires_at == at:
                due.append(tally.proposal)
                self._decide(tally.proposal, Status.EXPIRED, at)
        return due

    def _track_pending(self, proposal: Proposal) -> None:
        self._pending[proposal.id] = _Open(proposal)
        heapq.heappush(self._expiries, (proposal.expires_at, proposal.id))
        # proposals decided by votes leave their entry behind until it is due: rebuild
        # the heap when those are most of it (amortised, so its size stays bounded)
        if len(self._expiries) > 2 * len(self._pending) + 1000:
            self._expiries = [(t.proposal.expires_at, pid) for pid, t in self._pending.items()]
            heapq.heapify(self._expiries)

    def _decide(self, proposal: Proposal, status: Status, at: int) -> None:
        proposal.status, proposal.decided_at = status, at
        self._pending.pop(proposal.id, None)
        heapq.heappush(self._decisions, (at, proposal.id))
        self.counts[status.value] += 1

    def get(self, proposal_id: str) -> Proposal | None:
        return self._all.get(proposal_id)

    def all(self) -> list[Proposal]:
        """Every proposal in the book, by (created_at, id)."""
        return sorted(self._all.values(), key=lambda p: (p.created_at, p.id))

    def pending(self) -> list[Proposal]:
        """The undecided proposals, by (created_at, id)."""
        return sorted((t.proposal for t in self._pending.values()), key=lambda p: (p.created_at, p.id))

    def pending_proposals(self) -> list[Proposal]:
        """The undecided proposals, in no particular order (no sort: for a snapshot)."""
        return [t.proposal for t in self._pending.values()]

    def pending_count(self) -> int:
        return len(self._pending)

    def restore(self, proposal: Proposal) -> None:
        """Put a known proposal (from a snapshot or a broadcast) back as it is; replaces one with its id."""
        self._all[proposal.id] = proposal
        if proposal.status is Status.PENDING:
            self._track_pending(proposal)
            return
        self._pending.pop(proposal.id, None)
        if proposal.decided_at is not None:
            heapq.heappush(self._decisions, (proposal.decided_at, proposal.id))

    def forget_decided(self, before: int) -> int:
        """Drop decided proposals with decided_at < before; returns how many."""
        forgotten = 0
        while self._decisions and self._decisions[0][0] < before:
            at, pid = heapq.heappop(self._decisions)
            proposal = self._all.get(pid)
            if proposal is not None and proposal.status is not Status.PENDING and proposal.decided_at == at:
                del self._all[pid]
                forgotten += 1
        return forgotten


def electorate_of(fresh: dict[str, dict[str, Any]]) -> list[str]:
    """The voters among the freshly registered agents: every agent alone, and one delegate
    per replica group (its lowest-numbered replica), so that a group has one vote."""
    delegates: dict[str, tuple[int, str]] = {}
    alone = []
    for name, record in fresh.items():
        group = record.get("group")
        if not group:
            alone.append(name)
            continue
        index = record.get("replica")
        rank = (index if isinstance(index, int) else 1 << 30, name)
        if group not in delegates or rank < delegates[str(group)]:
            delegates[str(group)] = rank
    return sorted([*alone, *(name for _, name in delegates.values())])
