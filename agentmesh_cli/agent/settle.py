"""When an agent is durably done with what it read, and which offsets it may commit.

The loop turn (agent/runtime.py) ends with `end_turn`: what the turn sent, held back by
the bus meanwhile, leaves at once (one request per partition) and the records it finished
wait, with the bus generation of its sends, until the broker has confirmed them. `settle`
then, in the order that neither loses nor doubles: takes the confirmed turns, records
their ids in the ledger (the replies sent so far are cached first, so a repeated request
finds its reply once its id is in the ledger), and only then commits offsets (every
COMMIT_EVERY_S, and when the agent leaves), never past a record not durably done. The
loop does not wait for the broker's answers: it runs at most TURNS_AHEAD turns ahead of
them. While Redis is down the offsets wait.

Two kinds of records: the fast path's (a sync handler at concurrency 1) finish in read
order within their turn, so a turn keeps each partition's next offset; every other record
(a handler in a task or a thread, an async vote) has its entry in the offset book
(agent/schedule.py), since they finish out of order.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Protocol

from agentmesh_cli.agent.ledger import Ledger
from agentmesh_cli.agent.schedule import OffsetBook
from agentmesh_cli.bus import Bus
from agentmesh_cli.errors import AgentMeshError, BusError

SETTLE_FLUSH_S = 10.0  # how long a batch waits for the delivery of what its handlers sent
KICK_MAX_SENDS = 4  # a turn that sent this many records or fewer is kicked (Bus.kick, <= 1 ms)
TURNS_AHEAD = 8  # loop turns the agent may run ahead of the broker's confirmations
SETTLE_RETRY_S = 1.0  # while Redis is down, how often the ledger write is tried again
# Offsets are committed at most this often, not after every batch: each commit is a
# request the broker serves, and the ledger, not the offset, is what keeps a redelivered
# message from being handled twice (a crash replays at most this long of traffic, which
# the ledger's `recovery.dedup_window` ids cover up to 100,000 messages/s).
COMMIT_EVERY_S = 0.2
# The ledger is written at most this often (one Redis round trip, however many turns were
# confirmed meanwhile), or at once when this many ids wait: a write costs the agent about
# 100 us of CPU plus 1.5-3 us an id (redis-py, measured), so a write per turn made a turn
# of one message pay 100 us for it. A kill -9 re-handles what was not yet recorded (its
# sends carry the same derived ids, which the recipients skip), so this widens that window
# by as much, and no more.
RECORD_EVERY_S = 0.005
RECORD_MAX_IDS = 512

Partition = tuple[str, int]


class Committer(Protocol):
    """What commits an agent's offsets: its Reader, or its HostInbox (inbox_client.py)."""

    def commit(self, next_offsets: dict[Partition, int], wait: bool = True) -> None: ...


# one finished record of the book: (the book's epoch, (short topic, partition), offset)
Finished = tuple[int, Partition, int]


