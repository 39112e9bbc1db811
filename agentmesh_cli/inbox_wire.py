"""The host's inbox reader and its agents (inbox_host.py, inbox_client.py), the pure part:
the frames they exchange over the local socket, and `Fanout`, which decides who gets what.

One process per host (program `inbox-reader`, `kafka.inbox_reader: host`) reads the
agents' inbox partitions and the consensus topic once, and hands each agent of the host
what it reads: its own records of its inbox partition, every record of the consensus
topic. The agents then fetch nothing from the broker themselves (they still write to it,
and commit their own offsets).

Frames, each a 4-byte big-endian length then the frame:

- hub -> agent `RECORD`: kind, topic, partition, offset, then the key, value and headers
  (lengths -1 for None); headers as (name, value) pairs. The agent checks signatures
  itself: the host reader only hands bytes on.
- hub -> agent `SKIPPED`: the records of a partition up to `offset` were another agent's
  (the agent may commit past them, as it does past a `Record.foreign`).
- hub -> agent `SUBSCRIBED`: every frame after it follows the subscription of number `gen`
  (what came before belongs to an older one and is dropped).
- agent -> hub `SUBSCRIBE`: number `gen`, then JSON `{name, key, starts}`: the key its
  inbox records carry and, per (topic, partition), the next offset it wants (-2: from
  the beginning).

The agent keeps the offsets it has read, so a restarted host reader (or one that read a
partition again for another agent) never hands it a record twice: it drops what is below
them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from agentmesh_cli import constants as C
from agentmesh_cli.errors import WireError

TOPICS = (C.TOPIC_MESSAGES, C.TOPIC_CONSENSUS)  # a frame names its topic by its index here
TOPIC_INDEX = {topic: index for index, topic in enumerate(TOPICS)}

KIND_RECORD = 1
KIND_SKIPPED = 2
KIND_SUBSCRIBED = 3
KIND_SUBSCRIBE = 10

OFFSET_BEGINNING = -2  # librdkafka's logical offset: the partition's first record

_LEN = struct.Struct("!I")
# kind, topic index, partition, offset, key length, value length, headers length
_RECORD = struct.Struct("!BBiqiii")
_SKIPPED = struct.Struct("!BBiq")
_GEN = struct.Struct("!BI")
_HEADER_NAME = struct.Struct("!H")
_HEADER_VALUE = struct.Struct("!i")
MAX_FRAME = 64 * 1024 * 1024  # a frame claiming more is a broken stream

Partition = tuple[str, int]  # (short topic, partition)
Headers = list[tuple[str, str | bytes | None]]


def _blob(data: bytes | None) -> tuple[int, bytes]:
    return (-1, b"") if data is None else (len(data), data)


def encode_headers(headers: Any) -> bytes | None:
    """The headers as the Kafka client gives them: (name, value) pairs, or a dict."""
    if headers is None:
        return None
    out = bytearray()
    for name, value in headers.items() if isinstance(headers, dict) else headers:
        if isinstance(value, str):
            value = value.encode("utf-8")
        raw = name.encode("utf-8")
        out += _HEADER_NAME.pack(len(raw)) + raw
        size, data = _blob(value)
        out += _HEADER_VALUE.pack(size) + data
    return bytes(out)


def decode_headers(blob: bytes) -> Headers:
    headers: Headers = []
    at, end = 0, len(blob)
    try:
        while at < end:
            (size,) = _HEADER_NAME.unpack_from(blob, at)
            at += _HEADER_NAME.size
            name = blob[at:at + size].decode("utf-8")
            at += size
            (size,) = _HEADER_VALUE.unpack_from(blob, at)
            at += _HEADER_VALUE.size
            if size < 0:
                headers.append((name, None))
            else:
                headers.append((name, blob[at:at + size]))
                at += size
    except (struct.error, UnicodeDecodeError) as exc:  # a length past the end, a broken name
        raise WireError(f"broken headers: {exc}") from exc
    if at != end:
        raise WireError("headers run past their frame")
    return headers


def record_frame(topic: int, partition: int, offset: int, key: bytes | None, value: bytes | None,
                 headers: bytes | None) -> bytes:
    """A RECORD frame, length included; `headers` as `encode_headers` made them."""
    klen, kdata = _blob(key)
    vlen, vdata = _blob(value)
    hlen, hdata = _blob(headers)
    body = _RECORD.pack(KIND_RECORD, topic, partition, offset, klen, vlen, hlen)
    size = _RECORD.size + len(kdata) + len(vdata) + len(hdata)
    return b"".join((_LEN.pack(size), body, kdata, vdata, hdata))


def skipped_frame(topic: int, partition: int, offset: int) -> bytes:
    return _LEN.pack(_SKIPPED.size) + _SKIPPED.pack(KIND_SKIPPED, topic, partition, offset)


def subscribed_frame(gen: int) -> bytes:
    return _LEN.pack(_GEN.size) + _GEN.pack(KIND_SUBSCRIBED, gen)


def subscribe_frame(gen: int, name: str, key: bytes, starts: dict[Partition, int]) -> bytes:
    body = orjson.dumps({"name": name, "key": key.hex(),
                         "starts": [[t, p, o] for (t, p), o in sorted(starts.items())]})
    return _LEN.pack(_GEN.size + len(body)) + _GEN.pack(KIND_SUBSCRIBE, gen) + body


@dataclass(frozen=True)
class Subscription:
    gen: int
    name: str
    key: bytes
    starts: dict[Partition, int]


def parse_subscribe(frame: bytes | memoryview) -> Subscription:
    if len(frame) < _GEN.size:
        raise WireError(f"a subscription of {len(frame)} bytes")
    kind, gen = _GEN.unpack_from(frame, 0)
    if kind != KIND_SUBSCRIBE:
        raise WireError(f"expected a subscription, got a frame of kind {kind}")
    try:
        data = orjson.loads(bytes(frame[_GEN.size:]))
        sub = Subscription(gen, str(data["name"]), bytes.fromhex(data["key"]),
                           {(str(t), int(p)): int(o) for t, p, o in data["starts"]})
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise WireError(f"a broken subscription: {exc}") from exc
    for topic, partition in sub.starts:  # the host reader reads no other (a frame names its topic)
        if topic not in TOPIC_INDEX or partition < 0:
            raise WireError(f"a subscription of {topic}/{partition}")
    return sub


# One frame read: ("record", topic index, partition, offset, key, value, headers blob),
# ("skipped", topic index, partition, offset) or ("subscribed", gen)
Frame = tuple[Any, ...]


class FrameReader:
    """Frames out of a byte stream that arrives in pieces."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._at = 0

    def feed(self, data: bytes) -> None:
        if self._at and self._at >= len(self._buf) // 2:
            del self._buf[:self._at]
            self._at = 0
        self._buf += data

    @property
    def pending(self) -> bool:
        """A whole frame is waiting."""
        buf, at = self._buf, self._at
        if len(buf) - at < _LEN.size:
            return False
        return len(buf) - at - _LEN.size >= _LEN.unpack_from(buf, at)[0]

    def raw(self) -> memoryview | None:
        """The next whole frame, unparsed (the host reader's side), or None."""
        buf, at = self._buf, self._at
        if len(buf) - at < _LEN.size:
            return None
        (size,) = _LEN.unpack_from(buf, at)
        if size > MAX_FRAME or size < 1:
            raise WireError(f"a frame of {size} bytes")
        start = at + _LEN.size
        if len(buf) - start < size:
            return None
        self._at = start + size
        return memoryview(bytes(buf[start:start + size]))

    def frames(self, most: int) -> list[Frame]:
        """Up to `most` whole frames, parsed (the agent's side)."""
        out: list[Frame] = []
        buf, at, end = self._buf, self._at, len(self._buf)
        while len(out) < most and end - at >= _LEN.size:
            (size,) = _LEN.unpack_from(buf, at)
            if size > MAX_FRAME or size < 1:
                raise WireError(f"a frame of {size} bytes")
            start = at + _LEN.size
            if end - start < size:
                break
            kind = buf[start]
            if kind == KIND_RECORD:
                if size < _RECORD.size:
                    raise WireError(f"a record frame of {size} bytes")
                _, topic, partition, offset, klen, vlen, hlen = _RECORD.unpack_from(buf, start)
                # its parts fill it exactly: none is read from the frame after it
                if min(klen, vlen, hlen) < -1 or topic >= len(TOPICS) or \
                        _RECORD.size + max(klen, 0) + max(vlen, 0) + max(hlen, 0) != size:
                    raise WireError(f"a record frame of {size} bytes that holds topic {topic}, "
                                    f"key {klen}, value {vlen} and headers {hlen} bytes")
                pos = start + _RECORD.size
                key = None if klen < 0 else bytes(buf[pos:pos + klen])
                pos += max(klen, 0)
                value = None if vlen < 0 else bytes(buf[pos:pos + vlen])
                pos += max(vlen, 0)
                headers = None if hlen < 0 else bytes(buf[pos:pos + hlen])
                out.append(("record", topic, partition, offset, key, value, headers))
            elif kind == KIND_SKIPPED:
                if size != _SKIPPED.size:
                    raise WireError(f"a skipped frame of {size} bytes")
                _, topic, partition, offset = _SKIPPED.unpack_from(buf, start)
                if topic >= len(TOPICS):
                    raise WireError(f"a skipped frame of topic {topic}")
                out.append(("skipped", topic, partition, offset))
            elif kind == KIND_SUBSCRIBED:
                if size != _GEN.size:
                    raise WireError(f"a subscribed frame of {size} bytes")
                out.append(("subscribed", _GEN.unpack_from(buf, start)[1]))
            else:
                raise WireError(f"a frame of unknown kind {kind}")
            at = start + size
        self._at = at
        return out


