"""The consensus manager's cheaper paths give what the plain ones give: a vote read with
`decode_fields` + `vote_fields` (no Envelope built) parses, or is refused with the same
reason, as with `Envelope.decode` + `parse_vote`; a snapshot made by `PendingRecords`
(reusing records encoded earlier) holds exactly the pending proposals' records."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from agentmesh_cli import events
from agentmesh_cli.consensus.core import Proposal, ProposalBook
from agentmesh_cli.consensus.intake import parse_vote, vote_fields
from agentmesh_cli.consensus.snapshot import PendingRecords, encode, record_of
from agentmesh_cli.envelope import Envelope, decode_fields
from agentmesh_cli.errors import InvalidEnvelope

T0 = 1_700_000_000_000
GOOD = events.vote("Sales", "p1", True, 0.8).encode()


def _with(payload: dict[str, Any], **envelope: Any) -> bytes:
    data = {**orjson.loads(GOOD), **envelope}
    data["payload"] = payload
    return orjson.dumps(data)


@pytest.mark.parametrize("raw", [
    GOOD,
    events.vote("Sales", "p1", False, 1).encode(),
    _with({"proposal_id": "p1", "support": True}),                       # intensity defaults to 1.0
    _with({"proposal_id": "p1", "support": True, "voter": "Sales"}),
    None, b"", b"{", b"[1]", GOOD + b" " * 300,                          # decode reasons
    _with({"proposal_id": "p1", "support": True}, v=2),
    _with({"proposal_id": "p1", "support": True}, type="proposal"),
    _with({"support": True}),
    _with({"proposal_id": "x" * 201, "support": True}),
    _with({"proposal_id": "p1", "support": True, "voter": "Fraud"}),      # WrongSender
    _with({"proposal_id": "p1", "support": 1}),
    _with({"proposal_id": "p1", "support": True, "intensity": True}),
    _with({"proposal_id": "p1", "support": True, "intensity": "high"}),
])
def test_vote_fields_match_parse_vote(raw: bytes | None) -> None:
    def plain() -> tuple[str, Any]:
        event = Envelope.decode(raw, 256)
        return event.from_agent_id, parse_vote(event)

    def hot() -> tuple[str, Any]:
        data = decode_fields(raw, 256)
        sender = data["from_agent_id"]
        return sender, vote_fields(data["type"], sender, data.get("payload", {}))

    outcomes = []
    for path in (plain, hot):
        try:
            outcomes.append(path())
        except InvalidEnvelope as exc:
            outcomes.append((type(exc).__name__, str(exc)))
    assert outcomes[0] == outcomes[1]


def _book() -> tuple[ProposalBook, list[Proposal]]:
    book = ProposalBook(0.6, 30_000)
    opened = [book.open(f"p{i}", "cli", "decision", {"type": "approval"}, ["a", "b", "c", "d"], T0 + i)
              for i in range(4)]
    assert all(p is not None for p in opened)
    return book, [p for p in opened if p is not None]


def _snapshot_proposals(data: bytes) -> dict[str, dict[str, Any]]:
    return {p["id"]: p for p in json.loads(data)["proposals"]}


def test_snapshot_holds_every_pending_record() -> None:
    book, proposals = _book()
    records = PendingRecords()
    data = records.snapshot(book.pending_proposals(), {"v": 1, "offsets": {"votes": {"0": 7}}})
    loaded = json.loads(data)
    assert loaded["v"] == 1 and loaded["offsets"] == {"votes": {"0": 7}}
    assert _snapshot_proposals(data) == {p.id: json.loads(json.dumps(record_of(p))) for p in proposals}
    assert [Proposal.from_dict(p) for p in loaded["proposals"]] == proposals  # "tally" is ignored
    assert len(records) == 4


def test_snapshot_reuses_unchanged_records_and_drops_decided_ones() -> None:
    book, (p0, p1, p2, p3) = _book()
    records = PendingRecords()
    records.snapshot(book.pending_proposals(), {})
    book.vote("p1", "a", True, 1.0, T0 + 10)                 # changed: encoded as it comes
    assert records.encode([p1]) == [encode(p1)]
    for voter in "abc":
        book.vote("p2", voter, True, 1.0, T0 + 11)           # decided: leaves the snapshot
    p0.late_votes = 99                                       # changed behind its back: not seen
    replaced = Proposal.from_dict({**p3.to_dict(), "late_votes": 5})
    book.restore(replaced)                                   # another object: encoded again
    data = records.snapshot(book.pending_proposals(), {})
    got = _snapshot_proposals(data)
    assert sorted(got) == ["p0", "p1", "p3"] and len(records) == 3
    assert got["p0"]["late_votes"] == 0                      # the record as encoded before
    assert got["p1"]["votes"]["a"]["support"] is True and got["p1"]["tally"]["for"] == 1
    assert got["p3"]["late_votes"] == 5
