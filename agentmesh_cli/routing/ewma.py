"""What every replica router knows of its replicas (pure): a peak-EWMA of each one's round
trips and the requests in flight to it, oldest first.

A sender learns a replica's speed only from its own round trips (send -> reply, queueing
included), and its load only from its own requests still in flight; both are kept here so
that round robin, p2c and physarum report the same numbers on the dashboard.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from agentmesh_cli.errors import RoutingError

# Finagle's decay time for its peak-EWMA balancer: slow behaviour is remembered this long
DEFAULT_TAU_S = 10.0
# what an unsampled replica is assumed to answer in (linkerd's default RTT estimate is 30 ms)
DEFAULT_MS = 30.0
# below any Kafka round trip; keeps a cost or a length from reaching 0 (a 0 ms sample)
FLOOR_MS = 1.0


class PeakEwma:
    """A round-trip estimate in ms that jumps to a higher sample at once and moves toward a
    lower one with weight exp(-dt/tau), dt the time since the previous observation (Finagle's
    PeakEwma): quick to see a replica slow down, cautious to believe it recovered.

    Until the first sample it holds a default, and the first sample replaces it outright: a
    default above the truth would otherwise take several tau to wash out, one below is
    raised by the first sample anyway.
    """

    __slots__ = ("sampled", "stamp", "tau_s", "value_ms")

    def __init__(self, tau_s: float, default_ms: float, now: float) -> None:
        self.tau_s = tau_s
        self.value_ms = default_ms
        self.stamp = now
        self.sampled = False

    def observe(self, sample_ms: float, now: float) -> None:
        """Take one round trip of `sample_ms`, measured at `now`."""
        if not self.sampled or sample_ms > self.value_ms:
            self.value_ms = sample_ms
        else:
            w = math.exp(-max(now - self.stamp, 0.0) / self.tau_s)
            self.value_ms = self.value_ms * w + sample_ms * (1.0 - w)
        self.sampled = True
        self.stamp = now

    def decay(self, now: float) -> float:
        """Finagle's read (`observe(0.0)`): the estimate decays toward 0 while no sample comes,
        so a replica once slow and then never picked is tried again; returns the estimate.
        The default of an unsampled replica decays too, and the first sample still replaces it."""
        self.value_ms *= math.exp(-max(now - self.stamp, 0.0) / self.tau_s)
        self.stamp = now
        return self.value_ms


@dataclass
class ReplicaBook:
    """One replica's estimate and its requests in flight (request id -> send time), oldest
    first: an OrderedDict, so the oldest is found in O(1) however many were answered."""

    ewma: PeakEwma
    in_flight: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def oldest_age(self, now: float) -> float:
        """Seconds since the oldest request still in flight was sent (0.0 with none)."""
        for sent_at in self.in_flight.values():
            return max(now - sent_at, 0.0)
        return 0.0


class Bookkeeping:
    """The replicas a router routes to, in the order given, and what it knows of each."""

    def __init__(self, tau_s: float = DEFAULT_TAU_S, default_ms: float = DEFAULT_MS) -> None:
        self.tau_s = tau_s
        self.default_ms = default_ms
        self.books: dict[str, ReplicaBook] = {}
        self._where: dict[str, str] = {}  # request id -> the replica it was sent to

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.books)

    def set_replicas(self, names: Iterable[str], now: float) -> tuple[list[str], list[str]]:
        """Route to exactly `names` from now on: a new one starts unsampled with nothing in
        flight, a removed one is forgotten with its requests in flight (their replies, if
        they come, are ignored). Returns (added, removed)."""
        wanted = list(names)
        seen: set[str] = set()
        for name in wanted:
            if name in seen:
                raise RoutingError(f"replica {name!r} is listed twice")
            seen.add(name)
        removed = [name for name in self.books if name not in seen]
        for name in removed:
            for request_id in self.books.pop(name).in_flight:
                del self._where[request_id]
        added = [name for name in wanted if name not in self.books]
        old = self.books
        self.books = {name: old[name] if name in old else self._new_book(now) for name in wanted}
        return added, removed

    def _new_book(self, now: float) -> ReplicaBook:
        return ReplicaBook(PeakEwma(self.tau_s, self.default_ms, now))

    def sent(self, replica: str, request_id: str, now: float) -> None:
        """`request_id` went to `replica` at `now`; an id already in flight is moved (a resend)."""
        book = self.books.get(replica)
        if book is None:
            raise RoutingError(f"a send to {replica!r}, which is not a replica of this router "
                               f"(replicas: {', '.join(self.books) or 'none'})")
        self.forget(request_id)
        book.in_flight[request_id] = now
        self._where[request_id] = replica

    def replied(self, request_id: str, now: float) -> tuple[str, float] | None:
        """The reply to `request_id` came at `now`: its round trip (ms) becomes a sample of its
        replica's estimate. Returns (replica, sample ms), or None for an id not in flight (a
        reply after its ask timed out, or to a request sent to a removed replica)."""
        replica = self._where.pop(request_id, None)
        if replica is None:
            return None
        book = self.books[replica]
        sample_ms = max(now - book.in_flight.pop(request_id), 0.0) * 1000.0
        book.ewma.observe(sample_ms, now)
        return replica, sample_ms

    def forget(self, request_id: str) -> str | None:
        """An ask that timed out: no sample, no longer in flight. Returns its replica, if any."""
        replica = self._where.pop(request_id, None)
        if replica is not None:
            del self.books[replica].in_flight[request_id]
        return replica

    def outstanding(self, replica: str) -> int:
        return len(self.books[replica].in_flight)
