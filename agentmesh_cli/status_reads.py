"""What a `status` frame reads of Redis, in two round trips over a Store's connection.

First the registry, the counter owners, the topology snapshot and its history, the newest
proposals' ids, the services' clients and, with replica groups, their counts, retiring
replicas and senders' routing state (replicas.py writes them); then every owner's counters
and those proposals. A read per key and per owner was ~140 round trips at 128 agents
(~0.25 s on a loaded machine: Valkey waits for the CPU each time).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.client import NEVER_DECODE

from agentmesh_cli.errors import SnapshotError
from agentmesh_cli.store import Store, check_snapshot, redis_errors


@dataclass(frozen=True)
class Stored:
    """One frame's reads. `snapshot_problem`: the snapshot key holds something else than
    the manager's JSON object (`snapshot` is then None), an error of the frame, not of Redis."""

    registry: dict[str, dict[str, Any]]
    counters: dict[str, dict[str, int]]
    snapshot: dict[str, Any] | None
    snapshot_problem: str | None
    history: list[dict[str, Any]]  # oldest first
    proposals: list[dict[str, Any]]  # newest first
    clients: dict[str, dict[str, Any]]
    counts: dict[str, int]  # replica group -> replicas it runs now (replicas.Groups)
    retiring: set[str]
    routing: dict[str, dict[str, Any]]  # sender -> its routing state


def read_stored(store: Store, history: int, proposals: int, groups: bool,
                registry_read: Callable[[], object] = lambda: None) -> Stored:
    """The newest `history` topology points and `proposals` proposals, and the rest; the
    replica groups' state when the mesh has `groups` (else none is read). `registry_read` is
    called once the registry is read, before the counters are."""
    keys = store.keys
    with redis_errors("read the mesh's state"):
        pipe = store.redis.pipeline(transaction=False)
        pipe.hgetall(keys.agents)
        pipe.smembers(keys.counter_owners)
        # as bytes: one that is not UTF-8 would fail the whole pipeline when decoded
        pipe.execute_command("GET", keys.topology_snapshot, **{NEVER_DECODE: []})
        pipe.lrange(keys.topology_history, 0, history - 1)
        pipe.zrevrange(keys.proposals, 0, proposals - 1)
        pipe.hgetall(keys.service_clients)
        if groups:
            pipe.hgetall(keys.replicas)
            pipe.smembers(keys.retiring)
            pipe.hgetall(keys.routing)
        registry, owner_set, snapshot, points, ids, clients, *group_state = pipe.execute()
        registry_read()
        owners = sorted(str(o) for o in owner_set)
        pipe = store.redis.pipeline(transaction=False)
        for owner in owners:
            pipe.hgetall(keys.counters(owner))
        if ids:
            pipe.mget([keys.proposal(str(i)) for i in ids])
        second = pipe.execute() if owners or ids else []
    counts, retiring, routing = group_state if groups else ({}, set(), {})
    parsed, problem = None, None
    try:
        parsed = check_snapshot(snapshot)
    except SnapshotError as exc:
        problem = str(exc)
    return Stored(
        registry={str(name): json.loads(value) for name, value in registry.items()},
        counters={owner: {str(n): int(v) for n, v in raw.items()}
                  for owner, raw in zip(owners, second[:len(owners)], strict=True)},
        snapshot=parsed,
        snapshot_problem=problem,
        history=[json.loads(p) for p in reversed(points)],
        proposals=[json.loads(r) for r in (second[-1] if ids else []) if r],
        clients={str(owner): json.loads(value) for owner, value in clients.items()},
        counts={str(group): int(n) for group, n in counts.items()},
        retiring={str(name) for name in retiring},
        routing={str(sender): json.loads(value) for sender, value in routing.items()},
    )
