"""The topology manager process: Kafka events in, SlimeMold graph, Redis snapshots out.

It reads every partition of `topology` (join, heartbeat, leave) and `messages` (one
reinforcement per message) by manual assignment. Every `snapshot_interval` it stores the
graph together with the next offset of every partition it covers; a restarted manager
loads that snapshot and seeks to those offsets, so no event is lost or applied twice.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections import Counter
from types import FrameType
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli import dozing
from agentmesh_cli.bus import Bus
from agentmesh_cli.config import MeshConfig
from agentmesh_cli.doorbell import EVERY_KEY
from agentmesh_cli.envelope import now_ms
from agentmesh_cli.errors import AgentMeshError, SnapshotError
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.reader import Reader, resume_assignments
from agentmesh_cli.records import Record
from agentmesh_cli.recovery import BrokerWatch, wait_for_infra
from agentmesh_cli.signing import mesh_signer
from agentmesh_cli.topology.graph import SlimeMoldRules
from agentmesh_cli.topology.state import TopologyState
from agentmesh_cli.waiting import Clock

__all__ = ["TopologyManager", "TopologyState", "apply_safely", "expected_agents", "history_point"]

LIVENESS_CHECK_S = 0.5  # how often silent agents (and held records past their time) are looked for
OWNER = C.PROGRAM_TOPOLOGY
TOPOLOGY_FETCH_MIN_BYTES = 65_536  # with topology_fetch_wait: few, big fetches on a real Kafka too

log = logging.getLogger("topology")


class TopologyManager:
    def __init__(self, mesh: Mesh, clock: Clock = time.monotonic) -> None:
        """`clock` times the decay, liveness checks, snapshots and history points; the
        graph's own times are wall-clock ms (`now_ms`), as in the records it reads."""
        self.mesh = mesh
        self.clock = clock
        cfg = mesh.config
        self.cfg = cfg.topology
        self.rules = SlimeMoldRules.of(cfg.topology)
        self.timeout_ms = int(cfg.heartbeat.interval * cfg.heartbeat.missed * 1000)
        self.stopping = False
        self._next_point = -math.inf  # `clock` time of the next topology:history point

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: saving a last snapshot and stopping", signal.Signals(signum).name)
        self.stopping = True

    def _load(self, store: Any, epoch: str) -> TopologyState:
        fresh = TopologyState(self.rules, self.timeout_ms, epoch)
        try:
            data = store.load_snapshot()
            if not data:
                log.info("no snapshot: reading every partition from the beginning")
                return fresh
            state = TopologyState.restore(data, self.rules, self.timeout_ms)
        except SnapshotError as exc:
            # a snapshot we cannot read is not fatal: rebuild from the start of the topics
            log.error("snapshot unreadable (%s): rebuilding from the beginning", exc)
            return fresh
        if data.get("epoch") != epoch:
            # the broker restarted empty: the graph stands, its offsets mean nothing now
            log.info("snapshot is from an earlier broker (epoch %s, now %s): keeping its graph of "
                     "%d agents, reading the new topics from the beginning", data.get("epoch"),
                     epoch, len(state.graph))
            state.new_epoch(epoch, now_ms())
            return state
        log.info("resumed from snapshot of %d agents, %d edges at offsets %s",
                 len(state.graph), state.graph.stats().edges, data.get("offsets"))
        return state

    def run(self) -> int:
        from agentmesh_cli.replicas import Groups
        from agentmesh_cli.store import Store

        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        cfg = self.mesh.config
        store = Store(self.mesh.redis_url, cfg.mesh)
        epoch = wait_for_infra(cfg.kafka, store, OWNER, clock=self.clock)
        # security.sign_envelopes: its dead letters are signed, what it reads is checked
        signer = mesh_signer(self.mesh)
        bus = Bus(cfg.kafka, client_id=OWNER, signer=signer, clock=self.clock)
        watch = BrokerWatch(bus, store, epoch, clock=self.clock)
        state = self._load(store, epoch)
        state.partitions, state.max_record_bytes = cfg.kafka.partitions, cfg.kafka.max_record_bytes
        state.expected = expected_agents(cfg, Groups(store).counts() if cfg.groups() else {})
        assignments = resume_assignments(cfg.kafka, (C.TOPIC_TOPOLOGY, C.TOPIC_MESSAGES), state.offsets)
        # idle, it stops fetching until a join, a leave or a message rings it (dozing.py):
        # asleep it costs nothing, and under traffic nobody rings it (it is awake)
        bell = dozing.doorbell(store, cfg, OWNER, (C.TOPIC_TOPOLOGY, C.TOPIC_MESSAGES + EVERY_KEY))
        bus.doorbell = bell
        reader = dozing.Dozer(
            Reader(cfg.kafka, f"{cfg.kafka.topic_prefix}.{OWNER}", assignments, OWNER,
                   fetch_wait=cfg.kafka.topology_fetch_wait, fetch_min_bytes=TOPOLOGY_FETCH_MIN_BYTES,
                   signer=signer),
            bell, dozing.policy(cfg, cfg.kafka.topology_fetch_wait), self.clock)
        store.mark_ready(OWNER, os.getpid())
        log.info("ready: %d partitions assigned", len(assignments))
        started = self.clock()
        next_decay = started + self.cfg.decay_interval
        next_liveness = started + LIVENESS_CHECK_S
        next_snapshot = started + self.cfg.snapshot_interval
        try:
            while not self.stopping:
                members_before = state.membership_changes
                # in one call: its messages' reinforcements are applied as one array update
                state.apply_batch(reader.poll_batch(max_records=2000, timeout=0.1), now_ms())
                now = self.clock()
                if (new_epoch := watch.check(now)) is not None:
                    state.new_epoch(new_epoch, now_ms())
                    reader.rewind()
                    next_snapshot = now
                if now >= next_decay:
                    next_decay += self.cfg.decay_interval
                    state.tick(now_ms(), registry_beats(store, state))
                elif now >= next_liveness:  # failure detection does not wait for the decay
                    next_liveness = now + LIVENESS_CHECK_S
                    state.drop_silent(now_ms(), registry_beats(store, state))
                if state.membership_changes != members_before:
                    next_snapshot = now  # joins, leaves and timeouts show up in status at once
                for record, reason, size in state.take_letters():
                    bus.dead_letter(record, reason, size)
                if now >= next_snapshot:
                    next_snapshot = now + self.cfg.snapshot_interval
                    self._save(store, state)
                bus.poll()
        finally:
            for record, reason, size in state.take_letters():
                bus.dead_letter(record, reason, size)
            self._save(store, state)
            bus.flush(5)
            reader.close()
        return 0

    def _save(self, store: Any, state: TopologyState) -> None:
        try:
            snapshot = state.snapshot(now_ms())
            store.save_snapshot(snapshot)
            store.add_counters(OWNER, state.counts)
            state.counts = Counter()
            if self.clock() >= self._next_point:
                store.push_topology_point(history_point(snapshot), C.TOPOLOGY_HISTORY_KEPT)
                self._next_point = self.clock() + C.TOPOLOGY_HISTORY_EVERY_S
        except AgentMeshError as exc:
            log.warning("snapshot not saved, will retry: %s", exc)


