"""Views: status data (the dict of `status.collect`) -> rich renderables. No I/O here."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from agentmesh_cli.lifecycle import ProgramState

STATE_STYLE = {"RUNNING": "green", "STARTING": "yellow", "BACKOFF": "yellow", "STOPPING": "yellow",
               "FATAL": "bold red", "EXITED": "red", "STOPPED": "dim", "UNKNOWN": "red"}
MAX_EDGES = 20


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def up_table(states: list[ProgramState]) -> Table:
    table = Table(title="agentmesh up", title_justify="left")
    table.add_column("program")
    table.add_column("state")
    table.add_column("pid", justify="right")
    table.add_column("ready")
    for s in states:
        table.add_row(s.name, Text(s.state, STATE_STYLE.get(s.state, "")), str(s.pid or ""),
                      Text("ready", "green") if s.ready else Text("waiting", "yellow"))
    return table


def programs_table(data: dict[str, Any]) -> RenderableType:
    if not data["supervisord"]["running"]:
        return Text("supervisord is not running (start the mesh with `agentmesh up`)", "red")
    table = Table(title="programs", title_justify="left")
    for col in ("program", "state", "pid", "uptime"):
        table.add_column(col, justify="right" if col in ("pid", "uptime") else "left")
    for p in data["programs"]:
        table.add_row(p["name"], Text(p["state"], STATE_STYLE.get(p["state"], "")),
                      str(p["pid"] or ""), _duration(p["uptime_s"]) if p["pid"] else "")
    return table


def agents_table(data: dict[str, Any]) -> RenderableType:
    table = Table(title="agents", title_justify="left")
    for col in ("agent", "role", "pid", "heartbeat", "in", "out", "dead"):
        table.add_column(col, justify="left" if col in ("agent", "role") else "right")
    for a in data["agents"]:
        c = a["counters"]
        beat = Text(f"{_duration(a['heartbeat_age_s'])} ago", "green" if a["alive"] else "red")
        table.add_row(a["name"], a["role"] or "", str(a["pid"] or ""), beat,
                      str(c.get("messages_in", 0)), str(c.get("messages_out", 0)),
                      str(c.get("dead_letters", 0)))
    return table


def topology_view(data: dict[str, Any]) -> RenderableType:
    topo = data["topology"]
    if topo is None:
        return Text("topology: no snapshot yet (topology-manager not running?)", "yellow")
    s = topo["stats"]
    head = Text(
        f"topology: {s['agents']} agents, {s['edges']}/{s['possible']} edges, "
        f"reduction {s['reduction_percent']:.1f}%, weight min/avg/max "
        f"{s['min_weight']:.2f}/{s['avg_weight']:.2f}/{s['max_weight']:.2f} "
        f"(snapshot {_duration(topo['snapshot_age_s'])} old)"
    )
    table = Table(title_justify="left")
    for col in ("edge", "weight", "usage"):
        table.add_column(col, justify="left" if col == "edge" else "right")
    for e in topo["edges"][:MAX_EDGES]:
        table.add_row(f"{e['source']} -> {e['target']}", f"{e['weight']:.2f}", str(e["usage"]))
    return Group(head, table)


PROPOSAL_STYLE = {"accepted": "green", "rejected": "red", "expired": "yellow", "pending": "cyan"}


def proposals_table(data: dict[str, Any]) -> RenderableType:
    if not data["proposals"]:
        return Text("proposals: none yet", "dim")
    table = Table(title="proposals (newest first)", title_justify="left")
    for col in ("id", "proposer", "type", "waggle", "for/against", "status", "time"):
        table.add_column(col, justify="right" if col in ("waggle", "for/against", "time") else "left")
    for p in data["proposals"]:
        when = (f"{p['decision_ms']} ms" if p["decision_ms"] is not None
                else f"{_duration(p['age_s'])} open")
        table.add_row(p["id"], p["proposer"], p["type"], f"{p['intensity']:.2f}",
                      f"{p['for']}/{p['against']} of {p['needed']}/{p['electorate']}",
                      Text(p["status"], PROPOSAL_STYLE.get(p["status"], "")), when)
    return table


HEALTH_STYLE = {"healthy": "green", "degraded": "yellow", "unhealthy": "red", "unreachable": "red"}
BREAKER_STYLE = {"closed": "green", "open": "bold red", "half_open": "yellow"}


def services_table(data: dict[str, Any]) -> RenderableType:
    """Each service's health and latency, and the breaker of every agent's client of it."""
    table = Table(title="services", title_justify="left")
    for col in ("service", "url", "health", "latency", "client breakers (caller: state, pending)"):
        table.add_column(col, justify="right" if col == "latency" else "left")
    for s in data.get("services", []):
        clients = Text()
        for c in s["clients"]:
            if clients:
                clients.append(", ")
            clients.append(f"{c['owner']}: ")
            clients.append(c.get("breaker", "?"), BREAKER_STYLE.get(c.get("breaker", ""), ""))
            if c.get("pending"):
                clients.append(f" ({c['pending']} pending)", "yellow")
        latency = "" if s["latency_ms"] is None else f"{s['latency_ms']:.1f} ms"
        table.add_row(s["name"], s["url"], Text(s["health"], HEALTH_STYLE.get(s["health"], "yellow")),
                      latency, clients)
    return table


def render_status(data: dict[str, Any]) -> RenderableType:
    parts: list[RenderableType] = [
        Text(f"mesh {data['mesh']}", "bold"),
        programs_table(data),
        agents_table(data),
        topology_view(data),
        proposals_table(data),
        services_table(data),
    ]
    parts += [Text(f"error: {e}", "red") for e in data["errors"]]
    return Group(*parts)
