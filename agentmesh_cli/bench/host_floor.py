"""The floor of the host architecture (`kafka.inbox_reader: host`): one bare fetching loop
(`floor-fetcher`, a process) reads every partition of the floor topic and hands each
record, as it came (value and signature), to the bare loop its key names over a unix
socket; the loops (mesh_floor's `floor-worker` with `via`) read there instead of fetching,
and produce their replies to the broker themselves, as the host's agents do. The broker
then sees one fetcher however many loops there are, as it sees the host's inbox reader,
and loops may share a partition, as the host's agents do (mesh.yaml's 16 partitions for
more agents).

A frame: value length and signature length (network order, 4 bytes each), the value, the
signature (empty when the floor does not sign). A record's key is its loop's name
(`floor-<n>`); a loop connects, sends its number n (4 bytes), and reads frames; the
fetcher keeps what comes for a loop not yet connected. The fetcher ends once every loop
has hung up, or after `max_s`.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections import defaultdict
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from agentmesh_cli.signing import HEADER, Signer

FRAME = struct.Struct("!II")
LOOP = struct.Struct("!I")
KEY_PREFIX = b"floor-"
BATCH = 500  # records the fetcher takes per poll
READ_BYTES = 1 << 20
HELLO = b"hello"


def _signature(headers: Any) -> bytes:
    """The record's `sig` header (b"" for none): the fetcher hands it on unchecked."""
    for name, data in headers or ():
        if name == HEADER and isinstance(data, bytes):
            return bytes(data)
    return b""


def loop_key(loop: int) -> bytes:
    """The key of the records for loop `loop` (its name, as an agent's records carry its)."""
    return KEY_PREFIX + str(loop).encode()


def _loop_of(key: bytes | None) -> int | None:
    if key is None or not key.startswith(KEY_PREFIX):
        return None
    try:
        return int(key[len(KEY_PREFIX):])
    except ValueError:
        return None


def fetcher(settings: dict[str, Any], consumer_config: dict[str, Any]) -> None:
    """Worker: the one fetching loop. `settings`: topic, loops, partitions (of the topic; the
    loops' count when absent), path (of the socket), max_s; `consumer_config`: the
    librdkafka settings the loops' own consumers would have."""
    topic, loops = settings["topic"], settings["loops"]
    partitions = settings.get("partitions") or loops
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(settings["path"])
    listener.listen(loops)
    listener.setblocking(False)
    consumer = Consumer(consumer_config)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    print("ready", flush=True)
    conns: dict[int, socket.socket] = {}
    pending: dict[int, list[bytes]] = defaultdict(list)
    hung_up = 0
    deadline = time.monotonic() + settings["max_s"]
    try:
        while hung_up < loops and time.monotonic() < deadline:
            out: dict[int, list[bytes]] = {}
            while len(conns) + hung_up < loops:  # the loops that connected since the last look
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    break
                conn.setblocking(True)
                (loop,) = LOOP.unpack(conn.recv(LOOP.size, socket.MSG_WAITALL))
                conns[loop] = conn
                out[loop] = pending.pop(loop, [])  # what came before it did
            first = consumer.poll(0.05)  # (consume(n, t) would wait out t for n records)
            for msg in () if first is None else (first, *consumer.consume(BATCH - 1, 0)):
                value, loop = msg.value(), _loop_of(msg.key())
                if msg.error() is not None or value is None or loop is None:
                    continue
                sig = _signature(msg.headers())
                out.setdefault(loop, []).append(FRAME.pack(len(value), len(sig)) + value + sig)
            for loop, frames in out.items():
                conn_of = conns.get(loop)
                if conn_of is None:
                    pending[loop].extend(frames)
                    continue
                try:
                    conn_of.sendall(b"".join(frames))
                except OSError:  # the loop is done
                    conns.pop(loop).close()
                    hung_up += 1
    finally:
        consumer.close()
        for conn in conns.values():
            conn.close()
        listener.close()


class SocketSource:
    """A loop's records, from the fetcher: what `baselines.poll_values` is for a consumer."""

    def __init__(self, path: str, loop: int, topic: str, signer: Signer | None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.sendall(LOOP.pack(loop))
        self.topic, self.signer = topic, signer
        self.buffer = bytearray()

    def poll(self, max_records: int, timeout: float) -> list[bytes]:
        """The values of up to `max_records` records: up to `timeout` for the first bytes
        (those checked, when the floor signs); EOFError once the fetcher is gone."""
        if len(self.buffer) < FRAME.size or not self._whole():
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if ready:
                data = self.sock.recv(READ_BYTES)
                if not data:
                    raise EOFError("the fetcher is gone")
                self.buffer += data
        values: list[bytes] = []
        at = 0
        while len(values) < max_records and len(self.buffer) - at >= FRAME.size:
            size, sig_size = FRAME.unpack_from(self.buffer, at)
            end = at + FRAME.size + size + sig_size
            if end > len(self.buffer):
                break
            value = bytes(self.buffer[at + FRAME.size:at + FRAME.size + size])
            sig = bytes(self.buffer[end - sig_size:end])
            at = end
            if self.signer is None or self.signer.check(self.topic, value, [(HEADER, sig)]) is None:
                values.append(value)
        del self.buffer[:at]
        return values

    def _whole(self) -> bool:
        size, sig_size = FRAME.unpack_from(self.buffer, 0)
        return len(self.buffer) >= FRAME.size + size + sig_size

    def close(self) -> None:
        self.sock.close()


def loop_ready(producer: Producer, source: SocketSource, topic: str, partition: int, loop: int,
               signer: Signer | None, timeout: float) -> bool:
    """A loop's start over the fetcher (baselines.worker_ready's twin): a record to itself
    (its partition, its key), handed back by the fetcher, then "ready" on stdout for the
    parent."""
    extra: dict[str, Any] = {} if signer is None else {"headers": signer.headers(topic, HELLO)}
    producer.produce(topic, HELLO, key=loop_key(loop), partition=partition, **extra)
    producer.flush(10)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if HELLO in source.poll(10, 0.1):
            print("ready", flush=True)
            return True
    return False
