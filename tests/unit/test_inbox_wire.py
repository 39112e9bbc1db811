"""The host inbox reader's pure part (inbox_wire.py), in exact tables: the frames byte for
byte and back through `FrameReader` however the stream is cut, the frames that must end a
connection (`WireError`), and `Fanout`: which client gets which record of a batch, which
offsets it is told it passed (SKIPPED), and where reading must move."""

from __future__ import annotations

import struct

import pytest

from agentmesh_cli.errors import WireError
from agentmesh_cli.inbox_wire import (
    KIND_RECORD,
    KIND_SKIPPED,
    KIND_SUBSCRIBE,
    KIND_SUBSCRIBED,
    MAX_FRAME,
    OFFSET_BEGINNING,
    TOPIC_INDEX,
    TOPICS,
    Fanout,
    FrameReader,
    Route,
    Subscription,
    decode_headers,
    encode_headers,
    parse_subscribe,
    record_frame,
    skipped_frame,
    subscribe_frame,
    subscribed_frame,
)

M, CS = "messages", "consensus"
M0, M1, C0 = (M, 0), (M, 1), (CS, 0)
KEYED = {M}


def test_the_topics_a_frame_can_name() -> None:
    assert TOPICS == ("messages", "consensus")
    assert TOPIC_INDEX == {"messages": 0, "consensus": 1}
    assert (KIND_RECORD, KIND_SKIPPED, KIND_SUBSCRIBED, KIND_SUBSCRIBE) == (1, 2, 3, 10)


# -- frames, byte for byte --------------------------------------------------------------

def test_a_record_with_no_key_value_or_headers_byte_for_byte() -> None:
    frame = record_frame(1, 3, 42, None, None, None)
    assert frame == (b"\x00\x00\x00\x1a"  # 26 bytes follow
                     b"\x01"  # RECORD
                     b"\x01"  # topic 1: consensus
                     b"\x00\x00\x00\x03"  # partition
                     b"\x00\x00\x00\x00\x00\x00\x00\x2a"  # offset
                     + b"\xff\xff\xff\xff" * 3)  # key, value, headers: None
    reader = FrameReader()
    reader.feed(frame)
    assert reader.frames(10) == [("record", 1, 3, 42, None, None, None)]


def test_a_record_with_empty_key_value_and_headers_keeps_them_empty_not_none() -> None:
    frame = record_frame(0, 0, 0, b"", b"", encode_headers([]))
    assert frame == b"\x00\x00\x00\x1a\x01\x00" + b"\x00" * 12 + b"\x00" * 12
    reader = FrameReader()
    reader.feed(frame)
    assert reader.frames(10) == [("record", 0, 0, 0, b"", b"", b"")]


def test_a_record_with_everything() -> None:
    headers = encode_headers([("sig", b"\x00\xff"), ("none", None), ("text", "é")])
    frame = record_frame(0, 2**31 - 1, 2**40 + 7, b"Sales", b'{"a":1}', headers)
    body = (struct.pack("!BBiqiii", 1, 0, 2**31 - 1, 2**40 + 7, 5, 7, len(headers or b""))
            + b"Sales" + b'{"a":1}' + (headers or b""))
    assert frame == struct.pack("!I", len(body)) + body
    reader = FrameReader()
    reader.feed(frame)
    assert reader.frames(10) == [("record", 0, 2**31 - 1, 2**40 + 7, b"Sales", b'{"a":1}', headers)]


@pytest.mark.parametrize(("headers", "blob", "decoded"), [
    (None, None, None),
    ([], b"", []),
    ({}, b"", []),
    ([("a", None)], b"\x00\x01a\xff\xff\xff\xff", [("a", None)]),
    ([("a", b"")], b"\x00\x01a\x00\x00\x00\x00", [("a", b"")]),
    ([("k", "é")], b"\x00\x01k\x00\x00\x00\x02\xc3\xa9", [("k", b"\xc3\xa9")]),  # str: UTF-8
    ({"x": b"1", "y": None}, b"\x00\x01x\x00\x00\x00\x011\x00\x01y\xff\xff\xff\xff",
     [("x", b"1"), ("y", None)]),
    # the order and repeats of the client's pairs are kept
    ([("h", b"2"), ("h", b"1")], b"\x00\x01h\x00\x00\x00\x012\x00\x01h\x00\x00\x00\x011",
     [("h", b"2"), ("h", b"1")]),
    ([("ñ", b"v")], b"\x00\x02\xc3\xb1\x00\x00\x00\x01v", [("ñ", b"v")]),
], ids=["none", "empty-list", "empty-dict", "none-value", "empty-value", "str-value", "dict",
        "repeated", "utf8-name"])
