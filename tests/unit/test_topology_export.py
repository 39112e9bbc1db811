"""`topology export`: the pure snapshot -> SVG/GraphML/DOT conversion on a fixed snapshot."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import igraph
import pytest

from agentmesh_cli.errors import TopologyError
from agentmesh_cli.topology.export import (
    ExportFormat,
    TopologyView,
    by_group,
    export_text,
    stroke_width,
    view_from_snapshot,
)
from tests.helpers.tables import EDGES, GROUP_SNAPSHOT, SNAPSHOT, SVG, replica_group, svg_lines

GRAPHML = "{http://graphml.graphdrawing.org/xmlns}"


def view() -> TopologyView:
    # Support has no role in the snapshot: the registry's fills it in
    return view_from_snapshot(SNAPSHOT, "shop", {"Support": "support", "Sales": "ignored"})


def test_roles_come_from_the_snapshot_then_the_registry() -> None:
    assert view().roles == {"Fraud": "fraud", "Inventory": "inventory", "Sales": "sales",
                            "Support": "support"}


def test_svg_has_one_line_per_edge_and_widths_grow_with_weight() -> None:
    lines = svg_lines(export_text(view(), ExportFormat.svg))
    assert len(lines) == len(EDGES)
    by_weight = sorted((float(line.get("data-weight", "")), float(line.get("stroke-width", "")))
                       for line in lines)
    assert [w for w, _ in by_weight] == sorted(EDGES.values())
    widths = [width for _, width in by_weight]
    assert widths == [2.5, 4.75, 5.5, 6.0, 6.0]
    assert all(line.get("marker-end") == "url(#arrow)" for line in lines)
    titles = {line.findtext(f"{SVG}title") for line in lines}
    assert "Support -> Sales: weight 0.3, 4 messages" in titles


@pytest.mark.parametrize(("weight", "width"), [(0.0, 1.0), (0.1, 1.5), (0.5, 3.5), (1.0, 6.0)])
def test_stroke_width(weight: float, width: float) -> None:
    assert stroke_width(weight) == width


def test_svg_labels_name_and_role_and_title_has_stats() -> None:
    root = ET.fromstring(export_text(view(), ExportFormat.svg))
    labels = ["".join(node.itertext()) for node in root.iter(f"{SVG}text")]
    names = [(text.text, text.findtext(f"{SVG}tspan")) for text in root.iter(f"{SVG}text")
             if text.find(f"{SVG}tspan") is not None]
    assert names == [("Fraud", "fraud"), ("Inventory", "inventory"), ("Sales", "sales"),
                     ("Support", "support")]
    assert "mesh shop" in labels
    assert "4 agents, 5 of 12 edges (58% pruned), avg weight 0.79" in labels
    assert "2023-11-14 22:13:20 UTC" in labels
    assert len(list(root.iter(f"{SVG}circle"))) == 4


def test_svg_is_deterministic_and_keeps_positions_across_snapshots() -> None:
    after = export_text(view(), ExportFormat.svg)
    assert after == export_text(view(), ExportFormat.svg)
    full = {**SNAPSHOT, "graph": {"agents": SNAPSHOT["graph"]["agents"], "edges": [
        [s, t, 0.5, 0, None] for s in SNAPSHOT["graph"]["agents"]
        for t in SNAPSHOT["graph"]["agents"] if s != t]}}
    before = export_text(view_from_snapshot(full, "shop"), ExportFormat.svg)
    assert len(svg_lines(before)) == 12

    def centres(text: str) -> list[tuple[str | None, str | None]]:
        return [(c.get("cx"), c.get("cy")) for c in ET.fromstring(text).iter(f"{SVG}circle")]

    assert centres(before) == centres(after)


def test_graphml_reads_back_into_igraph_with_the_same_edges(tmp_path: Path) -> None:
    text = export_text(view(), ExportFormat.graphml)
    root = ET.fromstring(text)
    assert len(list(root.iter(f"{GRAPHML}edge"))) == len(EDGES)
    path = tmp_path / "mesh.graphml"
    path.write_text(text, encoding="utf-8")
    graph = igraph.Graph.Read_GraphML(str(path))
    assert graph.is_directed()
    names = graph.vs["name"]
    assert graph.vs["role"] == ["fraud", "inventory", "sales", "support"]
    read = {(names[e.source], names[e.target]): e["weight"] for e in graph.es}
    assert read == EDGES
    assert sorted(graph.es["usage"]) == [4, 35, 36, 40, 41]
    assert graph["mesh"] == "shop"


def test_dot_has_one_edge_statement_per_edge() -> None:
    text = export_text(view(), ExportFormat.dot)
    assert text.startswith('digraph "shop" {') and text.rstrip().endswith("}")
    edges = re.findall(r'^  "([^"]+)" -> "([^"]+)" \[mesh_weight=([0-9.]+), usage=(\d+), '
                       r'penwidth=([0-9.]+), label="[0-9.]+"\];$', text, re.MULTILINE)
    assert {(s, t): float(w) for s, t, w, _, _ in edges} == EDGES
    assert text.count("->") == len(EDGES)
    assert '"Support" [label="Support\\nsupport", role="support"];' in text


def test_dot_quotes_odd_names() -> None:
    snapshot = {"graph": {"agents": ['Say "hi"', "B"], "edges": [['Say "hi"', "B", 0.5, 1, None]]}}
    text = export_text(view_from_snapshot(snapshot), ExportFormat.dot)
    assert '"Say \\"hi\\"" -> "B"' in text
    assert ET.fromstring(export_text(view_from_snapshot(snapshot), ExportFormat.svg)) is not None


def test_an_empty_graph_still_exports() -> None:
    empty = view_from_snapshot({"graph": {"agents": [], "edges": []}})
    for fmt in ExportFormat:
        assert export_text(empty, fmt)
    assert svg_lines(export_text(empty, ExportFormat.svg)) == []


@pytest.mark.parametrize("graph", [{}, {"agents": ["A"], "edges": [["A", "B", 0.5, 0, None]]},
                                   {"agents": ["A", "A"], "edges": []}])
def test_malformed_snapshot_is_a_topology_error(graph: dict[str, Any]) -> None:
    snapshot = {"graph": graph} if graph else {"v": 1}
    with pytest.raises(TopologyError, match="malformed topology snapshot"):
        view_from_snapshot(snapshot)




def group_view() -> TopologyView:
    return view_from_snapshot(GROUP_SNAPSHOT, "shop", group_of=replica_group)


def test_a_replica_carries_its_group() -> None:
    view = group_view()
    assert view.groups == {"Support-1": "Support", "Support-2": "Support", "Support-3": "Support"}
    graphml = ET.fromstring(export_text(view, ExportFormat.graphml))
    groups = {node.get("id"): {d.get("key"): d.text for d in node} for node in graphml.iter(f"{GRAPHML}node")}
    assert [(data["name"], data.get("group")) for data in groups.values()] == [
        ("Sales", None), ("Support-1", "Support"), ("Support-2", "Support"), ("Support-3", "Support")]
    assert [k.get("id") for k in graphml.iter(f"{GRAPHML}key")][-1] == "group"
    dot = export_text(view, ExportFormat.dot)
    assert '"Support-2" [label="Support-2\\nsupport", role="support", group="Support"];' in dot
    assert '"Sales" [label="Sales\\nsales", role="sales"];' in dot
    svg = ET.fromstring(export_text(view, ExportFormat.svg))
    assert [g.get("data-group") for g in svg.iter(f"{SVG}g") if g.get("class") == "agent"] == [
        None, "Support", "Support", "Support"]
    # no group: no group key, nothing changed
    assert "group" not in export_text(view_from_snapshot(SNAPSHOT, "shop"), ExportFormat.graphml)


def test_by_group_collapses_the_replicas_into_their_group() -> None:
    view = by_group(group_view())
    assert view.agents == ["Sales", "Support"]
    assert view.roles == {"Sales": "sales", "Support": "support"}
    assert view.replicas == {"Support": 3} and view.groups == {}
    # parallel edges: usage summed, the highest weight, the latest use; Support-1 -> Support-2 gone
    assert [(e.source, e.target, e.weight, e.usage, e.last_used) for e in view.edges] == [
        ("Support", "Sales", 0.7, 10, 1_699_999_999_500),
        ("Sales", "Support", 0.9, 15, 1_699_999_999_800)]
    assert view.stats == {"agents": 2, "edges": 2, "possible": 2, "reduction_percent": 0.0,
                          "min_weight": 0.7, "avg_weight": 0.8, "max_weight": 0.9, "density": 1.0}
    dot = export_text(view, ExportFormat.dot)
    assert '"Support" [label="Support ×3\\nsupport", role="support", replicas=3];' in dot
    assert '"Sales" -> "Support" [mesh_weight=0.9, usage=15,' in dot
    graph = ET.fromstring(export_text(view, ExportFormat.graphml))
    assert [(d.get("key"), d.text) for d in graph.iter(f"{GRAPHML}data") if d.get("key") == "replicas"] == [
        ("replicas", "3")]
    assert "2 agents, 2 of 2 edges (0% pruned), avg weight 0.80" in export_text(view, ExportFormat.svg)
    plain = view_from_snapshot(SNAPSHOT, "shop")
    assert by_group(plain) is plain  # no group: the same view
