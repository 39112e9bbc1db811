"""The pure SlimeMold graph core: who may talk to whom, and how strongly.

Every agent starts fully meshed with every other agent. Edges that carry
messages are reinforced; every edge decays on a timer; edges that fall below
the prune threshold are removed. The result is a sparse graph that mirrors
the mesh's real traffic. Routing prefers strong edges (an edge costs 1/weight).

This module has no I/O and no clock: timestamps come in as arguments, so the
topology manager owns time and Redis, and this core stays testable.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import igraph

from agentmesh_cli.errors import TopologyError

# Weights are rounded after every arithmetic step so float drift never decides
# whether an edge is pruned (0.5 - 8 * 0.05 must be exactly 0.1, not 0.0999...).
_DIGITS = 10


def _r(value: float) -> float:
    return round(value, _DIGITS)


@dataclass(frozen=True)
class SlimeMoldRules:
    """The numbers of the SlimeMold contract."""

    initial_weight: float = 0.5
    reinforcement: float = 0.1
    max_weight: float = 1.0
    decay: float = 0.05
    prune_threshold: float = 0.1


@dataclass(frozen=True)
class Edge:
    """One directed edge, as a read-only snapshot."""

    source: str
    target: str
    weight: float
    usage: int
    last_used: int | None


@dataclass(frozen=True)
class GraphStats:
    """Size and shape of the graph at one moment."""

    agents: int
    edges: int
    possible: int
    reduction_percent: float
    min_weight: float
    avg_weight: float
    max_weight: float
    density: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


class SlimeMoldGraph:
    """A directed agent graph kept in an igraph.Graph with SlimeMold rules."""

    def __init__(self, rules: SlimeMoldRules | None = None) -> None:
        self.rules = rules or SlimeMoldRules()
        self._g = igraph.Graph(directed=True)
        # name -> vertex id; igraph renumbers vertices on deletion, so this is
        # rebuilt in remove_agent (rare) and read everywhere else (frequent).
        self._index: dict[str, int] = {}

    # -- agents ---------------------------------------------------------------

    def __len__(self) -> int:
        return self._g.vcount()

    def has_agent(self, agent: str) -> bool:
        return agent in self._index

    def agents(self) -> list[str]:
        return sorted(self._index)

    def add_agent(self, agent: str) -> bool:
        """Add an agent fully meshed with every present agent; False if present."""
        if agent in self._index:
            return False
        others = list(self._index.values())
        self._g.add_vertex(name=agent)
        new = self._g.vcount() - 1
        self._index[agent] = new
        pairs = [(new, o) for o in others] + [(o, new) for o in others]
        self._add_edges(pairs, [self.rules.initial_weight] * len(pairs),
                        [0] * len(pairs), [None] * len(pairs))
        return True

    def remove_agent(self, agent: str) -> bool:
        """Remove an agent and all its edges; False if absent."""
        vid = self._index.get(agent)
        if vid is None:
            return False
        self._g.delete_vertices([vid])
        self._reindex()
        return True

    # -- edges ----------------------------------------------------------------

    def edge(self, source: str, target: str) -> Edge | None:
        eid = self._eid(source, target)
        return None if eid < 0 else self._edge_at(eid)

    def edges(self) -> list[Edge]:
        """All edges, strongest first (weight desc, usage desc, (source, target) asc)."""
        if self._g.ecount() == 0:
            return []
        # Bulk reads: one igraph call per attribute, not one per edge.
        names = self._g.vs["name"]
        es = self._g.es
        found = [
            Edge(names[s], names[t], w, u, last)
            for (s, t), w, u, last in zip(
                self._g.get_edgelist(), es["weight"], es["usage"], es["last_used"], strict=True
            )
        ]
        return sorted(found, key=lambda e: (-e.weight, -e.usage, e.source, e.target))

    def reinforce(self, source: str, target: str, ts_ms: int) -> Edge | None:
        """Strengthen source->target for one message; re-create it if it was pruned."""
        if source == target or source not in self._index or target not in self._index:
            return None
        eid = self._eid(source, target)
        if eid < 0:
            # A message on a pruned edge revives it, starting from scratch.
            self._add_edges([(self._index[source], self._index[target])],
                            [self.rules.initial_weight], [0], [None])
            eid = self._g.ecount() - 1
        e = self._g.es[eid]
        e["weight"] = min(self.rules.max_weight, _r(e["weight"] + self.rules.reinforcement))
        e["usage"] = e["usage"] + 1
        e["last_used"] = ts_ms
        return self._edge_at(eid)

    def decay(self) -> int:
        """Weaken every edge once and prune the weak ones; returns how many were pruned."""
        if self._g.ecount() == 0:
            return 0
        # One read, one write, one delete: no per-edge calls into igraph.
        weights = [_r(max(0.0, w - self.rules.decay)) for w in self._g.es["weight"]]
        self._g.es["weight"] = weights
        pruned = [i for i, w in enumerate(weights) if w < self.rules.prune_threshold]
        if pruned:
            self._g.delete_edges(pruned)
        return len(pruned)

    # -- queries --------------------------------------------------------------

    def route(self, source: str, target: str) -> tuple[list[str], float]:
        """Cheapest directed path where an edge costs 1/weight; raises TopologyError."""
        for agent in (source, target):
            if agent not in self._index:
                raise TopologyError(f"unknown agent {agent!r} in the topology")
        if source == target:
            return [source], 0.0
        # A zero weight cannot survive pruning, but guard: it is an impassable edge.
        costs = [1.0 / w if w > 0 else math.inf for w in self._edge_weights()]
        src, dst = self._index[source], self._index[target]
        # Check reachability first: igraph warns (and returns junk) on no path.
        if not costs or math.isinf(self._g.distances(src, dst, weights=costs)[0][0]):
            raise TopologyError(f"no path from {source!r} to {target!r} in the topology")
        epath = self._g.get_shortest_path(src, dst, weights=costs, output="epath")
        vs, es = self._g.vs, self._g.es
        path = [source] + [vs[es[eid].target]["name"] for eid in epath]
        return path, _r(sum(costs[eid] for eid in epath))

    def stats(self) -> GraphStats:
        n, m = self._g.vcount(), self._g.ecount()
        possible = n * (n - 1)
        weights = self._edge_weights()
        return GraphStats(
            agents=n,
            edges=m,
            possible=possible,
            reduction_percent=100.0 * (1 - m / possible) if possible else 0.0,
            min_weight=min(weights) if weights else 0.0,
            avg_weight=_r(sum(weights) / m) if weights else 0.0,
            max_weight=max(weights) if weights else 0.0,
            density=m / possible if possible else 0.0,
        )

    # -- snapshots ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable snapshot; edges sorted by (source, target)."""
        rows = sorted(
            [[e.source, e.target, e.weight, e.usage, e.last_used] for e in self.edges()],
            key=lambda row: (row[0], row[1]),
        )
        return {"agents": self.agents(), "edges": rows}

    @classmethod
    def from_dict(cls, data: dict[str, Any], rules: SlimeMoldRules | None = None
                  ) -> SlimeMoldGraph:
        """Rebuild a graph from to_dict(); raises ValueError on a malformed snapshot."""
        graph = cls(rules)
        names = [str(a) for a in data.get("agents", [])]
        if len(set(names)) != len(names):
            raise ValueError("topology snapshot lists an agent twice")
        graph._g.add_vertices(names)
        graph._reindex()
        pairs: list[tuple[int, int]] = []
        weights: list[float] = []
        usages: list[int] = []
        last: list[int | None] = []
        seen: set[tuple[str, str]] = set()
        for source, target, weight, usage, last_used in data.get("edges", []):
            if source == target or (source, target) in seen:
                raise ValueError(f"bad edge {source!r}->{target!r} in topology snapshot")
            if source not in graph._index or target not in graph._index:
                raise ValueError(f"edge {source!r}->{target!r} names an unknown agent")
            seen.add((source, target))
            pairs.append((graph._index[source], graph._index[target]))
            weights.append(float(weight))
            usages.append(int(usage))
            last.append(None if last_used is None else int(last_used))
        graph._add_edges(pairs, weights, usages, last)
        return graph

    # -- internals ------------------------------------------------------------

    def _reindex(self) -> None:
        # an igraph graph that never had a vertex has no "name" attribute at all
        names = self._g.vs["name"] if self._g.vcount() else []
        self._index = {name: i for i, name in enumerate(names)}

    def _eid(self, source: str, target: str) -> int:
        src, dst = self._index.get(source), self._index.get(target)
        if src is None or dst is None:
            return -1
        return self._g.get_eid(src, dst, error=False)

    def _edge_weights(self) -> list[float]:
        return list(self._g.es["weight"]) if self._g.ecount() else []

    def _edge_at(self, eid: int) -> Edge:
        e = self._g.es[eid]
        vs = self._g.vs
        return Edge(vs[e.source]["name"], vs[e.target]["name"],
                    e["weight"], e["usage"], e["last_used"])

    def _add_edges(self, pairs: list[tuple[int, int]], weights: list[float],
                   usages: list[int], last_used: list[int | None]) -> None:
        if pairs:
            self._g.add_edges(pairs, attributes={
                "weight": weights, "usage": usages, "last_used": last_used})