def test_headers(headers: object, blob: bytes | None, decoded: list[tuple[str, bytes | None]] | None
                 ) -> None:
    assert encode_headers(headers) == blob
    if blob is not None:
        assert decode_headers(blob) == decoded
        # and through a RECORD frame
        reader = FrameReader()
        reader.feed(record_frame(0, 1, 2, b"k", b"v", blob))
        (frame,) = reader.frames(1)
        assert frame[6] == blob and decode_headers(frame[6]) == decoded


@pytest.mark.parametrize("blob", [
    b"\x00\x01a\x00\x00\x00\x05xy",  # a value longer than what is left
    b"\x00\x05ab",  # a name longer than what is left
    b"\x00",  # half a name length
    b"\x00\x01a\x00\x00",  # half a value length
], ids=["value-past-end", "name-past-end", "half-name-length", "half-value-length"])
def test_headers_that_run_past_their_blob_are_a_wire_error(blob: bytes) -> None:
    with pytest.raises(WireError):
        decode_headers(blob)


def test_skipped_and_subscribed_byte_for_byte() -> None:
    assert skipped_frame(0, 5, 99) == (b"\x00\x00\x00\x0e\x02\x00\x00\x00\x00\x05"
                                       b"\x00\x00\x00\x00\x00\x00\x00\x63")
    assert subscribed_frame(7) == b"\x00\x00\x00\x05\x03\x00\x00\x00\x07"
    reader = FrameReader()
    reader.feed(skipped_frame(1, 0, 2**33) + subscribed_frame(2**32 - 1))
    assert reader.frames(10) == [("skipped", 1, 0, 2**33), ("subscribed", 2**32 - 1)]


def test_subscribe_byte_for_byte_and_back() -> None:
    starts = {("messages", 3): OFFSET_BEGINNING, ("consensus", 0): 17}
    frame = subscribe_frame(7, "Sales", b"Sales", starts)
    body = b'{"name":"Sales","key":"53616c6573","starts":[["consensus",0,17],["messages",3,-2]]}'
    assert frame == struct.pack("!I", 5 + len(body)) + b"\x0a\x00\x00\x00\x07" + body
    reader = FrameReader()
    reader.feed(frame)
    raw = reader.raw()
    assert raw is not None and bytes(raw) == frame[4:]
    assert reader.raw() is None
    assert parse_subscribe(raw) == Subscription(7, "Sales", b"Sales", starts)


@pytest.mark.parametrize(("name", "key", "starts"), [
    ("A", b"", {}),
    ("Ünïcode-1", "Ünïcode-1".encode(), {("messages", 0): 0}),
    ("B", b"\x00\xff", {("messages", 15): 2**40, ("consensus", 0): OFFSET_BEGINNING}),
])
def test_subscribe_round_trips(name: str, key: bytes, starts: dict[tuple[str, int], int]) -> None:
    reader = FrameReader()
    reader.feed(subscribe_frame(2**32 - 1, name, key, starts))
    raw = reader.raw()
    assert raw is not None
    assert parse_subscribe(raw) == Subscription(2**32 - 1, name, key, starts)


