"""The topology scenario's load and its manager phase: the records agents write (joins and
messages, encoded as the runtime encodes them), and the real `agentmesh topology` process
draining a backlog of them next to the raw baseline, a plain consumer reading the same.

The manager is started, its agents' joins applied, then held with SIGSTOP while the backlog
is produced and raw reads it; its clock starts at SIGCONT. Its snapshots carry their time
and its read offsets: the rate is taken from the last snapshot saved while it was still
busy, so the snapshot interval does not blur it. bench/topology.py puts it in the scenario.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from typing import Any

import numpy as np

from agentmesh_cli import constants as C
from agentmesh_cli import events
from agentmesh_cli.bench.infra import BenchMesh, bench_mesh, cpu_seconds
from agentmesh_cli.bench.procs import wait_while_alive
from agentmesh_cli.broker import prepare_topics, topic_partitions
from agentmesh_cli.bus import Bus
from agentmesh_cli.signing import mesh_signer
from agentmesh_cli.store import Store

SNAPSHOT_INTERVAL_S = 0.05  # the manager's, in the drain: the resolution of its progress


def names_of(agents: int) -> list[str]:
    return [f"agent-{i:05d}" for i in range(agents)]


def message_values(names: list[str], count: int, seed: int = 7) -> list[tuple[str, bytes]]:
    """(recipient, encoded envelope) of `count` agent-to-agent messages as an agent sends
    them (Role.send: a payload, empty meta), between random distinct agents."""
    rng = np.random.default_rng(seed)
    sources = rng.integers(0, len(names), count)
    targets = (sources + rng.integers(1, len(names), count)) % len(names)
    base = time.time_ns()
    return [(names[t], events.message(names[s], names[t], "bench",
                                      {"run": "topology", "sent_ns": base + i, "hops": 0}).encode())
            for i, (s, t) in enumerate(zip(sources.tolist(), targets.tolist(), strict=True))]


def join_value(name: str) -> bytes:
    return events.presence(C.EVENT_JOINED, name, "bench", []).encode()


def _raw_read(bm: BenchMesh, total: int) -> dict[str, Any]:
    """A plain confluent-kafka consumer reading every messages partition from the start."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    kafka = bm.mesh.config.kafka
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap,
                         "group.id": f"bench-raw-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "socket.nagle.disable": True})
    topic = f"{kafka.topic_prefix}.{C.TOPIC_MESSAGES}"
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                         for p in range(topic_partitions(kafka, C.TOPIC_MESSAGES))])
        read = first = 0
        started = 0.0
        # more than a wait: it reads (and counts) every record, as fast as it can
        deadline = time.monotonic() + 120
        # batches small enough that a short run is not all in the first one (uncounted)
        batch = max(1, min(1000, total // 20))
        while read < total and time.monotonic() < deadline:
            read += sum(1 for m in consumer.consume(batch, 0.1) if m.error() is None)
            if read and not first:
                # the clock starts at the first batch: connecting and the first fetch are
                # not reading (the manager, held while connected, does not pay them either)
                first, started = read, time.perf_counter()
        took = time.perf_counter() - started
    finally:
        consumer.close()
    return {"records_per_s": round((read - first) / took) if read > first else 0,
            "records": read, "seconds": round(took, 3)}


def _read_offsets(snapshot: dict[str, Any] | None) -> int:
    """Records of `messages` the snapshot's offsets say were read (the topic starts at 0)."""
    offsets = (snapshot or {}).get("offsets", {}).get(C.TOPIC_MESSAGES, {})
    return sum(int(v) for v in offsets.values())


def manager_drain(events: int, agents: int, partitions: int, seed: int = 7) -> dict[str, Any]:
    sections: dict[str, Any] = {"topology": {"snapshot_interval": SNAPSHOT_INTERVAL_S},
                "heartbeat": {"interval": "10m"}, "kafka": {"partitions": partitions}}
    with bench_mesh(**sections) as bm:
        cfg = bm.mesh.config
        store = Store(bm.mesh.redis_url, cfg.mesh)
        prepare_topics(cfg.kafka, store)
        names = names_of(agents)
        # a load generator batches, and signs as the mesh's own writers do
        load = Bus(cfg.kafka, "bench-load", linger_ms=5, signer=mesh_signer(bm.mesh))
        for name in names:
            load.produce_raw(C.TOPIC_TOPOLOGY, join_value(name), key=name)
        load.flush()
        log = f"{bm.root}/topology-manager.log"
        manager = bm.spawn("topology", name=C.PROGRAM_TOPOLOGY)
        stopped = False
        try:
            wait_while_alive(lambda: store.counters(C.PROGRAM_TOPOLOGY).get("joins", 0) == agents,
                      f"the joins of {agents} agents", 60, manager, log)
            os.kill(manager.pid, signal.SIGSTOP)  # holds it while the backlog is written
            stopped = True
            for to, value in message_values(names, events, seed):
                load.produce_raw(C.TOPIC_MESSAGES, value, key=to,
                                 partition=C.inbox_partition(to, cfg.kafka.partitions))
            load.flush()
            raw = _raw_read(bm, events)
            cpu_before, broker_before = cpu_seconds(manager.pid), cpu_seconds(bm.procs[0].pid)
            started = time.time()
            os.kill(manager.pid, signal.SIGCONT)
            stopped = False
            busy: list[tuple[float, int]] = []  # (saved at, records read) while still reading

            def drained() -> float | None:
                """The time of the snapshot that holds every record; the busy ones noted."""
                snapshot = store.load_snapshot() or {}
                read, ts = _read_offsets(snapshot), snapshot.get("ts", 0) / 1000
                if ts > started and read >= events:
                    return float(ts)
                if ts > started and 0 < read and (not busy or busy[-1][0] != ts):
                    busy.append((ts, read))
                return None

            done_at = wait_while_alive(drained, "the manager's drain of the backlog", 300, manager, log,
                                interval=0.003)
            manager_cpu = cpu_seconds(manager.pid) - cpu_before
            broker_cpu = cpu_seconds(bm.procs[0].pid) - broker_before
            # the manager adds its counters right after it saves the snapshot: read them once
            # they hold what that snapshot says was read
            messages = C.records_counter(C.TOPIC_MESSAGES)

            def counted() -> dict[str, int] | None:
                found = store.counters(C.PROGRAM_TOPOLOGY)
                return found if found.get(messages, 0) >= events else None

            counters = wait_while_alive(counted, "the manager's counters of the backlog", 30, manager, log)
        finally:
            if stopped:
                os.kill(manager.pid, signal.SIGCONT)  # a stopped process cannot take its TERM
            store.close()
            del load  # its producer goes before the broker does (no "connection refused" lines)
        drain_s = done_at - started
        # the busy snapshots time the reading exactly; the last one (done) may be up to
        # one snapshot interval after the last record was applied
        if busy:
            rate_at, rate_read = busy[-1]
            per_s = rate_read / (rate_at - started)
        else:
            per_s = events / drain_s
        # between its first and last busy snapshots: reading only, as raw is timed
        steady = (busy[-1][1] - busy[0][1]) / (busy[-1][0] - busy[0][0]) if len(busy) > 2 else per_s
        return {
            "reinforcements_per_s": round(per_s),
            "steady_reinforcements_per_s": round(steady),
            "drain_s": round(drain_s, 3),
            "snapshots_while_busy": len(busy),
            "reinforcements": counters.get("reinforcements", 0),
            "records": counters.get(messages, 0),
            "cpu_share": round(manager_cpu / drain_s, 2),  # of one core
            "broker_cpu_share": round(broker_cpu / drain_s, 2),
            "raw": raw,
        }
