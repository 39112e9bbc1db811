"""An agent's inbox read by the host's inbox reader (`kafka.inbox_reader: host`,
inbox_host.py): `HostInbox` has what the agent's loop uses of a `Reader` (poll_batch,
commit, rewind, close), but fetches nothing from the broker; `HostIdle` tells the loop
when the inbox is quiet, as a `dozing.Dozer` does for a reader of its own.

It keeps the next offset it wants of each partition, and subscribes with them whenever
it connects; what the host reader hands it below them (read again, or a restarted
reader) is dropped, so nothing is handled twice, and the host reader reads again from
them, so nothing is lost. It commits its own offsets (a consumer of its group that
never fetches), as a Reader of its own does.
"""

from __future__ import annotations

import logging
import math
import select
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicPartition

from agentmesh_cli.broker import client_config
from agentmesh_cli.config import KafkaConfig
from agentmesh_cli.doorbell import Doorbell
from agentmesh_cli.errors import BusError, WireError
from agentmesh_cli.inbox_wire import (
    OFFSET_BEGINNING,
    TOPICS,
    FrameReader,
    decode_headers,
    subscribe_frame,
)
from agentmesh_cli.records import Record
from agentmesh_cli.signing import Signer
from agentmesh_cli.waiting import Clock

log = logging.getLogger(__name__)

RECV_BYTES = 1024 * 1024
CONNECT_EVERY_S = 0.2  # while the host reader is away, try this often
QUIET_AFTER_S = 0.75  # nothing handed for this long: the inbox is quiet (HostIdle)
COMMITTED_TIMEOUT_S = 10.0
# the consumer that commits is closed after this long without a commit, and made again at
# the next: an idle agent keeps no Kafka consumer (its threads' timers cost about 0.2 ms of
# CPU a second, measured: at 128 idle agents, 2.5% of a core)
COMMITTER_IDLE_S = 10.0


