"""Consensus scenario: votes per second through the real consensus manager process, and
the latency from the deciding vote's send to the decision's broadcast, next to the raw
produce -> consume round trip on the same broker in the same run."""

from __future__ import annotations

import time
import uuid
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.bench.infra import bench_mesh, cpu_seconds, percentiles
from agentmesh_cli.bus import Bus, Reader, beginning, prepare_topics
from agentmesh_cli.envelope import Envelope, now_ms
from agentmesh_cli.store import Store

VOTERS = [f"V{i}" for i in range(5)]  # quorum 0.6 of 5: the 3rd support decides
RAW = "bench_raw"  # the baseline's probe records on the consensus topic


def _watcher(bench_mesh_: Any) -> Reader:
    return Reader(bench_mesh_.mesh.config.kafka, f"bench-watch-{uuid.uuid4().hex[:6]}",
                  [(C.TOPIC_CONSENSUS, 0, beginning())])


def _wait(reader: Reader, kind: str, want: set[str], timeout: float) -> None:
    """Read the consensus topic until every id in `want` has a `kind` event."""
    deadline = time.monotonic() + timeout
    while want:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(want)} {kind} events missing after {timeout:.0f}s")
        for record in reader.poll_batch(max_records=10_000, timeout=0.5):
            event = Envelope.decode(record.value)
            if event.type == kind:
                want.discard(event.payload["id"])


def _propose(bus: Bus, pid: str) -> None:
    # proposed as the operator's CLI: a proposer that never joined is a dead letter
    bus.send(C.TOPIC_PROPOSALS, Envelope(type=C.EVENT_PROPOSAL, from_agent_id=C.CLI_COUNTER_OWNER, payload={
        "proposal_id": pid, "type": "decision", "content": {"type": "approval"}}), key=pid)


def _vote(pid: str, voter: str) -> bytes:
    return Envelope(type=C.EVENT_VOTE, from_agent_id=voter,
                    payload={"proposal_id": pid, "support": True, "intensity": 0.8}).encode()


def run(proposals: int = 4000, samples: int = 300, **kafka: Any) -> dict[str, Any]:
    with bench_mesh(consensus={"proposal_timeout": "10m"}, kafka=kafka) as bm:
        cfg = bm.mesh.config
        store = Store(cfg.redis.resolved_url, cfg.mesh)
        prepare_topics(cfg.kafka, store)
        for voter in VOTERS:  # an electorate of five registered agents
            store.register_agent(voter, {"name": voter, "role": "bench", "last_heartbeat": now_ms()})
        manager = bm.spawn("consensus", name="consensus-manager")
        deadline = time.monotonic() + 30
        while store.ready_pid(C.PROGRAM_CONSENSUS) != manager.pid:
            if time.monotonic() > deadline or manager.poll() is not None:
                raise RuntimeError(f"consensus manager did not start; see {bm.root}/consensus-manager.log")
            time.sleep(0.05)
        bus = Bus(cfg.kafka, "bench")
        watcher = _watcher(bm)

        # throughput: open the proposals, then send 3 supporting votes each as fast as we can
        ids = [f"t{i}" for i in range(proposals)]
        for pid in ids:
            _propose(bus, pid)
        bus.flush()
        _wait(watcher, C.EVENT_OPENED, set(ids), 120)
        votes = [(pid, _vote(pid, voter)) for pid in ids for voter in VOTERS[:3]]
        load = Bus(cfg.kafka, "bench-load", linger_ms=5)  # a load generator batches
        broker = bm.procs[0]
        cpu_before, broker_before = cpu_seconds(manager.pid), cpu_seconds(broker.pid)
        started = time.perf_counter()
        for pid, value in votes:
            load.produce_raw(C.TOPIC_VOTES, value, key=pid)
        load.flush()
        produced = time.perf_counter() - started
        _wait(watcher, C.EVENT_DECIDED, set(ids), 300)
        elapsed = time.perf_counter() - started
        manager_cpu = cpu_seconds(manager.pid) - cpu_before
        broker_cpu = cpu_seconds(broker.pid) - broker_before

        # latency: two votes in, then time the deciding third one to its broadcast; the
        # baseline is interleaved: the same watcher, topic and broker state, one record
        # produced to the consensus topic and consumed (the physical limit of that hop)
        took: list[float] = []
        raw: list[float] = []
        for i in range(samples):
            pid = f"l{i}"
            _propose(bus, pid)
            bus.flush()
            _wait(watcher, C.EVENT_OPENED, {pid}, 30)
            for voter in VOTERS[:2]:
                bus.produce_raw(C.TOPIC_VOTES, _vote(pid, voter), key=pid)
            bus.flush()
            time.sleep(0.01)  # let the manager count them; not part of the measure
            probe = Envelope(type=RAW, from_agent_id="bench", payload={"id": pid})
            start = time.perf_counter()
            bus.send(C.TOPIC_CONSENSUS, probe)
            bus.flush()
            _wait(watcher, RAW, {pid}, 30)
            raw.append((time.perf_counter() - start) * 1000)
            deciding = _vote(pid, VOTERS[2])
            start = time.perf_counter()
            bus.produce_raw(C.TOPIC_VOTES, deciding, key=pid)
            bus.flush()
            _wait(watcher, C.EVENT_DECIDED, {pid}, 30)
            took.append((time.perf_counter() - start) * 1000)
        watcher.close()
        store.close()
        latency, baseline = percentiles(took), percentiles(raw)
        return {
            "scenario": "consensus",
            "proposals": proposals,
            "votes": len(votes),
            "votes_per_s": round(len(votes) / elapsed),
            "produce_s": round(produced, 3),
            "manager_cpu_share": round(manager_cpu / elapsed, 2),  # of one core, while voting
            "broker_cpu_share": round(broker_cpu / elapsed, 2),
            "decision_latency": latency,
            "raw_round_trip": baseline,
            "p99_over_raw_ms": round(latency["p99_ms"] - baseline["p99_ms"], 3),
            "p50_ratio_to_raw": round(latency["p50_ms"] / baseline["p50_ms"], 2),
            "fetch_wait_ms": {"agents": cfg.kafka.fetch_wait * 1000,
                              "managers": cfg.kafka.manager_fetch_wait * 1000},
        }
