"""When a reader sleeps (doze.py), and what the feed of sleepers says (doorbell.parse_asleep)."""

from __future__ import annotations

import pytest
import redis

from agentmesh_cli.doorbell import Doorbell, parse_asleep
from agentmesh_cli.doze import NOTHING, Action, Doze, Policy, State

POLICY = Policy(idle_after=0.25, grace=0.5, probe_every=2.0, probe_for=0.05)

# (time, records, rung, can_sleep) -> (state after, action)
QUIET_THEN_RING = [
    ((0.10, False, False, True), (State.AWAKE, NOTHING)),
    ((0.25, False, False, True), (State.DROWSY, Action(announce_asleep=True))),
    ((0.50, False, False, True), (State.DROWSY, NOTHING)),
    ((0.75, False, False, True), (State.ASLEEP, Action(unassign=True))),
    ((2.00, False, False, True), (State.ASLEEP, NOTHING)),
    ((2.75, False, False, True), (State.PROBING, Action(assign=True))),
    ((2.79, False, False, True), (State.PROBING, NOTHING)),
    ((2.81, False, False, True), (State.ASLEEP, Action(unassign=True))),
    ((3.00, False, True, True), (State.AWAKE, Action(assign=True, announce_awake=True))),
    ((3.10, True, False, True), (State.AWAKE, NOTHING)),
    ((3.34, False, False, True), (State.AWAKE, NOTHING)),
    ((3.35, False, False, True), (State.DROWSY, Action(announce_asleep=True))),
    # a record while drowsy: awake, and the senders hear it (it is fetching already)
    ((3.40, True, False, True), (State.AWAKE, Action(announce_awake=True))),
]

PROBE_FINDS_RECORDS = [
    ((0.25, False, False, True), (State.DROWSY, Action(announce_asleep=True))),
    ((0.75, False, False, True), (State.ASLEEP, Action(unassign=True))),
    ((2.75, False, False, True), (State.PROBING, Action(assign=True))),
    ((2.76, True, False, True), (State.AWAKE, Action(announce_awake=True))),
]

# Redis gone: the reader cannot hear rings, so it wakes and stays awake
DEAF = [
    ((0.25, False, False, True), (State.DROWSY, Action(announce_asleep=True))),
    ((0.75, False, False, True), (State.ASLEEP, Action(unassign=True))),
    ((1.00, False, False, False), (State.AWAKE, Action(assign=True))),
    ((5.00, False, False, False), (State.AWAKE, NOTHING)),
    ((5.24, False, False, True), (State.AWAKE, NOTHING)),
    ((5.25, False, False, True), (State.DROWSY, Action(announce_asleep=True))),
]

# ... as the doorbell tells it: its listening thread rings the reader as it stops listening
DEAF_AND_RUNG = [
    ((0.25, False, False, True), (State.DROWSY, Action(announce_asleep=True))),
    ((0.75, False, False, True), (State.ASLEEP, Action(unassign=True))),
    ((1.00, False, True, False), (State.AWAKE, Action(assign=True))),
    ((5.00, False, False, False), (State.AWAKE, NOTHING)),
]


@pytest.mark.parametrize(("steps", "counts"), [
    (QUIET_THEN_RING, {"doze_sleeps": 1, "doze_rung": 1}),
    (PROBE_FINDS_RECORDS, {"doze_sleeps": 1, "doze_probe_found": 1}),
    (DEAF, {"doze_sleeps": 1, "doze_deaf": 1}),
    (DEAF_AND_RUNG, {"doze_sleeps": 1, "doze_deaf": 1}),
], ids=["quiet-then-ring", "probe-finds-records", "deaf", "deaf-and-rung"])
def test_doze_steps(steps: list[tuple[tuple[float, bool, bool, bool], tuple[State, Action]]],
                    counts: dict[str, int]) -> None:
    doze = Doze(POLICY, now=0.0)
    for (now, records, rung, can_sleep), (state, action) in steps:
        assert doze.step(now, records, rung, can_sleep) == action, now
        assert doze.state is state, now
    assert doze.counts == counts


def test_a_sleeping_reader_waits_for_its_ring_until_its_probe_is_due() -> None:
    doze = Doze(POLICY, now=0.0)
    assert doze.wait_for(0.1, 0.1) == 0.1  # awake: the caller's own wait
    doze.step(0.25, False, False, True)
    doze.step(0.75, False, False, True)
    assert doze.state is State.ASLEEP and doze.counts == {"doze_sleeps": 1}
    assert doze.wait_for(1.0, 0.1) == 0.1
    assert doze.wait_for(2.7, 0.1) == pytest.approx(0.05)
    assert doze.wait_for(3.0, 0.1) == 0.0


def test_a_probe_lasts_one_fetch_wait_and_a_margin() -> None:
    assert Policy.for_fetch_wait(0.01, 3.0) == Policy(probe_every=3.0, probe_for=0.04)


@pytest.mark.parametrize(("entry", "parsed"), [
    ("Sales consensus,messages", ("Sales", frozenset({"consensus", "messages"}))),
    ("gateway-h-9200 replies", ("gateway-h-9200", frozenset({"replies"}))),
    ("-Sales", ("Sales", frozenset())),
    ("-", None),
    ("Sales", None),
    ("", None),
])
def test_the_feed_of_sleepers(entry: str, parsed: tuple[str, frozenset[str]] | None) -> None:
    assert parse_asleep(entry) == parsed


ASLEEP = {
    "Sales": frozenset({"consensus", "messages"}),
    "Fraud": frozenset({"consensus", "messages"}),
    "consensus-manager": frozenset({"proposals", "votes"}),
    "topology-manager": frozenset({"topology", "messages*"}),
    "gateway-h-9200": frozenset({"replies"}),
}


@pytest.mark.parametrize(("topic", "key", "rung"), [
    ("messages", "Sales", ["Sales", "topology-manager"]),  # its recipient, and the reader of all
    ("messages", "Support", ["topology-manager"]),  # an awake recipient: only the whole topic's
    ("replies", "gateway-h-9200", ["gateway-h-9200"]),
    ("replies", "cli-1", []),
    ("consensus", "p-1", ["Fraud", "Sales"]),  # every sleeping agent
    ("votes", "p-1", ["consensus-manager"]),
    ("topology", "Sales", ["topology-manager"]),
    ("dlq", None, []),
])
def test_who_a_record_rings(topic: str, key: str | None, rung: list[str]) -> None:
    bell = Doorbell(redis.Redis(), "m", listen=False)  # no connection is made until a ring
    bell.asleep = dict(ASLEEP)
    assert sorted(bell.sleepers(topic, key)) == sorted(rung)
    bell.note(topic, key)
    assert bell.due is bool(rung)
