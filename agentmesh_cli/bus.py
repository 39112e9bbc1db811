"""The Kafka layer: confluent-kafka inside, our envelope and our errors outside.

- `ensure_topics` creates every topic idempotently.
- `Bus.send` produces envelopes; `Bus.send_message` routes to the recipient's inbox
  partition, crc32(recipient) % partitions, computed here, not by the client.
- `Reader` is a manually assigned consumer (no group rebalancing) that commits
  explicit offsets, so a restarted reader resumes where it stopped.
- `Bus.dead_letter` sends a record that cannot be handled to the `dlq` topic.
- Given a `signing.Signer` (`security.sign_envelopes`), a Bus signs every record it
  produces (a `sig` header) and a Reader checks every record it reads: one that does
  not verify comes out with `Record.forged` saying why, for its reader to dead-letter.
  Without one, neither touches headers (the hot path pays nothing).
"""

from __future__ import annotations

import base64
import logging
import re
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_STORED,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from agentmesh_cli import constants as C
from agentmesh_cli import environment, events
from agentmesh_cli.config import KafkaConfig
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.errors import BusError, WaitTimeout
from agentmesh_cli.records import RAW_PREVIEW_BYTES, Offsets, Record
from agentmesh_cli.signing import Signer
from agentmesh_cli.waiting import Clock, Deadline, wait_until

if TYPE_CHECKING:  # the Kafka layer alone needs no redis-py (~0.1 s to import): `propose`
    from agentmesh_cli.store import Store

log = logging.getLogger(__name__)

MISSING_TOPIC_WAIT_S = 30.0  # how long a send waits for a lost topic to be re-created
MAX_SENT_AGAIN = 100_000  # records kept to send again after their topic was lost
# What the broker confirmed this recently (at most this many bytes) is sent again when it
# restarted empty (`replay`): an in-memory broker loses what nobody had read yet.
KICK_S = 0.001  # (Bus.kick) how long a flush runs to make the queued records leave
REPLAY_S = 10.0
REPLAY_BYTES = 4 << 20
REPLAYED_TOPICS = (C.TOPIC_MESSAGES, C.TOPIC_PROPOSALS, C.TOPIC_VOTES, C.TOPIC_CONSENSUS, C.TOPIC_REPLIES)
# A fetch at the tail of a partition that two producers append to at once can skip a
# whole batch on the embedded broker (Tansu): the newer batch is visible before the older
# one, and the reader sees offsets jump by a batch's size (measured: 25-63 of 200,000
# records, 4 producers flushing every 50 records, read while they wrote; all there when
# read again). A reader that sees offsets jump reads again from the missing one, up to
# this many times per gap; a gap still there after that is taken as real (a compacted or
# transactional topic on a real Kafka cluster), with a warning.
GAP_REREADS = 50
_TOPIC_GONE = (KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART)


def _client_config(kafka: KafkaConfig, client_id: str) -> dict[str, Any]:
    # small records must not wait for Nagle's algorithm
    return {"bootstrap.servers": kafka.bootstrap, "client.id": client_id,
            "socket.nagle.disable": True, **environment.expand_all(kafka.client, "kafka.client")}


def _admin_config(kafka: KafkaConfig, client_id: str) -> dict[str, Any]:
    # librdkafka prints its informational lines (level 6, e.g. "Purging 1 unserved events
    # from background queue" when a short-lived admin client ends) to stderr: not events
    return {"log_level": 5, **_client_config(kafka, client_id)}


def topic_partitions(kafka: KafkaConfig, short: str) -> int:
    return 1 if short in C.SINGLE_PARTITION_TOPICS else kafka.partitions