@pytest.mark.parametrize("body", [
    b"\x03\x00\x00\x00\x01",  # SUBSCRIBED, not SUBSCRIBE
    b"\x0a\x00\x00\x00\x01not json",
    b"\x0a\x00\x00\x00\x01{}",
    b"\x0a\x00\x00\x00\x01[]",
    b'\x0a\x00\x00\x00\x01{"name":"A","key":"zz","starts":[]}',
    b'\x0a\x00\x00\x00\x01{"name":"A","key":"41","starts":[["messages",0]]}',
    b'\x0a\x00\x00\x00\x01{"name":"A","key":"41","starts":[["messages","x",0]]}',
    b'\x0a\x00\x00\x00\x01{"name":"A","key":"41","starts":7}',
    b'\x0a\x00\x00\x00\x01{"name":"A","key":"41","starts":[["votes",0,0]]}',  # no topic of the wire
    b'\x0a\x00\x00\x00\x01{"name":"A","key":"41","starts":[["messages",-1,0]]}',
    b"\x0a\x00\x00\x00\x01\xff\xfe",  # not UTF-8
    b"\x0a",  # shorter than its kind and number
    b"\x0a\x00\x00",
], ids=["wrong-kind", "not-json", "no-fields", "a-list", "bad-hex", "short-start", "bad-partition",
        "starts-not-a-list", "other-topic",
        "negative-partition", "not-utf8", "kind-only", "half-gen"])
def test_a_broken_subscription_is_a_wire_error(body: bytes) -> None:
    with pytest.raises(WireError):
        parse_subscribe(body)


# -- FrameReader: a stream cut anywhere ----------------------------------------------------

STREAM_FRAMES = [
    ("subscribed", 1),
    ("record", 0, 2, 10, b"A", b"v" * 300, None),
    ("record", 1, 0, 0, None, b"", encode_headers([("s", b"x"), ("n", None)])),
    ("skipped", 0, 2, 12),
    ("record", 0, 2, 13, b"", None, b""),
    ("subscribed", 2),
]


def encode(frame: tuple[object, ...]) -> bytes:
    kind, *rest = frame
    if kind == "record":
        return record_frame(*rest)  # type: ignore[arg-type]
    if kind == "skipped":
        return skipped_frame(*rest)  # type: ignore[arg-type]
    return subscribed_frame(*rest)  # type: ignore[arg-type]


STREAM = b"".join(encode(f) for f in STREAM_FRAMES)


def test_frames_fed_byte_by_byte() -> None:
    reader = FrameReader()
    got: list[tuple[object, ...]] = []
    ends = set()  # the stream offsets where a frame is whole
    at = 0
    for frame in STREAM_FRAMES:
        at += len(encode(frame))
        ends.add(at)
    for i in range(len(STREAM)):
        reader.feed(STREAM[i:i + 1])
        assert reader.pending == (i + 1 in ends), i
        out = reader.frames(100)
        assert len(out) == (1 if i + 1 in ends else 0), i
        assert not reader.pending
        got += out
    assert got == STREAM_FRAMES
    assert reader.frames(100) == []


@pytest.mark.parametrize("sizes", [[1, 2, 3, 5, 7, 11, 13], [4], [5], [26], [331], [len(STREAM) - 1], [997]])
def test_frames_fed_in_odd_chunks(sizes: list[int]) -> None:
    reader = FrameReader()
    got: list[tuple[object, ...]] = []
    at, turn = 0, 0
    while at < len(STREAM):
        size = sizes[turn % len(sizes)]
        reader.feed(STREAM[at:at + size])
        at += size
        turn += 1
        got += reader.frames(2)  # at most two at a time: the rest waits for the next call
    while reader.pending:
        got += reader.frames(2)
    assert got == STREAM_FRAMES


def test_frames_takes_at_most_what_it_is_asked() -> None:
    reader = FrameReader()
    reader.feed(STREAM)
    assert reader.frames(0) == []
    assert reader.frames(1) == STREAM_FRAMES[:1]
    assert reader.frames(3) == STREAM_FRAMES[1:4]
    assert reader.pending
    assert reader.frames(100) == STREAM_FRAMES[4:]
    assert not reader.pending


def test_raw_frames_cut_anywhere() -> None:
    subs = [subscribe_frame(g, f"A{g}", b"k", {("messages", g): g}) for g in range(1, 6)]
    stream = b"".join(subs)
    for size in (1, 3, 8, 64):
        reader = FrameReader()
        got = []
        for at in range(0, len(stream), size):
            reader.feed(stream[at:at + size])
            while (raw := reader.raw()) is not None:
                got.append(parse_subscribe(raw))
        assert got == [Subscription(g, f"A{g}", b"k", {("messages", g): g}) for g in range(1, 6)], size


