"""The pure core of an agent that handles several conversations at once (agent/schedule.py):
which message starts when, which offset a commit may name, how much may be read ahead.
Exact tables."""

from __future__ import annotations

import pytest

from agentmesh_cli.agent.schedule import Conversations, OffsetBook, ReadAhead


def test_one_conversation_in_order_others_at_once_up_to_the_limit() -> None:
    c: Conversations[str] = Conversations(limit=2)
    steps = [
        ("add", "A", "a1"), ("add", "A", "a2"), ("add", "B", "b1"), ("add", "C", "c1"),
        ("finished", "B", None), ("finished", "A", None), ("finished", "C", None),
        ("finished", "A", None),
    ]
    started = []
    for op, conversation, item in steps:
        got = c.add(conversation, item) if op == "add" else c.finished(conversation)
        started.append([i for _, i in got])
    # a2 waits for a1 (same conversation); c1 waits for a slot; when B ends, the slot
    # goes to C (first in line); when A ends, a2 keeps A's turn
    assert started == [["a1"], [], ["b1"], [], ["c1"], ["a2"], [], []]
    assert (c.running, c.waiting) == (0, 0)


def test_limit_one_is_strict_arrival_order() -> None:
    c: Conversations[str] = Conversations(limit=1)
    order = []
    for conversation, item in [("A", "a1"), ("B", "b1"), ("A", "a2"), ("C", "c1")]:
        order += [i for _, i in c.add(conversation, item)]
    running = "A"
    while c.running:
        started = c.finished(running)
        order += [i for _, i in started]
        running = started[0][0] if started else ""
    # a2 arrived after b1, but A's next message keeps A's turn when a1 ends
    assert order == ["a1", "a2", "b1", "c1"]


def test_waiting_and_fullest_count_only_what_has_not_started() -> None:
    c: Conversations[int] = Conversations(limit=1)
    for i in range(3):
        c.add("A", i)
    c.add("B", 9)
    assert (c.running, c.waiting, c.fullest(), c.queued("A"), c.queued("B")) == (1, 3, 2, 2, 1)


def test_the_commit_never_passes_a_record_not_done() -> None:
    book = OffsetBook()
    p = ("messages", 0)
    table = []
    for offset in range(5):
        book.read(p, offset)
    for done in (1, 3, 0, 4, 2):
        book.done(p, done)
        table.append(book.committable()[p])
    # 0 is open until it is done; then 1 (done) is passed too; 2 holds the rest
    assert table == [0, 0, 2, 2, 5]
    assert book.span(100) == 0


def test_span_counts_the_ledger_ids_taken_since_the_oldest_open_record() -> None:
    book = OffsetBook()
    a, b = ("messages", 0), ("consensus", 0)
    # the ledger's mark when each record was read: 10 and 11 read at 5, then 7 ids handled
    for offset, mark in [(10, 5), (11, 5), (12, 7), (13, 12)]:
        book.read(a, offset, mark)
    book.read(b, 3, 12)
    book.done(b, 3)
    assert book.committable() == {a: 10, b: 4}
    assert book.span(12) == 7  # since offset 10 was read
    book.done(a, 10)
    assert book.span(12) == 7  # 11 was read at the same mark
    book.done(a, 11)
    assert book.span(20) == 13  # 12 is the oldest open now, read at 7
    assert book.oldest_open(a) == 12 and book.oldest_open(b) is None
    book.forget()
    assert book.committable() == {} and book.span(20) == 0


def test_replies_do_not_widen_the_span() -> None:
    """A handler waiting for many replies holds its record open; the replies read after it
    are done at once and take no ledger id: the span stays 0, reading goes on."""
    book = OffsetBook()
    p = ("messages", 0)
    book.read(p, 0, 0)  # the asking handler's message, open
    for offset in range(1, 100_001):  # its replies: read and done, the ledger's mark unchanged
        book.read(p, offset, 0)
        book.done(p, offset)
    assert book.span(0) == 0 and book.committable() == {p: 0}


def test_done_of_an_offset_never_read_changes_nothing() -> None:
    book = OffsetBook()
    book.done(("messages", 0), 7)
    assert book.committable() == {}


@pytest.mark.parametrize(("concurrency", "buffer", "share"), [(1, 256, 256), (8, 256, 32), (1000, 2000, 16)])
def test_read_ahead_sizes(concurrency: int, buffer: int, share: int) -> None:
    ahead = ReadAhead.for_concurrency(concurrency, window=100_000)
    assert (ahead.buffer, ahead.share) == (buffer, share)


@pytest.mark.parametrize(("waiting", "fullest", "span", "room"), [
    (0, 0, 0, 256),  # empty: a whole buffer
    (200, 10, 0, 56),  # what is left of the buffer
    (256, 10, 0, 0),  # buffer full
    (10, 32, 0, 0),  # one conversation holds its whole share
    (0, 0, 49_990, 10),  # the ledger's half window is near
    (0, 0, 50_000, 0),  # reached: a crash could redeliver what the ledger forgot
])
def test_read_ahead_room(waiting: int, fullest: int, span: int, room: int) -> None:
    assert ReadAhead.for_concurrency(8, window=100_000).room(waiting, fullest, span) == room