class Settlement:
    def __init__(self, bus: Bus, ledger: Ledger, log: logging.Logger,
                 before_record: Callable[[], None], after_record: Callable[[int], None]) -> None:
        """`before_record`: what must be written before ids enter the ledger (the reply
        cache); an AgentMeshError from it waits like a failed ledger write. `after_record`:
        told the ledger's mark up to which ids are recorded (what may be let go of then)."""
        self.bus = bus
        self.ledger = ledger
        self.log = log
        self.before_record = before_record
        self.after_record = after_record
        self.book = OffsetBook()
        self.epoch = 0  # a new broker epoch forgets the offsets of the old one
        self._finished: list[Finished] = []  # book records finished in this turn
        self._turn_next: dict[Partition, int] = {}  # the fast path's, this turn
        # turns whose sends the broker has not all confirmed yet: (the bus generation of
        # their sends, the ledger's mark at their end, their book records, their next offsets)
        self._turns: deque[tuple[int, int, list[Finished], dict[Partition, int]]] = deque()
        self._confirmed_mark = 0  # the ledger's mark at the end of the last confirmed turn
        self._confirmed: list[Finished] = []  # of confirmed turns, until recorded
        self._confirmed_next: dict[Partition, int] = {}  # of confirmed turns, until recorded
        self._durable_next: dict[Partition, int] = {}  # of confirmed, recorded turns
        self._next_settle = -math.inf
        self._next_record = -math.inf
        self._recorded_mark = 0  # the ledger's mark up to which ids are recorded
        self._next_commit = -math.inf
        # a commit put off (at most one per COMMIT_EVERY_S) and still owed: settled when due
        # even if nothing else comes (an agent that went idle, or to sleep, would keep its
        # last offsets uncommitted until its next record, and read them again after a kill)
        self._commit_owed = False

    # what is read and finished -------------------------------------------------------------
    def read(self, where: Partition, offset: int) -> Finished:
        """A record read that goes into the book; its entry, for `finish`."""
        self.book.read(where, offset, self.ledger.mark())
        return (self.epoch, where, offset)

    def read_in_order(self, where: Partition, offset: int) -> None:
        """A record of the fast path, finished within this turn."""
        self._turn_next[where] = offset + 1

    def finish(self, entry: Finished) -> None:
        """A book record is done with (handled, skipped, or voted on): durable with this turn."""
        self._finished.append(entry)

    def span(self) -> int:
        """Ledger ids taken since the oldest record not done was read (ReadAhead)."""
        return self.book.span(self.ledger.mark())

    # turns ------------------------------------------------------------------------------------
    @property
    def turn_open(self) -> bool:
        """This turn finished records (or the bus holds unconfirmed sends): end it."""
        return bool(self._finished or self._turn_next or self.bus.sent_unconfirmed())

    def end_turn(self) -> None:
        """What the turn sent leaves now; its records wait for the broker's confirmation.
        A turn's sends are produced together (Bus.release), so the producer's linger puts
        them in one request per partition without a wait; a turn of few sends (a lone
        message, a light load) is also kicked, so that it does not wait out the linger."""
        if 0 < self.bus.release() <= KICK_MAX_SENDS:
            self.bus.kick()
        finished, self._finished = self._finished, []
        offsets, self._turn_next = self._turn_next, {}
        self._turns.append((self.bus.close_generation(), self.ledger.mark(), finished, offsets))

    def due(self, now: float) -> bool:
        return bool(self._turns or ((self._unrecorded() or self._commit_owed) and now >= self._next_settle))

    def _unrecorded(self) -> bool:
        """Confirmed turns wait for their ledger write."""
        return bool(self._confirmed or self._confirmed_next or self._confirmed_mark > self._recorded_mark)

    def settle(self, reader: Committer, now: float, final: bool = False) -> None:
        """Make confirmed turns durable (see the module's docstring)."""
        if final or len(self._turns) > TURNS_AHEAD:
            undelivered = self.bus.flush(SETTLE_FLUSH_S)  # wait for the answers
            if undelivered:
                self.log.warning("%d sent records not yet confirmed by the broker", undelivered)
        else:
            self.bus.poll()  # take the answers that have come
        while self._turns and self.bus.confirmed(self._turns[0][0]):
            _, self._confirmed_mark, finished, offsets = self._turns.popleft()
            self._confirmed.extend(finished)
            self._confirmed_next.update(offsets)
        if self._unrecorded():
            if (not final and now < self._next_record
                    and self._confirmed_mark - self._recorded_mark < RECORD_MAX_IDS):
                self._next_settle = self._next_record  # spaced (RECORD_EVERY_S)
                return
            self._next_record = now + RECORD_EVERY_S
        try:
            self.before_record()
            recorded = self.ledger.record(self._confirmed_mark)
        except AgentMeshError:
            recorded = False
        if not recorded:
            if now >= self._next_settle:
                self.log.warning("handled messages not recorded yet (Redis unavailable): %d "
                                 "waiting, offsets not committed", self.ledger.pending)
            self._next_settle = self._next_record = now + SETTLE_RETRY_S
            return
        self._recorded_mark = self._confirmed_mark
        self.after_record(self._confirmed_mark)
        for epoch, where, offset in self._confirmed:
            if epoch == self.epoch:
                self.book.done(where, offset)
        self._confirmed.clear()
        self._durable_next.update(self._confirmed_next)
        self._confirmed_next.clear()
        if now < self._next_commit and not final:
            self._next_settle = self._next_commit
            self._commit_owed = True
            return
        try:
            # not waited for but when leaving: the ledger, not the offset, keeps a message
            # from being handled twice, and the next commit covers one that was lost
            reader.commit({**self._durable_next, **self.book.committable()}, wait=final)
            self._next_commit = now + COMMIT_EVERY_S
            self._commit_owed = False
        except BusError as exc:
            self._next_settle = now + SETTLE_RETRY_S
            self._commit_owed = True
            self.log.warning("offsets not committed yet: %s", exc)

    def new_epoch(self) -> None:
        """The broker restarted empty: offsets of the old one mean nothing to the new one."""
        self.book.forget()
        self.epoch += 1
        self._turn_next.clear()
        self._confirmed_next.clear()
        self._durable_next.clear()
        self._turns = deque((g, m, f, {}) for g, m, f, _ in self._turns)
