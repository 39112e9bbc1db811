"""Replica groups as the views show them (status, the dashboard, metrics): pure.

A group `Support` of mesh.yaml runs agents Support-1..N (config.py). `status` lists it as
one logical agent: its replicas nested (each as an agent of its own), the group's totals,
its counts (declared in mesh.yaml, running now, retiring) and the senders' routing state
combined per group. Agents that are no replicas pass through unchanged.

Combining the senders (each publishes its routers' state, replicas.py `routing()`): per
replica, `outstanding` is the sum over the senders (requests in flight to it), and
`probability`, `conductance` and `ewma_ms` are means over the senders weighted by how
much each sent to the group (its `sent_to:<replica>` counters; equal weights while none
counted yet). A sender that does not know a replica yet gives it probability 0. State
older than ROUTING_FRESH_S is left out: that sender stopped routing (senders publish
about once a second while they route; the hash keeps a dead sender's last state).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.agent_load import LAG_KEYS, LOAD_COUNTS, asks, llm
from agentmesh_cli.backlog import Counters
from agentmesh_cli.config import AgentSpec, MeshConfig, group_of

ROUTING_FRESH_S = 60.0  # a sender's routing state older than this is left out
SUMMED = ("messages_in", "messages_out", "dead_letters", "sent_to", "backlog")
ROUTED = ("probability", "conductance", "ewma_ms")  # weighted means over the senders


def replica_order(name: str) -> tuple[str, int]:
    """Support-2 before Support-10."""
    parsed = group_of(name)
    return parsed if parsed is not None else (name, 0)


def groups_of(config: MeshConfig, names: Iterable[str]) -> dict[str, str]:
    """name -> its group, for the names that are replicas of a group of mesh.yaml."""
    out = {}
    for name in names:
        group = config.group_name(name)
        if group is not None:
            out[name] = group
    return out


def replica_counts(spec: AgentSpec, counts: Mapping[str, int], retiring: set[str],
                   members: Iterable[str]) -> dict[str, Any]:
    """`replicas` of a group entry: declared in mesh.yaml (autoscaled: its min), running now
    (`up` and `scale` write it; never scaled: as declared), retiring among its members."""
    return {"declared": spec.declared_replicas, "running": counts.get(spec.name, spec.declared_replicas),
            "retiring": sum(1 for name in members if name in retiring),
            "max": spec.max_replicas, "autoscaled": not isinstance(spec.replicas, int)}


def processes(agents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Status's entries of the agent processes: each agent, a group's replicas in its place."""
    return [entry for agent in agents for entry in agent.get("members", [agent])]


def nest_groups(agents: list[dict[str, Any]], config: MeshConfig, counts: Mapping[str, int],
                retiring: set[str], routing: Mapping[str, Mapping[str, Any]], counters: Counters,
                now: float) -> list[dict[str, Any]]:
    """Status's agent entries with each group's replicas folded into one group entry (see
    `group_entry`), in name order; the other entries as they are."""
    groups = config.groups()
    if not groups:
        return agents
    of = groups_of(config, (a["name"] for a in agents))
    members: dict[str, list[dict[str, Any]]] = {group: [] for group in groups}
    out = []
    for agent in agents:
        group = of.get(agent["name"])
        if group is None:
            if agent["name"] not in groups:  # a group's own name is no agent
                out.append(agent)
            continue
        members[group].append(agent)
    for group, spec in groups.items():
        out.append(group_entry(spec, members[group], counts, retiring,
                               combine_routing(routing, group, counters, now)))
    return sorted(out, key=lambda a: a["name"])


