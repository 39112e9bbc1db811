"""Agents as processes of their own on the session broker and Valkey (without supervisord),
and messages to them from the operator: for the tests of roles that wait (asking, status,
metrics)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.embedded import stop
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import wait_until
from tests.helpers.commands import spawn_role
from tests.helpers.mesh import mesh_bus

ROLES = "tests.helpers.waiting_roles"


@contextmanager
def agents(mesh: Mesh, tmp_path: Path) -> Iterator[Store]:
    """Every agent of `mesh` as its own process, ready; stopped by pid afterwards."""
    store = Store(mesh.config.redis.resolved_url, mesh.config.mesh)
    procs: dict[str, subprocess.Popen[Any]] = {}
    try:
        for name, _spec in mesh.config.concrete_agents():  # a group's replicas: Name-1..N
            procs[name] = spawn_role("agent", "--name", name, "--config", str(mesh.config_file),
                                     log=tmp_path / f"{name}.log")
        for name, proc in procs.items():
            wait_until(lambda: store.ready_pid(C.agent_program(name)) == proc.pid or proc.poll() is not None,  # noqa: B023
                       60, f"agent {name} ready")
            assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()
        yield store
    finally:
        for proc in procs.values():
            stop(proc)
        store.close()


def send(mesh: Mesh, to: str, type: str, payloads: list[dict[str, Any]],
         conversation: list[str | None] | None = None, ids: list[str] | None = None) -> None:
    """Send messages as the operator (`cli`), in this order, in one flush."""
    bus = mesh_bus(mesh)
    for i, payload in enumerate(payloads):
        meta = {"conversation": conversation[i]} if conversation and conversation[i] else {}
        extra = {"id": ids[i]} if ids else {}
        bus.send_message(Envelope(type=type, from_agent_id="cli", to_agent_id=to, payload=payload,
                                  meta=meta, **extra))
    assert bus.flush(10) == 0
