"""Settlement's ledger writes, spaced: one Redis round trip per RECORD_EVERY_S, not per turn.

The ledger (agent/ledger.py) is the real one; the store under it and the bus are small
fakes that record what they were asked, so each row says exactly when Redis is written
and when offsets are committed."""

from __future__ import annotations

import logging

import pytest

from agentmesh_cli.agent.ledger import Ledger
from agentmesh_cli.agent.settle import (
    COMMIT_EVERY_S,
    RECORD_EVERY_S,
    RECORD_MAX_IDS,
    SETTLE_RETRY_S,
    Settlement,
)
from agentmesh_cli.errors import StoreError

WHERE = ("messages", 0)


class FakeStore:
    def __init__(self) -> None:
        self.writes: list[int] = []  # ids per record_handled call
        self.down = False

    def record_handled(self, agent: str, handled: list[tuple[str, str]], first: int, window: int,
                       shared: str | None = None) -> tuple[int, int]:
        if self.down:
            raise StoreError("Redis is down")
        self.writes.append(len(handled))
        return len(handled), 0


class FakeBus:
    """Every send confirmed at once: a turn is settled on the settle that follows it."""

    def __init__(self) -> None:
        self.generation = 0

    def release(self) -> int:
        return 0

    def kick(self) -> None:
        pass

    def close_generation(self) -> int:
        self.generation += 1
        return self.generation

    def confirmed(self, generation: int) -> bool:
        return True

    def poll(self) -> None:
        pass

    def flush(self, timeout: float) -> int:
        return 0

    def sent_unconfirmed(self) -> bool:
        return False


class Commits:
    def __init__(self) -> None:
        self.made: list[dict[tuple[str, int], int]] = []

    def commit(self, next_offsets: dict[tuple[str, int], int], wait: bool = True) -> None:
        self.made.append(dict(next_offsets))


class Run:
    def __init__(self) -> None:
        self.store = FakeStore()
        self.ledger = Ledger(self.store, "A", 100_000)  # type: ignore[arg-type]
        self.settlement = Settlement(FakeBus(), self.ledger, logging.getLogger("test"),  # type: ignore[arg-type]
                                     lambda: None, lambda mark: None)
        self.commits = Commits()
        self.offset = 0

    def turn(self, ids: int) -> None:
        """A turn of the fast path that handled `ids` records."""
        for _ in range(ids):
            self.ledger.handled(f"m{self.offset}", "S")
            self.settlement.read_in_order(WHERE, self.offset)
            self.offset += 1
        if self.settlement.turn_open:
            self.settlement.end_turn()

    def settle(self, now: float, final: bool = False) -> tuple[list[int], int | None]:
        """Ids written by this settle (per Redis call), and the next offset committed (or None)."""
        writes, commits = len(self.store.writes), len(self.commits.made)
        self.settlement.settle(self.commits, now, final=final)
        made = self.commits.made[commits:]
        return self.store.writes[writes:], (made[-1][WHERE] if made else None)


E = RECORD_EVERY_S
C = COMMIT_EVERY_S

# (at, ids handled in the turn before it, final) -> (ids written per Redis call, offset committed)
ROWS = [
    (0.0, 1, False, [1], 1),             # the first turn: recorded and committed at once
    (0.2 * E, 1, False, [], None),       # within RECORD_EVERY_S: spaced
    (0.6 * E, 2, False, [], None),       # and again
    (E, 0, False, [3], None),            # due: three turns in one write; the commit waits for C
    (1.2 * E, 1, False, [], None),
    (1.4 * E, RECORD_MAX_IDS, False, [1 + RECORD_MAX_IDS], None),  # too many waiting: at once
    (C, 0, False, [], 5 + RECORD_MAX_IDS),  # the owed commit, when due, writes nothing
    (C + 0.1 * E, 1, False, [1], None),  # after a quiet spell a turn is written at once
    (C + 0.5 * E, 1, False, [], None),
    (C + 0.7 * E, 1, True, [2], 8 + RECORD_MAX_IDS),  # leaving: written and committed now
]


def test_ledger_writes_are_spaced_and_commits_follow_them() -> None:
    run = Run()
    got = []
    for at, ids, final, _, _ in ROWS:
        run.turn(ids)
        got.append(run.settle(at, final))
    assert got == [(writes, committed) for *_, writes, committed in ROWS]


def test_a_spaced_write_is_due_at_its_time_without_another_turn() -> None:
    run = Run()
    run.turn(1)
    run.settle(0.0)
    run.turn(1)
    assert run.settle(0.001) == ([], None)
    # no more turns: the loop's due() brings the settle back when the write is due
    assert [run.settlement.due(t) for t in (0.002, E - 1e-6, E)] == [False, False, True]
    assert run.settle(E) == ([1], None)
    assert not run.settlement.due(E + 0.001)  # recorded; the commit is owed, at C
    assert run.settlement.due(C) and run.settle(C) == ([], 2)


@pytest.mark.parametrize("busy", [False, True])
def test_while_redis_is_down_the_write_is_tried_once_per_retry_period(busy: bool) -> None:
    """Down, a failed write is tried again after SETTLE_RETRY_S, not on every turn (busy:
    a turn before every settle); nothing is committed until it is written."""
    run = Run()
    run.store.down = True
    run.turn(1)
    assert run.settle(0.0) == ([], None)
    for at in (0.1, 0.5, SETTLE_RETRY_S - 0.01):
        if busy:
            run.turn(1)
            assert run.settle(at) == ([], None)
        else:
            assert not run.settlement.due(at)
    run.store.down = False
    if busy:
        run.turn(1)
    assert run.settlement.due(SETTLE_RETRY_S)
    # the failed batch is sent again as it was, then what came after it
    assert run.settle(SETTLE_RETRY_S) == (([1, 4], 5) if busy else ([1], 1))
