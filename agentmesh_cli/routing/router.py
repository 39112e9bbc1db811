"""The one interface of a replica router (pure), and the bookkeeping all of them share.

A sender holds one router per replica group. For each new conversation it calls
`choose(now)`, sends, and tells the router `sent(replica, request_id, now)`; it reports the
reply with `replied(request_id, now)` or, when the ask timed out, `forget(request_id)`; a
timer calls `tick(now)` every interval. Later messages of a conversation follow the
conversation->replica table, not the router.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

from agentmesh_cli.routing.ewma import DEFAULT_MS, DEFAULT_TAU_S, Bookkeeping


class Router(ABC):
    """Chooses a replica for each new conversation. Every method takes `now` (monotonic
    seconds) where time matters; `snapshot()` shows the state as of the latest `now` seen."""

    def __init__(self, tau_s: float = DEFAULT_TAU_S, default_ms: float = DEFAULT_MS) -> None:
        self.book = Bookkeeping(tau_s, default_ms)
        self.now = 0.0  # the latest time any call told us of

    @property
    def replicas(self) -> tuple[str, ...]:
        return self.book.names

    def set_replicas(self, names: Iterable[str], now: float) -> tuple[list[str], list[str]]:
        """Route among exactly `names` (in this order) from now on: a new replica starts in the
        model's initial state, a removed one is forgotten with its requests in flight.
        Returns (added, removed), for a model that keeps state of its own per replica."""
        self.now = now
        return self.book.set_replicas(names, now)

    @abstractmethod
    def choose(self, now: float) -> str:
        """The replica for a new conversation (RoutingError when there is none)."""

    def sent(self, replica: str, request_id: str, now: float) -> None:
        """The request `request_id` went to `replica` at `now`."""
        self.now = now
        self.book.sent(replica, request_id, now)

    def replied(self, request_id: str, now: float) -> str | None:
        """Its reply came at `now`: the round trip is a sample of the replica's service time.
        An id not in flight (timed out, forgotten, or never sent) is ignored. Returns the
        replica that answered (None: ignored), for a model that counts replies."""
        self.now = now
        answered = self.book.replied(request_id, now)
        return None if answered is None else answered[0]

    def forget(self, request_id: str) -> None:
        """An ask that timed out: no sample, no longer in flight."""
        self.book.forget(request_id)

    def tick(self, now: float) -> None:
        """The periodic update (every PhysarumParams.interval_s); nothing to do for most models."""
        self.now = now

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per replica, for the dashboard: requests in flight and the round-trip estimate (ms)."""
        return {name: {"outstanding": len(book.in_flight), "ewma_ms": book.ewma.value_ms}
                for name, book in self.book.books.items()}
