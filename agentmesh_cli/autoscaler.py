"""The autoscaler program: scales the groups with `replicas: {min, max, target_in_flight}`.

supervisord runs it (program `autoscaler`) when mesh.yaml has such a group. About once a
second it reads the counters and the registry (as `down`'s drain does), gives each group's
load to its rule (autoscale.py) and, when the rule says so, scales the group as `agentmesh
scale` does (scaling.py: new replicas started and waited for; leaving ones drained, stopped
and their unread messages handed over). One change at a time; while the mesh drains for
`down` it changes nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter
from types import FrameType

from agentmesh_cli import constants as C
from agentmesh_cli.autoscale import Autoscale, group_load
from agentmesh_cli.config import AutoReplicas
from agentmesh_cli.errors import AgentMeshError
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.quiet import read
from agentmesh_cli.scalestate import running_counts
from agentmesh_cli.scaling import scale
from agentmesh_cli.store import Store

log = logging.getLogger("autoscaler")
CHECK_S = 1.0
SCALE_TIMEOUT_S = 60.0  # a new replica ready within this, or the change failed
DRAIN_TIMEOUT_S = 30.0  # a leaving replica's work finished within this, or handed over


class Autoscaler:
    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.rules = {name: Autoscale(spec.replicas) for name, spec in mesh.config.groups().items()
                      if isinstance(spec.replicas, AutoReplicas)}
        self.stopping = False
        self.counts: Counter[str] = Counter()

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        store = Store(self.mesh.redis_url, self.mesh.config.mesh)
        store.mark_ready(C.PROGRAM_AUTOSCALER, os.getpid())
        log.info("ready: autoscaling %s", ", ".join(
            f"{g} ({r.rule.min}-{r.rule.max}, {r.rule.target_in_flight:g} in flight each)"
            for g, r in self.rules.items()) or "no group")
        try:
            while not self.stopping:
                started = time.monotonic()
                self.check(store, started)
                time.sleep(max(0.0, CHECK_S - (time.monotonic() - started)))
        finally:
            store.close()
        return 0

    def check(self, store: Store, now: float) -> None:
        counts = running_counts(self.mesh)
        try:
            draining = store.draining()
            reading = read(store.all_counters(), store.agents(),
                           [name for name, _ in self.mesh.config.concrete_agents(counts)])
        except AgentMeshError as exc:
            log.warning("load not read: %s", exc)
            for rule in self.rules.values():
                rule.observe(now, None)
            return
        if draining:
            return
        for group, rule in self.rules.items():
            if self.stopping:
                return
            spec = self.mesh.config.groups()[group]
            replicas = spec.replica_names(counts[group])
            load = group_load(reading.unhandled, reading.in_flight, replicas)
            rule.observe(now, load)
            target = rule.decide(now, counts[group])
            if target is None or target == counts[group]:
                continue
            log.info("%s: load %d (%g in flight per replica wanted): %d -> %d replicas", group, load,
                     rule.rule.target_in_flight, counts[group], target)
            try:
                scale(self.mesh, group, target, DRAIN_TIMEOUT_S, SCALE_TIMEOUT_S, log.info)
                self.counts["scale_ups" if target > counts[group] else "scale_downs"] += 1
            except AgentMeshError as exc:
                log.error("%s: scaling to %d failed: %s", group, target, exc)
                self.counts["scale_failures"] += 1
            rule.scaled()
            self._flush(store)
            return  # one change per check: the next reads the mesh as it is now

    def _flush(self, store: Store) -> None:
        try:
            store.add_counters(C.PROGRAM_AUTOSCALER, self.counts)
            self.counts = Counter()
        except AgentMeshError:
            pass
