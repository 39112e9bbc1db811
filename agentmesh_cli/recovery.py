"""Riding out restarts of the infrastructure, for every long-running role.

- `wait_for_infra`: a role started while Redis or the broker is restarting waits for them
  (logging what it waits for) instead of crashing; supervisord would otherwise count
  each quick crash as a failed start and end the program FATAL.
- `BrokerWatch`: the embedded broker keeps its data in memory, so a restarted one is
  empty. The watch notices (the mesh's topology topic is gone), re-creates the topics,
  which writes a new `kafka:epoch`, and tells its role when the epoch changed, whoever
  changed it: the role then reads its partitions again from the beginning (the broker
  does not report old positions as out of range) and announces itself again.
"""

from __future__ import annotations

import logging
import math
import time

from agentmesh_cli import constants as C
from agentmesh_cli.broker import broker_reachable, prepare_topics
from agentmesh_cli.bus import REPLAY_S, Bus
from agentmesh_cli.config import KafkaConfig
from agentmesh_cli.doorbell import Doorbell
from agentmesh_cli.errors import AgentMeshError, WaitTimeout
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import Clock, wait_until

log = logging.getLogger(__name__)

WAIT_LOG_EVERY_S = 5.0


def wait_for_infra(kafka: KafkaConfig, store: Store, who: str, timeout: float | None = None,
                   clock: Clock = time.monotonic) -> str:
    """Wait until Redis answers PING and the broker answers metadata, then create the
    topics; return the broker epoch. Raises AgentMeshError only after `timeout` seconds."""
    started = clock()
    next_log = started + WAIT_LOG_EVERY_S
    missing = ""

    def prepared() -> str | None:
        nonlocal missing, next_log
        redis_up = store.ping()
        broker_up = redis_up and broker_reachable(kafka, 1.0)
        if redis_up and broker_up:
            try:
                return prepare_topics(kafka, store)
            except AgentMeshError as exc:  # it went away again between the checks
                log.warning("could not prepare the topics yet: %s", exc)
        missing = "Redis" if not redis_up else f"the Kafka broker at {kafka.bootstrap}"
        if (now := clock()) >= next_log:
            log.warning("%s: waiting for %s (%.0f s so far)", who, missing, now - started)
            next_log = now + WAIT_LOG_EVERY_S
        return None

    try:
        return wait_until(prepared, timeout, "the infrastructure", interval=0.2, clock=clock)
    except WaitTimeout as exc:
        raise AgentMeshError(f"{who}: {missing} did not answer within {timeout:.0f} s") from exc


class BrokerWatch:
    """Notice a new broker epoch (whoever made it); re-create the topics when the broker
    lost them; on a new epoch, send again what the role's producer had sent lately
    (`Bus.replay`). The role itself rewinds its readers and announces itself."""

    def __init__(self, bus: Bus, store: Store, epoch: str, every: float = 1.0,
                 topics_every: float = 1.0, clock: Clock = time.monotonic) -> None:
        self.kafka = bus.kafka
        self.bus = bus  # its producer answers the metadata requests: no extra client
        self.store = store
        self.epoch = epoch
        self.every = every
        self.topics_every = topics_every
        self.clock = clock  # `check(now)` takes a time of this clock
        self._topology_topic = f"{self.kafka.topic_prefix}.{C.TOPIC_TOPOLOGY}"
        self._next = clock() + every
        self._next_topics = clock() + topics_every
        self._next_recreate = -math.inf
        bus.on_missing_topic = self.recreate  # a send that finds its topic gone waits on this

    def recreate(self) -> None:
        """Create the mesh's topics (at most once a second); a new epoch if they were gone."""
        now = self.clock()
        if now < self._next_recreate:
            return
        self._next_recreate = now + 1.0
        try:
            prepare_topics(self.kafka, self.store)
        except AgentMeshError as exc:
            log.warning("could not re-create the topics yet: %s", exc)

    def check(self, now: float) -> str | None:
        """The new epoch when the broker changed since the last call, else None (cheap:
        a metadata request every `topics_every`, and the epoch as the Bus's doorbell
        heard it on the mesh feed, or, when it does not listen, one Redis GET a second).
        Every second even while the caller's reader sleeps: after a broker restart
        nothing rings it."""
        if now < self._next:
            return None
        self._next = now + self.every
        try:
            made = False
            if now >= self._next_topics:
                self._next_topics = now + self.topics_every
                topics = self.bus.topics(0.5)
                if topics is not None and self._topology_topic not in topics:
                    log.warning("the broker lost the mesh's topics (restarted empty): creating them")
                    self.recreate()
                    made = True  # the epoch it may have written is not on the feed yet: read it
            bell = self.bus.doorbell
            if not made and isinstance(bell, Doorbell) and bell.listening and bell.epoch is not None:
                epoch: str | None = bell.epoch
            else:
                epoch = self.store.kafka_epoch()
        except AgentMeshError as exc:
            log.warning("broker watch: %s", exc)
            return None
        if epoch is None or epoch == self.epoch:
            return None
        self.epoch = epoch
        replayed = self.bus.replay()
        log.warning("new broker epoch %s: reading the topics again from the beginning, %d records "
                    "of the last %.0f s before it sent again", epoch, replayed, REPLAY_S)
        return epoch
