"""Restart counts from supervisord's main log (supervisor/restarts.py): a table of logs."""

from __future__ import annotations

import json

import pytest

from agentmesh_cli.supervisor.restarts import SpawnLog

STARTED = "2025-01-01 10:00:00,000 INFO supervisord started with pid 100\n"


def spawned(name: str, pid: int) -> str:
    return f"2025-01-01 10:00:01,000 INFO spawned: '{name}' with pid {pid}\n"


def exited(name: str) -> str:
    return f"2025-01-01 10:00:02,000 WARN exited: {name} (terminated by SIGKILL; not expected)\n"


@pytest.mark.parametrize(("log", "expected"), [
    ("", {"agent-Sales": 0}),
    (STARTED + spawned("agent-Sales", 1), {"agent-Sales": 0}),
    (STARTED + spawned("agent-Sales", 1) + exited("agent-Sales") + spawned("agent-Sales", 2),
     {"agent-Sales": 1}),
    # a new supervisord appends to the same log: only its own spawns count
    (STARTED + spawned("kafka", 1) + spawned("kafka", 2) + STARTED + spawned("kafka", 3),
     {"kafka": 0}),
    (STARTED + spawned("a", 1) + spawned("b", 2) + spawned("a", 3) + spawned("a", 4),
     {"a": 2, "b": 0, "c": 0}),
])
def test_restarts(log: str, expected: dict[str, int]) -> None:
    spawns = SpawnLog()
    spawns.feed(log)
    assert {name: spawns.restarts(name) for name in expected} == expected


def test_reads_on_from_its_offset_and_waits_for_whole_lines() -> None:
    log = STARTED + spawned("a", 1)
    reads: list[int] = []

    def read(offset: int) -> str:
        reads.append(offset)
        return log[offset:]

    spawns = SpawnLog()
    spawns.update(read)
    half = spawned("a", 2)[:30]
    log += half
    spawns.update(read)
    assert spawns.restarts("a") == 0  # the half line is not counted yet
    log += spawned("a", 2)[30:]
    spawns.update(read)
    assert spawns.restarts("a") == 1
    assert reads[0] == 0 and reads[1] > 0 and spawns.offset == len(log)


def test_a_rotated_log_is_read_from_its_start_on_top_of_the_counts() -> None:
    log = STARTED + spawned("a", 1) + spawned("a", 2)
    spawns = SpawnLog()
    spawns.update(lambda offset: log[offset:])
    assert spawns.restarts("a") == 1
    log = spawned("a", 3)  # rotated: a new, shorter file
    spawns.update(lambda offset: log[offset:])
    assert spawns.restarts("a") == 2
    assert spawns.offset == len(log)


@pytest.mark.parametrize("cut", [0, 10, len(STARTED), len(STARTED) + 30])
def test_a_resumed_log_counts_as_one_read_whole(cut: int) -> None:
    """A one-shot status goes on from the state the previous one saved (JSON and back),
    reading only what the log gained: the counts are those of one reading of it all."""
    log = STARTED + spawned("a", 1) + spawned("b", 2) + spawned("a", 3)
    first = SpawnLog()
    first.update(lambda offset: log[:cut][offset:])
    reads: list[int] = []

    def read(offset: int) -> str:
        reads.append(offset)
        return log[offset:]

    later = SpawnLog()
    assert later.resume(json.loads(json.dumps(first.saved())))
    later.update(read)
    assert {n: later.restarts(n) for n in "ab"} == {"a": 1, "b": 0}
    # one read, from the saved offset less its anchor (the last 64 characters read)
    assert later.offset == len(log) and reads == [max(0, cut - 64)]


@pytest.mark.parametrize("saved", [
    None, [], {}, {"offset": -1, "anchor": "", "partial": "", "spawns": {}},
    {"offset": 3, "anchor": "four", "partial": "", "spawns": {}},  # an anchor longer than the read
    {"offset": 10, "anchor": "x", "partial": 5, "spawns": {}},
    {"offset": 10, "anchor": "x", "partial": "", "spawns": {"a": "1"}},
    {"offset": "10", "anchor": "x", "partial": "", "spawns": {}},
])
def test_a_state_that_is_not_one_is_not_resumed(saved: object) -> None:
    spawns = SpawnLog()
    spawns.feed(STARTED + spawned("a", 1) + spawned("a", 2))
    before = spawns.saved()
    assert not spawns.resume(saved)
    assert spawns.saved() == before
