"""Views: status data (the dict of `status.collect`) -> rich renderables. No I/O here.

Every panel renders from the dict alone (times are relative to its `ts`), and says "not
running" or "no data" instead of failing when a role, a service or Redis is absent.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from agentmesh_cli.dashboard import cells
from agentmesh_cli.dashboard.agents import agents_panel, models_panel
from agentmesh_cli.dashboard.cells import absent, bar, duration, redis_down, size, sparkline
from agentmesh_cli.dashboard.routing import routing_panel
from agentmesh_cli.lifecycle import ProgramState

# the panels of other modules are the dashboard's too
__all__ = ["Dashboard", "agents_panel", "bar", "errors_view", "infra_panel", "models_panel",
           "processes_panel", "proposals_panel", "render_status", "routing_panel", "services_panel",
           "sparkline", "topology_panel", "up_table"]

STATE_STYLE = {"RUNNING": "green", "STARTING": "yellow", "BACKOFF": "yellow", "STOPPING": "yellow",
               "FATAL": "bold red", "EXITED": "red", "STOPPED": "dim", "UNKNOWN": "red"}
PROPOSAL_STYLE = {"accepted": "green", "rejected": "red", "expired": "yellow", "pending": "cyan"}
HEALTH_STYLE = {"healthy": "green", "degraded": "yellow", "unhealthy": "red", "unreachable": "red"}
BREAKER_STYLE = {"closed": "green", "open": "bold red", "half_open": "yellow"}
MAX_EDGES = 8  # the strongest edges shown
MAX_PROPOSALS = 8  # the newest proposals shown
TWO_COLUMNS_FROM = 150  # console width from which panels sit in two columns


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


def processes_panel(data: dict[str, Any]) -> RenderableType:
    if not data["supervisord"]["running"]:
        return absent("processes", "supervisord is not running (start the mesh with `agentmesh up`)")
    if not data["programs"]:
        return absent("processes", "no data")
    window = data.get("cpu_window_s")
    sup_pid = data["supervisord"].get("pid")
    title = "processes" + ("" if sup_pid is None else f" of supervisord {sup_pid}") + (
        "" if window is None else f" (cpu over {window:.1f}s)")
    table = cells.table(title, "program", "state", "pid", "uptime", "restarts", "cpu%", "rss",
                   right=("pid", "uptime", "restarts", "cpu%", "rss"))
    table.columns[0].no_wrap = True
    for p in data["programs"]:
        running = p["state"] == "RUNNING"
        state = Text(p["state"], STATE_STYLE.get(p["state"], ""))
        if not running and p["description"]:
            state.append(f" {p['description']}", "dim")
        restarts = Text(str(p["restarts"]), "yellow" if p["restarts"] else "")
        cpu = "-" if p["cpu_percent"] is None else f"{p['cpu_percent']:.1f}"
        table.add_row(p["name"], state, str(p["pid"] or "-"),
                      duration(p["uptime_s"]) if running else "-", restarts, cpu, size(p["rss_bytes"]))
    return table


def _trend(history: list[dict[str, Any]]) -> str:
    if len(history) < 2:
        return ""
    values = [float(h["reduction_percent"]) for h in history]
    span = (history[-1]["ts"] - history[0]["ts"]) / 1000
    return f" {sparkline(values)} {values[-1] - values[0]:+.1f} over {duration(span)}"


def topology_panel(data: dict[str, Any]) -> RenderableType:
    topo = data["topology"]
    if topo is None:
        why = "no data (Redis unreachable)" if redis_down(data) else \
            "no snapshot yet (topology-manager not running?)"
        return absent("topology", why)
    s = topo["stats"]
    head = Text(f"{s['agents']} agents, {s['edges']}/{s['possible']} edges, reduction "
                f"{s['reduction_percent']:.1f}%{_trend(topo['history'])} "
                f"(snapshot {duration(topo['snapshot_age_s'])} old)")
    table = cells.table(None, "strongest edges", "weight", "", "usage", "last use",
                   right=("weight", "usage", "last use"))
    for e in topo["edges"][:MAX_EDGES]:
        last = "never" if not e["usage"] else f"{duration(data['ts'] - e['last_used'] / 1000)} ago"
        table.add_row(f"{e['source']} -> {e['target']}", f"{e['weight']:.2f}",
                      Text(bar(e["weight"] / topo["max_weight"]), "cyan"), str(e["usage"]), last)
    more = len(topo["edges"]) - MAX_EDGES
    parts: list[RenderableType] = [Text("topology", "bold"), head, table]
    if more > 0:
        parts.append(Text(f"... and {more} weaker edges", "dim"))
    departed = sorted(topo.get("departed", {}).items())
    if departed:
        parts.append(Text("removed: " + ", ".join(
            f"{name} ({d['reason']}, {duration(data['ts'] - d['ts'] / 1000)} ago)"
            for name, d in departed), "yellow"))
    return Group(*parts, Text(""))


def proposals_panel(data: dict[str, Any]) -> RenderableType:
    if not data["proposals"]:
        return absent("proposals", "no data (Redis unreachable)" if redis_down(data) else "none yet")
    table = cells.table("proposals (newest first)", "id", "type", "waggle", "for/against", "quorum",
                   "status", "decision", right=("for/against", "decision"))
    table.columns[0].no_wrap = True
    table.columns[1].max_width = 10
    for p in data["proposals"][:MAX_PROPOSALS]:
        if p["decision_ms"] is not None:
            when = f"{p['decision_ms']} ms"
        elif p["expires_in_s"] is not None:
            when = f"in {duration(p['expires_in_s'])}"
        else:
            when = "-"
        votes = Text.assemble((str(p["for"]), "green"), "/", (str(p["against"]), "red"))
        table.add_row(p["id"], Text(p["type"], no_wrap=True, overflow="ellipsis"),
                      Text(f"{sparkline([p['intensity']], 1.0)} {p['intensity']:.2f}", "magenta"), votes,
                      f"{p['needed']} of {p['electorate']}",
                      Text(p["status"], PROPOSAL_STYLE.get(p["status"], "")), when)
    return table


def _breakers(clients: list[dict[str, Any]]) -> Text:
    """`closed 3`, then every other state with its callers; pending writes per caller."""
    by_state: dict[str, list[dict[str, Any]]] = {}
    for c in clients:
        by_state.setdefault(str(c.get("breaker", "?")), []).append(c)
    text = Text()
    for state in sorted(by_state, key=lambda s: (s == "closed", s)):
        if text:
            text.append(", ")
        text.append(state, BREAKER_STYLE.get(state, "yellow"))
        if state == "closed":
            text.append(f" {len(by_state[state])}")
        else:
            text.append(": " + " ".join(c["owner"] for c in by_state[state]))
    pending = [f"{c['owner']} {c['pending']}" for c in clients if c.get("pending")]
    if pending:
        text.append(f" (pending: {', '.join(pending)})", "yellow")
    return text


def services_panel(data: dict[str, Any]) -> RenderableType:
    """Each service's health and latency, and the breakers of the clients of it."""
    if not data["services"]:
        return absent("services", "no data")
    table = cells.table("services", "service", "url", "health", "latency", "client breakers",
                   right=("latency",))
    for s in data["services"]:
        latency = "-" if s["latency_ms"] is None else f"{s['latency_ms']:.1f} ms"
        table.add_row(s["name"], s["url"], Text(s["health"], HEALTH_STYLE.get(s["health"], "yellow")),
                      latency, _breakers(s["clients"]))
    return table


