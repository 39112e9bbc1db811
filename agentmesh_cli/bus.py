"""The Kafka layer: confluent-kafka inside, our envelope and our errors outside.

- `Bus.send` produces envelopes; `Bus.send_message` routes to the recipient's inbox
  partition, crc32(recipient) % partitions, computed here, not by the client.
- `Bus.dead_letter` sends a record that cannot be handled to the `dlq` topic.
- Given a `signing.Signer` (`security.sign_envelopes`), a Bus signs every record it
  produces (a `sig` header); a `reader.Reader` checks every record it reads. Without
  one, neither touches headers (the hot path pays nothing).

The broker as a whole (topics, checks) is broker.py; consuming is reader.py.
"""

from __future__ import annotations

import base64
import logging
import socket
import time
from collections import Counter, deque
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from confluent_kafka import (
    KafkaError,
    KafkaException,
    Producer,
)

from agentmesh_cli import constants as C
from agentmesh_cli import events
from agentmesh_cli.broker import client_config
from agentmesh_cli.config import KafkaConfig
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.errors import BusError
from agentmesh_cli.records import RAW_PREVIEW_BYTES, Record
from agentmesh_cli.signing import Signer
from agentmesh_cli.waiting import Clock, Deadline

log = logging.getLogger(__name__)

MISSING_TOPIC_WAIT_S = 30.0  # how long a send waits for a lost topic to be re-created
MAX_SENT_AGAIN = 100_000  # records kept to send again after their topic was lost
KICK_S = 0.001  # (Bus.kick) how long a flush runs to make the queued records leave
# a record for a reader that sleeps: wait this long at most for the broker's confirmation
# before ringing it (doorbell.py), so that the reader's first fetch finds it
RING_FLUSH_S = 0.05
# What the broker confirmed this recently (at most this many bytes) is sent again when it
# restarted empty (`replay`): an in-memory broker loses what nobody had read yet.
REPLAY_S = 10.0
REPLAY_BYTES = 4 << 20
REPLAYED_TOPICS = (C.TOPIC_MESSAGES, C.TOPIC_PROPOSALS, C.TOPIC_VOTES, C.TOPIC_CONSENSUS, C.TOPIC_REPLIES)
_TOPIC_GONE = (KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART)


class Ringer(Protocol):
    """The doorbells of the readers that sleep (doorbell.Doorbell)."""

    def note(self, topic: str, key: str | None) -> None: ...

    @property
    def due(self) -> bool: ...

    def ring(self) -> None: ...


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
        # what is sent to a reader that sleeps rings it once confirmed (`kick`, `flush`, `poll`)
        self.doorbell: Ringer | None = None
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
        # sends held back while `holding` (an agent's loop turn), produced together by
        # `release`: (topic, produce kwargs, partition)
        self.holding = False
        self._held: list[tuple[str, dict[str, Any], int | None]] = []
        conf = client_config(kafka, client_id)
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

    def hold(self) -> None:
        """Hold sends back until `release`: a loop turn's sends are produced together, in a
        burst of microseconds, so that the producer's short linger puts them in one request
        per partition, however long the turn's handlers took (no flush to wait in)."""
        self.holding = True

    def release(self) -> int:
        """Produce what was held (in order), and stop holding. A send that fails for good
        (BusError) is raised with it and what follows it stays held: the turn it belongs to
        is never confirmed, so the records that made it are read again, not lost."""
        self.holding = False
        if not self._held:
            return 0
        held, self._held = self._held, []
        for i, (topic, kwargs, partition) in enumerate(held):
            try:
                self._produce(topic, kwargs, partition)
            except BusError:
                self._held = held[i:] + self._held
                raise
        self._producer.poll(0)
        return len(held)

    def kick(self) -> None:
        """Send what is queued now rather than after `linger.ms`, waiting at most a
        millisecond (a flush that does not wait for the answers: librdkafka's flush makes
        its broker threads send at once while it runs). It blocks the caller that long at
        most: for a lone record (an ask, a turn of one message), not for a busy loop's."""
        self._producer.flush(KICK_S)
        if self.doorbell is not None and self.doorbell.due:
            self._ring()

    def _ring(self) -> None:
        """Ring the sleeping readers of what was sent, once the broker confirmed it (or
        after RING_FLUSH_S: a rung reader fetches for a while anyway)."""
        assert self.doorbell is not None
        self._producer.flush(RING_FLUSH_S)
        self.doorbell.ring()

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
        self._in_flight[generation] += 1
        if self.doorbell is not None:
            self.doorbell.note(short_topic, key)
        if self.holding:
            self._held.append((topic, kwargs, partition))
            return
        try:
            self._produce(topic, kwargs, partition)
        except BusError:
            self._in_flight[generation] -= 1
            raise
        self._producer.poll(0)

    def _produce(self, topic: str, kwargs: dict[str, Any], partition: int | None) -> None:
        missing_since: float | None = None
        while True:
            try:
                try:
                    self._producer.produce(topic, **kwargs)
                except BufferError:
                    self._producer.poll(0.5)  # queue full: let deliveries drain, then try once more
                    self._producer.produce(topic, **kwargs)
                return
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
        self.release()
        left = int(self._producer.flush(timeout))
        # more than a wait: what a lost topic refused is sent again, while time is left
        while self._again and not deadline.passed():
            self._send_again()
            left = int(self._producer.flush(deadline.left()))
        if self.doorbell is not None and self.doorbell.due:
            self.doorbell.ring()
        return left + len(self._again)

    def poll(self) -> None:
        self._producer.poll(0)
        if self._again:
            self._send_again()
        if self.doorbell is not None and self.doorbell.due:
            self._ring()

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



def hostname() -> str:
    return socket.gethostname()
