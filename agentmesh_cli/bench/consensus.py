"""Consensus scenario: votes per second through the real consensus manager process, and the
latency from the deciding vote's send to the decision's broadcast, next to two baselines
measured on the same broker in the same run:

- raw: a confluent-kafka producer -> consumer pair moving records of a vote's bytes
  (`baselines.raw_throughput`), and one such record produced and consumed at a time, with
  the fetch wait of the reader that watches the decisions (`baselines.raw_latency`);
- floor: a bare Python loop (its own process, no framework) doing the job of the manager
  at the least: it reads the same vote envelopes from a topic of its own, decodes them with
  orjson, keeps the supporters of each proposal in a dict, and produces a decision record
  as soon as 3 of the 5 voters have supported (quorum 0.6 of 5). Measured exactly as the
  manager is: votes/s from the first vote sent to the last decision read back, and the
  deciding vote's send -> its decision read back.

The baselines run first, before the manager starts, so that nothing else polls the broker
while they are measured (the manager polls it every 2 ms even when idle). The floor worker
runs this module: `python -m agentmesh_cli.bench.consensus floor-worker '<json settings>'`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from agentmesh_cli import constants as C
from agentmesh_cli import events
from agentmesh_cli.bench import baselines
from agentmesh_cli.bench.infra import BenchMesh, bench_mesh, cpu_seconds, percentiles, ratio
from agentmesh_cli.bench.procs import wait_while_alive
from agentmesh_cli.broker import prepare_topics
from agentmesh_cli.bus import Bus
from agentmesh_cli.config import KafkaConfig
from agentmesh_cli.envelope import now_ms
from agentmesh_cli.reader import Reader, beginning
from agentmesh_cli.signing import mesh_signer
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import Deadline, wait_until

VOTERS = [f"V{i}" for i in range(5)]  # quorum 0.6 of 5: the 3rd support decides
SUPPORTS_NEEDED = 3  # of VOTERS at the default quorum 0.6 (the manager's ProposalBook rule)
LOAD_LINGER_MS = 5.0  # the vote generator batches, as a load generator would
SETTLE_S = 0.01  # after the first two votes of a latency sample: let them be counted
READY_TIMEOUT_S = 30.0
WAIT_TIMEOUT_S = 30.0  # one latency sample's decision
THROUGHPUT_TIMEOUT_S = 300.0  # every decision of the throughput run
SHORT_RUN_S = 0.5  # a throughput run shorter than this gives a rate, not a steady one
FloorResult = dict[str, Any]


def _vote(pid: str, voter: str) -> bytes:
    """A supporting vote as an agent sends it; the baselines move records of its bytes."""
    return events.vote(voter, pid, True, 0.8).encode()


def _wait(fetch: Callable[[], Iterable[bytes | None]], kind: str, want: set[str],
          timeout: float) -> Counter[str]:
    """Read values from `fetch` until every proposal id in `want` has a `kind` event; the
    statuses of those events, counted. The manager's watcher and the floor's decode with
    orjson alike, so the reading side costs both the same."""
    statuses: Counter[str] = Counter()

    def seen_all() -> bool:
        for value in fetch():
            if not value:
                continue
            event = orjson.loads(value)
            pid = event["payload"].get("id")
            if event.get("type") == kind and pid in want:
                want.discard(pid)
                statuses[str(event["payload"].get("status"))] += 1
        return not want

    # no pause: `fetch` itself waits for records (up to its fetch timeout)
    if want:
        wait_until(seen_all, timeout, lambda: f"{len(want)} missing {kind} events", interval=0)
    return statuses


# the scenario: the real consensus manager --------------------------------------------
def _propose(bus: Bus, pid: str) -> None:
    # proposed as the operator's CLI: a proposer that never joined is a dead letter
    proposal = events.proposal(C.CLI_COUNTER_OWNER, pid, "decision", {"type": "approval"})
    bus.send(C.TOPIC_PROPOSALS, proposal, key=pid)


def _manager_run(bm: BenchMesh, proposals: int, samples: int) -> dict[str, Any]:
    """The consensus manager process on the bench mesh: throughput, then latency."""
    cfg = bm.mesh.config
    store = Store(bm.mesh.redis_url, cfg.mesh)
    signer = mesh_signer(bm.mesh)  # signed as the mesh's own writers sign, else refused
    bus = Bus(cfg.kafka, "bench", signer=signer)
    load = Bus(cfg.kafka, "bench-load", linger_ms=LOAD_LINGER_MS, signer=signer)
    watcher = Reader(cfg.kafka, f"bench-watch-{uuid.uuid4().hex[:6]}", [(C.TOPIC_CONSENSUS, 0, beginning())])

    def fetch() -> list[bytes | None]:
        return [record.value for record in watcher.poll_batch(max_records=10_000, timeout=0.5)]

    try:
        for voter in VOTERS:  # an electorate of five registered agents
            store.register_agent(voter, {"name": voter, "role": "bench", "last_heartbeat": now_ms()})
        manager = bm.spawn("consensus", name=C.PROGRAM_CONSENSUS)

        wait_while_alive(lambda: store.ready_pid(C.PROGRAM_CONSENSUS) == manager.pid,
                         "the consensus manager's start", READY_TIMEOUT_S, manager,
                         f"{bm.root}/consensus-manager.log", interval=0.05)

        # throughput: open the proposals, then send 3 supporting votes each as fast as we can
        ids = [f"t{i}" for i in range(proposals)]
        for pid in ids:
            _propose(bus, pid)
        bus.flush()
        _wait(fetch, C.EVENT_OPENED, set(ids), 120)
        votes = [(pid, _vote(pid, voter)) for pid in ids for voter in VOTERS[:SUPPORTS_NEEDED]]
        broker = bm.procs[0]
        cpu_before, broker_before = cpu_seconds(manager.pid), cpu_seconds(broker.pid)
        started = time.perf_counter()
        for pid, value in votes:
            load.produce_raw(C.TOPIC_VOTES, value, key=pid)
        load.flush()
        produced = time.perf_counter() - started
        statuses = _wait(fetch, C.EVENT_DECIDED, set(ids), THROUGHPUT_TIMEOUT_S)
        elapsed = time.perf_counter() - started
        manager_cpu = cpu_seconds(manager.pid) - cpu_before
        broker_cpu = cpu_seconds(broker.pid) - broker_before

        # latency: two votes in, then time the deciding third one to its broadcast
        took: list[float] = []
        for i in range(samples):
            pid = f"l{i}"
            _propose(bus, pid)
            bus.flush()
            _wait(fetch, C.EVENT_OPENED, {pid}, WAIT_TIMEOUT_S)
            for voter in VOTERS[:SUPPORTS_NEEDED - 1]:
                bus.produce_raw(C.TOPIC_VOTES, _vote(pid, voter), key=pid)
            bus.flush()
            time.sleep(SETTLE_S)  # let the manager count them; not part of the measure
            deciding = _vote(pid, VOTERS[SUPPORTS_NEEDED - 1])
            start = time.perf_counter()
            bus.produce_raw(C.TOPIC_VOTES, deciding, key=pid)
            bus.flush()
            statuses += _wait(fetch, C.EVENT_DECIDED, {pid}, WAIT_TIMEOUT_S)
            took.append((time.perf_counter() - start) * 1000)
    finally:
        watcher.close()
        store.close()
        bus.flush(5)
        load.flush(5)
        del bus, load  # their producers close before the broker stops (flushed: nothing holds them)
    return {
        "votes": len(votes),
        "votes_per_s": round(len(votes) / elapsed),
        "seconds": round(elapsed, 3),
        "produce_s": round(produced, 3),
        "manager_cpu_share": round(manager_cpu / elapsed, 2),  # of one core, while voting
        "broker_cpu_share": round(broker_cpu / elapsed, 2),
        "decision_latency": percentiles(took),
        "accepted": statuses["accepted"],
    }


# the floor: a bare loop doing the manager's job at the least ---------------------------
def _start_floor_worker(settings: dict[str, Any]) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "agentmesh_cli.bench.consensus", "floor-worker", json.dumps(settings)]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)


def floor(kafka: KafkaConfig, proposals: int, samples: int) -> dict[str, Any]:
    """The floor worker on topics of its own (votes in, decisions out): votes/s over
    `proposals` x 3 votes sent at once, and `samples` decision latencies, measured as the
    scenario measures the manager (same load producer, same reader fetch wait)."""
    votes_topic = baselines.create_topic(kafka, "consensus-votes")
    decided_topic = baselines.create_topic(kafka, "consensus-decided")
    # the clients a role of this mesh gets (settings of broker.client_config)
    load = baselines._producer(kafka, "bench-floor-load", LOAD_LINGER_MS)
    single = baselines._producer(kafka, "bench-floor-voter", baselines.linger(kafka))
    watcher = baselines._consumer(kafka, "bench-floor-watch", decided_topic, 0, kafka.fetch_wait)
    worker: subprocess.Popen[str] | None = None

    def fetch() -> list[bytes]:
        return baselines.poll_values(watcher, 10_000, 0.5)

    try:
        worker = _start_floor_worker({
            "kafka": kafka.model_dump(), "votes": votes_topic, "decided": decided_topic,
            "needed": SUPPORTS_NEEDED, "fetch_wait": kafka.manager_fetch_wait,
            "linger_ms": baselines.linger(kafka)})
        baselines._wait_ready(worker, "the consensus floor worker")
        ids = [f"t{i}" for i in range(proposals)]
        votes = [(pid, _vote(pid, voter)) for pid in ids for voter in VOTERS[:SUPPORTS_NEEDED]]
        cpu_before = cpu_seconds(worker.pid)
        started = time.perf_counter()
        for pid, value in votes:
            _produce(load, votes_topic, value, pid)
        load.flush(30)
        _wait(fetch, C.EVENT_DECIDED, set(ids), THROUGHPUT_TIMEOUT_S)
        elapsed = time.perf_counter() - started
        worker_cpu = cpu_seconds(worker.pid) - cpu_before

        took: list[float] = []
        for i in range(samples):
            pid = f"l{i}"
            for voter in VOTERS[:SUPPORTS_NEEDED - 1]:
                _produce(single, votes_topic, _vote(pid, voter), pid)
            single.flush(10)
            time.sleep(SETTLE_S)  # as for the manager: the first two votes are counted first
            deciding = _vote(pid, VOTERS[SUPPORTS_NEEDED - 1])
            start = time.perf_counter()
            _produce(single, votes_topic, deciding, pid)
            single.flush(10)
            _wait(fetch, C.EVENT_DECIDED, {pid}, WAIT_TIMEOUT_S)
            took.append((time.perf_counter() - start) * 1000)
        _produce(single, votes_topic, baselines.END, "end")
        single.flush(10)
        out, _ = worker.communicate(timeout=30)
        counted = json.loads(out)
    finally:
        watcher.close()
        load.flush(5)
        single.flush(5)
        if worker is not None:
            baselines._stop(worker)
        baselines.delete_topic(kafka, votes_topic)
        baselines.delete_topic(kafka, decided_topic)
    return {
        "votes_per_s": round(len(votes) / elapsed),
        "votes": len(votes),
        "seconds": round(elapsed, 3),
        "cpu_share": round(worker_cpu / elapsed, 2),  # of one core, while voting
        "decision_latency": percentiles(took),
        "decisions": counted["decisions"],
        "votes_counted": counted["votes"],
        "fetch_wait_ms": kafka.manager_fetch_wait * 1000,
        "decision_bytes": counted["decision_bytes"],
    }


def _produce(producer: Any, topic: str, value: bytes, key: str) -> None:
    try:
        producer.produce(topic, value, key=key.encode(), partition=0)
    except BufferError:  # the local queue is full: let the broker catch up, then once more
        producer.poll(0.5)
        producer.produce(topic, value, key=key.encode(), partition=0)
    producer.poll(0)


def _floor_worker(settings: dict[str, Any]) -> None:
    """Worker: one bare loop. It reads the votes topic, decodes every vote with orjson, adds
    a supporting voter to its proposal's set, and produces a decision envelope when the set
    reaches `needed`; later votes of a decided proposal are ignored. Ends on baselines.END
    and prints {votes, decisions, decision_bytes}."""
    kafka = KafkaConfig(**settings["kafka"])
    votes_topic, decided_topic, needed = settings["votes"], settings["decided"], settings["needed"]
    consumer = baselines._consumer(kafka, "bench-consensus-floor", votes_topic, 0, settings["fetch_wait"])
    producer = baselines._producer(kafka, "bench-consensus-floor", settings["linger_ms"])
    supporters: dict[str, set[str]] = {}
    decided: set[str] = set()
    votes = decisions = size = 0
    base = uuid.uuid4().hex[:23]  # ids as long as a uuid4, unique without its cost per record
    try:
        if not baselines.worker_ready(producer, consumer, votes_topic, 0):
            return
        # the worker's own loop (its work, bounded by a deadline in case END never comes)
        deadline = Deadline(READY_TIMEOUT_S + THROUGHPUT_TIMEOUT_S + 600)
        while not deadline.passed():
            for value in baselines.poll_values(consumer, 5000, 0.1):
                if value == baselines.END:
                    print(json.dumps({"votes": votes, "decisions": decisions, "decision_bytes": size}),
                          flush=True)
                    return
                data = orjson.loads(value)
                payload = data["payload"]
                votes += 1
                pid = payload["proposal_id"]
                if not payload["support"] or pid in decided:
                    continue
                voters = supporters.setdefault(pid, set())
                voters.add(data["from_agent_id"])  # one counted vote per voter
                if len(voters) >= needed:
                    decided.add(pid)
                    del supporters[pid]
                    decision = orjson.dumps({
                        "v": 1, "id": f"{base}-{decisions:012x}", "type": C.EVENT_DECIDED,
                        "from_agent_id": "consensus-floor", "to_agent_id": "",
                        "ts": time.time_ns() // 1_000_000,
                        "payload": {"id": pid, "status": "accepted", "for": len(voters), "needed": needed},
                        "meta": {}})
                    producer.produce(decided_topic, decision, key=pid.encode(), partition=0)
                    decisions += 1
                    size = len(decision)
            producer.poll(0)
    finally:
        consumer.close()
        producer.flush(1)


# the run ------------------------------------------------------------------------------


def run(proposals: int = 4000, samples: int = 300, **kafka: Any) -> dict[str, Any]:
    """The consensus scenario and its baselines, in the bench result shape (cli/bench.py)."""
    load_start = [round(x, 2) for x in os.getloadavg()]
    value = _vote("t0", VOTERS[0])
    raw_seconds = min(2.0, max(0.5, proposals / 2000))  # about as long as the manager's run
    with bench_mesh(consensus={"proposal_timeout": "10m"}, kafka=kafka) as bm:
        cfg = bm.mesh.config
        store = Store(bm.mesh.redis_url, cfg.mesh)
        try:
            prepare_topics(cfg.kafka, store)
        finally:
            store.close()
        raw = {"throughput": baselines.raw_throughput(cfg.kafka, raw_seconds, value=value),
               "one_hop": baselines.raw_latency(cfg.kafka, max(20, samples), value=value)}
        floor_figures = floor(cfg.kafka, proposals, samples)
        scenario = _manager_run(bm, proposals, samples)
    latency = scenario["decision_latency"]
    figures = {
        "votes_per_s": scenario["votes_per_s"],
        "decision_latency": latency,
        "votes": scenario["votes"],
        "proposals": proposals,
        "accepted": scenario["accepted"],
        "seconds": scenario["seconds"],
        "produce_s": scenario["produce_s"],
        "manager_cpu_share": scenario["manager_cpu_share"],
        "broker_cpu_share": scenario["broker_cpu_share"],
    }
    notes = [
        f"load average {load_start} at start, {[round(x, 2) for x in os.getloadavg()]} at end "
        f"({os.cpu_count()} cores: figures move with what else runs)",
        "the issue names no numeric target for consensus: targets is empty; the ratios to raw "
        "and floor are the yardstick",
        f"a decision takes two hops (vote -> manager, fetch wait {cfg.kafka.manager_fetch_wait * 1000:g} ms; "
        f"decision -> reader, fetch wait {cfg.kafka.fetch_wait * 1000:g} ms); raw one_hop is one hop "
        "with the reader's fetch wait, so decision_p50_to_raw cannot be below about 1",
        f"floor: one bare loop reading the votes from a topic of its own (fetch wait "
        f"{floor_figures['fetch_wait_ms']:g} ms, as the manager's), keeping supporters per proposal "
        f"and producing a {floor_figures['decision_bytes']}-byte decision at {SUPPORTS_NEEDED} of "
        f"{len(VOTERS)}; no opening, no electorate, no Redis; measured as the manager is",
        "raw and floor ran before the manager started, so nothing else polled the broker meanwhile",
    ]
    if scenario["accepted"] != proposals + samples:
        notes.append(f"only {scenario['accepted']} of {proposals + samples} proposals were decided "
                     "accepted (all get 3 supporting votes of 5)")
    if scenario["seconds"] < SHORT_RUN_S:
        notes.append(f"the throughput run took {scenario['seconds'] * 1000:.0f} ms: too short for a "
                     "steady rate or CPU shares (ticks of 10 ms); use more --proposals for figures")
    return {
        "scenario": "consensus",
        "settings": {"proposals": proposals, "samples": samples, "voters": len(VOTERS),
                     "quorum": cfg.consensus.quorum, "supports_needed": SUPPORTS_NEEDED,
                     "vote_bytes": len(value), "load_linger_ms": LOAD_LINGER_MS,
                     "raw_seconds": raw_seconds,
                     "fetch_wait_ms": {"agents": cfg.kafka.fetch_wait * 1000,
                                       "managers": cfg.kafka.manager_fetch_wait * 1000}},
        "figures": figures,
        "raw": raw,
        "floor": floor_figures,
        "ratios": {
            "votes_per_s_to_floor": ratio(figures["votes_per_s"], floor_figures["votes_per_s"]),
            "votes_per_s_to_raw": ratio(figures["votes_per_s"], raw["throughput"]["records_per_s"]),
            "decision_p50_to_raw": ratio(latency["p50_ms"], raw["one_hop"]["p50_ms"]),
            "decision_p50_to_floor": ratio(latency["p50_ms"], floor_figures["decision_latency"]["p50_ms"]),
        },
        "targets": {},
        "notes": notes,
    }


def main(argv: list[str]) -> int:
    return baselines.run_worker({"floor-worker": _floor_worker}, argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
