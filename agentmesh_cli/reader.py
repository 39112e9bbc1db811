"""The consumer side of the Kafka layer: `Reader`, a manually assigned consumer (no group
rebalancing) that commits explicit offsets, so a restarted reader resumes where it
stopped; it reads a skipped batch again (`GAP_REREADS`), and, given a `signing.Signer`,
checks every record it reads (one that does not verify comes out with `Record.forged`).
Also the offsets a group committed, and where a reader resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_STORED,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from agentmesh_cli.broker import client_config, topic_partitions
from agentmesh_cli.config import KafkaConfig
from agentmesh_cli.errors import BusError
from agentmesh_cli.records import Offsets, Record
from agentmesh_cli.signing import Signer

log = logging.getLogger(__name__)

# A fetch at the tail of a partition that two producers append to at once can skip a
# whole batch on the embedded broker (Tansu): the newer batch is visible before the older
# one, and the reader sees offsets jump by a batch's size (measured: 25-63 of 200,000
# records, 4 producers flushing every 50 records, read while they wrote; all there when
# read again). A reader that sees offsets jump reads again from the missing one, up to
# this many times per gap; a gap still there after that is taken as real (a compacted or
# transactional topic on a real Kafka cluster), with a warning.
GAP_REREADS = 50
# (Reader.sleep) how long the look-up of a logical start (the committed offset, else the
# log's start) may take; past it the start stays logical, as the client resolves it
RESOLVE_TIMEOUT_S = 0.5


class Reader:
    """A consumer with manual partition assignment and explicit offset commits."""

    def __init__(
        self,
        kafka: KafkaConfig,
        group_id: str,
        assignments: Iterable[tuple[str, int, int | None]],
        client_id: str = "",
        fetch_wait: float | None = None,
        fetch_min_bytes: int = 1,
        signer: Signer | None = None,
        queued_kbytes: int | None = None,
        track_ends: bool = False,
        only_keys: dict[str, bytes] | None = None,
        keep_headers: bool = False,
    ) -> None:
        """`assignments`: (short topic, partition, start offset); None = committed, else earliest.
        `queued_kbytes`: the most librdkafka fetches ahead per partition (its default, 64 MB,
        would hold much of a large backlog in memory).
        `fetch_wait` (seconds) defaults to `kafka.fetch_wait`. `signer`: every record read
        is checked with it, and one that does not verify has `Record.forged` set.
        `track_ends`: `at_end` holds the partitions whose last fetch found nothing more.
        `only_keys`: short topic -> the key this reader wants; a record of it with another
        key comes out `Record.foreign`, unchecked (an agent on a shared inbox partition: at
        128 agents on 16 partitions, 7 of 8 records are another's).
        `keep_headers`: every record keeps its headers (`Record.headers`; the host's inbox
        reader hands them on, for its agents to check)."""
        self.signer = signer
        self._keep_headers = keep_headers
        self._only_keys = {kafka.topic_prefix + "." + t: k for t, k in (only_keys or {}).items()}
        # (short topic, partition): the broker said there is no more (partition EOF) and no
        # record came since. A hint, not the end: the embedded broker's watermarks, which
        # the client compares with, are wrong (DESIGN 8); what it proves is a fetch answered
        self.at_end: set[tuple[str, int]] = set()
        conf = client_config(kafka, client_id or group_id)
        conf.update(
            {
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": track_ends,
                "fetch.wait.max.ms": max(1, round((fetch_wait or kafka.fetch_wait) * 1000)),
                # a broker may hold a fetch until this much is there (up to the wait);
                # the embedded one answers at the wait's end either way
                "fetch.min.bytes": fetch_min_bytes,
            }
        )
        if queued_kbytes is not None:
            conf["queued.max.messages.kbytes"] = queued_kbytes
        self._prefix = kafka.topic_prefix + "."
        assignments = list(assignments)
        self._assigned = [(short, partition) for short, partition, _ in assignments]
        # (full topic, partition) -> the offset the next record must have (see GAP_REREADS)
        self._expected: dict[tuple[str, int], int] = {}
        # ... from the start: the offset the reader was told to start at, 0 for beginning().
        # Not the broker's log start: the embedded broker reports the oldest batch it shows,
        # the newer one while an older one is not visible yet (seen: a first record at offset
        # 13 of a partition written from 0). So a first record past the start is a gap too;
        # a log that really starts later (retention on a cluster) is taken as such after
        # the rereads. `_seeds` keeps the starts: a first record before one is no duplicate
        # but a reset to the earliest (the start was out of range), read on from there.
        self._seeds = {(self._prefix + short, partition): max(start, 0)
                       for short, partition, start in assignments
                       if start is not None and (start >= 0 or start == OFFSET_BEGINNING)}
        self._expected.update(self._seeds)
        # (full topic, partition) -> (the offset being read again, how many times so far)
        self._rereads: dict[tuple[str, int], tuple[int, int]] = {}
        self.gaps_reread = 0  # gaps closed by reading again
        self.gaps_accepted = 0  # gaps taken as real
        # where each partition starts when nothing was read from it yet (see `sleep`)
        self._starts = [OFFSET_STORED if start is None else start for _, _, start in assignments]
        self._paused: list[TopicPartition] | None = None  # asleep: where to fetch from on waking
        try:
            self._consumer = Consumer(conf)
            self._consumer.assign(
                [
                    TopicPartition(
                        self._prefix + short, partition, OFFSET_STORED if start is None else start
                    )
                    for short, partition, start in assignments
                ]
            )
        except KafkaException as exc:
            raise BusError(f"cannot create a Kafka consumer for {group_id}: {exc}") from exc

    @property
    def asleep(self) -> bool:
        return self._paused is not None

    def sleep(self) -> None:
        """Stop fetching (a dozing reader, dozing.py): every partition is unassigned, at
        the position the reader got to, so the broker serves it no fetch at all until
        `wake`. (Not the client's pause: a resumed partition waited up to 0.5 s for its
        first fetch, measured; an assignment at an offset fetches at once.)"""
        if self._paused is not None:
            return
        try:
            positions = self._explicit(self._positions())
            self._consumer.unassign()
        except KafkaException as exc:
            raise BusError(f"cannot stop fetching: {exc}") from exc
        self._paused = positions

    def _explicit(self, positions: list[TopicPartition]) -> list[TopicPartition]:
        """Each logical start (a partition never read from) looked up, made an offset and
        kept as its start: woken beside an offset at the log's end, whose fetch the broker
        holds a whole fetch wait, a logical start's first fetch waited behind that one."""
        stored = [tp for tp in positions if tp.offset == OFFSET_STORED]
        beginning = [tp for tp in positions if tp.offset == OFFSET_BEGINNING]
        if not stored and not beginning:
            return positions
        found: dict[tuple[str, int], int] = {}
        try:
            for tp in self._consumer.committed(stored, timeout=RESOLVE_TIMEOUT_S) if stored else []:
                if tp.offset >= 0:
                    found[(tp.topic, tp.partition)] = tp.offset
            for tp in stored + beginning:  # nothing committed: the log's start (auto.offset.reset)
                if (tp.topic, tp.partition) not in found:
                    marks = self._consumer.get_watermark_offsets(
                        TopicPartition(tp.topic, tp.partition), timeout=RESOLVE_TIMEOUT_S, cached=False)
                    if marks is not None and marks[0] >= 0:
                        found[(tp.topic, tp.partition)] = marks[0]
        except KafkaException as exc:
            log.debug("logical starts left to the client: %s", exc)
            return positions
        for i, (short, partition) in enumerate(self._assigned):
            self._starts[i] = found.get((self._prefix + short, partition), self._starts[i])
        return [TopicPartition(*where, found[where]) if (where := (tp.topic, tp.partition)) in found
                else tp for tp in positions]

    def _positions(self) -> list[TopicPartition]:
        """Where each assigned partition goes on from. One that gave nothing since it was
        last assigned (the client knows no position: a wake that found nothing, as every
        idle probe) goes on where the reader got to; one never read from starts as it was
        told at first. (It was `start` alone: each probe sent a manager back to where it
        started, to fetch all since then again at its next wake.)"""
        if self._paused is not None:
            return list(self._paused)
        where = [TopicPartition(self._prefix + short, partition) for short, partition in self._assigned]
        positions = self._consumer.position(where) if where else []
        return [tp if tp.offset >= 0 else TopicPartition(tp.topic, tp.partition,
                                                         self._expected.get((tp.topic, tp.partition), start))
                for tp, start in zip(positions, self._starts, strict=True)]

    def move(self, starts: dict[tuple[str, int], int]) -> None:
        """Read these (short topic, partition)s from these offsets (OFFSET_BEGINNING: from
        the first record), assigning those not read yet; the rest go on where they are.
        Asleep, the reader stays asleep and fetches from there when it wakes."""
        try:
            positions = {(tp.topic, tp.partition): tp for tp in self._positions()}
        except KafkaException as exc:
            raise BusError(f"cannot find where the reader is: {exc}") from exc
        for (short, partition), offset in starts.items():
            where = (self._prefix + short, partition)
            if (short, partition) not in self._assigned:
                self._assigned.append((short, partition))
                self._starts.append(offset)
            else:
                self._starts[self._assigned.index((short, partition))] = offset
            self._rereads.pop(where, None)
            if offset >= 0 or offset == OFFSET_BEGINNING:
                self._seeds[where] = self._expected[where] = max(offset, 0)
            else:
                self._seeds.pop(where, None)
                self._expected.pop(where, None)
            positions[where] = TopicPartition(*where, offset)
        assignment = [positions[(self._prefix + short, partition)] for short, partition in self._assigned]
        if self._paused is not None:
            self._paused = assignment
            return
        try:
            self._consumer.assign(assignment)
        except KafkaException as exc:
            raise BusError(f"cannot move the reader: {exc}") from exc

    def next_offset(self, short: str, partition: int) -> int | None:
        """The offset the next record of this partition must have (None: not known yet)."""
        return self._expected.get((self._prefix + short, partition))

    @property
    def resumes_at(self) -> dict[tuple[str, int], int]:
        """Asleep: (short topic, partition) -> the offset it fetches from when it wakes
        (negative: a logical offset, as the client's OFFSET_STORED); awake: empty."""
        return {(tp.topic.removeprefix(self._prefix), tp.partition): tp.offset for tp in self._paused or []}

    def wake(self) -> None:
        """Fetch again from where `sleep` stopped."""
        paused, self._paused = self._paused, None
        if paused is None:
            return
        try:
            self._consumer.assign(paused)
        except KafkaException as exc:
            self._paused = paused
            raise BusError(f"cannot fetch again: {exc}") from exc

    def rewind(self) -> None:
        """Read every assigned partition again from its beginning (a new broker epoch: the
        embedded broker restarted empty and does not report our old position out of range)."""
        self._seeds = {(self._prefix + short, partition): 0 for short, partition in self._assigned}
        self._expected = dict(self._seeds)
        self._starts = [OFFSET_BEGINNING] * len(self._assigned)
        self._paused = None
        try:
            self._consumer.assign([TopicPartition(self._prefix + short, partition, OFFSET_BEGINNING)
                                   for short, partition in self._assigned])
        except KafkaException as exc:
            raise BusError(f"cannot rewind the consumer: {exc}") from exc

    def start_at_end(self, timeout: float = 5.0) -> None:
        """Read every assigned partition from its current end: only what is written from
        now on (a reply address that waits for the answer to what it is about to send)."""
        starts = []
        try:
            for short, partition in self._assigned:
                where = (self._prefix + short, partition)
                _, high = self._consumer.get_watermark_offsets(TopicPartition(*where), timeout=timeout,
                                                               cached=False)
                starts.append(TopicPartition(*where, high))
                self._seeds[where] = self._expected[where] = high
            self._consumer.assign(starts)
            self._starts, self._paused = [tp.offset for tp in starts], None
        except KafkaException as exc:
            raise BusError(f"cannot find the end of {self._assigned}: {exc}") from exc

    def poll_batch(self, max_records: int = 500, timeout: float = 0.1) -> list[Record]:
        """Wait up to `timeout` for the first record, then take what is already fetched."""
        try:
            # consume() alone would wait for max_records or the whole timeout
            first = self._consumer.poll(timeout)
            messages = [] if first is None else [first, *self._consumer.consume(max_records - 1, 0)]
        except KafkaException as exc:
            raise BusError(f"consume failed: {exc}") from exc
        records = []
        expected = self._expected
        check = None if self.signer is None else self.signer.check
        reread: set[tuple[str, int]] = set()  # partitions read again: the rest of the batch waits
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self.at_end.add(((msg.topic() or "").removeprefix(self._prefix), msg.partition() or 0))
                else:
                    log.warning("consumer error: %s", err.str())
                continue
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            if self.at_end:
                self.at_end.discard((topic.removeprefix(self._prefix), partition))
            where = (topic, partition)
            want = expected.get(where)
            if want is not None and offset != want:
                if offset < want and self._seeds.get(where) == want:
                    del self._seeds[where]  # nothing read yet: reset below the start, read on
                elif offset < want or where in reread:
                    continue  # read already, or past a gap being read again
                elif self._gap(topic, partition, want, offset):
                    reread.add(where)
                    continue
            expected[where] = offset + 1
            if self._only_keys:
                wanted, key = self._only_keys.get(topic), msg.key()
                if wanted is not None and key is not None and key != wanted:
                    records.append(Record(topic.removeprefix(self._prefix), partition, offset, key, None,
                                          None, True))
                    continue
            value = msg.value()
            # headers are fetched only to be checked: unsigned meshes never pay for them
            forged = None if check is None else check(topic, value, msg.headers())
            records.append(Record(topic.removeprefix(self._prefix), partition, offset,
                                  msg.key(), value, forged, False,
                                  msg.headers() if self._keep_headers else None))
        return records

    def _gap(self, topic: str, partition: int, want: int, got: int) -> bool:
        """Records `want`..`got - 1` were skipped: True when they are to be read again
        (the reader is moved back to `want`), False when the gap is taken as real."""
        where = (topic, partition)
        gap_at, tries = self._rereads.get(where, (want, 0))
        if gap_at != want:  # an earlier gap of this partition was closed: a new one
            tries = 0
        if tries >= GAP_REREADS:
            del self._rereads[where]
            self.gaps_accepted += 1
            if want == 0:  # read from the beginning: the log starts later (retention)
                log.info("%s/%d starts at offset %d", topic, partition, got)
            else:
                log.warning("offsets %d-%d of %s/%d never arrived after %d reads; going on",
                            want, got - 1, topic, partition, tries)
            return False
        if tries == 0:
            self.gaps_reread += 1
        self._rereads[where] = (want, tries + 1)
        try:
            self._consumer.seek(TopicPartition(topic, partition, want))
        except KafkaException as exc:
            log.warning("cannot read %s/%d again from %d: %s", topic, partition, want, exc)
            return False
        return True

    def commit(self, next_offsets: dict[tuple[str, int], int], wait: bool = True) -> None:
        """Commit (short topic, partition) -> next offset to read; `wait=False` sends the
        commit without waiting for the broker's answer (a later commit covers one lost)."""
        if not next_offsets:
            return
        offsets = [TopicPartition(self._prefix + t, p, o) for (t, p), o in next_offsets.items()]
        try:
            if wait:
                self._consumer.commit(offsets=offsets, asynchronous=False)
            else:
                self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            raise BusError(f"offset commit failed: {exc}") from exc

    def close(self) -> None:
        self._consumer.close()


def beginning() -> int:
    return int(OFFSET_BEGINNING)


def committed_offsets(kafka: KafkaConfig, group_id: str, partitions: Iterable[tuple[str, int]],
                      timeout: float = 10.0) -> Offsets:
    """The next offsets consumer group `group_id` committed on (short topic, partition);
    a partition it never committed on is left out. Joins no group (one OffsetFetch)."""
    prefix = kafka.topic_prefix + "."
    asked = [TopicPartition(prefix + short, partition) for short, partition in partitions]
    conf = client_config(kafka, "agentmesh-offsets")
    conf.update({"group.id": group_id, "enable.auto.commit": False})
    try:
        consumer = Consumer(conf)
        try:
            answers = consumer.committed(asked, timeout=timeout)
        finally:
            consumer.close()
    except KafkaException as exc:
        raise BusError(f"cannot read the offsets of {group_id} from {kafka.bootstrap}: {exc}") from exc
    offsets: Offsets = {}
    for tp in answers:
        if tp.error is not None:
            raise BusError(f"cannot read the offsets of {group_id} on {tp.topic}/{tp.partition}: "
                           f"{tp.error.str()}")
        if tp.offset >= 0:  # OFFSET_INVALID: never committed
            offsets[(tp.topic.removeprefix(prefix), tp.partition)] = tp.offset
    return offsets


def resume_assignments(kafka: KafkaConfig, topics: Iterable[str], offsets: Offsets
                       ) -> list[tuple[str, int, int | None]]:
    """Every partition of `topics`, from its stored next offset or from the beginning."""
    return [
        (topic, p, offsets.get((topic, p), beginning()))
        for topic in topics
        for p in range(topic_partitions(kafka, topic))
    ]
