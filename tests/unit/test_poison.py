"""What the consensus intake refuses, by tables: proposal and vote records that do not fit, and the
bounded early votes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentmesh_cli import constants as C
from agentmesh_cli.consensus.intake import EarlyVote, EarlyVotes, parse_proposal, parse_vote
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.errors import InvalidEnvelope
from agentmesh_cli.records import Record
from tests.helpers.tables import NO_ID, deep

# -- the consensus manager's intake, pure ---------------------------------------------


def event(kind: str = C.EVENT_PROPOSAL, /, **payload: Any) -> Envelope:
    return Envelope(type=kind, from_agent_id="Sales", payload=payload)


@pytest.mark.parametrize(
    ("envelope", "reason"),
    [
        (event(proposal_id="p", type="decision", content={"a": [1]}), None),
        (event(proposal_id="p", type="action", content=deep(32)), None),
        (event("vote", proposal_id="p", type="decision"), "unexpected type 'vote' on the proposals topic"),
        (event(type="decision"), f"proposal {NO_ID}"),
        (event(proposal_id=5, type="decision"), f"proposal {NO_ID}"),
        (event(proposal_id="p" * 201, type="decision"), f"proposal {NO_ID}"),
        (event(proposal_id="p", type="poll"),
         "proposal type 'poll' is not one of decision, action, topology"),
        (event(proposal_id="p", type=["decision"]),
         "proposal type ['decision'] is not one of decision, action, topology"),
        (event(proposal_id="p", type="decision", content=[1]), "proposal content is not an object"),
        (event(proposal_id="p", type="decision", content=deep(33)),
         "proposal content is nested deeper than 32 levels"),
    ],
)
def test_proposal_records_that_do_not_fit(envelope: Envelope, reason: str | None) -> None:
    if reason is None:
        assert parse_proposal(envelope)[0] == "p"
        return
    with pytest.raises(InvalidEnvelope) as caught:
        parse_proposal(envelope)
    assert str(caught.value) == reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"proposal_id": "p", "support": True}, None),
        ({"proposal_id": "p", "support": False, "intensity": 0}, None),
        ({"support": True}, f"vote {NO_ID}"),
        ({"proposal_id": "", "support": True}, f"vote {NO_ID}"),
        ({"proposal_id": "p", "support": "yes"}, "vote 'support' is not true or false"),
        ({"proposal_id": "p", "support": True, "intensity": "high"}, "vote 'intensity' is not a number"),
        ({"proposal_id": "p", "support": True, "intensity": True}, "vote 'intensity' is not a number"),
    ],
)
def test_vote_records_that_do_not_fit(payload: dict[str, Any], reason: str | None) -> None:
    envelope = event(C.EVENT_VOTE, **payload)
    if reason is None:
        assert parse_vote(envelope)[:2] == ("p", payload["support"])
        return
    with pytest.raises(InvalidEnvelope) as caught:
        parse_vote(envelope)
    assert str(caught.value) == reason


def test_early_votes_are_bounded_and_keep_their_records() -> None:
    early = EarlyVotes(limit=3)
    record = Record(C.TOPIC_VOTES, 0, 9, None, b"x" * 5000)
    assert early.hold("p1", EarlyVote.of(record, "A", True, 0.5, 100))
    assert early.hold("p1", EarlyVote.of(record, "B", False, 1.0, 300))
    assert early.hold("p2", EarlyVote.of(record, "A", True, 0.5, 200))
    assert not early.hold("p3", EarlyVote.of(record, "A", True, 0.5, 200))  # full
    vote = early.by_id["p1"][0]
    assert (vote.size, len(vote.record.value or b"")) == (5000, 4096)  # a dead letter's preview
    restored = EarlyVotes.from_json(json.loads(json.dumps(early.to_json())))
    assert restored.count == 3
    # a proposal's votes go when its newest vote is too old: p2 (200) now, p1 (300) not yet
    assert [(pid, v.voter, v.record.offset, v.size) for pid, v in restored.take_older(250)] == [
        ("p2", "A", 9, 5000)]
    assert restored.count == 2 and [pid for pid, _ in restored.take_all()] == ["p1", "p1"]
    old = EarlyVotes.from_json({"p": [["A", True, 0.5, 100]]})  # before records were kept
    assert [(v.voter, v.held_at, v.record.offset) for v in old.pop("p")] == [("A", 100, -1)]


# -- real roles ------------------------------------------------------------------------


# -- hypothesis: more than 10,000 generated records at each reader ---------------------