def registry_beats(store: Any, state: TopologyState) -> dict[str, int]:
    """When some agent was not heard from on the broker for the heartbeat timeout: every
    agent's last heartbeat in the registry (agent -> ms). The heartbeat thread writes it to
    Redis as it sends it to the broker, so an agent silent on the broker but beating there
    is alive and the broker is what failed (away, restarting, slow under load): it is not
    dropped (test_recovery's broker restart lost every agent of the graph when the restart
    took longer than the timeout). Nothing is read while everyone is heard."""
    if not state.silent(now_ms()):
        return {}
    try:
        records = store.agents()
    except AgentMeshError as exc:
        log.warning("registry not read for the liveness check: %s", exc)
        return {}
    return {name: beat for name, record in records.items()
            if isinstance(beat := record.get("last_heartbeat"), int)}


def apply_safely(state: TopologyState, record: Record) -> None:
    """Apply one record; a bug that one record triggers makes it a dead letter instead of
    stopping the manager on it again after every restart."""
    state.apply_safely(record, now_ms())


def history_point(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The few numbers of a snapshot that `status` draws as the topology's trend."""
    stats = snapshot["stats"]
    return {"ts": snapshot["ts"], **{k: stats[k] for k in ("agents", "edges", "possible",
                                                            "reduction_percent")}}


def expected_agents(config: MeshConfig, counts: dict[str, int]) -> frozenset[str]:
    """The agents that will read their inbox once they start: mesh.yaml's, a replica group's
    as many as it may run (its max, or more when `agentmesh scale` ran it beyond)."""
    most = {group: max(spec.max_replicas, counts.get(group, 0)) for group, spec in config.groups().items()}
    return frozenset(name for name, _ in config.concrete_agents(most))
