"""What routing costs a sender per message, measured in process: the CPU of the runtime's
own calls of `Dispatch` for one ask to a group (`target` for a new conversation, `sent`
after the send, `replied` when the reply comes), per model, next to the same calls for an
ask to a fixed agent name (the baseline: `target` returns the name, nothing is learnt).

The clock is scripted (asks 1/rate apart, so physarum's tick runs every 0.2 s of it, as in
the mesh); replies come in order, `in_flight` asks behind. Without the conversation table
(`groups` None) this is the router alone; with it (a `Groups` on the bench's Valkey), each
new conversation also pays the table's Redis script, as in the mesh.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from collections import deque
from typing import Any

from agentmesh_cli.config import MeshConfig, parse_config
from agentmesh_cli.replicas import Groups
from agentmesh_cli.routing.dispatch import Dispatch

FIXED = "Echo"  # the baseline's address: an agent, not a group


def mesh_config(group: str, role: str, replicas: int, routing: dict[str, Any]) -> MeshConfig:
    return parse_config({"mesh": "routingcpu", "routing": routing,
                         "agents": [{"name": group, "role": role, "replicas": replicas}]})


def cpu_per_message(config: MeshConfig | None, group: str, replicas: list[str], messages: int,
                    groups: Groups | None, rate: float = 140.0, in_flight: int = 8) -> float:
    """Microseconds of this process's CPU per ask routed to `group` (config None: to FIXED)."""
    records = {name: {"group": group, "replica": k + 1} for k, name in enumerate(replicas)}
    dispatch = Dispatch(config or mesh_config(group, "x.y:Z", len(replicas), {}), groups, "bench-cpu",
                        clock=time.monotonic, rng=random.Random(1), registry=lambda: records)
    to = group if config is not None else FIXED
    tag = uuid.uuid4().hex[:8]  # new conversations every time, also in the shared table
    conversations = [f"{tag}-{i}" for i in range(messages)]
    ids = [f"{tag}-r{i}" for i in range(messages)]
    waiting: deque[str] = deque()
    now = 0.0
    started = time.process_time()
    for conversation, request_id in zip(conversations, ids, strict=True):
        now += 1.0 / rate
        peer = dispatch.target(to, conversation, now)
        if config is not None:  # as the runtime's ask: only a group's send is told to a router
            dispatch.sent(peer, request_id, group, now)
        waiting.append(request_id)
        if len(waiting) > in_flight:
            dispatch.replied(waiting.popleft(), now)
    return (time.process_time() - started) / messages * 1e6


def routing_cpu(routings: dict[str, dict[str, Any]], group: str, role: str, replicas: list[str],
                messages: int, repeats: int, groups: Groups | None) -> dict[str, Any]:
    """Per model (routings: name -> mesh.yaml `routing`): µs per message, the median of
    `repeats` rounds, each round every model and the baseline in turn; and what each adds
    over the baseline."""
    configs: dict[str, MeshConfig | None] = {"fixed_name": None}
    configs.update({name: mesh_config(group, role, len(replicas), routing)
                    for name, routing in routings.items()})
    took: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(repeats):
        for name, config in configs.items():
            took[name].append(cpu_per_message(config, group, replicas, messages, groups))
    us = {name: round(statistics.median(values), 2) for name, values in took.items()}
    base = us["fixed_name"]
    return {"per_message_us": us,
            "over_fixed_name_us": {name: round(value - base, 2) for name, value in us.items()
                                   if name != "fixed_name"},
            "runs_us": {name: [round(v, 2) for v in values] for name, values in took.items()}}
