"""`agentmesh topology export` against the session Valkey."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentmesh_cli.store import Store
from agentmesh_cli.topology.export import (
    ExportFormat,
    export_text,
    view_from_snapshot,
)
from tests.helpers.commands import agentmesh
from tests.helpers.tables import EDGES, SNAPSHOT, svg_lines


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
