"""The topology manager process: Kafka events in, SlimeMold graph, Redis snapshots out.

It reads every partition of `topology` (join, heartbeat, leave) and `messages` (one
reinforcement per message) by manual assignment. Every `snapshot_interval` it stores the
graph together with the next offset of every partition it covers; a restarted manager
loads that snapshot and seeks to those offsets, so no event is lost or applied twice.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter
from types import FrameType
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.bus import (
    Bus,
    Reader,
    Record,
    offsets_from_json,
    offsets_to_json,
    resume_assignments,
)
from agentmesh_cli.config import Mesh, TopologyConfig
from agentmesh_cli.envelope import Envelope, now_ms
from agentmesh_cli.errors import AgentMeshError, InvalidEnvelope
from agentmesh_cli.recovery import BrokerWatch, wait_for_infra
from agentmesh_cli.topology.graph import SlimeMoldGraph, SlimeMoldRules

SNAPSHOT_VERSION = 1
LIVENESS_CHECK_S = 0.5  # how often silent agents are looked for
MAX_HELD = 100_000  # bound on messages waiting for their agents' joins
OWNER = C.PROGRAM_TOPOLOGY

log = logging.getLogger("topology")


def rules_from(cfg: TopologyConfig) -> SlimeMoldRules:
    return SlimeMoldRules(
        initial_weight=cfg.initial_weight,
        reinforcement=cfg.reinforcement,
        max_weight=cfg.max_weight,
        decay=cfg.decay,
        prune_threshold=cfg.prune_threshold,
    )


class TopologyState:
    """The graph plus the bookkeeping a snapshot needs; no I/O (fed records, returns snapshots)."""

    def __init__(self, rules: SlimeMoldRules, heartbeat_timeout_ms: int, epoch: str = "") -> None:
        self.graph = SlimeMoldGraph(rules)
        self.epoch = epoch
        self.rules = rules
        self.offsets: dict[tuple[str, int], int] = {}
        self.last_seen: dict[str, int] = {}
        self.roles: dict[str, str] = {}
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.counts: Counter[str] = Counter()
        # messages read before their sender's or recipient's join (joins and messages are
        # two topics, so a replay can read them in either order): absent agent -> messages
        self.held: dict[str, list[tuple[str, str, int]]] = {}
        self.held_count = 0
        # agents removed from the graph: name -> {reason: left | timeout, ts}; kept until
        # they join again (their counters in Redis are never reset)
        self.departed: dict[str, dict[str, Any]] = {}

    @property
    def membership_changes(self) -> int:
        return self.counts["joins"] + self.counts["leaves"]

    def apply(self, record: Record) -> str | None:
        """Apply one record; return a dead-letter reason for a bad topology event."""
        self.offsets[(record.topic, record.partition)] = record.offset + 1
        try:
            event = Envelope.decode(record.value)
        except InvalidEnvelope as exc:
            self.counts["invalid"] += 1
            # the recipient agent dead-letters bad messages; we own only the topology topic
            return str(exc) if record.topic == C.TOPIC_TOPOLOGY else None
        if record.topic == C.TOPIC_MESSAGES:
            self._reinforce(event.from_agent_id, event.to_agent_id, event.ts)
            return None
        agent = event.from_agent_id
        if event.type in (C.EVENT_JOINED, C.EVENT_HEARTBEAT):
            if self.graph.add_agent(agent):
                self.counts["joins"] += 1
                log.info("agent %s joined (%s)%s", agent, event.type,
                         " again: its edges start fresh" if self.departed.pop(agent, None) else "")
                self._release(agent)
            self.last_seen[agent] = max(event.ts, self.last_seen.get(agent, 0))
            self.roles[agent] = str(event.payload.get("role", self.roles.get(agent, "")))
        elif event.type == C.EVENT_LEFT:
            self._remove(agent, "left", event.ts)
        else:
            self.counts["invalid"] += 1
            return f"unknown topology event type {event.type!r}"
        return None

    def _reinforce(self, source: str, target: str, ts: int) -> None:
        if self.graph.reinforce(source, target, ts) is not None:
            self.counts["reinforcements"] += 1
            return
        absent = next((a for a in (source, target) if not self.graph.has_agent(a)), None)
        if absent is None or source == target or self.held_count >= MAX_HELD:
            self.counts["unrouted"] += 1
            return
        self.held.setdefault(absent, []).append((source, target, ts))
        self.held_count += 1

    def _release(self, agent: str) -> None:
        """Apply the messages that waited for `agent` to join, in their order."""
        waiting = self.held.pop(agent, [])
        self.held_count -= len(waiting)
        for source, target, ts in waiting:
            self._reinforce(source, target, ts)

    def _expire_held(self, now: int) -> None:
        for agent in list(self.held):
            kept = [m for m in self.held[agent] if now - m[2] <= self.heartbeat_timeout_ms]
            self.counts["unrouted"] += len(self.held[agent]) - len(kept)
            self.held_count -= len(self.held[agent]) - len(kept)
            if kept:
                self.held[agent] = kept
            else:
                del self.held[agent]

    def new_epoch(self, epoch: str) -> None:
        """The broker restarted empty: keep the graph and who was seen when, forget the
        offsets (the new topics are read from their beginning) and the held messages."""
        self.epoch = epoch
        self.offsets = {}
        self.counts["unrouted"] += self.held_count
        self.held, self.held_count = {}, 0

    def _remove(self, agent: str, reason: str, ts: int) -> None:
        if self.graph.remove_agent(agent):
            self.counts["leaves"] += 1
            self.departed[agent] = {"reason": reason, "ts": ts}
            log.info("agent %s removed: %s", agent, reason)
        self.last_seen.pop(agent, None)
        self.roles.pop(agent, None)

    def tick(self, now: int) -> int:
        """One decay interval: decay and prune, then drop agents whose heartbeats stopped."""
        pruned = self.graph.decay()
        self.counts["prunes"] += pruned
        self._expire_held(now)
        self.drop_silent(now)
        return pruned

    def drop_silent(self, now: int) -> list[str]:
        """Remove the agents whose heartbeats stopped `heartbeat_timeout_ms` ago."""
        silent = [agent for agent, seen in self.last_seen.items()
                  if now - seen > self.heartbeat_timeout_ms]
        for agent in silent:
            self._remove(agent, "timeout", now)
        return silent

    def snapshot(self, now: int) -> dict[str, Any]:
        return {
            "v": SNAPSHOT_VERSION,
            "ts": now,
            "epoch": self.epoch,
            "graph": self.graph.to_dict(),
            "offsets": offsets_to_json(self.offsets),
            "last_seen": self.last_seen,
            "roles": self.roles,
            "departed": self.departed,
            "held": [[s, t, ts] for msgs in self.held.values() for s, t, ts in msgs],
            "stats": self.graph.stats().as_dict(),
        }

    @classmethod
    def restore(cls, data: dict[str, Any], rules: SlimeMoldRules, timeout_ms: int) -> TopologyState:
        state = cls(rules, timeout_ms, str(data.get("epoch", "")))
        state.graph = SlimeMoldGraph.from_dict(data["graph"], rules)
        state.offsets = offsets_from_json(data.get("offsets", {}))
        state.last_seen = {k: int(v) for k, v in data.get("last_seen", {}).items()}
        state.roles = dict(data.get("roles", {}))
        state.departed = dict(data.get("departed", {}))
        for source, target, ts in data.get("held", []):
            state._reinforce(str(source), str(target), int(ts))
        return state


class TopologyManager:
    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        cfg = mesh.config
        self.cfg = cfg.topology
        self.rules = rules_from(cfg.topology)
        self.timeout_ms = int(cfg.heartbeat.interval * cfg.heartbeat.missed * 1000)
        self.stopping = False
        self._next_point = 0.0  # monotonic time of the next topology:history point

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: saving a last snapshot and stopping", signal.Signals(signum).name)
        self.stopping = True

    def _load(self, store: Any, epoch: str) -> TopologyState:
        data = store.load_snapshot()
        fresh = TopologyState(self.rules, self.timeout_ms, epoch)
        if not data:
            log.info("no snapshot: reading every partition from the beginning")
            return fresh
        try:
            state = TopologyState.restore(data, self.rules, self.timeout_ms)
        except (ValueError, KeyError, TypeError) as exc:
            # a snapshot we cannot read is not fatal: rebuild from the start of the topics
            log.error("snapshot unreadable (%s): rebuilding from the beginning", exc)
            return fresh
        if data.get("epoch") != epoch:
            # the broker restarted empty: the graph stands, its offsets mean nothing now
            log.info("snapshot is from an earlier broker (epoch %s, now %s): keeping its graph of "
                     "%d agents, reading the new topics from the beginning", data.get("epoch"),
                     epoch, len(state.graph))
            state.new_epoch(epoch)
            return state
        log.info("resumed from snapshot of %d agents, %d edges at offsets %s",
                 len(state.graph), state.graph.stats().edges, data.get("offsets"))
        return state

    def run(self) -> int:
        from agentmesh_cli.store import Store

        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        cfg = self.mesh.config
        store = Store(cfg.redis.resolved_url, cfg.mesh)
        epoch = wait_for_infra(cfg.kafka, store, OWNER)
        bus = Bus(cfg.kafka, client_id=OWNER)
        watch = BrokerWatch(bus, store, epoch)
        state = self._load(store, epoch)
        assignments = resume_assignments(cfg.kafka, (C.TOPIC_TOPOLOGY, C.TOPIC_MESSAGES), state.offsets)
        reader = Reader(cfg.kafka, f"{cfg.kafka.topic_prefix}.{OWNER}", assignments, OWNER,
                        fetch_wait=cfg.kafka.manager_fetch_wait)
        store.mark_ready(OWNER, os.getpid())
        log.info("ready: %d partitions assigned", len(assignments))
        next_decay = time.monotonic() + self.cfg.decay_interval
        next_liveness = time.monotonic() + LIVENESS_CHECK_S
        next_snapshot = time.monotonic() + self.cfg.snapshot_interval
        try:
            while not self.stopping:
                members_before = state.membership_changes
                for record in reader.poll_batch(max_records=2000, timeout=0.1):
                    reason = state.apply(record)
                    if reason:
                        bus.dead_letter(record, reason)
                        state.counts[C.COUNTER_DEAD] += 1
                now = time.monotonic()
                if (new_epoch := watch.check(now)) is not None:
                    state.new_epoch(new_epoch)
                    reader.rewind()
                    next_snapshot = now
                if state.membership_changes != members_before:
                    next_snapshot = now  # joins and leaves show up in status at once
                if now >= next_decay:
                    next_decay += self.cfg.decay_interval
                    state.tick(now_ms())
                elif now >= next_liveness:  # failure detection does not wait for the decay
                    next_liveness = now + LIVENESS_CHECK_S
                    state.drop_silent(now_ms())
                if now >= next_snapshot:
                    next_snapshot = now + self.cfg.snapshot_interval
                    self._save(store, state)
                bus.poll()
        finally:
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
            if time.monotonic() >= self._next_point:
                store.push_topology_point(history_point(snapshot), C.TOPOLOGY_HISTORY_KEPT)
                self._next_point = time.monotonic() + C.TOPOLOGY_HISTORY_EVERY_S
        except AgentMeshError as exc:
            log.warning("snapshot not saved, will retry: %s", exc)


def history_point(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The few numbers of a snapshot that `status` draws as the topology's trend."""
    stats = snapshot["stats"]
    return {"ts": snapshot["ts"], **{k: stats[k] for k in ("agents", "edges", "possible",
                                                            "reduction_percent")}}
