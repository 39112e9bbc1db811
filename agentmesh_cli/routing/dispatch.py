"""The sender's side of replica groups: the concrete agent a message goes to.

Every sender (an agent, the gateway, `agentmesh ask` and `send`) holds one `Dispatch`.
`targets(to, conversation, now)` turns an address into the agents to send to:

- an agent or replica name (`Sales`, `Support-2`): itself;
- a group's name (`Support`): one live replica. A message of a conversation goes where
  the conversation sticks (the shared table in Redis, replicas.py: set if absent, renewed
  on use, forgotten after `routing.sticky_idle`); a new conversation, or one whose replica
  left or is retiring, goes where the group's router chooses (routing.model, one router
  per group, routing/models.py). A message without a conversation is a conversation of
  its own;
- `role:<role>`: every logical agent of that role (a group once, routed as above).

The router learns from asks: `sent` after the request left, `replied` or `forget` after.
Until a sender has had a reply from a group, its router knows nothing to prefer one replica
by (a sender that only tells never does): it takes the live replicas in turn.
Live replicas are the registered ones of the group (a killed replica stays registered,
and its stretched length takes it out of the choice) minus the retiring ones; with none
registered yet, the replicas the group runs now by its count (what they are sent waits
in their inboxes). A retiring replica (being scaled down) gets no new conversation, but
keeps those that stick to it until it has left, so that a conversation moves only once
its replica is gone, never while its messages wait there.

Not thread-safe: an agent calls it on its event loop only.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from typing import Any

from agentmesh_cli.config import MeshConfig
from agentmesh_cli.envelope import now_ms
from agentmesh_cli.errors import AgentMeshError, RoutingError
from agentmesh_cli.replicas import Groups
from agentmesh_cli.routing.models import make_router
from agentmesh_cli.routing.router import Router

ROLE_PREFIX = "role:"
REFRESH_S = 1.0  # the groups' live replicas are read again this often (when routing)
PUBLISH_S = 1.0  # the routers' state is published for the views this often (when routing)
STICKY_KEPT = 100_000  # conversations whose replica a sender remembers locally, at most


class Dispatch:
    def __init__(self, config: MeshConfig, groups: Groups | None, owner: str,
                 clock: Callable[[], float], rng: random.Random | None = None,
                 registry: Callable[[], dict[str, dict[str, Any]]] | None = None,
                 log: logging.Logger | None = None) -> None:
        """`groups` None: no Redis (a test, or Redis down at start): no sticky table,
        replicas as declared. `registry`: the agents' records (default: read from Redis)."""
        self.config = config
        self.groups = groups
        self.owner = owner
        self.clock = clock
        self.rng = rng or random.Random()
        self.log = log or logging.getLogger("routing")
        self.specs = config.groups()
        self._registry = registry or (lambda: groups.store_agents() if groups else {})
        self.routers: dict[str, Router] = {}
        self.live: dict[str, list[str]] = {}  # where new conversations may go
        self.reachable: dict[str, list[str]] = {}  # where conversations may stay (+ retiring)
        self._refreshed = -math.inf
        self._published = -math.inf
        self._ticked = -math.inf
        self._routed = False  # routed since the last publish
        self._sticky: dict[tuple[str, str], tuple[str, float]] = {}  # (group, conv) -> (replica, touched)
        self._asks: dict[str, str] = {}  # request id in flight -> its group
        self._learned: set[str] = set()  # groups this sender has had a reply from
        self._turn: dict[str, int] = {}  # groups not learned yet: the next replica in turn
        self._interval = 0.2

    # addressing -------------------------------------------------------------------
    def is_group(self, name: str) -> bool:
        return name in self.specs

    def targets(self, to: str, conversation: str | None, now: float | None = None) -> list[str]:
        """The concrete agents a message to `to` goes to (see the module's docstring)."""
        if to.startswith(ROLE_PREFIX):
            role = to[len(ROLE_PREFIX):]
            return [self.target(name, conversation, now) for name in self.of_role(role)]
        return [self.target(to, conversation, now)]

    def of_role(self, role: str) -> list[str]:
        """The logical agents of `role`: mesh.yaml's (a group by its name) and any other
        registered agent of that role (started by hand)."""
        names = [a.name for a in self.config.agents if a.role == role]
        known = set(names) | {f"{g}-" for g in self.specs}
        try:
            registry = self._registry()
        except AgentMeshError:
            registry = {}
        for name, record in sorted(registry.items()):
            if record.get("role") == role and not record.get("group") and name not in known:
                names.append(name)
        if not names:
            raise RoutingError(f"no agent of role {role!r} (address role:<role> names the agents "
                               "of a role of mesh.yaml or of the registry)")
        return names

    def _choose(self, group: str, now: float) -> str:
        if group in self._learned:
            return self.routers[group].choose(now)
        live = self.live[group]
        turn = self._turn.get(group, self.rng.randrange(len(live)))
        self._turn[group] = turn + 1
        return live[turn % len(live)]

    def target(self, to: str, conversation: str | None, now: float | None = None) -> str:
        """One concrete agent for `to`: itself, or a replica of group `to`."""
        if to not in self.specs:
            return to
        now = self.clock() if now is None else now
        self.refresh(now)
        self.tick(now)
        group = to
        self._routed = True
        if not conversation:
            return self._choose(group, now)
        key = (group, conversation)
        hit = self._sticky.get(key)
        idle = self.config.routing.sticky_idle
        reachable = self.reachable[group]
        if hit is not None and hit[0] in reachable and now - hit[1] < idle / 4:
            return hit[0]
        candidate = self._choose(group, now)
        chosen = candidate
        if self.groups is not None:
            try:
                chosen = self.groups.route(group, conversation, candidate, reachable, idle)
            except AgentMeshError as exc:  # Redis down: this sender's own memory decides
                self.log.warning("conversation table unavailable, routing %s locally: %s", conversation, exc)
                chosen = hit[0] if hit is not None and hit[0] in reachable else candidate
        if len(self._sticky) >= STICKY_KEPT:
            self._forget_idle(now, idle)
        self._sticky[key] = (chosen, now)
        return chosen

    def _forget_idle(self, now: float, idle: float) -> None:
        for key, (_, touched) in list(self._sticky.items()):
            if now - touched >= idle / 4:
                del self._sticky[key]
        while len(self._sticky) >= STICKY_KEPT:  # all fresh: the oldest half goes
            for key in list(self._sticky)[: STICKY_KEPT // 2]:
                del self._sticky[key]

    # the groups' replicas ----------------------------------------------------------
    def refresh(self, now: float, force: bool = False) -> None:
        """Read the groups' live replicas again (at most every REFRESH_S unless `force`)."""
        if not force and now - self._refreshed < REFRESH_S and len(self.live) == len(self.specs):
            return
        self._refreshed = now
        registry: dict[str, dict[str, Any]] = {}
        retiring: set[str] = set()
        counts: dict[str, int] = {}
        try:
            registry = self._registry()
            if self.groups is not None:
                retiring = self.groups.retiring()
                counts = self.groups.counts()
        except AgentMeshError as exc:
            if self.live:
                return  # keep routing among the last known replicas
            self.log.warning("replica groups unavailable, routing to the declared replicas: %s", exc)
        for group, spec in self.specs.items():
            registered = sorted((name for name, record in registry.items() if record.get("group") == group),
                                key=_replica_order)
            live = [name for name in registered if name not in retiring]
            if not live:
                live = [n for n in spec.replica_names(counts.get(group)) if n not in retiring] \
                    or spec.replica_names(counts.get(group))
            self.live[group] = live
            self.reachable[group] = sorted(set(live) | set(registered), key=_replica_order)
            router = self.routers.get(group)
            if router is None:
                router = self.routers[group] = self._router()
            if list(router.replicas) != live:
                router.set_replicas(live, now)

    def _router(self) -> Router:
        routing = self.config.routing
        options: dict[str, Any] = dict(routing.options)
        if routing.model == "round_robin" and routing.weights:
            options["weights"] = routing.weights
        router = make_router(routing.model, self.rng, **options)
        self._interval = float(getattr(getattr(router, "params", None), "interval_s", 0.2))
        return router

    # what the routers learn ---------------------------------------------------------
    def sent(self, replica: str, request_id: str, group: str, now: float) -> None:
        router = self.routers.get(group)
        if router is not None and replica in router.replicas:
            router.sent(replica, request_id, now)
            self._asks[request_id] = group

    def replied(self, request_id: str, now: float) -> None:
        group = self._asks.pop(request_id, None)
        if group is not None:
            self.routers[group].replied(request_id, now)
            self._learned.add(group)
            self._routed = True  # its state changed: published again

    def forget(self, request_id: str) -> None:
        group = self._asks.pop(request_id, None)
        if group is not None:
            self.routers[group].forget(request_id)
            self._routed = True

    def tick(self, now: float) -> None:
        """The routers' periodic step (physarum's conductances), at most every interval."""
        if now - self._ticked < self._interval:
            return
        self._ticked = now
        for router in self.routers.values():
            router.tick(now)

    def snapshot(self) -> dict[str, Any]:
        return {"ts": now_ms(), "model": self.config.routing.model,
                "groups": {group: router.snapshot() for group, router in self.routers.items()}}

    def publish(self, now: float) -> None:
        """The routers' state for the views (status, dashboard), when it routed or learned
        since the last time."""
        if self.groups is None or not self._routed or now - self._published < PUBLISH_S:
            return
        self._published = now
        self._routed = False
        self.tick(now)
        try:
            self.groups.publish_routing(self.owner, self.snapshot())
        except AgentMeshError as exc:
            self.log.warning("routing state not published: %s", exc)


def _replica_order(name: str) -> tuple[str, int]:
    head, _, tail = name.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (name, 0)
