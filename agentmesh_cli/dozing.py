"""A reader that sleeps when idle: a `Reader` (Kafka), its `Doze` (when, doze.py) and its
`Doorbell` (who rings it, doorbell.py) together.

A plain loop (a manager, the gateway's reply thread) calls `poll_batch` as it would the
Reader's: while asleep it waits for a ring instead of fetching. The agent's loop, which
waits on its own event, calls `step` after each poll and asks `asleep` before the next.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable

from agentmesh_cli.bus import Bus
from agentmesh_cli.config import MeshConfig
from agentmesh_cli.doorbell import Doorbell
from agentmesh_cli.doze import Action, Doze, Policy, State
from agentmesh_cli.reader import Reader
from agentmesh_cli.records import Record
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import Clock

ASLEEP_WAIT_S = 0.5  # (Dozer.poll_batch) a sleeping manager's loop turns this often


def doorbell(store: Store, config: MeshConfig, me: str | None = None, topics: Iterable[str] = (),
             on_ring: Callable[[], None] | None = None) -> Doorbell:
    """A process's doorbell (`me`: the reader that may sleep, reading `topics`); with
    `kafka.idle_sleep` off it hears nothing, so nobody sleeps and nobody is rung."""
    return Doorbell(store.redis, config.mesh, me, topics, on_ring, listen=config.kafka.idle_sleep)


def ringing(bus: Bus, store: Store) -> Doorbell:
    """A sender's Bus rings the sleeping readers of what it sends (a process whose own
    reading never sleeps: a command, a bench's load). Close it with the Bus."""
    bell = Doorbell(store.redis, store.mesh)
    bus.doorbell = bell
    return bell


def stop_ringing(bus: Bus) -> None:
    """Close the doorbell `ringing` gave `bus` (its listening thread ends): before the
    Redis it listens to stops, or the thread outlives it and says it lost Redis."""
    if isinstance(bus.doorbell, Doorbell):
        bus.doorbell.close()
    bus.doorbell = None


def policy(config: MeshConfig, fetch_wait: float) -> Policy:
    return Policy.for_fetch_wait(fetch_wait, config.kafka.idle_probe)


class Dozer:
    def __init__(self, reader: Reader, doorbell: Doorbell, policy: Policy,
                 clock: Clock = time.monotonic) -> None:
        self.reader = reader
        self.doorbell = doorbell
        self.clock = clock
        self.doze = Doze(policy, clock())

    @property
    def asleep(self) -> bool:
        return self.reader.asleep

    @property
    def state(self) -> State:
        return self.doze.state

    def step(self, records: int) -> None:
        """After a poll that returned `records` (or a wait for a ring: 0)."""
        now = self.clock()
        self._apply(self.doze.step(now, records > 0, self.doorbell.take_ring(), self.doorbell.listening),
                    now)

    def awake(self) -> None:
        """The reader fetches again by itself (rewound after a broker restart): awake."""
        now = self.clock()
        self._apply(self.doze.step(now, True, False, self.doorbell.listening), now)

    def wait_for(self, longest: float) -> float:
        """How long a sleeping reader may wait for its ring before its next step."""
        return self.doze.wait_for(self.clock(), longest)

    def _apply(self, action: Action, now: float) -> None:
        if action.announce_asleep and not self.doorbell.announce(True):
            # the senders were not told: stay awake (as when rings cannot be heard)
            self.doze.step(now, False, False, can_sleep=False)
            return
        if action.unassign:
            self.reader.sleep()
        if action.assign:
            self.reader.wake()
        if action.announce_awake:
            self.doorbell.announce(False)

    def arm(self, loop: object, wake: Callable[[], None]) -> None:
        """(A host inbox's, inbox_client.HostIdle: a ring calls `on_ring` here.)"""

    def disarm(self) -> None:
        """(See `arm`.)"""

    def take_counts(self) -> Counter[str]:
        counts, self.doze.counts = self.doze.counts, Counter()
        return counts

    def poll_batch(self, max_records: int = 500, timeout: float = 0.1,
                   asleep_wait: float = ASLEEP_WAIT_S) -> list[Record]:
        """Reader.poll_batch, but asleep it waits up to `asleep_wait` for a ring, fetching
        nothing (a manager's loop turns twice a second asleep, not ten or twenty times)."""
        if self.reader.asleep:
            self.doorbell.rung.wait(self.wait_for(asleep_wait))
            self.step(0)
            if self.reader.asleep:
                return []
        records = self.reader.poll_batch(max_records, timeout)
        self.step(len(records))
        return records

    def rewind(self) -> None:
        """Reader.rewind (a new broker epoch), awake."""
        self.reader.rewind()
        self.awake()

    def commit(self, next_offsets: dict[tuple[str, int], int], wait: bool = True) -> None:
        self.reader.commit(next_offsets, wait)

    def close(self) -> None:
        self.doorbell.close()
        self.reader.close()
