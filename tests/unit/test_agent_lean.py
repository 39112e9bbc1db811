"""How the agent-lean checks read a process's imports, and the startup bench's copy of a mesh (pure parts)."""

from __future__ import annotations

from pathlib import Path

import yaml

from agentmesh_cli.bench.procs import (
    forbidden_in,
    imported_modules,
)
from agentmesh_cli.bench.startup import mesh_copy


def test_imports_are_read_from_importtime_lines() -> None:
    log = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:       120 |        120 |   igraph._igraph",
        "import time:      1004 |       1500 | agentmesh_cli.agent.runtime",
        "2026-12-05 02:25:12,591 INFO agent.Sales: joined as Sales",
    ])
    assert imported_modules(log) == {"igraph._igraph", "agentmesh_cli.agent.runtime"}
    assert forbidden_in(imported_modules(log)) == ["igraph"]


def test_the_startup_copy_moves_every_port(tmp_path: Path) -> None:
    template = Path(__file__).resolve().parents[2] / "mesh.yaml"
    notes: list[str] = []
    mesh = mesh_copy(template, tmp_path, notes)
    original = yaml.safe_load(template.read_text(encoding="utf-8"))
    cfg = mesh.config
    ports = {cfg.kafka.port, cfg.redis.port, cfg.services.memory.port, cfg.services.cognition.port,
             cfg.metrics.port}
    assert len(ports) == 5 and not ports & {29092, 26379, 9000, 9100, 9464}
    assert [a.name for a in cfg.agents] == [a["name"] for a in original["agents"]]
    assert cfg.kafka.embedded and cfg.redis.embedded and mesh.root == tmp_path and notes == []
