"""The routing panel: per replica group, where its new conversations go and why.

Per replica: its share of the group's handled messages (every model), then the senders'
routing state combined (replica_view.py: requests in flight summed over the senders; the
peak-EWMA, and for physarum the probability of a new conversation and the conductance,
as means weighted by what each sender sent to the group). The physarum columns are left
out when no sender has them. Below the table, per group, who routes to it and how fresh
their state is.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from agentmesh_cli.dashboard import cells
from agentmesh_cli.dashboard.cells import duration, ms
from agentmesh_cli.replica_view import ROUTING_FRESH_S

SENDERS_SHOWN = 4  # senders named per group; the rest are counted


def routing_panel(data: dict[str, Any]) -> RenderableType | None:
    """None when the mesh has no replica group."""
    groups = [a for a in data["agents"] if "members" in a]
    if not groups:
        return None
    routed = [g["routing"] for g in groups if g["routing"]]
    physarum = any(r["probability"] is not None for g in routed for r in g["replicas"].values())
    model = next((g["model"] for g in routed if g.get("model")), None)
    columns = ("share", *(("p(new)", "conductance") if physarum else ()), "peak-EWMA", "outstanding")
    title = "routing" + (f" ({model})" if model else "")
    table = cells.table(title, "group", "replica", *columns, right=columns)
    notes = []
    for g in groups:
        replicas = (g["routing"] or {}).get("replicas", {})
        for i, member in enumerate(g["members"]):
            state = replicas.get(member["name"], {})
            share = "-" if member["share"] is None else f"{member['share']:.0%}"
            row: list[str | Text] = [g["name"] if i == 0 else "", member["name"], share]
            if physarum:
                row += [_fraction(state.get("probability")), _number(state.get("conductance"))]
            row += [ms(state.get("ewma_ms")), str(state.get("outstanding", "-"))]
            table.add_row(*row)
        notes.append(_senders(g))
    # the lines may be wider than the table: below it, not its caption (wrapped to its width)
    return Group(table, *(Text(note, "dim") for note in notes), Text(""))


def _senders(group: dict[str, Any]) -> str:
    routing = group["routing"]
    if not routing:
        return f"{group['name']}: no sender routed to it in the last {duration(ROUTING_FRESH_S)}"
    senders = sorted(routing["senders"], key=lambda s: (-s["sent"], s["sender"]))
    named = ", ".join(f"{s['sender']} ({s['sent']} sent)" for s in senders[:SENDERS_SHOWN])
    more = len(senders) - SENDERS_SHOWN
    newest = min(s["age_s"] for s in senders)
    return (f"{group['name']}: routed by {named}{f', {more} more' if more > 0 else ''}; "
            f"newest state {duration(newest)} old")


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
