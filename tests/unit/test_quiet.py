"""The drain's quiet rule (quiet.py): per-agent unhandled counts from counters and the
registry, the quiet spell over time, and the progress line, in exact tables."""

from __future__ import annotations

from typing import Any

import pytest

from agentmesh_cli.config import parse_config
from agentmesh_cli.quiet import (
    QuietWatch,
    Reading,
    drained_agents,
    in_flight,
    lost_counts,
    progress_line,
    read,
)
from agentmesh_cli.replicas import running_agents

AGENTS = ["Sales", "Support"]

# counters (owner -> counter -> value), registry -> unhandled per agent, in flight, quiet
CASES: list[tuple[dict[str, dict[str, int]], dict[str, dict[str, Any]], dict[str, int],
                  dict[str, int], bool]] = [
    ({}, {}, {"Sales": 0, "Support": 0}, {"Sales": 0, "Support": 0}, True),
    # sent by two owners (an agent and the CLI), some handled
    ({"Sales": {"sent_to:Support": 10}, "cli": {"sent_to:Support": 5, "sent_to:Sales": 2},
      "Support": {"messages_in": 3}},
     {}, {"Sales": 2, "Support": 12}, {"Sales": 0, "Support": 0}, False),
    # every kind of done counts: handled, duplicates, replies, late replies, expired requests,
    # and what an earlier `down` found lost
    ({"cli": {"sent_to:Support": 21},
      "Support": {"messages_in": 5, "duplicates": 4, "replies_in": 3, "late_replies": 2,
                  "expired_requests": 1, "lost": 6}},
     {}, {"Sales": 0, "Support": 0}, {"Sales": 0, "Support": 0}, True),
    # other counters do not: skipped (another agent's record), dead letters, handled_from
    ({"cli": {"sent_to:Support": 4},
      "Support": {"skipped": 9, "dead_letters": 9, "handled_from:cli": 9, "messages_out": 9}},
     {}, {"Sales": 0, "Support": 4}, {"Sales": 0, "Support": 0}, False),
    # done beyond sent (a redelivery counted as a duplicate) is no credit for later messages
    ({"cli": {"sent_to:Sales": 3}, "Sales": {"messages_in": 3, "duplicates": 7}},
     {}, {"Sales": 0, "Support": 0}, {"Sales": 0, "Support": 0}, True),
    # a recipient that is no agent of the mesh is left out
    ({"cli": {"sent_to:Nobody": 6}}, {}, {"Sales": 0, "Support": 0},
     {"Sales": 0, "Support": 0}, True),
    # handlers still running keep the mesh busy even with nothing unhandled
    ({}, {"Sales": {"in_flight": 2}, "Support": {"in_flight": 0}},
     {"Sales": 0, "Support": 0}, {"Sales": 2, "Support": 0}, False),
    # a registry record without in_flight (today's runtime), or not an integer, counts 0
    ({}, {"Sales": {"pid": 7}, "Support": {"in_flight": True}, "Other": {"in_flight": 5}},
     {"Sales": 0, "Support": 0}, {"Sales": 0, "Support": 0}, True),
]


@pytest.mark.parametrize(("counters", "registry", "unhandled", "running", "quiet"), CASES)
def test_reading(counters: dict[str, dict[str, int]], registry: dict[str, dict[str, Any]],
                 unhandled: dict[str, int], running: dict[str, int], quiet: bool) -> None:
    reading = read(counters, registry, AGENTS)
    assert reading.unhandled == unhandled
    assert reading.in_flight == running
    assert reading.total == sum(unhandled.values())
    assert reading.quiet is quiet


@pytest.mark.parametrize(("record", "value"), [
    (None, 0), ({}, 0), ({"in_flight": 3}, 3), ({"in_flight": "3"}, 0), ({"in_flight": False}, 0),
    ({"in_flight": 1.5}, 0),
])
def test_in_flight(record: dict[str, Any] | None, value: int) -> None:
    assert in_flight(record) == value


