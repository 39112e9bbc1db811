"""What GET /agents and mesh://agents list, and so the MCP tools (pure): the registry and
mesh.yaml's agents that never joined, with what each accepts.

A replica group is listed once, by its logical name (clients address the group; the
gateway routes each conversation to one replica): its role and capabilities, the sums of
its replicas' concurrency and in flight, the accepts its replicas publish, and its replicas
in `replicas` (as many as it runs now, and any other still registered). It is `up` while
one replica is, `down` while some are registered and none is up, else `declared`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentmesh_cli.config import MeshConfig, group_of

Records = Mapping[str, Mapping[str, Any]]


def agent_list(config: MeshConfig, registry: Records, accepts: Mapping[str, dict[str, Any]],
               counts: Mapping[str, int], now_ms: int) -> list[dict[str, Any]]:
    """The agents by name; `counts`: the replicas each group runs now (replicas.py)."""
    heartbeat = config.heartbeat
    silent_ms = heartbeat.interval * heartbeat.missed * 1000
    entries: dict[str, dict[str, Any]] = {}
    for name, spec in config.concrete_agents(dict(counts)):
        entries[name] = {"name": name, "role": spec.role, "state": "declared",
                         "capabilities": list(spec.capabilities), "concurrency": spec.concurrency,
                         "in_flight": None, "accepts": {}}
    for name, record in registry.items():
        alive = now_ms - int(record.get("last_heartbeat", 0)) <= silent_ms
        entries[name] = {"name": name, "role": str(record.get("role", "")),
                         "state": "up" if alive else "down",
                         "capabilities": list(record.get("capabilities", [])),
                         "concurrency": record.get("concurrency"), "in_flight": record.get("in_flight"),
                         "accepts": {}}
    for name, declared in accepts.items():
        if name in entries:
            entries[name]["accepts"] = declared
    for group, spec in config.groups().items():
        replicas = sorted((entries.pop(name) for name in list(entries) if config.group_name(name) == group),
                          key=lambda e: group_of(e["name"]) or (e["name"], 0))
        states = {r["state"] for r in replicas}
        entries[group] = {
            "name": group, "role": spec.role,
            "state": "up" if "up" in states else "down" if "down" in states else "declared",
            "capabilities": list(spec.capabilities),
            "concurrency": _sum(r["concurrency"] for r in replicas),
            "in_flight": _sum(r["in_flight"] for r in replicas),
            # what its replicas publish (one role: the same for each); the first that does
            "accepts": next((r["accepts"] for r in replicas if r["accepts"]), {}),
            "replicas": [{key: r[key] for key in ("name", "state", "concurrency", "in_flight")}
                         for r in replicas],
        }
    return [entries[name] for name in sorted(entries)]


def _sum(values: Any) -> int | None:
    known = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    return sum(known) if known else None
