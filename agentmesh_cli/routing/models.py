"""The routing models a replica group can use (mesh.yaml `routing.model`), pure:

    round_robin   smooth weighted round robin (nginx's), weights = declared capacities
    p2c_ewma      power of two choices over peak-EWMA cost (Finagle's and Linkerd's balancer)
    physarum      the flux model of Tero et al. 2010 with a load-aware length (physarum.py)

`make_router(model, rng, **options)` builds one; every router has the one interface of
router.py, so the runtime never asks which model it holds.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

from agentmesh_cli.errors import ConfigError, RoutingError
from agentmesh_cli.routing.ewma import DEFAULT_MS, DEFAULT_TAU_S, FLOOR_MS
from agentmesh_cli.routing.physarum import Physarum, PhysarumParams
from agentmesh_cli.routing.router import Router

__all__ = ["MODELS", "P2cEwma", "Physarum", "PhysarumParams", "RoundRobin", "Router", "make_router"]

MODELS = ("physarum", "p2c_ewma", "round_robin")


class RoundRobin(Router):
    """nginx's smooth weighted round robin: each pick adds every replica's weight to its
    running score, takes the highest (the first in order on a tie) and takes the total of the
    weights off the winner. Weights 4:2:1 give a b a c a b a: the heavy one spread out, not
    in a burst. With no weights every replica weighs 1 (plain round robin)."""

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        for name, weight in (weights or {}).items():
            if not weight > 0:
                raise ConfigError(f"routing.weights.{name}: must be > 0 (got {weight!r})")
        self.weights = dict(weights) if weights else None
        self._score: dict[str, float] = {}

    def set_replicas(self, names: Iterable[str], now: float) -> tuple[list[str], list[str]]:
        names = list(names)
        if self.weights is not None:  # refused before anything changes
            for name in names:
                if name not in self.weights:
                    raise ConfigError(f"routing.weights: no weight for replica {name!r} "
                                      f"(weights name {', '.join(self.weights)})")
        added, removed = super().set_replicas(names, now)
        for name in removed:
            del self._score[name]
        for name in added:
            self._score[name] = 0.0
        return added, removed

    def choose(self, now: float) -> str:
        self.now = now
        best: str | None = None
        total = 0.0
        for name in self.replicas:
            weight = self.weights[name] if self.weights is not None else 1.0
            self._score[name] += weight
            total += weight
            if best is None or self._score[name] > self._score[best]:
                best = name
        if best is None:
            raise RoutingError("no replica to route to (the router was given none)")
        self._score[best] -= total
        return best


class P2cEwma(Router):
    """Power of two choices over peak-EWMA cost: draw two distinct replicas at random and
    take the cheaper (the first drawn on a tie), cost = max(estimate, floor) * (in flight + 1).
    Reading a candidate's estimate decays it toward 0 (Finagle's `observe(0.0)`), so a
    replica once slow and then never picked comes back into play after some tau."""

    def __init__(self, tau_s: float = DEFAULT_TAU_S, default_ms: float = DEFAULT_MS,
                 floor_ms: float = FLOOR_MS, *, rng: random.Random) -> None:
        for name, value in (("tau_s", tau_s), ("default_ms", default_ms), ("floor_ms", floor_ms)):
            if not value > 0:
                raise ConfigError(f"routing.{name}: must be > 0 (got {value!r})")
        super().__init__(tau_s, default_ms)
        self.floor_ms = floor_ms
        self.rng = rng

    def cost(self, replica: str, now: float) -> float:
        """The candidate's cost at `now` (a read: its estimate decays to `now`)."""
        book = self.book.books[replica]
        return max(book.ewma.decay(now), self.floor_ms) * (len(book.in_flight) + 1)

    def choose(self, now: float) -> str:
        self.now = now
        names = self.replicas
        if not names:
            raise RoutingError("no replica to route to (the router was given none)")
        if len(names) == 1:
            return names[0]
        i = self.rng.randrange(len(names))
        j = self.rng.randrange(len(names) - 1)
        first, second = names[i], names[j + 1 if j >= i else j]
        return first if self.cost(first, now) <= self.cost(second, now) else second


def make_router(model: str, rng: random.Random, **options: Any) -> Router:
    """The router for mesh.yaml `routing.model`, with that model's options (ConfigError for an
    unknown model or an option the model does not have)."""
    if model == "round_robin":
        _check_options(model, options, ("weights",))
        return RoundRobin(**options)
    if model == "p2c_ewma":
        _check_options(model, options, ("tau_s", "default_ms", "floor_ms"))
        return P2cEwma(rng=rng, **options)
    if model == "physarum":
        _check_options(model, options, PhysarumParams.names())
        return Physarum(PhysarumParams(**options), rng=rng)
    raise ConfigError(f"routing.model: unknown model {model!r} (use one of {', '.join(MODELS)})")


def _check_options(model: str, options: Mapping[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"routing: {model} has no option {', '.join(unknown)} "
                          f"(its options: {', '.join(known)})")