# unhandled per agent (sent, done), unread records found per agent -> counted lost
LOST = [
    ({"Sales": (10, 4), "Support": (3, 3)}, {"Sales": 6}, {}),  # all still in the broker
    ({"Sales": (10, 4), "Support": (3, 3)}, {"Sales": 2}, {"Sales": 4}),
    ({"Sales": (10, 4), "Support": (5, 0)}, {}, {"Sales": 6, "Support": 5}),  # a broker forgot all
    # more found than counted (a sender's last counts lost with it): nothing is lost
    ({"Sales": (10, 4), "Support": (3, 3)}, {"Sales": 9, "Support": 2}, {}),
]


@pytest.mark.parametrize(("counts", "unread", "lost"), LOST)
def test_lost_counts(counts: dict[str, tuple[int, int]], unread: dict[str, int],
                     lost: dict[str, int]) -> None:
    reading = Reading({a: sent for a, (sent, _) in counts.items()},
                      {a: done for a, (_, done) in counts.items()}, {})
    assert lost_counts(reading, unread) == lost


def reading(sent: int, done: int, running: int = 0) -> Reading:
    return Reading({"Sales": sent}, {"Sales": done}, {"Sales": running})


# (time, reading) in turn -> what the watch answers after each
SPELLS: list[tuple[list[tuple[float, Reading]], list[bool]]] = [
    # quiet and unchanged for 1.2 s: settled at the reading 1.2 s after the first quiet one
    ([(0.0, reading(5, 5)), (0.6, reading(5, 5)), (1.2, reading(5, 5))], [False, False, True]),
    # one reading alone is never enough, however late
    ([(9.0, reading(5, 5))], [False]),
    # quiet, but the counts moved (work went on in between): the spell starts again
    ([(0.0, reading(5, 5)), (1.0, reading(8, 8)), (2.0, reading(8, 8)), (2.2, reading(8, 8))],
     [False, False, False, True]),
    # a busy reading breaks the spell
    ([(0.0, reading(5, 5)), (1.0, reading(6, 5)), (2.0, reading(6, 6)), (3.1, reading(6, 6)),
      (3.2, reading(6, 6))], [False, False, False, False, True]),
    # a handler still running is busy too
    ([(0.0, reading(5, 5, running=1)), (1.3, reading(5, 5, running=1)), (1.4, reading(5, 5)),
      (2.6, reading(5, 5))], [False, False, False, True]),
]


@pytest.mark.parametrize(("readings", "answers"), SPELLS)
def test_quiet_watch(readings: list[tuple[float, Reading]], answers: list[bool]) -> None:
    watch = QuietWatch()
    assert [watch.observe(r, now) for now, r in readings] == answers


def test_quiet_watch_takes_its_span() -> None:
    watch = QuietWatch(quiet_for=0.5)
    assert [watch.observe(reading(1, 1), t) for t in (0.0, 0.4, 0.5)] == [False, False, True]


LINES = [
    (Reading({"Sales": 3, "Support": 12}, {}, {}), 4.2,
     "draining: 15 messages unhandled (Sales 3, Support 12), 4.2 s"),
    (Reading({"Sales": 1, "Support": 4}, {"Support": 4}, {}), 0.0,
     "draining: 1 message unhandled (Sales 1), 0.0 s"),
    (Reading({"Sales": 0}, {}, {"Sales": 2}), 1.25,
     "draining: 0 messages unhandled, 2 in flight (Sales 2), 1.2 s"),
    (Reading({f"A{i}": 1 for i in range(10)}, {}, {}), 30.0,
     "draining: 10 messages unhandled (A0 1, A1 1, A2 1, A3 1, A4 1, A5 1, A6 1, A7 1, 2 more), 30.0 s"),
]


