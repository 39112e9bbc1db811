"""Collect the mesh's state for `agentmesh status`: supervisord, registry, topology, counters.

Everything comes from supervisord's XML-RPC and Redis; status never joins a consumer
group. The result is one versioned JSON-able dict (STATUS_VERSION); views render it.
"""

from __future__ import annotations

import time
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.config import Mesh
from agentmesh_cli.errors import AgentMeshError
from agentmesh_cli.store import Store
from agentmesh_cli.supervisor.control import Supervisor

STATUS_VERSION = 1
RECENT_PROPOSALS = 20
HEALTH_TIMEOUT_S = 0.5
HEALTH_WORDS = {200: "healthy"}  # else the service's own word (unhealthy, degraded)


def _programs(sup: Supervisor) -> tuple[bool, list[dict[str, Any]]]:
    if not sup.is_running():
        return False, []
    programs = []
    for p in sup.processes():
        running = p["statename"] == "RUNNING"
        programs.append({
            "name": p["name"],
            "state": p["statename"],
            "pid": p["pid"] or None,
            "uptime_s": max(0, p["now"] - p["start"]) if running else 0,
            "description": p["description"],
        })
    return True, programs


def collect(mesh: Mesh) -> dict[str, Any]:
    now = time.time()
    cfg = mesh.config
    sup_running, programs = _programs(Supervisor(mesh))
    result: dict[str, Any] = {
        "v": STATUS_VERSION,
        "mesh": cfg.mesh,
        "ts": round(now, 3),
        "supervisord": {"running": sup_running, "socket": str(mesh.socket)},
        "programs": programs,
        "agents": [],
        "topology": None,
        "proposals": [],
        "services": _services(mesh),
        "errors": [],
    }
    store = Store(cfg.redis.resolved_url, cfg.mesh, timeout=1.0)
    try:
        registry = store.agents()
        counters = store.all_counters()
        snapshot = store.load_snapshot()
        proposals = store.recent_proposals(RECENT_PROPOSALS)
        clients = store.service_clients()
    except AgentMeshError as exc:
        result["errors"].append(f"redis: {exc}")
        return result
    finally:
        store.close()
    stale_after = cfg.heartbeat.interval * cfg.heartbeat.missed
    for name, rec in sorted(registry.items()):
        age = max(0.0, now - rec.get("last_heartbeat", 0) / 1000)
        result["agents"].append({
            "name": name,
            "role": rec.get("role"),
            "capabilities": rec.get("capabilities", []),
            "pid": rec.get("pid"),
            "host": rec.get("host"),
            "heartbeat_age_s": round(age, 1),
            "alive": age <= stale_after,
            "counters": counters.get(name, {}),
        })
    if snapshot:
        g = snapshot["graph"]
        edges = sorted(g["edges"], key=lambda e: (-e[2], -e[3], e[0], e[1]))
        result["topology"] = {
            "snapshot_age_s": round(max(0.0, now - snapshot["ts"] / 1000), 1),
            "agents": g["agents"],
            "stats": snapshot["stats"],
            "edges": [
                {"source": s, "target": t, "weight": w, "usage": u, "last_used": lu}
                for s, t, w, u, lu in edges
            ],
            "counters": counters.get("topology-manager", {}),
        }
    result["proposals"] = [_proposal(p, now) for p in proposals]
    for service in result["services"]:
        service["clients"] += [
            {"owner": owner, **state[service["name"]]}
            for owner, state in sorted(clients.items())
            if owner in registry and isinstance(state.get(service["name"]), dict)
        ]
    return result


def _services(mesh: Mesh) -> list[dict[str, Any]]:
    """Each service's own answer to GET /health, and how long it took."""
    from agentmesh_cli.lifecycle import service_health
    from agentmesh_cli.services.client import service_url

    services: list[dict[str, Any]] = []
    callers: dict[str, list[dict[str, Any]]] = {}  # service -> other services' clients of it
    for name in C.SERVICE_PROGRAMS:
        code, took, body = service_health(mesh, name, timeout=HEALTH_TIMEOUT_S)
        services.append({
            "name": name,
            "url": service_url(mesh, name),
            "health": "unreachable" if code is None
            else HEALTH_WORDS.get(code, str(body.get("status", f"http {code}"))),
            "latency_ms": None if code is None else round(took * 1000, 1),
            "clients": [],
        })
        for target, state in (body.get("clients") or {}).items():
            if isinstance(state, dict):
                callers.setdefault(str(target), []).append({"owner": name, **state})
    for service in services:  # other services' clients first; the agents' are added later
        service["clients"] = callers.get(service["name"], [])
    return services


def _proposal(p: dict[str, Any], now: float) -> dict[str, Any]:
    t = p["tally"]
    decided = p.get("decided_at")
    return {
        "id": p["id"],
        "proposer": p["proposer_id"],
        "type": p["type"],
        "intensity": p["waggle"]["intensity"],
        "for": t["for"],
        "against": t["against"],
        "needed": t["needed"],
        "electorate": t["electorate"],
        "status": p["status"],
        "age_s": round(max(0.0, now - p["created_at"] / 1000), 1),
        "decision_ms": None if decided is None else decided - p["created_at"],
    }


def all_running(status: dict[str, Any]) -> bool:
    return bool(status["programs"]) and all(p["state"] == "RUNNING" for p in status["programs"])