@pytest.mark.parametrize(("data", "whole"), [
    (b"\x00\x00\x00\x00", True),  # a frame of 0 bytes
    (struct.pack("!I", MAX_FRAME + 1), True),  # more than a frame may be: known before it comes
    (b"\x00\x00\x00\x01\x63", True),  # kind 99
    (b"\x00\x00\x00\x01\x0a", True),  # SUBSCRIBE: the agent's own kind, never sent to it
    (b"\x00\x00\x00\x01\x00", True),  # kind 0
], ids=["zero-size", "too-big", "kind-99", "subscribe-to-agent", "kind-0"])
def test_a_frame_of_bad_size_or_kind_is_a_wire_error(data: bytes, whole: bool) -> None:
    reader = FrameReader()
    reader.feed(subscribed_frame(1) + data)
    with pytest.raises(WireError):
        reader.frames(10)
    if data[:4] in (b"\x00\x00\x00\x00", struct.pack("!I", MAX_FRAME + 1)):
        reader = FrameReader()
        reader.feed(data)
        with pytest.raises(WireError):
            reader.raw()


@pytest.mark.parametrize("body", [
    b"\x01",  # a RECORD of its kind alone
    struct.pack("!BBiqiii", 1, 0, 0, 0, 5, -1, -1) + b"abc",  # a key longer than its frame
    struct.pack("!BBiqiii", 1, 0, 0, 0, -1, 2, -1) + b"abc",  # a frame longer than its parts
    struct.pack("!BBiqiii", 1, 0, 0, 0, -1, -1, 9) + b"\x00\x01a\xff\xff\xff\xff",
    b"\x02\x00\x00\x00",  # a short SKIPPED
    struct.pack("!BBiq", 2, 0, 0, 0) + b"\x00",  # a long SKIPPED
    b"\x03\x00",  # a short SUBSCRIBED
    b"\x03\x00\x00\x00\x01\x00",  # a long SUBSCRIBED
    struct.pack("!BBiqiii", 1, 2, 0, 0, -1, -1, -1),  # topic 2: there is none
], ids=["record-kind-only", "key-past-end", "record-too-long", "headers-past-end", "short-skipped",
        "long-skipped", "short-subscribed", "long-subscribed", "unknown-topic"])
def test_a_frame_whose_parts_do_not_fill_its_size_is_a_wire_error(body: bytes) -> None:
    """Its parts are not read from the frame after it, nor is a frame left half read."""
    reader = FrameReader()
    reader.feed(struct.pack("!I", len(body)) + body + skipped_frame(0, 0, 1) * 4)
    with pytest.raises(WireError):
        reader.frames(10)


# -- Fanout: who gets what ---------------------------------------------------------------

def test_one_client_of_its_own_partition() -> None:
    fan = Fanout()
    fan.subscribe(1, b"A", {M0: OFFSET_BEGINNING, C0: 5}, KEYED)
    assert fan.partitions == [C0, M0]
    assert fan.moves({}) == {C0: 5, M0: 0}  # nothing read yet: from where it wants
    assert fan.moves({M0: None, C0: None}) == {C0: 5, M0: 0}
    assert fan.moves({M0: 0, C0: 5}) == {}
    batch = [(M, 0, 0, b"A"), (M, 0, 1, b"A"), (CS, 0, 5, None), (M, 0, 2, b"A")]
    assert fan.route(batch) == {1: Route([0, 1, 2, 3], {})}
    assert fan.clients[1].next == {M0: 3, C0: 6}
    assert fan.moves({M0: 3, C0: 6}) == {}
    # read again (a reader moved back for nothing), a partition it does not read
    assert fan.route([(M, 0, 1, b"A"), (M, 0, 2, b"A"), (M, 1, 3, b"A"), (CS, 0, 4, None)]) == {}
    assert fan.clients[1].next == {M0: 3, C0: 6}
    # ahead of it, with no position known (a reader never hands such a batch): it waits for 3
    assert fan.route([(M, 0, 9, b"A")]) == {}
    assert fan.clients[1].next == {M0: 3, C0: 6}
    assert fan.route([]) == {}


