"""Exact tables for the SlimeMold graph core (agentmesh_cli.topology.graph)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from agentmesh_cli.errors import SnapshotError, TopologyError
from agentmesh_cli.topology.graph import Edge, GraphStats, SlimeMoldGraph, SlimeMoldRules


def mesh(*agents: str) -> SlimeMoldGraph:
    graph = SlimeMoldGraph()
    for agent in agents:
        assert graph.add_agent(agent) is True
    return graph


def reinforce_n(graph: SlimeMoldGraph, source: str, target: str, n: int, ts: int = 1) -> None:
    for i in range(n):
        assert graph.reinforce(source, target, ts + i) is not None


def decay_n(graph: SlimeMoldGraph, n: int) -> int:
    return sum(graph.decay() for _ in range(n))


# -- join ---------------------------------------------------------------------


@pytest.mark.parametrize("n, edges", [(0, 0), (1, 0), (2, 2), (3, 6), (4, 12), (5, 20)])
def test_full_mesh_edge_count(n: int, edges: int) -> None:
    graph = mesh(*"ABCDE"[:n])
    assert len(graph) == n
    assert len(graph.edges()) == edges
    assert graph.stats().edges == edges


def test_four_agents_full_mesh_at_initial_weight() -> None:
    graph = mesh("D", "B", "A", "C")
    assert graph.agents() == ["A", "B", "C", "D"]
    pairs = {(e.source, e.target) for e in graph.edges()}
    assert pairs == {(s, t) for s in "ABCD" for t in "ABCD" if s != t}
    assert all(e.source != e.target for e in graph.edges())
    assert all(e == Edge(e.source, e.target, 0.5, 0, None) for e in graph.edges())
    assert graph.edge("A", "A") is None


def test_adding_a_present_agent_changes_nothing() -> None:
    graph = mesh("A", "B", "C", "D")
    graph.reinforce("A", "B", 7)
    before = graph.to_dict()
    assert graph.add_agent("B") is False
    assert graph.to_dict() == before
    assert len(graph) == 4


def test_has_agent() -> None:
    graph = mesh("A", "B")
    assert graph.has_agent("A") and graph.has_agent("B")
    assert not graph.has_agent("Z")


# -- reinforce ----------------------------------------------------------------


@pytest.mark.parametrize(
    "times, weight",
    [(1, 0.6), (2, 0.7), (3, 0.8), (4, 0.9), (5, 1.0), (6, 1.0), (7, 1.0)],
)
def test_reinforce_table(times: int, weight: float) -> None:
    graph = mesh("A", "B")
    result = None
    for i in range(times):
        result = graph.reinforce("A", "B", 1000 + i)
    expected = Edge("A", "B", weight, times, 1000 + times - 1)
    assert result == expected
    assert graph.edge("A", "B") == expected
    # The reverse edge is independent.
    assert graph.edge("B", "A") == Edge("B", "A", 0.5, 0, None)


@pytest.mark.parametrize(
    "source, target",
    [("A", "Z"), ("Z", "A"), ("Y", "Z"), ("A", "A")],
)
def test_reinforce_absent_or_self_changes_nothing(source: str, target: str) -> None:
    graph = mesh("A", "B", "C")
    before = graph.to_dict()
    assert graph.reinforce(source, target, 5) is None
    assert graph.to_dict() == before
    assert not graph.has_agent("Z")


# -- decay and prune ----------------------------------------------------------


@pytest.mark.parametrize(
    "k, weight",
    [(1, 0.45), (2, 0.4), (3, 0.35), (4, 0.3), (5, 0.25), (6, 0.2), (7, 0.15), (8, 0.1)],
)
def test_weight_after_k_decays(k: int, weight: float) -> None:
    graph = mesh("A", "B")
    assert decay_n(graph, k) == 0
    assert graph.edge("A", "B") == Edge("A", "B", weight, 0, None)
    assert len(graph.edges()) == 2


def test_unused_edge_pruned_on_ninth_decay() -> None:
    graph = mesh("A", "B", "C", "D")
    assert decay_n(graph, 8) == 0
    assert {e.weight for e in graph.edges()} == {0.1}
    assert graph.decay() == 12
    assert graph.edges() == []
    assert graph.edge("A", "B") is None
    assert graph.agents() == ["A", "B", "C", "D"]
    assert graph.decay() == 0


def test_decay_floors_at_zero_with_custom_rules() -> None:
    graph = SlimeMoldGraph(SlimeMoldRules(decay=0.3, prune_threshold=0.0))
    graph.add_agent("A")
    graph.add_agent("B")
    assert decay_n(graph, 3) == 0
    assert graph.edge("A", "B") == Edge("A", "B", 0.0, 0, None)
    # A zero-weight edge is impassable for routing.
    with pytest.raises(TopologyError):
        graph.route("A", "B")


def test_message_on_pruned_edge_recreates_it() -> None:
    graph = mesh("A", "B")
    assert decay_n(graph, 9) == 2
    assert graph.edge("A", "B") is None
    assert graph.reinforce("A", "B", 42) == Edge("A", "B", 0.6, 1, 42)
    assert graph.edge("A", "B") == Edge("A", "B", 0.6, 1, 42)
    assert graph.edge("B", "A") is None
    assert len(graph.edges()) == 1


def test_reinforced_edge_outlives_unused_ones() -> None:
    graph = mesh("A", "B")
    reinforce_n(graph, "A", "B", 5)  # 1.0
    assert decay_n(graph, 9) == 1  # B->A pruned
    assert graph.edge("A", "B") == Edge("A", "B", 0.55, 5, 5)


# -- leave --------------------------------------------------------------------


def test_leave_removes_node_and_its_edges() -> None:
    graph = mesh("A", "B", "C", "D")
    assert len(graph.edges()) == 12
    assert graph.remove_agent("B") is True
    assert len(graph.edges()) == 6
    assert graph.agents() == ["A", "C", "D"]
    assert all("B" not in (e.source, e.target) for e in graph.edges())
    assert graph.remove_agent("B") is False
    # Lookups stay correct after igraph renumbers vertices.
    assert graph.reinforce("C", "D", 3) == Edge("C", "D", 0.6, 1, 3)
    assert graph.reinforce("D", "A", 4) == Edge("D", "A", 0.6, 1, 4)
    assert graph.edge("A", "C") == Edge("A", "C", 0.5, 0, None)
    assert graph.add_agent("B") is True
    assert len(graph.edges()) == 12


def test_remove_absent_agent() -> None:
    graph = mesh("A")
    assert graph.remove_agent("Z") is False
    assert graph.agents() == ["A"]


# -- edges order --------------------------------------------------------------


def test_edges_strongest_first() -> None:
    graph = mesh("A", "B", "C")
    reinforce_n(graph, "B", "C", 2)  # 0.7, usage 2
    reinforce_n(graph, "C", "A", 2)  # 0.7, usage 2
    reinforce_n(graph, "A", "B", 1)  # 0.6
    order = [(e.source, e.target, e.weight) for e in graph.edges()]
    assert order == [
        ("B", "C", 0.7),
        ("C", "A", 0.7),
        ("A", "B", 0.6),
        ("A", "C", 0.5),
        ("B", "A", 0.5),
        ("C", "B", 0.5),
    ]


def test_edges_tie_on_weight_broken_by_usage() -> None:
    graph = mesh("A", "B", "C")
    reinforce_n(graph, "A", "B", 5)  # 1.0, usage 5
    reinforce_n(graph, "B", "C", 7)  # 1.0 (capped), usage 7
    order = [(e.source, e.target, e.weight, e.usage) for e in graph.edges()[:2]]
    assert order == [("B", "C", 1.0, 7), ("A", "B", 1.0, 5)]


# -- route --------------------------------------------------------------------


def test_route_prefers_direct_edge_on_fresh_mesh() -> None:
    graph = mesh("A", "B", "C")
    assert graph.route("A", "B") == (["A", "B"], 2.0)


def test_route_picks_strongest_path() -> None:
    graph = mesh("A", "B", "C")
    assert decay_n(graph, 4) == 0  # every edge 0.3: A->B costs 3.333...
    reinforce_n(graph, "A", "C", 7)  # 1.0
    reinforce_n(graph, "C", "B", 7)  # 1.0
    assert graph.edge("A", "B").weight == 0.3
    assert graph.route("A", "B") == (["A", "C", "B"], 2.0)
    # The reverse direction has no strong edges: direct is cheapest.
    path, cost = graph.route("B", "A")
    assert path == ["B", "A"]
    assert cost == pytest.approx(1 / 0.3)


def test_route_to_self() -> None:
    graph = mesh("A")
    assert graph.route("A", "A") == (["A"], 0.0)


@pytest.mark.parametrize("source, target", [("A", "Z"), ("Z", "A"), ("Z", "Z")])
def test_route_unknown_agent_raises(source: str, target: str) -> None:
    graph = mesh("A", "B")
    with pytest.raises(TopologyError, match="unknown agent 'Z'"):
        graph.route(source, target)


def test_route_no_path_raises() -> None:
    graph = mesh("A", "B", "C")
    decay_n(graph, 8)
    reinforce_n(graph, "A", "B", 1)  # keep only A->B alive
    assert decay_n(graph, 1) == 5
    assert graph.edge("A", "B") == Edge("A", "B", 0.15, 1, 1)
    assert graph.route("A", "B") == (["A", "B"], pytest.approx(1 / 0.15))
    with pytest.raises(TopologyError, match="no path from 'B' to 'A'"):
        graph.route("B", "A")
    with pytest.raises(TopologyError, match="no path"):
        graph.route("A", "C")


def test_route_no_edges_at_all_raises() -> None:
    graph = mesh("A", "B")
    decay_n(graph, 9)
    with pytest.raises(TopologyError, match="no path"):
        graph.route("A", "B")


# -- stats --------------------------------------------------------------------


def test_stats_empty_graph() -> None:
    assert SlimeMoldGraph().stats() == GraphStats(0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert mesh("A").stats() == GraphStats(1, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0)


def test_stats_full_mesh() -> None:
    stats = mesh("A", "B", "C", "D").stats()
    assert stats == GraphStats(4, 12, 12, 0.0, 0.5, 0.5, 0.5, 1.0)


def test_stats_agents_without_edges() -> None:
    graph = mesh("A", "B", "C")
    decay_n(graph, 9)
    assert graph.stats() == GraphStats(3, 0, 6, 100.0, 0.0, 0.0, 0.0, 0.0)


def test_stats_pruned_mesh() -> None:
    graph = mesh("A", "B", "C", "D")
    reinforce_n(graph, "A", "B", 5)  # 1.0 -> 0.55 after 9 decays
    reinforce_n(graph, "A", "C", 4)  # 0.9 -> 0.45
    reinforce_n(graph, "B", "C", 3)  # 0.8 -> 0.35
    reinforce_n(graph, "D", "A", 2)  # 0.7 -> 0.25
    reinforce_n(graph, "C", "D", 1)  # 0.6 -> 0.15
    assert decay_n(graph, 9) == 7
    stats = graph.stats()
    assert (stats.agents, stats.edges, stats.possible) == (4, 5, 12)
    assert stats.reduction_percent == pytest.approx(58.333333333, abs=1e-6)
    assert stats.min_weight == 0.15
    assert stats.max_weight == 0.55
    assert stats.avg_weight == pytest.approx(0.35)
    assert stats.density == pytest.approx(5 / 12)
    assert [e.weight for e in graph.edges()] == [0.55, 0.45, 0.35, 0.25, 0.15]
    assert stats.as_dict() == {
        "agents": 4,
        "edges": 5,
        "possible": 12,
        "reduction_percent": stats.reduction_percent,
        "min_weight": 0.15,
        "avg_weight": stats.avg_weight,
        "max_weight": 0.55,
        "density": stats.density,
    }


# -- snapshots ----------------------------------------------------------------


def test_to_dict_shape() -> None:
    graph = mesh("B", "A")
    graph.reinforce("A", "B", 99)
    assert graph.to_dict() == {
        "agents": ["A", "B"],
        "edges": [["A", "B", 0.6, 1, 99], ["B", "A", 0.5, 0, None]],
    }


def test_round_trip() -> None:
    graph = mesh("A", "B", "C", "D")
    reinforce_n(graph, "A", "B", 3, ts=100)
    reinforce_n(graph, "C", "D", 1, ts=200)
    decay_n(graph, 9)
    graph.reinforce("B", "D", 300)  # re-created after pruning
    graph.remove_agent("C")
    graph.add_agent("E")
    data = json.loads(json.dumps(graph.to_dict()))
    rebuilt = SlimeMoldGraph.from_dict(data, graph.rules)
    assert rebuilt.to_dict() == graph.to_dict()
    assert rebuilt.edges() == graph.edges()
    assert rebuilt.agents() == ["A", "B", "D", "E"]
    assert rebuilt.edge("A", "B") == Edge("A", "B", 0.35, 3, 102)
    assert rebuilt.edge("B", "D") == Edge("B", "D", 0.6, 1, 300)
    assert rebuilt.stats() == graph.stats()
    # The rebuilt graph keeps behaving like the original.
    assert rebuilt.decay() == graph.decay()
    assert rebuilt.to_dict() == graph.to_dict()


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"agents": ["A", "A"], "edges": []}, "lists agent 'A' twice"),
        ({"agents": ["A"], "edges": [["A", "A", 0.5, 0, None]]}, "joins an agent to itself"),
        ({"agents": ["A"], "edges": [["A", "Z", 0.5, 0, None]]}, "names an unknown agent"),
        ({"agents": ["A", "B"], "edges": [["A", "B", 0.5, 0, None], ["A", "B", 0.6, 1, 2]]},
         "lists edge 'A'->'B' twice"),
        # what a hand-edited or truncated snapshot holds: never a bare ValueError or TypeError
        (["A", "B"], "the graph is not an object but list"),
        ({"agents": "AB", "edges": []}, "agents and edges must be lists"),
        ({"agents": ["A", "B"], "edges": {"A": "B"}}, "agents and edges must be lists"),
        ({"agents": ["A", "B"], "edges": [["A", "B", 0.5, 0]]}, "bad edge"),
        ({"agents": ["A", "B"], "edges": [7]}, "bad edge 7"),
        ({"agents": ["A", "B"], "edges": [["A", "B", "heavy", 0, None]]}, "bad edge"),
        ({"agents": ["A", "B"], "edges": [["A", "B", 0.5, None, None]]}, "bad edge"),
        ({"agents": ["A", "B"], "edges": [[["A"], "B", 0.5, 0, None]]}, "bad edge"),
        ({"agents": ["A", "B"], "edges": [["A", "B", 0.5, 2**63, None]]}, "out of range"),
        ({"agents": ["A", "B"], "edges": [["A", "B", 0.5, float("inf"), None]]}, "bad edge"),
    ],
)
def test_from_dict_rejects_malformed(data: Any, problem: str) -> None:
    with pytest.raises(SnapshotError, match=f"^malformed topology snapshot: .*{re.escape(problem)}"):
        SlimeMoldGraph.from_dict(data)


@pytest.mark.parametrize("agents", [[], ["A"], ["A", "B"]])
def test_round_trip_of_small_graphs(agents: list[str]) -> None:
    graph = SlimeMoldGraph()
    for agent in agents:
        graph.add_agent(agent)
    for agent in agents:  # emptied again: the snapshot a manager saves after everyone left
        graph.remove_agent(agent)
    assert SlimeMoldGraph.from_dict(graph.to_dict()).to_dict() == {"agents": [], "edges": []}
    rebuilt = SlimeMoldGraph.from_dict({"agents": agents, "edges": []})
    assert rebuilt.agents() == sorted(agents)
    assert rebuilt.add_agent("Z") and rebuilt.stats().edges == 2 * len(agents)
