"""What the consensus manager stores, encoded once; pure.

A proposal's record (Redis, and the payload of its broadcasts) is the proposal plus its
tally (`record_of`). `PendingRecords` keeps the encoded record of every pending proposal
as it was last written, so that a snapshot re-encodes only the proposals that changed
since (a pending proposal of a large electorate is kilobytes: re-encoding every one each
second made the snapshot's cost grow with the book and the electorate). The snapshot's
pending proposals are those records (`Proposal.from_dict` ignores their "tally").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import orjson

from agentmesh_cli.consensus.core import Proposal


def record_of(proposal: Proposal) -> dict[str, Any]:
    """What Redis and the consensus topic carry: the proposal plus its tally."""
    return {**proposal.to_dict(), "tally": proposal.tally()}


class Encoded(NamedTuple):
    """A proposal's record as Redis stores it."""

    id: str
    created_at: int
    data: bytes


def encode(proposal: Proposal) -> Encoded:
    return Encoded(proposal.id, proposal.created_at, orjson.dumps(record_of(proposal)))


class PendingRecords:
    """The encoded record of each pending proposal, as last encoded."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[Proposal, Encoded]] = {}

    def encode(self, proposals: Iterable[Proposal]) -> list[Encoded]:
        """Encode the records of these (changed) proposals now, and remember them."""
        fresh = []
        for proposal in proposals:
            encoded = encode(proposal)
            self._known[proposal.id] = (proposal, encoded)
            fresh.append(encoded)
        return fresh

    def snapshot(self, pending: Iterable[Proposal], header: dict[str, Any]) -> bytes:
        """The snapshot: `header` plus "proposals", the records of `pending` (every pending
        proposal). A remembered record is reused when its proposal is still the same object
        (its changes are `encode`d as they come); one not remembered is encoded now, and
        the records of proposals no longer pending are forgotten."""
        known, self._known = self._known, {}
        for proposal in pending:
            entry = known.get(proposal.id)
            if entry is None or entry[0] is not proposal:
                entry = (proposal, encode(proposal))
            self._known[proposal.id] = entry
        parts = [orjson.Fragment(encoded.data) for _, encoded in self._known.values()]
        return orjson.dumps({**header, "proposals": parts})

    def __len__(self) -> int:
        return len(self._known)
