"""The agents and models panels: one row per agent; a replica group as one row of its
totals with its replicas beneath it, and a line when it runs another count than mesh.yaml
declares (status's `agents[]`, replica_view.py)."""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from agentmesh_cli.dashboard import cells
from agentmesh_cli.dashboard.cells import absent, duration, ms, redis_down

AGENT_STYLE = {"alive": "green", "stale": "bold red", "not running": "dim", "retiring": "yellow"}
GROUP_STYLE = {"alive": "green", "degraded": "yellow", "stale": "bold red", "not running": "dim"}
# an event loop this late at p99 is held up by its handlers (blocking calls, CPU work)
LAG_WARN_MS = 20.0
LAG_BAD_MS = 100.0
NUMBERS = ("pid", "heartbeat", "in", "out", "backlog", "dead", "in flight", "asks", "ask p99", "lag p99")


def agents_panel(data: dict[str, Any]) -> RenderableType:
    if not data["agents"]:
        return absent("agents", "no data (Redis unreachable)" if redis_down(data) else "no agents")
    table = cells.table("agents", "agent", "role", "state", *NUMBERS, right=NUMBERS)
    table.columns[0].no_wrap = True  # a replica's name under its group's: never broken
    notes = []
    for a in data["agents"]:
        if "members" not in a:
            table.add_row(*_agent_row(a, a["name"], _role(a["role"])))
            continue
        table.add_row(*_group_row(a))
        last = len(a["members"]) - 1
        for i, member in enumerate(a["members"]):
            # the members' role is the group's
            table.add_row(*_agent_row(member, f"{'└' if i == last else '├'} {member['name']}", ""))
        note = scaled_note(a)
        if note:
            notes.append(note)
    if notes:
        table.caption = Text("\n".join(notes), "yellow")
        table.caption_justify = "left"
    return table


def scaled_note(group: dict[str, Any]) -> str | None:
    """`Support  3 replicas (mesh.yaml: 2; scaled)` when the group runs another count than
    mesh.yaml declares (autoscaled: its bounds), and its replicas retiring; else None."""
    r = group["replicas"]
    if r["running"] == r["declared"] and not r["retiring"]:
        return None
    text = f"{group['name']}  {r['running']} replica{'' if r['running'] == 1 else 's'}"
    if r["running"] != r["declared"]:
        text += (f" (mesh.yaml: {r['declared']} to {r['max']}; autoscaled)" if r["autoscaled"]
                 else f" (mesh.yaml: {r['declared']}; scaled)")
    return text + (f", {r['retiring']} retiring" if r["retiring"] else "")


def _agent_row(a: dict[str, Any], name: str, role: str) -> list[str | Text]:
    age = a["heartbeat_age_s"]
    state = "retiring" if a.get("retiring") and a["state"] == "alive" else a["state"]
    lag = a["loop_lag_ms"]
    return [name, role, Text(state, AGENT_STYLE.get(state, "")), str(a["pid"] or "-"),
            "-" if age is None else f"{duration(age)} ago", *_totals(a), _in_flight(a), _asks(a),
            ms(a["asks"]["p99_ms"]), _lag(None if lag is None else lag["p99"])]


def _group_row(g: dict[str, Any]) -> list[str | Text]:
    """The group's sums; its state as the replicas alive of those listed."""
    alive = sum(1 for m in g["members"] if m["state"] == "alive")
    lag = g["loop_lag_ms"]
    return [g["name"], _role(g["role"]),
            Text(f"{alive}/{len(g['members'])} alive", GROUP_STYLE.get(g["state"], "")), "-", "-",
            *_totals(g), _in_flight(g), _asks(g), ms(g["asks"]["p99_ms"]),
            _lag(None if lag is None else lag["p99"])]


def _totals(a: dict[str, Any]) -> list[str | Text]:
    return [str(a["messages_in"]), str(a["messages_out"]),
            Text(str(a["backlog"]), "yellow" if a["backlog"] else ""),
            Text(str(a["dead_letters"]), "red" if a["dead_letters"] else "")]


def models_panel(data: dict[str, Any]) -> RenderableType | None:
    """The llm agents' model use (status's `agents[].llm`); None when no agent called a model.
    A group's row sums its replicas'."""
    rows = [a for a in data["agents"] if a.get("llm")]
    if not rows:
        return None
    numbers = ("calls", "tokens in", "tokens out", "p50", "p99", "tool calls", "errors")
    table: Table = cells.table("models", "agent", *numbers, right=numbers)
    for a in rows:
        m = a["llm"]
        errors = Text(str(m["errors"]), "red" if m["errors"] else "")
        table.add_row(a["name"], str(m["calls"]), str(m["tokens_in"]), str(m["tokens_out"]),
                      ms(m["p50_ms"]), ms(m["p99_ms"]), str(m["tool_calls"]), errors)
    return table


def _role(role: str | None) -> str:
    """A plug-in role (`module:Class`) by its class: its import path would take a third of
    the table (status --json has it whole)."""
    return (role or "").rpartition(":")[2]


def _in_flight(a: dict[str, Any]) -> Text:
    """`in flight/concurrency`, yellow when messages wait for a free slot."""
    if a["in_flight"] is None or a["concurrency"] is None:
        return Text("-")
    return Text(f"{a['in_flight']}/{a['concurrency']}",
                "yellow" if a["in_flight"] > a["concurrency"] else "")


def _asks(a: dict[str, Any]) -> Text:
    """Asks waiting now, then the timeouts and error replies so far when there are any."""
    text = Text("-" if a["asks_pending"] is None else str(a["asks_pending"]))
    asks, failed = a["asks"], []
    if asks["timeouts"]:
        failed.append(Text(f"{asks['timeouts']} t/o", "yellow"))
    if asks["error_replies"]:
        failed.append(Text(f"{asks['error_replies']} err", "red"))
    if failed:
        text.append(" (").append_text(Text(", ").join(failed)).append(")")
    return text


def _lag(p99: float | None) -> Text:
    """The loop lag's p99: yellow from LAG_WARN_MS, red from LAG_BAD_MS."""
    style = "" if p99 is None or p99 < LAG_WARN_MS else "yellow" if p99 < LAG_BAD_MS else "red"
    return Text(ms(p99), style)