def ensure_topics(kafka: KafkaConfig, timeout: float = 10.0) -> list[str]:
    """Create every mesh topic that does not exist yet; return the names created.

    The broker must answer a metadata request first (`check_broker`, at most
    CHECK_TIMEOUT_S): a client whose security settings do not fit the broker's fails
    here within a second or so, with a message naming the settings to check, instead
    of after the whole `timeout` with a bare timeout."""
    check_timeout = min(timeout, CHECK_TIMEOUT_S)
    admin, trouble = _checked_admin(kafka, "agentmesh-admin", check_timeout)
    _await_answer(admin, trouble, kafka, check_timeout)
    wanted = [
        NewTopic(f"{kafka.topic_prefix}.{short}", topic_partitions(kafka, short), 1)
        for short in C.ALL_TOPICS
    ]
    created: list[str] = []
    try:
        futures = admin.create_topics(wanted, operation_timeout=timeout, request_timeout=timeout)
    except KafkaException as exc:
        raise BusError(f"cannot create topics on {kafka.bootstrap}: {exc}") from exc
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BusError(f"cannot create topic {name} on {kafka.bootstrap}: {exc}") from exc
        except Exception as exc:  # a future that timed out raises concurrent.futures errors
            raise BusError(f"cannot create topic {name} on {kafka.bootstrap}: {exc!r}") from exc
    return created


def prepare_topics(kafka: KafkaConfig, store: Store) -> str:
    """Create the topics; return the broker epoch, a new one when the broker was empty.

    Kafka offsets stored in Redis (the topology snapshot) are only valid for the broker
    incarnation they were read from. Creating the topology topic means the broker had
    no mesh data (a fresh or restarted in-memory broker), so the epoch changes and
    older snapshots are not resumed from.
    """
    created = ensure_topics(kafka)
    epoch = store.kafka_epoch()
    if f"{kafka.topic_prefix}.{C.TOPIC_TOPOLOGY}" in created or epoch is None:
        epoch = store.new_kafka_epoch()
        log.info("broker had no mesh topics: new Kafka epoch %s", epoch)
    return epoch


_quiet = logging.getLogger("agentmesh.bus.probe")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def broker_latency(kafka: KafkaConfig, timeout: float = 2.0) -> float | None:
    """Seconds the broker took to answer a metadata request; None when it did not."""
    # librdkafka would print every refused connection to stderr: for a probe (readiness
    # gates, status's live screen) an unreachable broker is the answer, not an event
    conf = _admin_config(kafka, "agentmesh-probe")
    conf["logger"] = _quiet
    admin = AdminClient(conf)
    started = time.monotonic()
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException:
        return None
    return time.monotonic() - started


def broker_reachable(kafka: KafkaConfig, timeout: float = 2.0) -> bool:
    """True when the broker answers a metadata request."""
    return broker_latency(kafka, timeout) is not None


CHECK_TIMEOUT_S = 5.0  # how long `check_broker` (and `ensure_topics`) wait for a first answer
_CHECK_SLICE_S = 0.2  # a metadata request at most this long, then the error events are read
_SASL_SETTINGS = "kafka.client sasl.mechanism, sasl.username and sasl.password"
_CLOSED_AT_ONCE = re.compile(r"Disconnected.*\(after \d{1,3}ms in state UP\)")
_TLS_SETTINGS = ("kafka.client security.protocol and ssl.ca.location (ssl.certificate.location "
                 "and ssl.key.location when the broker wants a client certificate)")