class HostInbox:
    asleep = False  # the host reader sleeps for it; this one only waits on its socket

    def __init__(self, kafka: KafkaConfig, group_id: str, partitions: Iterable[tuple[str, int]],
                 client_id: str, path: Path, name: str, key: bytes, signer: Signer | None = None,
                 clock: Clock = time.monotonic) -> None:
        """`partitions`: (short topic, partition) to read, each from the group's committed
        offset (none: from the beginning)."""
        self.signer = signer
        self.path = path
        self.name = name
        self.key = key
        self.clock = clock
        self.at_end: set[tuple[str, int]] = set()
        self.resumes_at: dict[tuple[str, int], int] = {}
        self._prefix = kafka.topic_prefix + "."
        conf = client_config(kafka, client_id or group_id)
        conf.update({"group.id": group_id, "enable.auto.commit": False})
        self._conf = conf
        # commits only (never assigned, it fetches nothing), made when needed (COMMITTER_IDLE_S)
        self._consumer: Consumer | None = None
        self._last_commit = -math.inf
        wanted = list(partitions)
        try:
            answers = self._committer().committed([TopicPartition(self._prefix + t, p) for t, p in wanted],
                                                  timeout=COMMITTED_TIMEOUT_S)
        except KafkaException as exc:
            raise BusError(f"cannot read the committed offsets of {group_id}: {exc}") from exc
        # (short topic, partition) -> the next offset wanted; OFFSET_BEGINNING until a record came
        self._next: dict[tuple[str, int], int] = {
            (tp.topic.removeprefix(self._prefix), tp.partition):
                tp.offset if tp.offset >= 0 else OFFSET_BEGINNING for tp in answers}
        self._sock: socket.socket | None = None
        self._frames = FrameReader()
        self._gen = 0
        self._current = False  # the frames read follow the latest subscription
        self._next_connect = -1.0
        self._lost_since: float | None = None
        self.connects = 0

    # the connection --------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._sock is not None

    def fileno(self) -> int | None:
        return None if self._sock is None else self._sock.fileno()

    @property
    def buffered(self) -> bool:
        """Whole frames were taken off the socket and not read yet (a poll read fewer
        than had come): nothing on the socket will say so."""
        return self._frames.pending

    def _connect(self) -> bool:
        now = self.clock()
        if now < self._next_connect:
            return False
        self._next_connect = now + CONNECT_EVERY_S
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            if self._lost_since is None:
                self._lost_since = now
                log.warning("the host's inbox reader is not there (%s): trying again every %.1f s",
                            exc.strerror or exc, CONNECT_EVERY_S)
            return False
        self._sock, self._frames = sock, FrameReader()
        self.connects += 1
        if self._lost_since is not None:
            log.info("the host's inbox reader is back after %.1f s", now - self._lost_since)
            self._lost_since = None
        return self._subscribe()

    def _subscribe(self) -> bool:
        if self._sock is None:
            return False
        self._gen += 1
        self._current = False
        try:
            self._sock.sendall(subscribe_frame(self._gen, self.name, self.key, self._next))
        except OSError:
            self._lost()
            return False
        return True

    def _lost(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._lost_since = self.clock()
            log.warning("lost the host's inbox reader: connecting again")

    # reading ------------------------------------------------------------------------------
    def poll_batch(self, max_records: int = 500, timeout: float = 0.1) -> list[Record]:
        """Wait up to `timeout` for the first record, then take what is already here."""
        if self._sock is None and not self._connect():
            if timeout > 0:
                time.sleep(min(timeout, CONNECT_EVERY_S))
            return []
        records = self._take(max_records)
        if records:
            return records
        deadline = self.clock() + timeout
        while self._sock is not None:
            wait = max(0.0, deadline - self.clock())
            try:
                readable, _, _ = select.select([self._sock], [], [], wait)
                data = self._sock.recv(RECV_BYTES) if readable else None
            except OSError:
                data = b""
            if data is None:
                return []
            if not data:
                self._lost()
                return []
            self._frames.feed(data)
            records = self._take(max_records)
            if records or self.clock() >= deadline:
                return records
        return []

    def _take(self, most: int) -> list[Record]:
        try:
            frames = self._frames.frames(most)
        except WireError as exc:
            log.warning("a broken frame from the host's inbox reader (%s): connecting again", exc)
            self._lost()
            return []
        records: list[Record] = []
        nexts, prefix = self._next, self._prefix
        check = None if self.signer is None else self.signer.check
        for frame in frames:
            kind = frame[0]
            if kind == "subscribed":
                self._current = frame[1] == self._gen
                continue
            if not self._current:
                continue  # of an older subscription
            topic = TOPICS[frame[1]]
            where = (topic, frame[2])
            offset = frame[3]
            if offset < nexts.get(where, 0):
                continue  # read already
            nexts[where] = offset + 1
            if kind == "skipped":
                records.append(Record(topic, frame[2], offset, None, None, None, True))
                continue
            _, _, partition, _, key, value, headers = frame
            forged = None if check is None else check(prefix + topic, value,
                                                      decode_headers(headers) if headers is not None else [])
            records.append(Record(topic, partition, offset, key, value, forged))
        return records

    def sleep(self) -> None:
        """(A Reader's: this one never fetches.)"""

    def wake(self) -> None:
        """(A Reader's: this one never fetches.)"""

    def rewind(self) -> None:
        """A new broker epoch: everything again from the beginning."""
        self._next = dict.fromkeys(self._next, OFFSET_BEGINNING)
        self._subscribe()

    def _committer(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(self._conf)
        self._last_commit = self.clock()
        return self._consumer

    def commit(self, next_offsets: dict[tuple[str, int], int], wait: bool = True) -> None:
        if not next_offsets:
            return
        offsets = [TopicPartition(self._prefix + t, p, o) for (t, p), o in next_offsets.items()]
        try:
            consumer = self._committer()
            if wait:
                consumer.commit(offsets=offsets, asynchronous=False)
            else:
                consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            raise BusError(f"offset commit failed: {exc}") from exc

    def rest(self) -> None:
        """Close the committing consumer when it has not committed for COMMITTER_IDLE_S
        (its last commits, asynchronous ones, were answered long before)."""
        if self._consumer is not None and self.clock() - self._last_commit >= COMMITTER_IDLE_S:
            consumer, self._consumer = self._consumer, None
            consumer.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


class HostIdle:
    """For the agent's loop, what a Dozer tells it: whether its inbox is quiet (it then
    ticks slower and waits for the socket, not in a poll)."""

    def __init__(self, inbox: HostInbox, doorbell: Doorbell, clock: Clock = time.monotonic) -> None:
        self.reader = inbox
        self.doorbell = doorbell  # a sender's only: this agent is never rung, its host reader is
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self._last = clock()
        self._armed: Callable[[], None] | None = None

    @property
    def asleep(self) -> bool:
        return (self.reader.connected and self.clock() - self._last >= QUIET_AFTER_S
                and not self.reader.buffered)

    def step(self, records: int) -> None:
        if records or self._readable():
            self._last = self.clock()
        elif self.asleep:
            self.reader.rest()

    def _readable(self) -> bool:
        fd = self.reader.fileno()
        if fd is None:
            return True  # gone: poll, which connects again
        try:
            return bool(select.select([fd], [], [], 0)[0])
        except (OSError, ValueError):
            return True

    def awake(self) -> None:
        self._last = self.clock()

    def wait_for(self, longest: float) -> float:
        return longest

    def arm(self, loop: object, wake: Callable[[], None]) -> None:
        """While quiet, `wake` is called when the socket has something (asyncio loop's reader)."""
        fd = self.reader.fileno()
        if fd is None or self._armed is not None:
            return
        loop.add_reader(fd, wake)  # type: ignore[attr-defined]
        self._armed = lambda: loop.remove_reader(fd)  # type: ignore[attr-defined]

    def disarm(self) -> None:
        if self._armed is not None:
            self._armed()
            self._armed = None

    def take_counts(self) -> Counter[str]:
        counts, self.counts = self.counts, Counter()
        return counts
