"""Physarum routing (pure): the flux model of Tero et al. 2010 (Science 327:439) over the
parallel "tubes" from one sender to the replicas of a group, with a length that grows with
load, so that the tubes do not collapse into one (docs/routing.md has the reasoning).

Per replica k the sender keeps a conductance D_k and computes, when it chooses, a length

    L_k = (1 + n_k) * e_k * s_k                      (ms)
    e_k = max(peak-EWMA of k's round trips, floor_ms)
    s_k = max(1, a_k / (grace * e_k)) ** penalty_power

n_k the requests in flight to k, a_k the age of the oldest of them (0 with none). A new
conversation goes to k with probability

    p_k = (1 - exploration) * (D_k / L_k) / sum_j (D_j / L_j) + exploration / n

and every tick, dt the time since the previous tick (at most two intervals),

    D_k <- D_k + dt * (f(Q_k) - gamma * D_k),     f(Q) = Q**mu / (1 + Q**mu)

with Q_k k's share of the replies the sender got in the recent flux window (counts that
decay with exp(-t / flux_window_s)). The estimate e_k does not decay while unsampled (p2c's
does): exploration keeps samples coming, and a silent replica must not look faster.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from agentmesh_cli.errors import ConfigError, RoutingError
from agentmesh_cli.routing.ewma import DEFAULT_MS, FLOOR_MS, ReplicaBook
from agentmesh_cli.routing.router import Router


@dataclass(frozen=True)
class PhysarumParams:
    """Every knob of the physarum model, each default chosen by reasoning and checked in the
    simulation (docs/routing.md, `python -m agentmesh_cli.routing.simulate`)."""

    # f's exponent: 1 makes the fixed point balance (1 + Q_k) * L_k over the replicas in
    # use (a Wardrop split), and keeps identical replicas evenly shared at no load for any
    # count; above about 1.38 for two, 1.25 for three, 1.08 for ten, light load starves some
    mu: float = 1.0
    # per second: the conductance forgets a replica's past flux in 1/gamma = 2 s, fast
    # enough to follow a kill or a restart, slow enough to smooth one second's noise
    gamma: float = 0.5
    # seconds between conductance steps: ten steps per 1/gamma keep the Euler step accurate
    interval_s: float = 0.2
    # seconds: the time constant of the reply counts whose shares are Q_k (a few hundred
    # replies at 100 msg/s, so a share is not one burst's accident)
    flux_window_s: float = 2.0
    # the share of new conversations spread evenly over all replicas whatever their length:
    # how a recovered or new replica gets the samples to grow back; a dead replica gets
    # exploration / n of them (0.7% of three), inside the 2% budget
    exploration: float = 0.02
    # the stretch grows with the cube of the oldest request's age, so a replica that stopped
    # answering fades within a few of its round trips (the square lets twice as many in)
    penalty_power: float = 3.0
    # an oldest request younger than half the peak-EWMA (which sits near the peaks) is
    # normal service and stretches nothing; a quarter stretches healthy replicas (p99)
    penalty_grace: float = 0.5
    # None: f(1/n) / gamma, the conductance an equal share of the replies settles at
    initial_conductance: float | None = None
    # seconds: the peak-EWMA's decay time; shorter than Finagle's 10 s so that a replica
    # whose backlog replies after a restart took seconds is believed fast again in seconds
    tau_s: float = 2.0
    # ms: the estimate of a replica not yet sampled (its first reply replaces it)
    default_ms: float = DEFAULT_MS
    # ms: a floor under e_k, so a 0 ms sample cannot make a length 0
    floor_ms: float = FLOOR_MS

    def __post_init__(self) -> None:
        positive = ("mu", "gamma", "interval_s", "flux_window_s", "penalty_grace", "tau_s",
                    "default_ms", "floor_ms")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"routing.{name}: must be > 0 (got {getattr(self, name)!r})")
        if not 0 <= self.exploration < 1:
            raise ConfigError(f"routing.exploration: must be in [0, 1) (got {self.exploration!r})")
        if not self.penalty_power >= 0:
            raise ConfigError(f"routing.penalty_power: must be >= 0 (got {self.penalty_power!r})")
        if self.initial_conductance is not None and not self.initial_conductance > 0:
            raise ConfigError("routing.initial_conductance: must be > 0 or unset "
                              f"(got {self.initial_conductance!r})")
        if 2 * self.gamma * self.interval_s > 1:
            # a step is at most two intervals; beyond this D_k could step below 0
            raise ConfigError(f"routing: need 2 * gamma * interval_s <= 1 (got gamma={self.gamma}, "
                              f"interval_s={self.interval_s})")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def response(self, share: float) -> float:
        """f(Q) = Q**mu / (1 + Q**mu): the tube's saturating response to its flux share."""
        q = share**self.mu
        return q / (1.0 + q)