# --- who gets what ------------------------------------------------------------------------
@dataclass
class Client:
    """One agent of the host, as the host reader sees it."""

    key: bytes  # its inbox records carry this key
    keyed: frozenset[str]  # the topics where a record with another key is not its own
    next: dict[Partition, int] = field(default_factory=dict)  # the next offset it wants
    # the last offset of another's records it passed over and was not told of (SKIPPED)
    passed: dict[Partition, int] = field(default_factory=dict)


@dataclass
class Route:
    """What one batch gives one client: record indexes into the batch, then per
    partition the offset it may be told it passed (SKIPPED), after those records."""

    records: list[int] = field(default_factory=list)
    skipped: dict[Partition, int] = field(default_factory=dict)


class Fanout:
    """Per partition read, the clients reading it and the next offset each wants.

    A record at offset o goes to each client of its partition that wants o (and is not
    full), when the record is its own: a keyed topic's record with its key or with none
    (as a Reader's `only_keys`: an unkeyed record is every reader's, each agent then looks
    at its recipient, or refuses it), any other topic's record. A client passes over
    another's record (wanting o + 1 after it). A
    client that is full, or wants an offset below what was read, falls behind: `moves`
    says where the reading must go back to, so each client gets every offset in order.
    """

    def __init__(self) -> None:
        self.clients: dict[int, Client] = {}
        self._of: dict[Partition, list[int]] = {}  # partition -> its clients

    def subscribe(self, cid: int, key: bytes, starts: dict[Partition, int], keyed: Iterable[str]) -> None:
        """Client `cid` wants these partitions from these offsets (OFFSET_BEGINNING: 0);
        it replaces what it wanted before."""
        self.drop(cid)
        client = Client(key, frozenset(keyed), {where: max(start, 0) for where, start in starts.items()})
        self.clients[cid] = client
        for where in client.next:
            self._of.setdefault(where, []).append(cid)

    def drop(self, cid: int) -> None:
        client = self.clients.pop(cid, None)
        if client is None:
            return
        for where in client.next:
            readers = self._of[where]
            readers.remove(cid)
            if not readers:
                del self._of[where]

    @property
    def partitions(self) -> list[Partition]:
        return sorted(self._of)

    def route(self, batch: Sequence[tuple[str, int, int, bytes | None]],
              full: frozenset[int] | set[int] = frozenset(),
              reading: Mapping[Partition, int | None] | None = None) -> dict[int, Route]:
        """`batch`: (short topic, partition, offset, key) of each record read, in order per
        partition. Per client, what it gets.

        `reading`: per partition, the offset the reader was to read next before this batch
        (the positions `moves` was given, moved). A record past it (or past the record
        before it) means the reader took the offsets between as a gap that is real (the
        log starts later, a transaction's marker: Reader GAP_REREADS): a client that wants
        one of them wants this record (else reading would go back for it again and again)."""
        routes: dict[int, Route] = {}
        clients, of = self.clients, self._of
        expect: dict[Partition, int | None] = dict(reading) if reading else {}
        for index, (topic, partition, offset, key) in enumerate(batch):
            where = (topic, partition)
            want = expect.get(where)
            if want is not None and offset > want:  # a gap
                for cid in of.get(where, ()):
                    nexts = clients[cid].next
                    if want <= nexts[where] < offset:
                        nexts[where] = offset
            expect[where] = offset + 1
            for cid in of.get(where, ()):
                client = clients[cid]
                if client.next[where] != offset:
                    continue  # behind (the reading comes back for it) or ahead of this record
                if topic in client.keyed and key is not None and key != client.key:
                    client.next[where] = offset + 1
                    client.passed[where] = offset
                    continue
                if cid in full:
                    continue  # it falls behind: read again when it has room
                client.next[where] = offset + 1
                client.passed.pop(where, None)
                route = routes.get(cid)
                if route is None:
                    route = routes[cid] = Route()
                route.records.append(index)
        for cid, client in clients.items():
            if client.passed:
                routes.setdefault(cid, Route()).skipped.update(client.passed)
                client.passed.clear()
        return routes

    def moves(self, positions: dict[Partition, int | None], full: frozenset[int] | set[int] = frozenset()
              ) -> dict[Partition, int]:
        """Where reading must go to, per partition whose position (the next offset the
        reader will read; None: not read yet) is not the lowest offset a client with room
        wants. A partition whose clients are all full stays where it is."""
        out: dict[Partition, int] = {}
        for where, cids in self._of.items():
            wants = [self.clients[cid].next[where] for cid in cids if cid not in full]
            if not wants:
                continue
            lowest = min(wants)
            if positions.get(where) != lowest:
                out[where] = lowest
        return out
