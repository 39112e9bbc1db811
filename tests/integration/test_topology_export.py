"""`agentmesh topology export` and `route` against the session Valkey."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from agentmesh_cli.store import Store
from agentmesh_cli.topology.export import (
    ExportFormat,
    by_group,
    export_text,
    view_from_snapshot,
)
from tests.helpers.commands import agentmesh
from tests.helpers.tables import EDGES, GROUP_SNAPSHOT, SNAPSHOT, svg_lines


def test_export_command_writes_the_snapshot_from_redis(external_mesh: Any, tmp_path: Path) -> None:
    mesh = external_mesh()
    config = str(mesh.config_file)
    missing = agentmesh("topology", "export", "-c", config, check=False)
    assert missing.returncode == 1
    assert "no topology snapshot yet" in missing.stderr and missing.stdout == ""

    store = Store(mesh.redis_url, mesh.config.mesh)
    store.save_snapshot(SNAPSHOT)
    store.register_agent("Support", {"role": "support", "pid": 1})
    out = tmp_path / "mesh.svg"
    agentmesh("topology", "export", "-c", config, "-o", str(out), check=True)
    text = out.read_text(encoding="utf-8")
    assert len(svg_lines(text)) == len(EDGES)
    # Support's role comes from the registry: the snapshot has none
    expected = view_from_snapshot(SNAPSHOT, mesh.config.mesh, {"Support": "support"})
    assert text == export_text(expected, ExportFormat.svg)

    dot = agentmesh("topology", "export", "-c", config, "--format", "dot", check=True)
    assert dot.stdout == export_text(expected, ExportFormat.dot)


def test_export_by_group_collapses_the_replicas(external_mesh: Any) -> None:
    """A mesh.yaml group: its replicas carry the group, and --by-group draws one node."""
    mesh = external_mesh(agents=[{"name": "Sales", "role": "sales"},
                                 {"name": "Support", "role": "support", "replicas": 3}])
    config = str(mesh.config_file)
    Store(mesh.redis_url, mesh.config.mesh).save_snapshot(GROUP_SNAPSHOT)
    view = view_from_snapshot(GROUP_SNAPSHOT, mesh.config.mesh, {}, mesh.config.group_name)
    graphml = agentmesh("topology", "export", "-c", config, "-f", "graphml", check=True).stdout
    assert graphml == export_text(view, ExportFormat.graphml)
    assert graphml.count('<data key="group">Support</data>') == 3
    dot = agentmesh("topology", "export", "-c", config, "-f", "dot", "--by-group", check=True).stdout
    assert dot == export_text(by_group(view), ExportFormat.dot)
    assert '"Sales" -> "Support" [mesh_weight=0.9, usage=15,' in dot and "Support-1" not in dot
    help_text = agentmesh("topology", "export", "--help", check=True).stdout
    assert "--by-group" in help_text and "usage summed" in help_text


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"{not json", "malformed topology snapshot in Redis: not JSON"),
        (b"[1, 2]", "malformed topology snapshot in Redis: not a JSON object but list"),
        (orjson.dumps({"v": 1, "ts": 1}), "malformed topology snapshot: it has no graph"),
        # a name rich would read as a closing tag: the message is printed as it is
        (orjson.dumps({"graph": {"agents": ["A", "B"], "edges": [["A", "[/x]", 0.5, 1, None]]}}),
         "malformed topology snapshot: edge 'A'->'[/x]' names an unknown agent"),
        (orjson.dumps({"graph": {"agents": ["A", "B"], "edges": [["A", "B", "heavy", 1, None]]}}),
         "malformed topology snapshot: bad edge ['A', 'B', 'heavy', 1, None]: could not convert"),
    ],
)
def test_a_malformed_snapshot_is_one_error_line(external_mesh: Any, raw: bytes, problem: str) -> None:
    """`topology route` and `topology export` on a snapshot nobody can read: one red line
    naming the problem and exit 1, never a traceback."""
    mesh = external_mesh()
    store = Store(mesh.redis_url, mesh.config.mesh)
    store.redis.set(store.keys.topology_snapshot, raw)
    config = str(mesh.config_file)
    for command in (("route", "A", "B"), ("export", "--format", "dot")):
        result = agentmesh("topology", *command, "-c", config)
        assert result.returncode == 1, result.stderr
        assert result.stdout == ""
        assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr
        assert result.stderr.startswith(f"error: {problem}"), result.stderr
    # status reports it as an error of its frame and shows the rest (exit 1: no supervisord)
    shown = agentmesh("status", "--json", "-c", config)
    assert shown.returncode == 1 and "Traceback" not in shown.stderr, shown.stderr
    frame = json.loads(shown.stdout)
    assert frame["topology"] is None and frame["infra"]["redis"]["reachable"]
    assert any(e.startswith("malformed topology snapshot") for e in frame["errors"]), frame["errors"]
