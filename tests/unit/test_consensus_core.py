"""Exact tables for the Bee consensus core (agentmesh_cli.consensus.core)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentmesh_cli.consensus.core import (
    PROPOSAL_TYPES,
    Ballot,
    Proposal,
    ProposalBook,
    Status,
    VoteResult,
    Waggle,
    waggle_dance,
)
from agentmesh_cli.errors import ConsensusError

T0 = 1_700_000_000_000  # a fixed clock, epoch ms
TIMEOUT = 30_000


def book(quorum: float = 0.6, timeout_ms: int = TIMEOUT) -> ProposalBook:
    return ProposalBook(quorum, timeout_ms)


def opened(b: ProposalBook, voters: list[str], pid: str = "p1", now: int = T0) -> Proposal:
    proposal = b.open(pid, "proposer", "decision", {"type": "approval"}, voters, now)
    assert proposal is not None
    return proposal


# -- waggle dance -----------------------------------------------------------------


@pytest.mark.parametrize("content, intensity, duration_ms, angle, repetitions", [
    ({}, 0.5, 500, 180, 5),
    ({"type": "approval", "amount": 50000, "priority": "high", "urgent": True, "confidence": 0.8},
     0.6849489345069399, 684, 90, 6),
    ({"priority": "low", "type": "rejection", "quality": 0.9}, 0.3, 300, 306, 3),
    ({"type": "topology", "quality": 0}, 0.5, 500, 315, 5),
    ({"priority": "medium"}, 0.6, 600, 180, 6),
    ({"priority": "critical"}, 0.9, 900, 180, 9),
    ({"priority": "high", "urgent": True}, 1.0, 1000, 180, 10),
    ({"priority": "unheard-of"}, 0.5, 500, 180, 5),
    ({"priority": "HIGH"}, 0.5, 500, 180, 5),
    ({"urgent": True}, 0.7, 700, 180, 7),
    ({"confidence": 0.9}, 0.7, 700, 180, 7),
    ({"confidence": 0}, 0.25, 250, 180, 2),
    ({"amount": 0}, 0.25, 250, 180, 2),
    ({"amount": 9}, 0.3, 300, 180, 3),                     # log10(10) / 10 = 0.1
    ({"amount": 1e30}, 0.75, 750, 180, 7),                 # the amount term caps at 1
    ({"amount": -1}, 0.5, 500, 180, 5),                    # log undefined: step skipped
    ({"amount": -5}, 0.5, 500, 180, 5),
    ({"confidence": 5}, 1.0, 1000, 180, 10),               # clamped to 1
    ({"confidence": -3}, 0.0, 0, 180, 1),                  # clamped to 0, at least one repetition
    ({"urgent": "yes"}, 0.5, 500, 180, 5),                 # only True is urgent
    ({"urgent": 1}, 0.5, 500, 180, 5),
    ({"confidence": True}, 0.5, 500, 180, 5),              # bool is not a number
    ({"amount": False}, 0.5, 500, 180, 5),
    ({"quality": True, "type": "approval"}, 0.5, 500, 90, 5),
    ({"confidence": "0.9"}, 0.5, 500, 180, 5),             # a string is not a number
    ({"confidence": float("nan")}, 0.5, 500, 180, 5),      # not finite: ignored
    ({"amount": float("inf")}, 0.5, 500, 180, 5),
    ({"type": "rejection", "quality": 1.0}, 0.5, 500, 315, 5),
    ({"type": "approval", "quality": 0}, 0.5, 500, 45, 5),
    ({"type": "action"}, 0.5, 500, 180, 5),
    ({"type": "whatever"}, 0.5, 500, 180, 5),
    ({"type": ["approval"]}, 0.5, 500, 180, 5),            # unhashable type value: the default
    ({"type": "topology", "quality": -1}, 0.5, 500, 225, 5),  # -135 normalised into [0, 360)
    ({"type": "rejection", "quality": 2.5}, 0.5, 500, 90, 5),  # 270 + 180 = 450 -> 90
])
def test_waggle_table(content: dict[str, Any], intensity: float, duration_ms: int, angle: float,
                      repetitions: int) -> None:
    w = waggle_dance(content)
    assert w.intensity == intensity
    assert w.duration_ms == duration_ms
    assert w.angle == pytest.approx(angle, abs=1e-9)
    assert 0 <= w.angle < 360
    assert w.repetitions == repetitions


def test_waggle_contract_rows_exact() -> None:
    big = waggle_dance({"type": "approval", "amount": 50000, "priority": "high", "urgent": True,
                        "confidence": 0.8})
    assert big == Waggle(0.6849489345069399, 684, 90.0, 6)
    assert waggle_dance({}) == Waggle(0.5, 500, 180.0, 5)
    low = waggle_dance({"priority": "low", "type": "rejection", "quality": 0.9})
    assert (low.intensity, low.duration_ms, low.repetitions) == (0.3, 300, 3)


def test_waggle_dict_round_trip() -> None:
    w = waggle_dance({"priority": "low", "type": "rejection", "quality": 0.9})
    assert Waggle.from_dict(json.loads(json.dumps(w.as_dict()))) == w
    assert w.as_dict() == {"intensity": 0.3, "duration_ms": 300, "angle": w.angle, "repetitions": 3}


# -- needed -----------------------------------------------------------------------


@pytest.mark.parametrize("quorum, needed", [
    (0.6, [0, 1, 2, 2, 3, 3, 4, 5, 5, 6, 6]),
    (1.0, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
    (0.5, [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]),
    (0.7, [0, 1, 2, 3, 3, 4, 5, 5, 6, 7, 7]),
    (1e-12, [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),  # a positive quorum needs at least one vote
])
def test_needed_table(quorum: float, needed: list[int]) -> None:
    b = book(quorum)
    got = [opened(b, [f"a{i}" for i in range(n)], pid=f"p{n}").needed for n in range(11)]
    assert got == needed


@pytest.mark.parametrize("quorum, n, needed", [
    (0.28, 25, 7),   # 0.28 * 25 = 7.000000000000001 in floats
    (0.56, 25, 14),  # 0.56 * 25 = 14.000000000000002
    (0.6, 5, 3),
])
def test_needed_is_robust_against_float_error(quorum: float, n: int, needed: int) -> None:
    assert opened(book(quorum), [f"a{i}" for i in range(n)]).needed == needed


# -- decisions --------------------------------------------------------------------


VOTERS4 = ["a", "b", "c", "d"]


def test_four_voters_accept_on_third_support_not_before() -> None:
    b = book()
    p = opened(b, VOTERS4)
    assert p.needed == 3
    for i, voter in enumerate(["a", "b"]):
        assert b.vote("p1", voter, True, 1.0, T0 + i) == (VoteResult.COUNTED, None)
        assert p.status is Status.PENDING and p.decided_at is None
    result, decided = b.vote("p1", "c", True, 1.0, T0 + 10)
    assert (result, decided) == (VoteResult.COUNTED, p)
    assert p.status is Status.ACCEPTED and p.decided_at == T0 + 10
    assert p.tally() == {"for": 3, "against": 0, "needed": 3, "electorate": 4, "voted": 3}
    assert b.counts["accepted"] == 1 and b.counts["counted"] == 3
    assert b.pending() == []


def test_four_voters_reject_on_second_opposition() -> None:
    b = book()
    p = opened(b, VOTERS4)
    assert b.vote("p1", "a", False, 1.0, T0 + 1) == (VoteResult.COUNTED, None)
    assert p.status is Status.PENDING
    assert b.vote("p1", "b", False, 1.0, T0 + 2) == (VoteResult.COUNTED, p)
    assert p.status is Status.REJECTED and p.decided_at == T0 + 2
    assert b.counts["rejected"] == 1


def test_five_voters_two_against_then_three_for_accepts_on_fifth() -> None:
    b = book()
    p = opened(b, ["a", "b", "c", "d", "e"])
    assert p.needed == 3
    votes = [("a", False), ("b", False), ("c", True), ("d", True)]
    for i, (voter, support) in enumerate(votes):
        assert b.vote("p1", voter, support, 0.5, T0 + i) == (VoteResult.COUNTED, None)
        assert p.status is Status.PENDING
    assert b.vote("p1", "e", True, 0.5, T0 + 9) == (VoteResult.COUNTED, p)
    assert p.status is Status.ACCEPTED and p.decided_at == T0 + 9
    assert (p.support, p.oppose) == (3, 2)


@pytest.mark.parametrize("vote_at, result, status", [
    (T0 + TIMEOUT - 1, VoteResult.COUNTED, Status.PENDING),
    (T0 + TIMEOUT, VoteResult.LATE, Status.EXPIRED),
    (T0 + TIMEOUT + 5_000, VoteResult.LATE, Status.EXPIRED),
])
def test_vote_around_the_timeout(vote_at: int, result: VoteResult, status: Status) -> None:
    b = book()
    p = opened(b, VOTERS4)
    got, decided = b.vote("p1", "a", True, 1.0, vote_at)
    assert got is result and p.status is status
    if status is Status.EXPIRED:
        # the vote found the expiry: the caller hears of the decision, dated at the timeout
        assert decided is p and p.decided_at == T0 + TIMEOUT and p.late_votes == 1
        assert p.votes == {} and b.counts["expired"] == 1
    else:
        assert decided is None and p.tally()["for"] == 1


def test_expire_at_the_timeout_and_votes_after_are_late() -> None:
    b = book()
    p = opened(b, VOTERS4)
    assert b.vote("p1", "a", True, 1.0, T0 + TIMEOUT - 1) == (VoteResult.COUNTED, None)
    assert b.expire(T0 + TIMEOUT - 1) == []
    assert b.expire(T0 + TIMEOUT) == [p]
    assert p.status is Status.EXPIRED and p.decided_at == T0 + TIMEOUT
    assert b.expire(T0 + TIMEOUT + 1) == []  # expired once
    assert b.vote("p1", "b", True, 1.0, T0 + TIMEOUT + 1) == (VoteResult.LATE, None)
    assert p.late_votes == 1 and p.tally()["for"] == 1
    assert b.counts["expired"] == 1 and b.counts["late"] == 1


def test_expire_returns_due_proposals_by_expiry() -> None:
    b = book()
    late = opened(b, VOTERS4, pid="late", now=T0 + 5)
    early = opened(b, VOTERS4, pid="early", now=T0)
    later = opened(b, VOTERS4, pid="later", now=T0 + 100)
    assert b.expire(T0 + TIMEOUT + 5) == [early, late]
    assert b.pending() == [later]


def test_non_member_is_ignored() -> None:
    b = book()
    p = opened(b, VOTERS4)
    before = p.tally()
    assert b.vote("p1", "mallory", True, 1.0, T0 + 1) == (VoteResult.NOT_MEMBER, None)
    assert p.tally() == before and "mallory" not in p.votes
    assert p.status is Status.PENDING and b.counts["not_member"] == 1


def test_late_vote_after_decision_is_ignored_and_counted() -> None:
    b = book()
    p = opened(b, VOTERS4)
    for voter in ("a", "b", "c"):
        b.vote("p1", voter, True, 1.0, T0 + 1)
    assert p.status is Status.ACCEPTED
    assert b.vote("p1", "d", False, 1.0, T0 + 2) == (VoteResult.LATE, None)
    assert b.vote("p1", "a", False, 1.0, T0 + 3) == (VoteResult.LATE, None)
    assert p.late_votes == 2 and b.counts["late"] == 2
    assert p.tally() == {"for": 3, "against": 0, "needed": 3, "electorate": 4, "voted": 3}


def test_changed_vote_replaces_the_earlier_one() -> None:
    b = book()
    p = opened(b, VOTERS4)
    b.vote("p1", "a", True, 1.0, T0 + 1)
    assert (p.support, p.oppose) == (1, 0)
    assert b.vote("p1", "a", False, 0.4, T0 + 2) == (VoteResult.REPLACED, None)
    assert (p.support, p.oppose) == (0, 1)
    assert p.votes["a"] == Ballot(False, 0.4, T0 + 2)
    assert b.counts["replaced"] == 1 and b.counts["counted"] == 1


def test_changed_vote_can_cause_the_decision() -> None:
    b = book()
    p = opened(b, VOTERS4)
    b.vote("p1", "a", False, 1.0, T0 + 1)
    b.vote("p1", "b", True, 1.0, T0 + 2)
    b.vote("p1", "c", True, 1.0, T0 + 3)
    assert p.status is Status.PENDING  # 2 for, 1 against, d still to vote
    assert b.vote("p1", "a", True, 1.0, T0 + 4) == (VoteResult.REPLACED, p)
    assert p.status is Status.ACCEPTED and p.decided_at == T0 + 4


def test_changed_vote_can_cause_rejection() -> None:
    b = book()
    p = opened(b, VOTERS4)
    b.vote("p1", "a", False, 1.0, T0 + 1)
    b.vote("p1", "b", True, 1.0, T0 + 2)
    assert b.vote("p1", "b", False, 1.0, T0 + 3) == (VoteResult.REPLACED, p)
    assert p.status is Status.REJECTED


def test_one_decision_only() -> None:
    b = book()
    p = opened(b, VOTERS4)
    b.vote("p1", "a", False, 1.0, T0 + 1)
    b.vote("p1", "b", False, 1.0, T0 + 2)
    assert p.status is Status.REJECTED and p.decided_at == T0 + 2
    for i, (voter, support) in enumerate([("c", True), ("d", True), ("a", True), ("b", True)]):
        assert b.vote("p1", voter, support, 1.0, T0 + 10 + i) == (VoteResult.LATE, None)
    assert b.expire(T0 + 10 * TIMEOUT) == []
    assert p.status is Status.REJECTED and p.decided_at == T0 + 2
    assert (b.counts["rejected"], b.counts["accepted"], b.counts["expired"]) == (1, 0, 0)


def test_duplicate_open_returns_none_and_keeps_the_first() -> None:
    b = book()
    first = opened(b, VOTERS4)
    b.vote("p1", "a", True, 1.0, T0 + 1)
    again = b.open("p1", "other", "action", {"priority": "high"}, ["x"], T0 + 50)
    assert again is None
    assert b.get("p1") is first
    assert first.proposer_id == "proposer" and first.electorate == VOTERS4 and first.support == 1
    assert b.counts["duplicate"] == 1 and b.counts["opened"] == 1


def test_open_builds_the_proposal() -> None:
    b = book(0.6, 1_000)
    content = {"priority": "medium", "type": "topology"}
    p = b.open("p9", "queen", "topology", content, ["c", "a", "b", "a"], T0)
    assert p is not None
    assert p.electorate == ["a", "b", "c"]
    assert (p.created_at, p.expires_at, p.quorum) == (T0, T0 + 1_000, 0.6)
    assert p.waggle == waggle_dance(content) and p.content == content
    assert p.status is Status.PENDING and p.decided_at is None and p.votes == {}
    assert b.pending() == [p]


def test_empty_electorate_is_rejected_at_once() -> None:
    b = book()
    p = b.open("p1", "proposer", "action", {}, [], T0)
    assert p is not None
    assert p.status is Status.REJECTED and p.decided_at == T0
    assert b.counts["opened"] == 1 and b.counts["rejected"] == 1
    assert b.pending() == []
    assert b.vote("p1", "a", True, 1.0, T0 + 1) == (VoteResult.LATE, None)
    assert p.status is Status.REJECTED


def test_unknown_proposal() -> None:
    b = book()
    assert b.vote("nope", "a", True, 1.0, T0) == (VoteResult.UNKNOWN, None)
    assert b.get("nope") is None and b.counts["unknown"] == 1


@pytest.mark.parametrize("quorum", [0, -0.1, 1.01, float("nan")])
def test_bad_quorum(quorum: float) -> None:
    with pytest.raises(ConsensusError, match="quorum"):
        ProposalBook(quorum, TIMEOUT)


def test_bad_timeout() -> None:
    with pytest.raises(ConsensusError, match="timeout"):
        ProposalBook(0.6, -1)


@pytest.mark.parametrize("ptype", PROPOSAL_TYPES)
def test_known_types_open(ptype: str) -> None:
    assert book().open("p", "x", ptype, {}, ["a"], T0) is not None


@pytest.mark.parametrize("ptype", ["", "Decision", "vote", "approval"])
def test_bad_type(ptype: str) -> None:
    b = book()
    with pytest.raises(ConsensusError, match="type"):
        b.open("p", "x", ptype, {}, ["a"], T0)
    assert b.get("p") is None and b.counts["opened"] == 0


# -- snapshots --------------------------------------------------------------------


def test_to_dict_from_dict_round_trip() -> None:
    b = book()
    content = {"type": "rejection", "quality": 0.9, "priority": "low", "nested": {"k": [1, 2.5, None]}}
    p = b.open("p1", "proposer", "decision", content, VOTERS4, T0)
    assert p is not None
    b.vote("p1", "a", True, 0.75, T0 + 1)
    b.vote("p1", "b", False, 1, T0 + 2)
    back = Proposal.from_dict(json.loads(json.dumps(p.to_dict())))
    assert back == p and back.status is Status.PENDING and back is not p
    b.vote("p1", "b", True, 1.0, T0 + 3)
    b.vote("p1", "c", True, 1.0, T0 + 4)
    b.vote("p1", "d", True, 1.0, T0 + 5)
    assert p.status is Status.ACCEPTED and p.late_votes == 1
    data = json.loads(json.dumps({**p.to_dict(), "tally": p.tally()}))  # a broadcast carries a tally
    back = Proposal.from_dict(data)
    assert back == p
    assert back.status is Status.ACCEPTED and back.decided_at == T0 + 4 and back.late_votes == 1
    assert back.to_dict() == p.to_dict()


def test_restore_and_forget_decided() -> None:
    b = book()
    accepted = opened(b, ["a"], pid="acc")
    b.vote("acc", "a", True, 1.0, T0 + 10)
    pending = opened(b, VOTERS4, pid="pend")
    rejected = opened(b, [], pid="rej", now=T0 + 20)
    assert accepted.decided_at == T0 + 10 and rejected.decided_at == T0 + 20

    fresh = book()
    for p in b.all():
        fresh.restore(Proposal.from_dict(json.loads(json.dumps(p.to_dict()))))
    assert [p.id for p in fresh.all()] == ["acc", "pend", "rej"]
    assert fresh.all() == [accepted, pending, rejected]
    assert [p.id for p in fresh.pending()] == ["pend"]
    assert fresh.counts == {}  # restoring is not opening
    # a restored proposal keeps its id: re-opening is a duplicate, votes go on counting
    assert fresh.open("pend", "x", "decision", {}, ["z"], T0 + 30) is None
    assert fresh.vote("pend", "a", True, 1.0, T0 + 31) == (VoteResult.COUNTED, None)
    assert fresh.vote("acc", "a", False, 1.0, T0 + 31) == (VoteResult.LATE, None)

    assert fresh.forget_decided(T0 + 10) == 0       # strictly before
    assert fresh.forget_decided(T0 + 11) == 1       # acc
    assert fresh.get("acc") is None and fresh.get("rej") is not None
    assert fresh.forget_decided(T0 + 10 * TIMEOUT) == 1  # rej; pending is never forgotten
    assert [p.id for p in fresh.all()] == ["pend"]


def test_restore_replaces_a_pending_proposal_with_its_decision() -> None:
    b = book()
    p = opened(b, VOTERS4)
    decided = Proposal.from_dict({**p.to_dict(), "status": "expired", "decided_at": T0 + TIMEOUT})
    b.restore(decided)
    assert b.get("p1") is decided and b.pending() == []
    assert b.expire(T0 + 10 * TIMEOUT) == []
    assert b.vote("p1", "a", True, 1.0, T0 + 1) == (VoteResult.LATE, None)


# -- what a vote and a loop turn cost -----------------------------------------------


def test_running_tally_follows_changed_votes() -> None:
    # the book keeps each pending proposal's supporters as a count: it must match the
    # ballots after every kind of vote (counted, replaced either way, not a member)
    b = book()
    p = opened(b, ["a", "b", "c", "d", "e"])  # 3 needed
    steps = [("a", True, VoteResult.COUNTED, 1), ("a", False, VoteResult.REPLACED, 0),
             ("b", True, VoteResult.COUNTED, 1), ("a", True, VoteResult.REPLACED, 2),
             ("b", True, VoteResult.REPLACED, 2), ("x", True, VoteResult.NOT_MEMBER, 2)]
    for i, (voter, support, result, support_n) in enumerate(steps):
        assert b.vote("p1", voter, support, 1.0, T0 + i) == (result, None)
        assert p.support == support_n and p.status is Status.PENDING
    assert b.vote("p1", "c", True, 1.0, T0 + 9) == (VoteResult.COUNTED, p)
    assert p.status is Status.ACCEPTED and p.tally()["for"] == 3


def test_running_tally_of_a_restored_proposal_counts_its_ballots() -> None:
    b = book()
    p = opened(b, VOTERS4)
    b.vote("p1", "a", True, 1.0, T0 + 1)
    b.vote("p1", "b", True, 1.0, T0 + 2)
    fresh = book()
    fresh.restore(Proposal.from_dict(p.to_dict()))
    result, decided = fresh.vote("p1", "c", True, 1.0, T0 + 3)  # the 3rd of 3 needed
    assert result is VoteResult.COUNTED and decided is not None and decided.status is Status.ACCEPTED


def test_members_is_the_electorate_as_a_set() -> None:
    p = opened(book(), ["b", "a", "b"])
    assert p.members == frozenset({"a", "b"}) and p.electorate == ["a", "b"]
    assert p == Proposal.from_dict(p.to_dict())  # not a field: no part of equality or to_dict
    assert "members" not in p.to_dict()


# expire() takes due proposals off a heap; an entry of a proposal decided by votes, or
# replaced by restore() with another expiry, is skipped when it comes up
@pytest.mark.parametrize("now, expired", [
    (T0 + TIMEOUT - 1, []),
    (T0 + TIMEOUT, ["a"]),
    (T0 + TIMEOUT + 10, ["a", "c"]),                    # b was decided by its vote
    (T0 + TIMEOUT + 30, ["a", "c", "e", "d"]),          # by (expires_at, id): e at +20, d at +30
    (T0 + 2 * TIMEOUT, ["a", "c", "e", "d"]),           # r's old entry (+40) is skipped
    (T0 + 3 * TIMEOUT, ["a", "c", "e", "d", "r"]),      # r expires at its restored time
])
def test_expire_table(now: int, expired: list[str]) -> None:
    b = book()
    opened(b, VOTERS4, pid="a")
    opened(b, ["x"], pid="b", now=T0 + 5)
    b.vote("b", "x", True, 1.0, T0 + 6)                 # decided: its heap entry stays behind
    opened(b, VOTERS4, pid="c", now=T0 + 10)
    opened(b, VOTERS4, pid="d", now=T0 + 30)
    opened(b, VOTERS4, pid="e", now=T0 + 20)
    r = opened(b, VOTERS4, pid="r", now=T0 + 40)
    b.restore(Proposal.from_dict({**r.to_dict(), "expires_at": T0 + 3 * TIMEOUT}))
    assert [p.id for p in b.expire(now)] == expired
    assert b.expire(now) == []                          # each expires once
    assert b.counts["expired"] == len(expired)
    assert sorted(p.id for p in b.pending()) == sorted({"a", "c", "d", "e", "r"} - set(expired))


def test_expiry_heap_stays_bounded() -> None:
    # proposals decided by votes leave entries behind; the heap is rebuilt from the
    # pending ones before it grows past twice their number plus 1000
    b = book()
    for i in range(5000):
        opened(b, ["x"], pid=f"p{i}", now=T0 + i)
        assert len(b._expiries) <= 2 * b.pending_count() + 1000
        b.vote(f"p{i}", "x", True, 1.0, T0 + i)
    assert b.pending_count() == 0 and b.expire(T0 + 10 * TIMEOUT) == []


# forget_decided() takes decided proposals off a heap by decided_at; pending ones, and
# entries of a proposal restored since with another decision time, are left alone
@pytest.mark.parametrize("before, forgotten, left", [
    (T0 + 10, 0, ["a", "b", "c", "d", "p"]),
    (T0 + 11, 1, ["b", "c", "d", "p"]),                 # strictly before
    (T0 + 25, 2, ["c", "d", "p"]),                      # b, rejected at +20
    (T0 + 100, 3, ["d", "p"]),                          # c's old entry (+30) is stale: it is at +90
    (T0 + 10 * TIMEOUT, 4, ["p"]),                      # d expired; p is pending
])
def test_forget_decided_table(before: int, forgotten: int, left: list[str]) -> None:
    b = book()
    opened(b, ["x"], pid="a")
    b.vote("a", "x", True, 1.0, T0 + 10)                # accepted at +10
    opened(b, ["x"], pid="b")
    b.vote("b", "x", False, 1.0, T0 + 20)               # rejected at +20
    c = opened(b, ["x"], pid="c")
    b.vote("c", "x", True, 1.0, T0 + 30)
    b.restore(Proposal.from_dict({**c.to_dict(), "decided_at": T0 + 90}))  # learned again, later
    opened(b, VOTERS4, pid="d")
    assert [p.id for p in b.expire(T0 + TIMEOUT)] == ["d"]
    opened(b, VOTERS4, pid="p")
    assert b.forget_decided(before) == forgotten
    assert sorted(p.id for p in b.all()) == left