def test_two_clients_sharing_a_partition_with_interleaved_keys() -> None:
    fan = Fanout()
    fan.subscribe(1, b"A", {M0: 0}, KEYED)
    fan.subscribe(2, b"B", {M0: 0}, KEYED)
    assert fan.partitions == [M0]
    batch = [(M, 0, 0, b"A"), (M, 0, 1, b"B"), (M, 0, 2, b"B"), (M, 0, 3, b"A"), (M, 0, 4, b"B")]
    # A passed 4 (B's) after its last record, and is told; B's last record is its own
    assert fan.route(batch) == {1: Route([0, 3], {M0: 4}), 2: Route([1, 2, 4], {})}
    assert {cid: c.next for cid, c in fan.clients.items()} == {1: {M0: 5}, 2: {M0: 5}}
    assert all(not c.passed for c in fan.clients.values())
    # a batch of another's records only: each told the last it passed; a record keyed to
    # nobody here is no one's, an unkeyed one everyone's (as a Reader's `only_keys` has it:
    # each agent then looks at its recipient, and refuses it if forged)
    assert fan.route([(M, 0, 5, b"A"), (M, 0, 6, b"A")]) == {1: Route([0, 1], {}), 2: Route([], {M0: 6})}
    assert fan.route([(M, 0, 7, None), (M, 0, 8, b"C")]) == {1: Route([0], {M0: 8}), 2: Route([0], {M0: 8})}
    assert fan.route([(M, 0, 9, b"B")]) == {1: Route([], {M0: 9}), 2: Route([0], {})}
    assert fan.moves({M0: 10}) == {}


def test_two_partitions_in_one_batch_each_told_its_own_skipped() -> None:
    fan = Fanout()
    fan.subscribe(1, b"A", {M0: 0, M1: 0}, KEYED)
    fan.subscribe(2, b"B", {M1: 0}, KEYED)
    batch = [(M, 1, 0, b"B"), (M, 0, 0, b"X"), (M, 1, 1, b"A"), (M, 0, 1, b"A"), (M, 1, 2, b"B")]
    assert fan.route(batch) == {1: Route([2, 3], {M1: 2}), 2: Route([0, 4], {})}


def test_the_consensus_topic_goes_to_every_client_whatever_its_key() -> None:
    fan = Fanout()
    fan.subscribe(1, b"A", {M0: 0, C0: 0}, KEYED)
    fan.subscribe(2, b"B", {M1: 0, C0: 0}, KEYED)
    fan.subscribe(3, b"C", {M0: 0, C0: 2}, KEYED)  # read up to 2 before
    batch = [(CS, 0, 0, None), (M, 0, 0, b"A"), (CS, 0, 1, b"p-1"), (M, 1, 0, b"B"), (CS, 0, 2, b"")]
    assert fan.route(batch) == {
        1: Route([0, 1, 2, 4], {}),
        2: Route([0, 2, 3, 4], {}),
        3: Route([4], {M0: 0}),  # A's record of their shared partition passed
    }
    assert {cid: c.next for cid, c in fan.clients.items()} == {
        1: {M0: 1, C0: 3}, 2: {M1: 1, C0: 3}, 3: {M0: 1, C0: 3}}