def group_entry(spec: AgentSpec, members: list[dict[str, Any]], counts: Mapping[str, int],
                retiring: set[str], routing: dict[str, Any] | None) -> dict[str, Any]:
    """One logical agent for a group: its replicas' entries in `members` (each with its
    group, index, whether it is retiring and its share of the group's handled messages),
    their sums (counters too), the worst loop lag, asks and model use over their summed
    counters."""
    members = sorted(members, key=lambda a: replica_order(a["name"]))
    handled = sum(m["messages_in"] for m in members)
    nested = [{**m, "group": spec.name, "replica": replica_order(m["name"])[1],
               "retiring": m["name"] in retiring,
               "share": round(m["messages_in"] / handled, 4) if handled else None} for m in members]
    summed: dict[str, int] = {}
    for m in members:
        for name, value in m["counters"].items():
            summed[name] = summed.get(name, 0) + value
    states = {m["state"] for m in nested if not m["retiring"]}
    alive = sum(1 for m in nested if m["state"] == "alive")
    state = ("alive" if states == {"alive"} else "degraded" if alive
             else "stale" if any(m["state"] == "stale" for m in nested) else "not running")
    return {
        "name": spec.name,
        "role": spec.role,
        "capabilities": list(spec.capabilities),
        "state": state,
        "alive": alive > 0,
        **{key: sum(m[key] for m in members) for key in SUMMED},
        **{key: _sum_known(m[key] for m in members) for key in LOAD_COUNTS},
        "loop_lag_ms": _worst_lag(members),
        "asks": asks(summed),
        "llm": llm(summed),
        "counters": summed,
        "replicas": replica_counts(spec, counts, retiring, (m["name"] for m in members)),
        "members": nested,
        "routing": routing,
    }


def combine_routing(routing: Mapping[str, Mapping[str, Any]], group: str, counters: Counters,
                    now: float) -> dict[str, Any] | None:
    """The senders' routing state of `group`, combined (the module's docstring), or None
    when no sender routed to it within ROUTING_FRESH_S."""
    senders = []
    for sender, state in sorted(routing.items()):
        snapshot = (state.get("groups") or {}).get(group)
        if not isinstance(snapshot, dict) or not snapshot:
            continue
        age = max(0.0, now - float(state.get("ts", 0)) / 1000)
        if age > ROUTING_FRESH_S:
            continue
        own = counters.get(sender, {})
        sent = sum(own.get(C.sent_to_counter(replica), 0) for replica in snapshot)
        senders.append((sender, age, sent, state.get("model"), snapshot))
    if not senders:
        return None
    even = not any(sent for _, _, sent, _, _ in senders)
    weights = {sender: 1.0 if even else float(sent) for sender, _, sent, _, _ in senders}
    replicas: dict[str, dict[str, Any]] = {}
    for replica in sorted({r for *_, snapshot in senders for r in snapshot}, key=replica_order):
        rows = [(weights[sender], snapshot.get(replica)) for sender, *_, snapshot in senders]
        known = [(w, row) for w, row in rows if isinstance(row, dict)]
        replicas[replica] = {
            "outstanding": sum(int(row.get("outstanding", 0)) for _, row in known),
            "ewma_ms": _mean(known, "ewma_ms", 2),
            # a sender that does not hold the replica yet sends it nothing
            "probability": _mean([(w, row or {"probability": 0.0}) for w, row in rows], "probability", 4)
            if any("probability" in row for _, row in known) else None,
            "conductance": _mean(known, "conductance", 4),
        }
    newest = min(senders, key=lambda s: s[1])
    return {"model": newest[3],
            "senders": [{"sender": sender, "age_s": round(age, 1), "sent": sent}
                        for sender, age, sent, _, _ in senders],
            "replicas": replicas}


def _mean(rows: list[tuple[float, Any]], key: str, digits: int) -> float | None:
    """Weighted mean of `key` over the rows that have it as a number, None if none has."""
    values = [(w, float(row[key])) for w, row in rows
              if isinstance(row.get(key), int | float) and not isinstance(row.get(key), bool)]
    if not values:
        return None
    total = sum(w for w, _ in values)
    if not total:
        return round(sum(v for _, v in values) / len(values), digits)
    return round(sum(w * v for w, v in values) / total, digits)


def _sum_known(values: Iterable[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _worst_lag(members: list[dict[str, Any]]) -> dict[str, float] | None:
    lags = [m["loop_lag_ms"] for m in members if m["loop_lag_ms"] is not None]
    return {key: max(lag[key] for lag in lags) for key in LAG_KEYS} if lags else None
