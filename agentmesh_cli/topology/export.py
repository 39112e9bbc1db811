"""Pure conversion of a topology snapshot into a picture or a graph file: SVG, GraphML, DOT.

`agentmesh topology export` reads the snapshot from Redis and calls `export_text`; nothing
here does I/O. The SVG is written by hand (no cairo, no Graphviz) with a circle layout
from igraph: deterministic, and an agent keeps its place between two exports, so a
picture before and after adaptation can be compared edge by edge.

A replica of a group (Support-2 of Support) carries its group (`group` in GraphML and
DOT, `data-group` in SVG); `by_group` collapses each group into one node.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from agentmesh_cli.errors import SnapshotError

if TYPE_CHECKING:  # the CLI imports ExportFormat at start; igraph only when exporting
    from agentmesh_cli.topology.graph import Edge

GroupOf = Callable[[str], "str | None"]  # agent -> the group it is a replica of


class ExportFormat(StrEnum):
    svg = "svg"
    graphml = "graphml"
    dot = "dot"


@dataclass(frozen=True)
class TopologyView:
    """What an export shows: agents with roles, edges weakest first, stats, snapshot time."""

    mesh: str
    agents: list[str]
    roles: dict[str, str]
    edges: list[Edge]
    stats: dict[str, Any]
    ts_ms: int | None
    groups: dict[str, str] = field(default_factory=dict)  # replica -> its group
    replicas: dict[str, int] = field(default_factory=dict)  # (by group) a group's node -> its replicas

    def role(self, agent: str) -> str:
        return self.roles.get(agent, "")

    def label(self, agent: str) -> str:
        """The node's name; a group's node (by group) with its number of replicas."""
        n = self.replicas.get(agent)
        return agent if n is None else f"{agent} ×{n}"

    def caption(self) -> str:
        s = self.stats
        return (f"{s['agents']} agents, {s['edges']} of {s['possible']} edges "
                f"({s['reduction_percent']:.0f}% pruned), avg weight {s['avg_weight']:.2f}")

    def taken_at(self) -> str:
        if self.ts_ms is None:
            return ""
        return datetime.fromtimestamp(self.ts_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def view_from_snapshot(snapshot: dict[str, Any], mesh: str = "",
                       roles: dict[str, str] | None = None, group_of: GroupOf | None = None) -> TopologyView:
    """Read a `topology:snapshot` dict; `roles` fill in agents the snapshot has no role for;
    `group_of` names the replicas' groups. Raises SnapshotError on a malformed snapshot."""
    from agentmesh_cli.topology.graph import MALFORMED
    from agentmesh_cli.topology.state import snapshot_graph

    graph = snapshot_graph(snapshot)
    try:
        known = {**(roles or {}), **{str(k): str(v) for k, v in snapshot.get("roles", {}).items() if v}}
        ts = snapshot.get("ts")
        ts_ms = int(ts) if ts is not None else None
    except (AttributeError, TypeError, ValueError, OverflowError) as exc:
        raise SnapshotError(f"{MALFORMED}: roles or ts: {exc}") from exc
    return TopologyView(
        mesh=mesh,
        agents=graph.agents(),
        roles={a: known[a] for a in graph.agents() if a in known},
        # weakest first, so strong edges are drawn on top
        edges=sorted(graph.edges(), key=lambda e: (e.weight, e.source, e.target)),
        stats=graph.stats().as_dict(),
        ts_ms=ts_ms,
        groups={a: g for a in graph.agents() if group_of is not None and (g := group_of(a)) is not None},
    )