def test_a_full_client_falls_behind_and_reading_goes_back_for_it() -> None:
    fan = Fanout()
    fan.subscribe(1, b"A", {M0: 0, C0: 0}, KEYED)
    fan.subscribe(2, b"B", {M0: 0, C0: 0}, KEYED)
    batch = [(M, 0, 0, b"A"), (M, 0, 1, b"B"), (M, 0, 2, b"A"), (CS, 0, 0, None)]
    # A is full: it gets nothing, not even what it would pass over later (it stays at 0)
    assert fan.route(batch, full={1}) == {2: Route([1, 3], {M0: 2})}
    assert {cid: c.next for cid, c in fan.clients.items()} == {1: {M0: 0, C0: 0}, 2: {M0: 3, C0: 1}}
    # still full: reading goes on for B alone
    assert fan.moves({M0: 3, C0: 1}, full={1}) == {}
    assert fan.route([(M, 0, 3, b"B")], full={1}) == {2: Route([0], {})}
    # all full: reading stays where it is
    assert fan.moves({M0: 4, C0: 1}, full={1, 2}) == {}
    # A has room again: reading goes back to the lowest offset A wants, per partition
    assert fan.moves({M0: 4, C0: 1}) == {M0: 0, C0: 0}
    batch = [(M, 0, 0, b"A"), (M, 0, 1, b"B"), (M, 0, 2, b"A"), (CS, 0, 0, None), (M, 0, 3, b"B")]
    assert fan.route(batch) == {1: Route([0, 2, 3], {M0: 3})}  # B is past all of it
    assert fan.moves({M0: 4, C0: 1}) == {}
    assert {cid: c.next for cid, c in fan.clients.items()} == {1: {M0: 4, C0: 1}, 2: {M0: 4, C0: 1}}


def test_a_full_client_passes_over_anothers_records_up_to_its_own() -> None:
    fan = Fanout()
    fan.subscribe(1, b"A", {M0: 0}, KEYED)
    # another's records cost it nothing: passed even while it is full, up to its own
    assert fan.route([(M, 0, 0, b"B"), (M, 0, 1, b"B"), (M, 0, 2, b"A"), (M, 0, 3, b"B")],
                     full={1}) == {1: Route([], {M0: 1})}
    assert fan.clients[1].next == {M0: 2}
    assert fan.moves({M0: 4}) == {M0: 2}


def test_a_client_subscribing_below_or_above_the_position() -> None:
    fan = Fanout()
    fan.subscribe(1, b"A", {M0: 10}, KEYED)
    assert fan.moves({M0: 10}) == {}
    fan.subscribe(2, b"B", {M0: 4}, KEYED)  # below: reading goes back for it
    assert fan.moves({M0: 10}) == {M0: 4}
    batch = [(M, 0, o, b"B") for o in range(4, 10)] + [(M, 0, 10, b"A"), (M, 0, 11, b"B")]
    assert fan.route(batch) == {1: Route([6], {M0: 11}), 2: Route([0, 1, 2, 3, 4, 5, 7], {})}
    assert fan.moves({M0: 12}) == {}
    fan.subscribe(3, b"C", {M0: 20}, KEYED)  # above: the others still want 12
    assert fan.moves({M0: 12}) == {}
    assert fan.route([(M, 0, 12, b"C")]) == {1: Route([], {M0: 12}), 2: Route([], {M0: 12})}
    fan.drop(1)
    fan.drop(2)
    assert fan.moves({M0: 13}) == {M0: 20}  # C alone: reading goes on to where it wants
    assert fan.route([(M, 0, 19, b"C"), (M, 0, 20, b"C")]) == {3: Route([1], {})}
    fan.subscribe(4, b"D", {M0: OFFSET_BEGINNING}, KEYED)  # from the beginning: 0
    assert fan.clients[4].next == {M0: 0}
    assert fan.moves({M0: 21}) == {M0: 0}


def test_drop() -> None:
    fan = Fanout()
    fan.subscribe(1, b"A", {M0: 0, C0: 0}, KEYED)
    fan.subscribe(2, b"B", {M1: 3, C0: 7}, KEYED)
    fan.drop(1)
    assert fan.partitions == [C0, M1] and list(fan.clients) == [2]
    assert fan.moves({M1: 3, C0: 7}) == {}  # nobody reads M0 any more: no move for it
    assert fan.route([(M, 0, 0, b"A"), (CS, 0, 7, None)]) == {2: Route([1], {})}
    fan.drop(1)  # twice, and an unknown client: nothing
    fan.drop(99)
    fan.drop(2)
    assert fan.partitions == [] and fan.clients == {}
    assert fan.moves({M1: 0}) == {}
    assert fan.route([(M, 1, 3, b"B")]) == {}