@pytest.mark.parametrize(("reading", "elapsed", "line"), LINES)
def test_progress_line(reading: Reading, elapsed: float, line: str) -> None:
    assert progress_line(reading, elapsed) == line


# replica groups: the drain waits for every replica the group runs now (counts: `up`,
# `agentmesh scale`) and for any other still registered (scaled down, still draining)
GROUP_CONFIG = parse_config({"mesh": "m", "agents": [
    {"name": "Sales", "role": "sales"}, {"name": "Support", "role": "support", "replicas": 2}]})

# counts, registry -> the agents the drain waits for
DRAINED: list[tuple[dict[str, int], dict[str, dict[str, Any]], list[str]]] = [
    ({}, {}, ["Sales", "Support-1", "Support-2"]),  # as mesh.yaml declares; never the group's name
    ({"Support": 3}, {}, ["Sales", "Support-1", "Support-2", "Support-3"]),  # scaled up
    # scaled down to 1: Support-2 still registered while it handles its inbox
    ({"Support": 1}, {"Support-2": {"group": "Support", "replica": 2}}, ["Sales", "Support-1", "Support-2"]),
    ({"Support": 1}, {}, ["Sales", "Support-1"]),  # ... and once it left
    ({}, {"Other": {"role": "sales"}}, ["Sales", "Support-1", "Support-2"]),  # no replica: as before
]


@pytest.mark.parametrize(("counts", "registry", "agents"), DRAINED)
def test_the_agents_a_drain_waits_for(counts: dict[str, int], registry: dict[str, dict[str, Any]],
                                      agents: list[str]) -> None:
    assert drained_agents(running_agents(GROUP_CONFIG, counts), registry) == agents


# counters, registry -> unhandled per replica, in flight, quiet (counts: Support runs 3)
GROUP_CASES: list[tuple[dict[str, dict[str, int]], dict[str, dict[str, Any]], dict[str, int],
                        dict[str, int], bool]] = [
    # the senders count what they sent to the replica they routed to, never to the group
    ({"Sales": {"sent_to:Support-1": 4, "sent_to:Support-3": 2}, "cli": {"sent_to:Support-2": 1},
      "Support-1": {"messages_in": 4}, "Support-3": {"messages_in": 1}},
     {}, {"Sales": 0, "Support-1": 0, "Support-2": 1, "Support-3": 1},
     {"Sales": 0, "Support-1": 0, "Support-2": 0, "Support-3": 0}, False),
    # a copy retried to another replica: that one counts it a duplicate (the group's ledger)
    ({"cli": {"sent_to:Support-1": 1, "sent_to:Support-2": 1},
      "Support-1": {"messages_in": 1}, "Support-2": {"duplicates": 1}},
     {}, {"Sales": 0, "Support-1": 0, "Support-2": 0, "Support-3": 0},
     {"Sales": 0, "Support-1": 0, "Support-2": 0, "Support-3": 0}, True),
    # a replica scaled away and still registered: its inbox and handlers count
    ({"cli": {"sent_to:Support-4": 2}, "Support-4": {"messages_in": 2}},
     {"Support-4": {"group": "Support", "in_flight": 1}},
     {"Sales": 0, "Support-1": 0, "Support-2": 0, "Support-3": 0, "Support-4": 0},
     {"Sales": 0, "Support-1": 0, "Support-2": 0, "Support-3": 0, "Support-4": 1}, False),
]


@pytest.mark.parametrize(("counters", "registry", "unhandled", "running", "quiet"), GROUP_CASES)
def test_reading_of_a_group(counters: dict[str, dict[str, int]], registry: dict[str, dict[str, Any]],
                            unhandled: dict[str, int], running: dict[str, int], quiet: bool) -> None:
    agents = drained_agents(running_agents(GROUP_CONFIG, {"Support": 3}), registry)
    reading = read(counters, registry, agents)
    assert reading.unhandled == unhandled
    assert reading.in_flight == running
    assert reading.quiet is quiet