class _Trouble(logging.Handler):
    """What librdkafka reported while a check waited: its error events (error_cb) and
    its warning log lines, the only place some causes are named (a peer that closes the
    connection, a TLS handshake that never completes)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[KafkaError] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) < 50:  # librdkafka retries every 50-100 ms: the first ones say it
            # "FAIL [rdkafka#producer-1] [thrd:...]: host:port/bootstrap: what happened"
            self.lines.append(record.getMessage().split("]: ", 1)[-1])

    def on_error(self, err: KafkaError) -> None:
        if len(self.errors) < 50:
            self.errors.append(err)


def _checked_admin(kafka: KafkaConfig, client_id: str, timeout: float) -> tuple[AdminClient, _Trouble]:
    """An admin client whose errors and log lines are kept for `_await_answer`, not
    printed: a refused client would otherwise print a line per retry to stderr."""
    trouble = _Trouble()
    logger = logging.Logger(f"agentmesh.bus.{client_id}")  # not registered: one per client
    logger.addHandler(trouble)
    logger.propagate = False
    conf = _admin_config(kafka, client_id)
    conf.update({"logger": logger, "error_cb": trouble.on_error})
    # a TLS client facing a broker that does not speak TLS waits for a handshake that
    # never comes: librdkafka gives up after this (default 30 s, 1 s at least), and says so
    conf.setdefault("socket.connection.setup.timeout.ms", max(1000, round(timeout * 500)))
    try:
        return AdminClient(conf), trouble
    except KafkaException as exc:  # e.g. an ssl.ca.location that cannot be read
        raise BusError(f"bad Kafka client settings (kafka.client): {exc.args[0].str()}") from exc


def _security_problem(kafka: KafkaConfig, trouble: _Trouble) -> str | None:
    """A sentence naming what is wrong, when librdkafka's reports point at security."""
    for err in trouble.errors:
        if err.code() == KafkaError._AUTHENTICATION:
            return f"authentication failed: check {_SASL_SETTINGS} ({err.str()})"
        if err.code() == KafkaError._SSL:
            return f"TLS failed: check {_TLS_SETTINGS} ({err.str()})"
    for line in trouble.lines:
        if "SSL_HANDSHAKE" in line:
            return (f"no TLS handshake with the broker (does its listener use TLS?): check "
                    f"{_TLS_SETTINGS} ({line})")
    # a broker that closes a fresh connection again and again (one restarting closes
    # it once, then refuses): it wants something the client does not do
    protocol = str(kafka.client.get("security.protocol", "plaintext")).lower()
    closed_at_once = [line for line in trouble.lines if _CLOSED_AT_ONCE.search(line)]
    if "sasl" not in protocol and len(closed_at_once) >= 2:
        return ("the broker closed the connection at once: it may require SASL or TLS; "
                f"check kafka.client security.protocol ({closed_at_once[0]})")
    return None


def _await_answer(admin: AdminClient, trouble: _Trouble, kafka: KafkaConfig, timeout: float) -> float:
    """Seconds until the broker answered a metadata request; BusError naming the problem
    as soon as librdkafka reports a security one, or when `timeout` passed."""
    started = time.monotonic()
    deadline = Deadline(timeout)

    def answered() -> float | None:
        try:
            admin.list_topics(timeout=max(0.001, min(_CHECK_SLICE_S, deadline.left())))
            return max(1e-9, time.monotonic() - started)
        except KafkaException:
            pass
        admin.poll(0)  # hands librdkafka's error events and log lines to `trouble`
        problem = _security_problem(kafka, trouble)
        if problem is not None:
            raise BusError(f"Kafka broker at {kafka.bootstrap}: {problem}")
        return None

    try:
        # no pause between the requests: each waits up to _CHECK_SLICE_S for its answer
        return wait_until(answered, deadline, "a metadata answer", interval=0)
    except WaitTimeout as exc:
        # some mismatches leave no trace above warning level (a TLS listener that
        # drops a plaintext client: librdkafka only bootstraps again and again)
        last = next((e.str() for e in reversed(trouble.errors)), "no error reported")
        raise BusError(f"Kafka broker at {kafka.bootstrap} did not answer within "
                       f"{timeout:g} s ({last}); if it is up, check that kafka.client "
                       f"security.protocol fits its listener") from exc


def check_broker(kafka: KafkaConfig, timeout: float = CHECK_TIMEOUT_S) -> float:
    """Seconds the broker took to answer a metadata request. Raises BusError naming the
    problem when it does not: "authentication failed: check kafka.client sasl..." as soon
    as the broker refuses the credentials (well under a second), a TLS or security.protocol
    hint when the broker closes the connection or never completes a TLS handshake, else
    no answer within `timeout`."""
    admin, trouble = _checked_admin(kafka, "agentmesh-check", timeout)
    return _await_answer(admin, trouble, kafka, timeout)