def infra_panel(data: dict[str, Any]) -> RenderableType:
    table = cells.table("infra", "", "address", "reachable", "latency", right=("latency",))
    for name in ("broker", "redis"):
        probe = data["infra"][name]
        answer = Text("yes", "green") if probe["reachable"] else Text("no answer", "bold red")
        table.add_row(name, probe["address"], answer,
                      "-" if probe["latency_ms"] is None else f"{probe['latency_ms']:.1f} ms")
    return table


def errors_view(data: dict[str, Any]) -> RenderableType:
    return Group(*[Text(f"error: {e}", "red") for e in data["errors"]])


class Dashboard:
    """All panels: one column, or, when the console is wide enough, the agents across the
    top (the widest table, and the one to keep when the screen crops the bottom) over two
    columns of the others."""

    def __init__(self, data: dict[str, Any], footer: str = "") -> None:
        self.data = data
        self.footer = footer

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        d = self.data
        head = Text(f"mesh {d['mesh']}", "bold")
        if self.footer:
            head.append(f"  {self.footer}", "dim")
        agents = agents_panel(d)
        models = models_panel(d)
        left = [processes_panel(d), infra_panel(d), *([models] if models is not None else [])]
        routing = routing_panel(d)  # a mesh with replica groups only
        right = [topology_panel(d), *([routing] if routing is not None else []), proposals_panel(d),
                 services_panel(d)]
        yield head
        if options.max_width >= TWO_COLUMNS_FROM:
            yield from _spaced([agents])
            # the left panels keep their natural width; the right ones get the rest
            left_width = min(options.max_width // 2,
                             max(Measurement.get(console, options, r).maximum for r in left))
            grid = Table.grid(padding=(0, 3), expand=True)
            grid.add_column(width=left_width)
            grid.add_column(ratio=1)
            grid.add_row(Group(*_spaced(left)), Group(*_spaced(right)))
            yield grid
        else:
            yield from _spaced([left[0], agents, *left[1:], *right])
        yield errors_view(d)


def _spaced(parts: list[RenderableType]) -> list[RenderableType]:
    out: list[RenderableType] = []
    for part in parts:
        out += [part, Text("")] if isinstance(part, Table) else [part]
    return out


def render_status(data: dict[str, Any], footer: str = "") -> RenderableType:
    return Dashboard(data, footer)