def test_a_subscription_again_replaces_the_starts() -> None:
    fan = Fanout()
    fan.subscribe(1, b"A", {M0: 5, C0: 0}, KEYED)
    fan.subscribe(2, b"B", {C0: 3}, KEYED)
    assert fan.route([(CS, 0, 0, None)]) == {1: Route([0], {})}
    fan.subscribe(1, b"A2", {M0: 2}, KEYED)  # a new key, lower start, consensus left
    assert fan.partitions == [C0, M0]
    assert fan.clients[1].next == {M0: 2}
    assert fan.moves({M0: 5, C0: 1}) == {M0: 2, C0: 3}
    # listed once: a record it wants comes once, and its old key is another's now
    assert fan.route([(M, 0, 2, b"A2"), (M, 0, 3, b"A"), (CS, 0, 3, None)]) == {
        1: Route([0], {M0: 3}), 2: Route([2], {})}
    fan.subscribe(1, b"A2", {}, KEYED)
    assert fan.partitions == [C0] and fan.clients[1].next == {}
    assert fan.route([(M, 0, 4, b"A2")]) == {}


def test_an_unkeyed_subscription_gets_every_record_of_the_topic() -> None:
    """`keyed`: the topics where only the client's key is its own (the host reader names
    `messages` when it is subscribed)."""
    fan = Fanout()
    fan.subscribe(1, b"A", {M0: 0}, set())
    assert fan.route([(M, 0, 0, b"B"), (M, 0, 1, None)]) == {1: Route([0, 1], {})}


def test_a_gap_the_reader_took_as_real_is_passed_by_the_clients_that_wanted_it() -> None:
    """A record past the reader's position (or past the record before it in the batch):
    the reader read the offsets between again and again, and took them as a real gap (the
    log starts later, a transaction's marker). A client that wants one of them wants the
    record after them; one that wants less is behind (reading goes back for it), one
    that wants more is ahead."""
    fan = Fanout()
    fan.subscribe(1, b"A", {M0: 5, C0: 0}, KEYED)
    fan.subscribe(2, b"B", {M0: 6}, KEYED)
    fan.subscribe(3, b"C", {M0: 2}, KEYED)  # full: behind, the reading went on without it
    fan.subscribe(4, b"D", {M0: 9}, KEYED)  # ahead
    # offsets 5 and 6 are not there: the first record read is 7, then 8 (after 7), 10 (a gap of one)
    batch = [(M, 0, 7, b"B"), (CS, 0, 3, None), (M, 0, 8, b"A"), (M, 0, 10, b"D")]
    assert fan.route(batch, full={3}, reading={M0: 5, C0: 0}) == {
        1: Route([1, 2], {M0: 10}),  # the consensus topic's gap of 0..2 too
        2: Route([0], {M0: 10}),
        4: Route([3], {}),  # 9 is not there
    }
    assert {cid: c.next for cid, c in fan.clients.items()} == {
        1: {M0: 11, C0: 4}, 2: {M0: 11}, 3: {M0: 2}, 4: {M0: 11}}
    assert fan.moves({M0: 11, C0: 4}) == {M0: 2}  # C has room again: back for it
    assert fan.moves({M0: 11, C0: 4}, full={3}) == {}


def test_a_gap_within_a_batch_and_no_position_known() -> None:
    fan = Fanout()
    fan.subscribe(1, b"A", {M0: 0}, KEYED)
    fan.subscribe(2, b"B", {M0: 0}, KEYED)
    # no position known: the first record is not taken as past a gap; the next ones are
    assert fan.route([(M, 0, 3, b"A")]) == {}
    assert fan.route([(M, 0, 0, b"A"), (M, 0, 2, b"B"), (M, 0, 3, b"A")], reading={M0: None}) == {
        1: Route([0, 2], {}), 2: Route([1], {M0: 3})}
    # a position the batch starts at: no gap; one it starts below (a reset to an earlier
    # start, read again): no gap either
    assert fan.route([(M, 0, 4, b"A")], reading={M0: 4}) == {1: Route([0], {}), 2: Route([], {M0: 4})}
    assert fan.route([(M, 0, 1, b"A"), (M, 0, 5, b"B")], reading={M0: 5}) == {
        1: Route([], {M0: 5}), 2: Route([1], {})}