class Bus:
    """Producer side of one process, plus the dead-letter path."""

    def __init__(self, kafka: KafkaConfig, client_id: str, linger_ms: float = 0.0,
                 signer: Signer | None = None, clock: Clock = time.monotonic) -> None:
        """`signer`: every record produced is signed with it (`signing.mesh_signer`).
        `clock` times the replay window, a flush's timeout and the wait for a lost topic."""
        self.kafka = kafka
        self.clock = clock
        self.client_id = client_id
        self.signer = signer
        self.delivery_failures = 0
        self.delivered: dict[tuple[str, int], int] = {}  # (short topic, partition) -> last offset
        self.delivered_to: Counter[str] = Counter()  # recipient -> messages the broker confirmed
        self._messages_topic = f"{kafka.topic_prefix}.{C.TOPIC_MESSAGES}"
        # called with the value of every record the broker confirmed (the chaos probes)
        self.on_delivered: Callable[[bytes | None], None] | None = None
        # called while a send waits for a topic the broker lost (roles: re-create the topics)
        self.on_missing_topic: Callable[[], None] | None = None
        # records to send again: refused for a lost topic, or replayed after a broker restart;
        # with the generation they still count in (None: a replay, counted in the current one)
        self._again: list[tuple[str, bytes | None, bytes | None, int, int | None]] = []
        # Generations (see `close_generation`): what was sent in each is confirmed (or has
        # failed) once its count of records in flight is back to 0
        self._generation = 0
        self._in_flight: Counter[int] = Counter()
        # what the broker confirmed lately, for `replay`: (when, topic, value, key, partition)
        self._recent: deque[tuple[float, str, bytes, bytes | None, int]] = deque()
        self._recent_bytes = 0
        self._replayed = {self.topic(t) for t in REPLAYED_TOPICS}
        conf = _client_config(kafka, client_id)
        # no lingering: a lone record leaves at once; under load librdkafka still batches
        # whatever queues while a request is in flight
        conf.setdefault("linger.ms", linger_ms)
        conf.setdefault("enable.idempotence", False)
        # never let a produce create a topic: after a restart the embedded broker would make
        # it with its own partition count; records wait in the queue until `prepare_topics`
        conf.setdefault("allow.auto.create.topics", False)
        try:
            self._producer = Producer(conf)
        except KafkaException as exc:
            raise BusError(f"cannot create a Kafka producer: {exc}") from exc

    def topic(self, short: str) -> str:
        return f"{self.kafka.topic_prefix}.{short}"

    def close_generation(self) -> int:
        """End the current generation of sends and return its number: what is sent from
        now on belongs to the next one. `confirmed(n)` says when all of n has been answered.
        (The agent runtime closes one per loop turn, so that a turn's ids are recorded once
        what its handlers sent is confirmed, without waiting for it in a flush.)"""
        closed = self._generation
        self._generation += 1
        return closed

    def sent_unconfirmed(self) -> int:
        """Records of the current generation the broker has not answered yet."""
        return self._in_flight[self._generation]

    def confirmed(self, generation: int) -> bool:
        """True when every record of `generation` has been confirmed by the broker or has
        failed for good (see `delivery_failures`); call `poll()` first to take the answers."""
        if self._in_flight.get(generation, 0) > 0:
            return False
        self._in_flight.pop(generation, None)
        return True

    def kick(self) -> None:
        """Send what is queued now rather than after `linger.ms`, waiting at most a
        millisecond (a flush that does not wait for the answers: librdkafka's flush makes
        its broker threads send at once while it runs)."""
        self._producer.flush(KICK_S)

    def _on_delivery(self, generation: int, err: KafkaError | None, msg: Any) -> None:
        # The callback hands us a KafkaError, not an exception: count and log it.
        if err is not None:
            if err.code() in _TOPIC_GONE and len(self._again) < MAX_SENT_AGAIN:
                # the broker lost the topic under queued records (an embedded broker
                # restarted empty): send them again once it is back (same ids: no doubles);
                # they stay in flight in their generation until then
                self._again.append((msg.topic(), msg.value(), msg.key(), msg.partition(), generation))
                return
            self._in_flight[generation] -= 1
            self.delivery_failures += 1
            log.error("delivery to %s failed: %s", msg.topic(), err.str())
            return
        self._in_flight[generation] -= 1
        topic = msg.topic() or ""
        if topic == self._messages_topic and (key := msg.key()) is not None:
            self.delivered_to[key.decode("utf-8", "replace")] += 1
        where = (topic.removeprefix(self.kafka.topic_prefix + "."), msg.partition() or 0)
        self.delivered[where] = max(self.delivered.get(where, -1), msg.offset() or 0)
        if topic in self._replayed:
            self._keep(topic, msg.value() or b"", msg.key(), msg.partition() or 0)
        if self.on_delivered is not None:
            self.on_delivered(msg.value())

    def send(
        self, short_topic: str, envelope: Envelope, key: str | None = None, partition: int | None = None
    ) -> None:
        self.produce_raw(short_topic, envelope.encode(), key, partition)

    def produce_raw(
        self, short_topic: str, value: bytes, key: str | None = None, partition: int | None = None,
        generation: int | None = None,
    ) -> None:
        """`generation`: the one the record counts in (default: the current one)."""
        generation = self._generation if generation is None else generation
        topic = self.topic(short_topic)
        # a callback per record, not one kept per generation on the Bus: that would be a
        # reference cycle, and a dropped Bus's producer would live on until the next GC
        kwargs: dict[str, Any] = {"value": value, "on_delivery": partial(self._on_delivery, generation)}
        if key is not None:
            kwargs["key"] = key.encode("utf-8")
        if partition is not None:
            kwargs["partition"] = partition
        if self.signer is not None:
            # signed here, where every record passes: sends, dead letters, and the records
            # sent again after a broker restart (signed again, as the same bytes)
            kwargs["headers"] = self.signer.headers(topic, value)
        missing_since: float | None = None
        while True:
            try:
                try:
                    self._producer.produce(topic, **kwargs)
                except BufferError:
                    self._producer.poll(0.5)  # queue full: let deliveries drain, then try once more
                    self._producer.produce(topic, **kwargs)
                break
            except BufferError as exc:
                raise BusError(f"cannot produce to {topic}: {exc}") from exc
            except KafkaException as exc:
                if exc.args[0].code() not in (KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION):
                    raise BusError(f"cannot produce to {topic}: {exc}") from exc
                # the broker lost the topic (the embedded one restarted empty) and the roles'
                # broker watch re-creates it: wait for that, asking for fresh metadata (the
                # send itself is what is tried again: a retry, on the hot path's plain loop)
                now = self.clock()
                missing_since = now if missing_since is None else missing_since
                if now - missing_since > MISSING_TOPIC_WAIT_S:
                    raise BusError(f"topic {topic} (partition {partition}) does not exist on "
                                   f"{self.kafka.bootstrap}; is the mesh up?") from exc
                if self.on_missing_topic is not None:
                    self.on_missing_topic()
                try:
                    self._producer.list_topics(topic=topic, timeout=1.0)
                except KafkaException:
                    pass
                self._producer.poll(0.2)
        self._in_flight[generation] += 1
        self._producer.poll(0)

    def send_detached(self, short_topic: str, envelope: Envelope, key: str | None = None) -> bool:
        """Send from any thread (the agent's heartbeat thread): counted in no generation,
        not kept for a replay, not sent again; False when the queue is full or the topic
        unknown (the next heartbeat goes anyway)."""
        topic, value = self.topic(short_topic), envelope.encode()
        kwargs: dict[str, Any] = {"value": value}
        if key is not None:
            kwargs["key"] = key.encode("utf-8")
        if self.signer is not None:
            kwargs["headers"] = self.signer.headers(topic, value)
        try:
            self._producer.produce(topic, **kwargs)
        except (BufferError, KafkaException) as exc:
            log.warning("%s not sent: %s", envelope.type, exc)
            return False
        return True

    def send_message(self, envelope: Envelope) -> int:
        """Send an agent-to-agent message to the recipient's inbox partition; return it."""
        partition = C.inbox_partition(envelope.to_agent_id, self.kafka.partitions)
        self.send(C.TOPIC_MESSAGES, envelope, key=envelope.to_agent_id, partition=partition)
        return partition

    def dead_letter(self, record: Record, reason: str, size: int | None = None) -> None:
        """`size`: the record's size when `record.value` holds only its start (a held record)."""
        value = record.value or b""
        payload = {
            "reason": reason,
            "topic": self.topic(record.topic),
            "partition": record.partition,
            "offset": record.offset,
            "size": len(value) if size is None else size,
            "raw_base64": base64.b64encode(value[:RAW_PREVIEW_BYTES]).decode("ascii"),
        }
        self.send(C.TOPIC_DLQ, events.dead_letter(self.client_id, payload))

    def topics(self, timeout: float = 0.5) -> set[str] | None:
        """The broker's topic names (one metadata request); None when it does not answer."""
        try:
            return set(self._producer.list_topics(timeout=timeout).topics)
        except KafkaException:
            return None

    def flush(self, timeout: float = 10.0) -> int:
        """Wait for queued records; return how many are still undelivered."""
        deadline = Deadline(timeout, self.clock)
        left = int(self._producer.flush(timeout))
        # more than a wait: what a lost topic refused is sent again, while time is left
        while self._again and not deadline.passed():
            self._send_again()
            left = int(self._producer.flush(deadline.left()))
        return left + len(self._again)

    def poll(self) -> None:
        self._producer.poll(0)
        if self._again:
            self._send_again()

    def _keep(self, topic: str, value: bytes, key: bytes | None, partition: int) -> None:
        now = self.clock()
        self._recent.append((now, topic, value, key, partition))
        self._recent_bytes += len(value)
        while self._recent and (self._recent[0][0] < now - REPLAY_S or self._recent_bytes > REPLAY_BYTES):
            self._recent_bytes -= len(self._recent.popleft()[2])

    def replay(self) -> int:
        """Send again what the broker confirmed in the last REPLAY_S seconds before it went
        away (the broker restarted empty: what nobody had read is gone with it). Same bytes,
        same ids: readers skip the copies of what they had read. Returns how many."""
        recent, self._recent, self._recent_bytes = self._recent, deque(), 0
        self._again.extend((topic, value, key, partition, None) for _, topic, value, key, partition in recent)
        self._send_again()
        return len(recent)

    def _send_again(self) -> None:
        again, self._again = self._again, []
        for topic, value, key, partition, generation in again:
            self.produce_raw(topic.removeprefix(self.kafka.topic_prefix + "."), value or b"",
                             None if key is None else key.decode("utf-8", "replace"), partition,
                             generation)
            if generation is not None:
                self._in_flight[generation] -= 1  # it was still counted from its first send


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
    ) -> None:
        """`assignments`: (short topic, partition, start offset); None = committed, else earliest.
        `queued_kbytes`: the most librdkafka fetches ahead per partition (its default, 64 MB,
        would hold much of a large backlog in memory).
        `fetch_wait` (seconds) defaults to `kafka.fetch_wait`. `signer`: every record read
        is checked with it, and one that does not verify has `Record.forged` set.
        `track_ends`: `at_end` holds the partitions whose last fetch found nothing more."""
        self.signer = signer
        # (short topic, partition): the broker said there is no more (partition EOF) and no
        # record came since. A hint, not the end: the embedded broker's watermarks, which
        # the client compares with, are wrong (DESIGN 8); what it proves is a fetch answered
        self.at_end: set[tuple[str, int]] = set()
        conf = _client_config(kafka, client_id or group_id)
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

    def rewind(self) -> None:
        """Read every assigned partition again from its beginning (a new broker epoch: the
        embedded broker restarted empty and does not report our old position out of range)."""
        self._seeds = {(self._prefix + short, partition): 0 for short, partition in self._assigned}
        self._expected = dict(self._seeds)
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
            value = msg.value()
            # headers are fetched only to be checked: unsigned meshes never pay for them
            forged = None if check is None else check(topic, value, msg.headers())
            records.append(Record(topic.removeprefix(self._prefix), partition, offset,
                                  msg.key(), value, forged))
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
    conf = _client_config(kafka, "agentmesh-offsets")
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


def hostname() -> str:
    return socket.gethostname()