def by_group(view: TopologyView) -> TopologyView:
    """Each group's replicas as one node named after the group: parallel edges merged into
    one (usage summed, the highest weight, the latest use), edges between replicas of one
    group left out; the stats are the collapsed graph's."""
    from agentmesh_cli.topology.graph import Edge

    if not view.groups:
        return view
    node = view.groups.get
    agents = list(dict.fromkeys(node(a, a) for a in view.agents))
    merged: dict[tuple[str, str], Edge] = {}
    for e in view.edges:
        source, target = node(e.source, e.source), node(e.target, e.target)
        if source == target:
            continue
        seen = merged.get((source, target))
        if seen is None:
            merged[(source, target)] = Edge(source, target, e.weight, e.usage, e.last_used)
            continue
        uses = [t for t in (seen.last_used, e.last_used) if t is not None]
        merged[(source, target)] = Edge(source, target, max(seen.weight, e.weight), seen.usage + e.usage,
                                        max(uses) if uses else None)
    roles: dict[str, str] = {}
    for agent in view.agents:  # a group's role: its replicas'
        if view.role(agent):
            roles.setdefault(node(agent, agent), view.role(agent))
    edges = sorted(merged.values(), key=lambda e: (e.weight, e.source, e.target))
    return replace(view, agents=agents, roles=roles, edges=edges, stats=_stats(len(agents), edges),
                   groups={}, replicas=dict(Counter(view.groups.values())))


def _stats(n: int, edges: list[Edge]) -> dict[str, Any]:
    """GraphStats of a graph of `n` agents and these edges (as the graph counts them)."""
    m, possible = len(edges), n * (n - 1)
    weights = [e.weight for e in edges]
    return {"agents": n, "edges": m, "possible": possible,
            "reduction_percent": 100.0 * (1 - m / possible) if possible else 0.0,
            "min_weight": min(weights, default=0.0), "avg_weight": round(sum(weights) / m, 10) if m else 0.0,
            "max_weight": max(weights, default=0.0), "density": m / possible if possible else 0.0}


def export_text(view: TopologyView, fmt: ExportFormat) -> str:
    renderers = {ExportFormat.svg: render_svg, ExportFormat.graphml: render_graphml,
                 ExportFormat.dot: render_dot}
    return renderers[fmt](view)


# -- SVG ------------------------------------------------------------------------

NODE_R = 40.0
PAIR_GAP = 6.0  # A->B and B->A are drawn side by side, this far from the centre line
TITLE_H = 56.0
FOOTER_H = 20.0
ARROW = 12.0  # arrowhead length and width in px
MARGIN = 24.0
PALETTE = ["#f6c28b", "#9fd3c7", "#c3b1e1", "#f4a6a6", "#a8c8f0", "#d8e2a0", "#f0b6d8", "#c9c9c9"]
EDGE_COLOUR = "#3c5a8a"


def stroke_width(weight: float) -> float:
    """Line width in px: 1 at weight 0, 6 at weight 1."""
    return round(1.0 + 5.0 * max(0.0, weight), 2)


def _layout(agents: list[str]) -> tuple[dict[str, tuple[float, float]], float]:
    """Node centres on a circle (the first agent at the top), and the square's side."""
    import igraph

    n = len(agents)
    # the circle grows with the mesh so neighbouring nodes never overlap
    radius = max(190.0, (2 * NODE_R + 24) * n / (2 * math.pi))
    centre = radius + NODE_R + MARGIN
    coords = igraph.Graph(n=n).layout_circle().coords if n > 1 else [[0.0, 0.0]] * n
    positions = {agent: (round(centre + radius * y, 2), round(TITLE_H + centre - radius * x, 2))
                 for agent, (x, y) in zip(agents, coords, strict=True)}
    return positions, round(2 * centre, 2)


