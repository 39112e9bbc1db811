"""What an agent may run now, and which offsets it may commit: the pure core of an agent
that handles several conversations at once (no I/O; the runtime drives it).

`Conversations` keeps messages of one conversation in order and runs different ones at
once, up to a limit. A message's conversation is its `meta.conversation`, else its sender
(like a Kafka key). Conversations that wait for a free slot start in the order their
first message arrived.

`OffsetBook` says, per partition, the offset a commit may name: the oldest record read
whose work is not durable yet (its handler has not finished, or what the handler sent is
not confirmed, or its id is not in the ledger). Records finish out of order; the commit
never passes one that has not, so a crash redelivers every record not durably done and
the ledger skips the ones that were (docs/architecture.md, Agents that wait).

`ReadAhead` bounds what is read and not yet handled: the buffer as a whole, each
conversation's share of it, and the ids the ledger took since the oldest unfinished
record was read, which stay under half the ledger's window (`recovery.dedup_window`), so
a crash, which redelivers from that record on, never redelivers a handled id the ledger
has forgotten. (Records the ledger never holds, replies above all, do not count: a
handler may wait for any number of replies.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
Partition = tuple[str, int]


@dataclass
class Conversations(Generic[T]):
    """Per-conversation FIFO queues with at most `limit` conversations running at once."""

    limit: int
    _queues: dict[Hashable, deque[T]] = field(default_factory=dict)
    _running: set[Hashable] = field(default_factory=set)
    _ready: deque[Hashable] = field(default_factory=deque)  # waiting for a slot, in order
    waiting: int = 0  # items queued, not started

    def add(self, conversation: Hashable, item: T) -> list[tuple[Hashable, T]]:
        """Queue `item`; return what may start now ([] or [(conversation, item)])."""
        queue = self._queues.get(conversation)
        if queue is None:
            queue = self._queues[conversation] = deque()
            if conversation not in self._running:
                self._ready.append(conversation)
        queue.append(item)
        self.waiting += 1
        return self._start()

    def finished(self, conversation: Hashable) -> list[tuple[Hashable, T]]:
        """The running item of `conversation` is done; return what may start now."""
        self._running.discard(conversation)
        if conversation in self._queues:
            self._ready.appendleft(conversation)  # its next message keeps its turn
        return self._start()

    def queued(self, conversation: Hashable) -> int:
        queue = self._queues.get(conversation)
        return 0 if queue is None else len(queue)

    @property
    def running(self) -> int:
        return len(self._running)

    def fullest(self) -> int:
        """The longest queue of one conversation."""
        return max(map(len, self._queues.values()), default=0)

    def _start(self) -> list[tuple[Hashable, T]]:
        started = []
        while self._ready and len(self._running) < self.limit:
            conversation = self._ready.popleft()
            queue = self._queues[conversation]
            item = queue.popleft()
            if not queue:
                del self._queues[conversation]
            self._running.add(conversation)
            self.waiting -= 1
            started.append((conversation, item))
        return started


@dataclass
class OffsetBook:
    """Offsets read and not yet durably done, per partition (read in increasing order)."""

    _open: dict[Partition, deque[int]] = field(default_factory=dict)
    _marks: dict[Partition, deque[int]] = field(default_factory=dict)  # the ledger's mark at each read
    _done: dict[Partition, set[int]] = field(default_factory=dict)
    _next: dict[Partition, int] = field(default_factory=dict)  # last read + 1

    def read(self, where: Partition, offset: int, mark: int = 0) -> None:
        """`mark`: how many ids the ledger had taken when the record was read."""
        self._open.setdefault(where, deque()).append(offset)
        self._marks.setdefault(where, deque()).append(mark)
        self._next[where] = offset + 1

    def done(self, where: Partition, offset: int) -> None:
        """The record at `offset` is durably done (handled and recorded, or skipped)."""
        opened = self._open.get(where)
        if not opened:
            return
        marks = self._marks[where]
        if opened[0] == offset:
            opened.popleft()
            marks.popleft()
            done = self._done.get(where)
            while opened and done and opened[0] in done:
                done.discard(opened.popleft())
                marks.popleft()
        else:
            self._done.setdefault(where, set()).add(offset)

    def committable(self) -> dict[Partition, int]:
        """Per partition, the next offset a commit may name."""
        return {where: opened[0] if (opened := self._open.get(where)) else after
                for where, after in self._next.items()}

    def oldest_open(self, where: Partition) -> int | None:
        opened = self._open.get(where)
        return opened[0] if opened else None

    def span(self, mark: int) -> int:
        """How many ids the ledger took (it has taken `mark` now) since the oldest record
        not done was read, over the partitions (0 when all are done)."""
        return max((mark - marks[0] for marks in self._marks.values() if marks), default=0)

    def forget(self) -> None:
        """A new broker epoch: the old offsets mean nothing any more."""
        self._open.clear()
        self._marks.clear()
        self._done.clear()
        self._next.clear()


@dataclass(frozen=True)
class ReadAhead:
    """How much an agent may read before it handles it."""

    buffer: int  # items read and waiting for a slot, at most
    share: int  # of which one conversation may hold at most this many
    window: int  # the ledger's window: OffsetBook.span() stays under half of it

    @classmethod
    def for_concurrency(cls, concurrency: int, window: int) -> ReadAhead:
        buffer = max(256, 2 * concurrency)
        return cls(buffer, max(16, buffer // concurrency), window)

    def room(self, waiting: int, fullest: int, span: int) -> int:
        """How many more records may be read now (0: stop reading for a while)."""
        if fullest >= self.share or span >= self.window // 2:
            return 0
        return max(0, min(self.buffer - waiting, self.window // 2 - span))
