"""The gateway's Kafka side: it sends requests and messages, and takes the replies.

The gateway is an asker that is not an agent (asker.py): its requests carry its reply
address in `meta.reply_to`, and the agents' replies come on the `replies` topic, partition
crc32(address) % partitions. The address is stable per host and port
(`gateway-<host>-<port>`), so a gateway that supervisord restarts after a crash reads the
same partition: a retried request (the same id, from `Idempotency-Key`) that the agent
was still handling is answered there, and one it had finished is answered from its reply
cache (agent/exchange.py). Several gateway processes have several addresses; an agent
answers a repeated request at the address it came with.

Two threads do the blocking work, and hand results to the event loop in batches (one
`call_soon_threadsafe` per batch, not per record):
- the producer's poll thread runs the delivery callbacks (a failed delivery fails its
  ask with 503; a delivered ask's request is not handed over at all: nothing waits for
  it, and a wake-up of the loop per ask cost ~6% of the gateway's CPU per ask) and
  notices when no broker answers (`broker_down`);
- the reply reader polls the reply partition and resolves the waiting asks by
  `meta.in_reply_to`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from agentmesh_cli import constants as C
from agentmesh_cli.broker import client_config
from agentmesh_cli.config import KafkaConfig
from agentmesh_cli.doorbell import Doorbell
from agentmesh_cli.doze import Policy
from agentmesh_cli.dozing import Dozer
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.errors import BrokerUnavailable, BusError, InvalidEnvelope
from agentmesh_cli.reader import Reader
from agentmesh_cli.signing import Signer

log = logging.getLogger(__name__)

POLL_S = 0.05  # the producer thread's poll
REPLY_POLL_S = 0.2  # the reply reader's wait per poll (a fetch answers sooner when records come)
DELIVERY_TIMEOUT_MS = 10_000  # a record the broker has not taken by then fails: 503
PROBE_S = 1.0  # while no broker answers, it is asked this often whether it is back
_DOWN_CODES = {KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT}


class GatewayBus:
    def __init__(self, kafka: KafkaConfig, address: str, signer: Signer | None,
                 loop: asyncio.AbstractEventLoop, doorbell: Doorbell | None = None,
                 policy: Policy | None = None) -> None:
        """`doorbell`: what it sends rings the sleeping agents, and with `policy` its reply
        reader sleeps when idle (dozing.py)."""
        self.kafka = kafka
        self.doorbell = doorbell
        self.address = address
        self.signer = signer
        self.loop = loop
        self.partition = C.reply_partition(address, kafka.partitions)
        self.waiting: dict[str, asyncio.Future[Envelope]] = {}
        self._waiters: dict[str, int] = {}  # request id -> attempts waiting for its reply
        self.broker_down: str | None = None  # why, while no broker answers
        self.replies_in = 0
        self.late_replies = 0
        self._stop = threading.Event()
        self._rewind = threading.Event()
        self._settled: list[tuple[asyncio.Future[Any], str | None]] = []
        self._settled_lock = threading.Lock()
        conf = client_config(kafka, f"agentmesh-gateway-{address}")
        conf.update({"linger.ms": 0, "enable.idempotence": False, "allow.auto.create.topics": False,
                     "message.timeout.ms": DELIVERY_TIMEOUT_MS, "error_cb": self._on_error})
        try:
            self.producer = Producer(conf)
        except KafkaException as exc:
            raise BusError(f"cannot create a Kafka producer: {exc}") from exc
        reader = Reader(kafka, f"{kafka.topic_prefix}.gateway.{address}",
                        [(C.TOPIC_REPLIES, self.partition, None)], f"agentmesh-gateway-{address}",
                        fetch_wait=kafka.fetch_wait, signer=signer)
        reader.start_at_end()
        self.reader: Reader | Dozer = (reader if doorbell is None or policy is None
                                       else Dozer(reader, doorbell, policy))
        self._threads = [threading.Thread(target=self._poll_producer, name="gateway-produce", daemon=True),
                         threading.Thread(target=self._read_replies, name="gateway-replies", daemon=True)]
        for thread in self._threads:
            thread.start()

    # sending ---------------------------------------------------------------------
    def send(self, envelope: Envelope, topic: str = C.TOPIC_MESSAGES,
             key: str | None = None) -> asyncio.Future[None]:
        """Produce `envelope`: a message to its recipient's inbox partition, else to `topic`
        with `key`. The future is done once the broker took it (BrokerUnavailable when it
        did not). Call on the loop."""
        delivered: asyncio.Future[None] = self.loop.create_future()
        self._produce(envelope, topic, key, self._delivery(delivered))
        return delivered

    def send_request(self, envelope: Envelope, reply: asyncio.Future[Envelope]) -> None:
        """Produce an ask's request to its recipient's inbox partition. Nothing waits for its
        delivery, so only a failure is handed to the loop (it fails `reply` with
        BrokerUnavailable): a delivered request costs the loop no wake-up. Call on the loop."""
        self._produce(envelope, C.TOPIC_MESSAGES, None, self._failure(reply))

    def _produce(self, envelope: Envelope, topic: str, key: str | None,
                 on_delivery: Callable[[KafkaError | None, Any], None]) -> None:
        value = envelope.encode()
        kwargs: dict[str, Any] = {"value": value, "on_delivery": on_delivery}
        if topic == C.TOPIC_MESSAGES:
            kwargs["key"] = envelope.to_agent_id.encode()
            kwargs["partition"] = C.inbox_partition(envelope.to_agent_id, self.kafka.partitions)
        elif key is not None:
            kwargs["key"] = key.encode()
        if self.doorbell is not None:
            sent_key = envelope.to_agent_id if topic == C.TOPIC_MESSAGES else key
            if self.doorbell.sleepers(topic, sent_key):
                kwargs["on_delivery"] = self._ringing(on_delivery, topic, sent_key)
        topic = f"{self.kafka.topic_prefix}.{topic}"
        if self.signer is not None:
            kwargs["headers"] = self.signer.headers(topic, value)
        try:
            self.producer.produce(topic, **kwargs)
        except (BufferError, KafkaException) as exc:
            raise BrokerUnavailable(f"the broker does not take requests now: {exc}",
                                    {"kafka": str(exc)}) from exc

    def _ringing(self, on_delivery: Callable[[KafkaError | None, Any], None], topic: str,
                 key: str | None) -> Callable[[KafkaError | None, Any], None]:
        """A record for a reader that sleeps rings it once the broker has it (doorbell.py)."""
        def done(err: KafkaError | None, msg: Any) -> None:  # in the poll thread
            on_delivery(err, msg)
            if err is None and self.doorbell is not None:
                self.doorbell.note(topic, key)
                self.doorbell.ring()
        return done

    def _delivery(self, delivered: asyncio.Future[None]) -> Callable[[KafkaError | None, Any], None]:
        def done(err: KafkaError | None, msg: Any) -> None:  # in the poll thread
            with self._settled_lock:
                self._settled.append((delivered, None if err is None else err.str()))
        return done

    def _failure(self, reply: asyncio.Future[Envelope]) -> Callable[[KafkaError | None, Any], None]:
        def done(err: KafkaError | None, msg: Any) -> None:  # in the poll thread
            if err is None:
                self.broker_down = None  # as a settled delivery does (_poll_producer)
                return
            with self._settled_lock:
                self._settled.append((reply, err.str()))
        return done

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in _DOWN_CODES:
            self.broker_down = err.str()

    def _poll_producer(self) -> None:
        probed = 0.0
        while not self._stop.is_set():
            self.producer.poll(POLL_S)
            if self.broker_down is not None and time.monotonic() - probed >= PROBE_S:
                # nothing is sent while no broker answers: ask it, to know when it is back
                probed = time.monotonic()
                try:
                    self.producer.list_topics(timeout=PROBE_S / 2)
                    self.broker_down = None
                except KafkaException:
                    pass
            with self._settled_lock:
                settled, self._settled = self._settled, []
            if settled:
                if any(error is None for _, error in settled):
                    self.broker_down = None
                self.loop.call_soon_threadsafe(_settle, settled)

    # replies ----------------------------------------------------------------------
    def expect(self, request_id: str) -> asyncio.Future[Envelope]:
        """The future of the reply to `request_id`, shared by a retry of the same request
        in this process (a client that gave up on its first attempt before the gateway
        did): each attempt calls `forget` when it leaves."""
        future = self.waiting.get(request_id)
        if future is None or future.done():
            future = self.waiting[request_id] = self.loop.create_future()
            self._waiters[request_id] = 0
        self._waiters[request_id] += 1
        return future

    def forget(self, request_id: str, future: asyncio.Future[Envelope]) -> None:
        """An attempt leaves; the wait ends with the last one (the first attempt's 504
        must not take the reply from a retry still waiting)."""
        if self.waiting.get(request_id) is not future:
            return
        self._waiters[request_id] -= 1
        if self._waiters[request_id] <= 0:
            del self.waiting[request_id], self._waiters[request_id]

    def rewind(self) -> None:
        """The broker restarted empty (a new epoch): read the reply partition from its start
        (any thread; the reader thread does it)."""
        self._rewind.set()

    def _read_replies(self) -> None:
        while not self._stop.is_set():
            try:
                if self._rewind.is_set():
                    self._rewind.clear()
                    self.reader.rewind()
                records = self.reader.poll_batch(timeout=REPLY_POLL_S)
            except BusError as exc:
                log.warning("reading replies: %s", exc)
                self._stop.wait(1.0)
                continue
            replies = []
            for record in records:
                if record.forged is not None:
                    continue  # not the mesh's: never taken for an answer
                try:
                    replies.append(Envelope.decode(record.value))
                except InvalidEnvelope:
                    continue
            if replies:
                self.loop.call_soon_threadsafe(self._deliver, replies)

    def _deliver(self, replies: list[Envelope]) -> None:
        for reply in replies:
            request_id = reply.meta.get("in_reply_to")
            future = self.waiting.get(request_id) if isinstance(request_id, str) else None
            if future is None or future.done():
                self.late_replies += 1
                continue
            future.set_result(reply)
            self.replies_in += 1

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2.0)
        self.producer.flush(2.0)
        self.reader.close()


def _settle(settled: list[tuple[asyncio.Future[Any], str | None]]) -> None:
    for future, error in settled:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(BrokerUnavailable(f"the broker did not take the request: {error}",
                                                   {"kafka": error}))