def _edge_line(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, ...]:
    """Start and end of a directed edge: from circle rim to circle rim, shifted to its side."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    length = math.hypot(dx, dy) or 1.0
    ux, uy = dx / length, dy / length
    nx, ny = -uy * PAIR_GAP, ux * PAIR_GAP
    # the line stops where the arrowhead begins; its tip stops just short of the target's rim
    tip = NODE_R + 3 + ARROW
    return tuple(round(v, 2) for v in (a[0] + ux * NODE_R + nx, a[1] + uy * NODE_R + ny,
                                       b[0] - ux * tip + nx, b[1] - uy * tip + ny))


def render_svg(view: TopologyView) -> str:
    positions, width = _layout(view.agents)
    height = round(width + TITLE_H + FOOTER_H, 2)
    svg = ET.Element("svg", {"xmlns": "http://www.w3.org/2000/svg", "width": f"{width:g}",
                             "height": f"{height:g}", "viewBox": f"0 0 {width:g} {height:g}",
                             "font-family": "Helvetica, Arial, sans-serif"})
    heading = f"mesh {view.mesh}" if view.mesh else "agentmesh topology"
    ET.SubElement(svg, "title").text = f"{heading}: {view.caption()}"
    marker = ET.SubElement(ET.SubElement(svg, "defs"), "marker", {
        "id": "arrow", "viewBox": "0 0 10 10", "refX": "0", "refY": "5",
        "markerWidth": f"{ARROW:g}", "markerHeight": f"{ARROW:g}", "markerUnits": "userSpaceOnUse",
        "orient": "auto"})
    ET.SubElement(marker, "path", {"d": "M0,0 L10,5 L0,10 z", "fill": EDGE_COLOUR})
    ET.SubElement(svg, "rect", {"width": "100%", "height": "100%", "fill": "#ffffff"})
    _text(svg, MARGIN, 26, heading, {"font-size": "18", "font-weight": "bold"})
    _text(svg, width - MARGIN, 26, view.taken_at(),
          {"font-size": "12", "fill": "#555555", "text-anchor": "end"})
    _text(svg, MARGIN, 46, view.caption(), {"font-size": "12", "fill": "#555555"})

    edges = ET.SubElement(svg, "g", {"stroke": EDGE_COLOUR, "stroke-opacity": "0.85",
                                     "stroke-linecap": "round"})
    for e in view.edges:
        x1, y1, x2, y2 = _edge_line(positions[e.source], positions[e.target])
        line = ET.SubElement(edges, "line", {
            "x1": f"{x1:g}", "y1": f"{y1:g}", "x2": f"{x2:g}", "y2": f"{y2:g}",
            "stroke-width": f"{stroke_width(e.weight):g}", "marker-end": "url(#arrow)",
            "data-weight": f"{e.weight:g}", "data-usage": str(e.usage)})
        ET.SubElement(line, "title").text = f"{e.source} -> {e.target}: weight {e.weight:g}, " \
                                            f"{e.usage} messages"

    colours = {role: PALETTE[i % len(PALETTE)]
               for i, role in enumerate(sorted(set(view.roles.values())))}
    nodes = ET.SubElement(svg, "g", {"text-anchor": "middle"})
    for agent in view.agents:
        x, y = positions[agent]
        node = ET.SubElement(nodes, "g", {"class": "agent", **_svg_group(view, agent)})
        ET.SubElement(node, "circle", {"cx": f"{x:g}", "cy": f"{y:g}", "r": f"{NODE_R:g}",
                                       "fill": colours.get(view.role(agent), "#eeeeee"),
                                       "stroke": "#333333", "stroke-width": "1.5"})
        label = _text(node, x, y - 2 if view.role(agent) else y + 4, view.label(agent),
                      {"font-size": "13", "font-weight": "bold"})
        if view.role(agent):
            role = ET.SubElement(label, "tspan", {"x": f"{x:g}", "dy": "15", "font-size": "11",
                                                  "font-weight": "normal", "fill": "#444444"})
            role.text = view.role(agent)
    _text(svg, MARGIN, height - 12, "line width: edge weight; arrow: direction of messages",
          {"font-size": "11", "fill": "#777777"})
    ET.indent(svg)
    for tspan in svg.iter("tspan"):
        tspan.tail = None  # indentation inside <text> would be drawn as a space
    return ET.tostring(svg, encoding="unicode") + "\n"


def _svg_group(view: TopologyView, agent: str) -> dict[str, str]:
    if agent in view.groups:
        return {"data-group": view.groups[agent]}
    return {"data-replicas": str(view.replicas[agent])} if agent in view.replicas else {}


def _text(parent: ET.Element, x: float, y: float, text: str, attrs: dict[str, str]) -> ET.Element:
    element = ET.SubElement(parent, "text", {"x": f"{x:g}", "y": f"{y:g}", **attrs})
    element.text = text
    return element


# -- GraphML --------------------------------------------------------------------

_GRAPHML_KEYS = [  # (id, for, attr.name, attr.type)
    ("mesh", "graph", "mesh", "string"), ("ts", "graph", "ts", "long"),
    ("name", "node", "name", "string"), ("role", "node", "role", "string"),
    ("weight", "edge", "weight", "double"), ("usage", "edge", "usage", "int"),
    ("last_used", "edge", "last_used", "long"),
]
# only in a graph that has them: a mesh without groups exports as before
_GROUP_KEY = ("group", "node", "group", "string")
_REPLICAS_KEY = ("replicas", "node", "replicas", "int")


def render_graphml(view: TopologyView) -> str:
    # written here rather than by igraph's writer: that one needs a real file, numbers
    # every node n0.. without our graph attributes, and types usage as a double
    root = ET.Element("graphml", {"xmlns": "http://graphml.graphdrawing.org/xmlns"})
    keys = [*_GRAPHML_KEYS, *([_GROUP_KEY] if view.groups else []),
            *([_REPLICAS_KEY] if view.replicas else [])]
    for key_id, domain, name, kind in keys:
        ET.SubElement(root, "key", {"id": key_id, "for": domain, "attr.name": name,
                                    "attr.type": kind})
    graph = ET.SubElement(root, "graph", {"id": view.mesh or "G", "edgedefault": "directed"})
    _data(graph, "mesh", view.mesh)
    if view.ts_ms is not None:
        _data(graph, "ts", str(view.ts_ms))
    ids = {agent: f"n{i}" for i, agent in enumerate(view.agents)}
    for agent in view.agents:
        node = ET.SubElement(graph, "node", {"id": ids[agent]})
        _data(node, "name", agent)
        _data(node, "role", view.role(agent))
        if agent in view.groups:
            _data(node, "group", view.groups[agent])
        if agent in view.replicas:
            _data(node, "replicas", str(view.replicas[agent]))
    for e in sorted(view.edges, key=lambda e: (e.source, e.target)):
        edge = ET.SubElement(graph, "edge", {"source": ids[e.source], "target": ids[e.target]})
        _data(edge, "weight", repr(e.weight))
        _data(edge, "usage", str(e.usage))
        if e.last_used is not None:
            _data(edge, "last_used", str(e.last_used))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _data(parent: ET.Element, key: str, value: str) -> None:
    ET.SubElement(parent, "data", {"key": key}).text = value


# -- DOT ------------------------------------------------------------------------

def _quoted(text: str) -> str:
    """A DOT double-quoted ID: only the quote (and the backslash before it) need escaping."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def render_dot(view: TopologyView) -> str:
    # `weight` means layout strength to Graphviz (and must be an integer for dot), so the
    # SlimeMold weight travels as `mesh_weight`, drawn as penwidth and label
    heading = f"mesh {view.mesh}" if view.mesh else "agentmesh topology"
    lines = [
        f"digraph {_quoted(view.mesh or 'agentmesh')} {{",
        f"  graph [label={_quoted(heading + ': ' + view.caption())}, labelloc=t, "
        'fontname="Helvetica", layout=circo];',
        '  node [shape=circle, style=filled, fillcolor="#a8c8f0", fontname="Helvetica"];',
        f'  edge [color="{EDGE_COLOUR}", fontname="Helvetica", fontsize=10];',
    ]
    for agent in view.agents:
        role = view.role(agent)
        label = f"{view.label(agent)}\n{role}" if role else view.label(agent)
        # Graphviz's own `group` keeps a group's nodes together in dot layouts
        extra = (f", group={_quoted(view.groups[agent])}" if agent in view.groups
                 else f", replicas={view.replicas[agent]}" if agent in view.replicas else "")
        lines.append(f"  {_quoted(agent)} [label={_quoted(label)}, role={_quoted(role)}{extra}];")
    for e in sorted(view.edges, key=lambda e: (e.source, e.target)):
        lines.append(
            f"  {_quoted(e.source)} -> {_quoted(e.target)} [mesh_weight={e.weight!r}, "
            f"usage={e.usage}, penwidth={stroke_width(e.weight):g}, label={_quoted(f'{e.weight:g}')}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
