"""An agent's signs of life, kept apart from its handlers.

- `Heartbeat`: a thread that sends the agent's heartbeat (the `topology` topic and the
  registry record in Redis) every `heartbeat.interval`, and reads the draining mark, so
  that even a sync handler that blocks the event loop for a minute does not get its agent
  removed from the mesh. It produces with `Bus.send_detached` (thread-safe, counted in
  no generation) and writes Redis with the runtime's Store (redis-py's pool is
  thread-safe).
- `LagMeter`: a task on the event loop that sleeps 10 ms at a time and measures how late
  it wakes: the loop's lag, which a blocking call in a handler makes grow. (An agent
  whose hooks are all sync at concurrency 1 waits in its poll and runs no such task: the
  length of each of its turns is its lag.)
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

from agentmesh_cli import constants as C
from agentmesh_cli.errors import AgentMeshError
from agentmesh_cli.metrics.histogram import LOOP_LAG_BUCKETS

LAG_SAMPLE_S = 0.01
LAG_ASLEEP_S = 1.0  # while the agent's reader sleeps (dozing.py): no sample, a look this often
LAG_KEPT = 1000  # the newest samples, for the percentiles the registry record shows
DRAINING_EVERY_S = 0.5
# while the agent's reader sleeps (dozing.py): it handles nothing, so the mark is looked at
# this seldom (a role's tick may still start work: it sees the mark at most this late)
DRAINING_ASLEEP_S = 2.0


class Heartbeat(threading.Thread):
    """Every `heartbeat.interval`: `beat()` (the topology heartbeat and the registry record).
    Every DRAINING_EVERY_S (DRAINING_ASLEEP_S while `asleep()`): the draining mark; every
    DRAINING_EVERY_S `publish()` (the registry record alone)
    when `load()` changed since it was last written, so that the load `status` shows and
    the drain's quiet rule reads (in flight, running, asks pending) is at most that old."""

    def __init__(self, interval: float, beat: Callable[[], None], check_draining: Callable[[], bool],
                 log: logging.Logger, load: Callable[[], object] = lambda: None,
                 publish: Callable[[], None] = lambda: None,
                 asleep: Callable[[], bool] = lambda: False) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.interval = interval
        self.beat = beat
        self.check_draining = check_draining
        self.load = load
        self.publish = publish
        self.asleep = asleep
        self.log = log
        self.draining = False
        self._stop_event = threading.Event()

    def run(self) -> None:
        next_beat = time.monotonic() + self.interval
        published = self.load()
        next_look = 0.0
        # asleep, it turns only as often as it looks at the mark (nothing else changes then),
        # and always when a beat is due: a turn that came just before it would put the beat
        # off by a whole turn (heartbeats 2 s apart at a 1 s interval: an agent taken for dead)
        while not self._stop_event.wait(self._turn(next_beat)):
            now = time.monotonic()
            if now >= next_look or not self.asleep():
                next_look = now + DRAINING_ASLEEP_S
                try:
                    self.draining = self.check_draining()
                except AgentMeshError:
                    pass  # Redis down: keep the last answer
            load = self.load()
            try:
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.interval
                    self.beat()
                elif load != published:
                    self.publish()
                published = load
            except Exception:  # the thread must outlive any failure of one beat
                self.log.exception("heartbeat failed")

    def _turn(self, next_beat: float) -> float:
        cadence = DRAINING_ASLEEP_S if self.asleep() else DRAINING_EVERY_S
        return max(0.01, min(cadence, next_beat - time.monotonic()))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(2.0)


class LagMeter:
    def __init__(self) -> None:
        self.samples: deque[float] = deque(maxlen=LAG_KEPT)
        # while the agent sleeps: no samples (a loop with nothing to do has no lag worth
        # counting, and each sample would be a counter to flush), a look every LAG_ASLEEP_S
        self.paused = False
        self.counts: Counter[str] = Counter()  # the histogram, flushed with the counters

    def busy(self, ms: float) -> None:
        """The loop was busy `ms` without a break (a turn of the fast path, which waits in
        its poll and runs no lag task): what any other task would have waited."""
        self.samples.append(ms)
        LOOP_LAG_BUCKETS.observe(self.counts, C.COUNTER_LOOP_LAG_MS, ms)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.paused:
                await asyncio.sleep(LAG_ASLEEP_S)
                continue
            started = loop.time()
            await asyncio.sleep(LAG_SAMPLE_S)
            lag_ms = max(0.0, (loop.time() - started - LAG_SAMPLE_S) * 1000)
            self.samples.append(lag_ms)
            LOOP_LAG_BUCKETS.observe(self.counts, C.COUNTER_LOOP_LAG_MS, lag_ms)

    def summary(self) -> dict[str, float]:
        """p50, p99 and max of the newest samples, in ms."""
        ordered = sorted(self.samples)
        if not ordered:
            return {"p50": 0.0, "p99": 0.0, "max": 0.0}

        def at(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

        return {"p50": at(0.5), "p99": at(0.99), "max": round(ordered[-1], 2)}

    def take_counts(self) -> Counter[str]:
        counts, self.counts = self.counts, Counter()
        return counts
