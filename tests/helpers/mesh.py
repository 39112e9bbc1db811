"""Meshes for tests: a mesh.yaml on free ports, a running `agentmesh up` of it, its status,
and a Bus that writes as the mesh's own processes do.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
import yaml

from agentmesh_cli.bus import Bus
from agentmesh_cli.doorbell import Doorbell
from agentmesh_cli.embedded import free_port
from agentmesh_cli.envelope import now_ms
from agentmesh_cli.mesh import Mesh, load_mesh
from agentmesh_cli.signing import mesh_signer
from agentmesh_cli.store import Store
from agentmesh_cli.supervisor.control import _alive
from agentmesh_cli.waiting import wait_until
from tests.helpers.commands import agentmesh


def later_snapshot(store: Store, seconds: float, timeout: float = 30) -> dict[str, Any]:
    """The first topology snapshot saved more than `seconds` from now (by its `ts`, the
    manager's wall clock): with one saved every `seconds` or more often, at least two were
    saved since. What a test waits for to see that nothing more is applied."""
    since = now_ms() + seconds * 1000
    return dict(wait_until(lambda: (s := store.load_snapshot()) and s["ts"] > since and s, timeout,
                           f"a topology snapshot {seconds:g} s from now"))


def mesh_bus(mesh: Mesh, client_id: str = "test", ring: bool = True, **options: Any) -> Bus:
    """A Bus that writes as the mesh's own processes do: signed with its mesh key when its
    mesh.yaml signs (the default), else its records are refused as unsigned; it rings the
    readers that sleep (who sleeps read once, now: doorbell.py), unless `ring` is False (a
    sender killed between its write and its ring)."""
    bus = Bus(mesh.config.kafka, client_id, signer=mesh_signer(mesh), **options)
    if ring:
        client = redis.Redis.from_url(mesh.redis_url, decode_responses=True, socket_timeout=5)
        bus.doorbell = Doorbell(client, mesh.config.mesh, listen=False, seed=True)
    return bus


REPO = Path(__file__).resolve().parents[2]


def write_mesh(root: Path, agents: list[str], **extra: Any) -> Path:
    roles = {"Sales": "sales", "Inventory": "inventory", "Fraud": "fraud", "Support": "support"}
    data = {
        "mesh": "e2e",
        "kafka": {"port": free_port(), "partitions": 4},
        "redis": {"port": free_port()},
        "services": {"memory": {"port": free_port()}, "cognition": {"port": free_port()}},
        "metrics": {"port": free_port()},
        "gateway": {"port": free_port()},
        "topology": {"snapshot_interval": "250ms", "decay_interval": "1h"},
        "heartbeat": {"interval": "1s", "missed": 5},
        "workload": {"order_rate": 0, "lead_rate": 0, "refund_rate": 0},
        "agents": [{"name": a, "role": roles.get(a, a)} for a in agents],
    }
    for key, value in extra.items():  # sections merge, so a test keeps the free ports
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) else value
    path = root / "mesh.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@contextmanager
def running_mesh(config: Path, timeout: float = 90, test_roles: bool = False) -> Iterator[Mesh]:
    """`agentmesh up` of `config`; afterwards `down --now` (a teardown needs no drain, which
    test_drain.py tests, and a mesh that lost messages on purpose would wait out its
    timeout), and supervisord ended by pid if `down` could not. `test_roles`: its agents
    run roles of tests/helpers (the repository on PYTHONPATH, for supervisord's agents)."""
    previous = os.environ.get("PYTHONPATH")
    if test_roles:
        os.environ["PYTHONPATH"] = str(REPO)
    try:
        up = agentmesh("up", "--config", str(config), "--timeout", str(int(timeout)))
        assert up.returncode == 0, up.stdout + up.stderr
        yield load_mesh(config)
    finally:
        agentmesh("down", "--now", "--config", str(config), timeout=60)
        pidfile = config.parent / ".agentmesh" / "supervisord.pid"
        if pidfile.exists() and _alive(pid := int(pidfile.read_text())):
            os.kill(pid, signal.SIGTERM)
        if test_roles:
            if previous is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = previous


def status(config: Path) -> dict[str, Any]:
    result = agentmesh("status", "--json", "--config", str(config))
    return dict(json.loads(result.stdout))


def pids(data: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["pid"] for p in data["programs"] if p["pid"]}


def edge(data: dict[str, Any], source: str, target: str) -> dict[str, Any] | None:
    for e in (data["topology"] or {}).get("edges", []):
        if (e["source"], e["target"]) == (source, target):
            return dict(e)
    return None