class Physarum(Router):
    """Chooses at random in proportion to conductance over length, with exploration."""

    def __init__(self, params: PhysarumParams | None = None, *, rng: random.Random) -> None:
        self.params = params or PhysarumParams()
        super().__init__(self.params.tau_s, self.params.default_ms)
        self.rng = rng
        self.conductance: dict[str, float] = {}
        self._flux: dict[str, tuple[float, float]] = {}  # replica -> (reply count, as of when)
        self._last_step: float | None = None

    def set_replicas(self, names: Iterable[str], now: float) -> tuple[list[str], list[str]]:
        added, removed = super().set_replicas(names, now)
        for name in removed:
            del self.conductance[name], self._flux[name]
        p = self.params
        if added:
            start = p.initial_conductance
            if start is None:
                start = p.response(1.0 / len(self.replicas)) / p.gamma
            for name in added:
                self.conductance[name] = start
                self._flux[name] = (0.0, now)
        if self._last_step is None:
            self._last_step = now
        return added, removed

    def replied(self, request_id: str, now: float) -> str | None:
        """As every model, and the reply counts in its replica's flux."""
        replica = super().replied(request_id, now)
        if replica is not None:
            self._flux[replica] = (self._flux_at(replica, now) + 1.0, now)
        return replica

    def _flux_at(self, replica: str, now: float) -> float:
        count, stamp = self._flux[replica]
        return count * math.exp(-max(now - stamp, 0.0) / self.params.flux_window_s)

    def shares(self, now: float) -> dict[str, float]:
        """Q_k: each replica's share of the recent replies (all 0.0 before the first reply)."""
        counts = {name: self._flux_at(name, now) for name in self.replicas}
        total = sum(counts.values())
        return {name: (c / total if total > 0 else 0.0) for name, c in counts.items()}

    def tick(self, now: float) -> None:
        """One conductance step over the time since the previous tick (at most two intervals,
        so a stalled timer is not one giant Euler step). No reply in the flux window: nothing
        to learn from, no step."""
        self.now = now
        p = self.params
        last, self._last_step = self._last_step, now
        if last is None or now <= last:
            return
        dt = min(now - last, 2 * p.interval_s)
        shares = self.shares(now)
        if not any(shares.values()):
            return
        for name, q in shares.items():
            d = self.conductance[name]
            self.conductance[name] = d + dt * (p.response(q) - p.gamma * d)

    def length(self, replica: str, now: float) -> float:
        """L_k in ms: (1 + in flight) * estimate * the stretch for an old request in flight."""
        p, book = self.params, self.book.books[replica]
        return (1 + len(book.in_flight)) * _estimate(book, p) * self._stretch(book, now)

    def _stretch(self, book: ReplicaBook, now: float) -> float:
        p = self.params
        over = book.oldest_age(now) * 1000.0 / (p.penalty_grace * _estimate(book, p))
        return max(1.0, over) ** p.penalty_power

    def probabilities(self, now: float) -> dict[str, float]:
        """p_k for a new conversation at `now`."""
        names = self.replicas
        if not names:
            return {}
        weights = {name: self.conductance[name] / self.length(name, now) for name in names}
        total = sum(weights.values())
        explore = self.params.exploration / len(names)
        if total <= 0:  # every conductance underflowed to 0 (no replica answered for hours)
            return {name: 1.0 / len(names) for name in names}
        keep = 1.0 - self.params.exploration
        return {name: keep * w / total + explore for name, w in weights.items()}

    def choose(self, now: float) -> str:
        self.now = now
        chances = self.probabilities(now)
        if len(chances) < 2:
            if not chances:
                raise RoutingError("no replica to route to (the router was given none)")
            return next(iter(chances))  # one replica: no draw
        draw = self.rng.random()
        for name, chance in chances.items():
            draw -= chance
            if draw < 0:
                return name
        return name  # the sum fell a rounding error short of 1: the last one

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """As the other models, plus conductance, length (ms) and probability at the latest `now`."""
        out = super().snapshot()
        chances = self.probabilities(self.now)
        for name, row in out.items():
            row.update(conductance=self.conductance[name], length=self.length(name, self.now),
                       probability=chances[name])
        return out


def _estimate(book: ReplicaBook, p: PhysarumParams) -> float:
    return max(book.ewma.value_ms, p.floor_ms)
