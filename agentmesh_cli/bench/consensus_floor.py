"""The consensus scenario's floor: a bare Python loop (its own process, no framework) doing
the job of the manager at the least. It reads the same vote envelopes from a topic of its
own, decodes them with orjson, keeps the supporters of each proposal in a dict, and
produces a decision record as soon as a proposal has the supporters it needs. Measured
exactly as the manager is: votes/s from the first vote sent to the last decision read
back, and the deciding vote's send -> its decision read back.

The worker runs this module: `python -m agentmesh_cli.bench.consensus_floor floor-worker
'<json settings>'`.
"""

from __future__ import annotations

import json
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
from agentmesh_cli.bench.infra import cpu_seconds, percentiles
from agentmesh_cli.config import KafkaConfig
from agentmesh_cli.waiting import Deadline, wait_until

LOAD_LINGER_MS = 5.0  # the vote generator batches, as a load generator would
SETTLE_S = 0.01  # after the first votes of a latency sample: let them be counted
READY_TIMEOUT_S = 30.0
WAIT_TIMEOUT_S = 30.0  # one latency sample's decision
THROUGHPUT_TIMEOUT_S = 300.0  # every decision of the throughput run


def vote(pid: str, voter: str) -> bytes:
    """A supporting vote as an agent sends it; the baselines move records of its bytes."""
    return events.vote(voter, pid, True, 0.8).encode()


def wait_for(fetch: Callable[[], Iterable[bytes | None]], kind: str, want: set[str],
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


def _start_floor_worker(settings: dict[str, Any]) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "agentmesh_cli.bench.consensus_floor", "floor-worker",
               json.dumps(settings)]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)


def floor(kafka: KafkaConfig, proposals: int, samples: int, voters: list[str]) -> dict[str, Any]:
    """The floor worker on topics of its own (votes in, decisions out): votes/s over
    `proposals` x len(`voters`) supporting votes sent at once, and `samples` decision
    latencies, measured as the scenario measures the manager (same load producer, same
    reader fetch wait). `voters`: the supporters each proposal needs."""
    needed = len(voters)
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
            "needed": needed, "fetch_wait": kafka.manager_fetch_wait,
            "linger_ms": baselines.linger(kafka)})
        baselines._wait_ready(worker, "the consensus floor worker")
        ids = [f"t{i}" for i in range(proposals)]
        votes = [(pid, vote(pid, voter)) for pid in ids for voter in voters]
        cpu_before = cpu_seconds(worker.pid)
        started = time.perf_counter()
        for pid, value in votes:
            _produce(load, votes_topic, value, pid)
        load.flush(30)
        wait_for(fetch, C.EVENT_DECIDED, set(ids), THROUGHPUT_TIMEOUT_S)
        elapsed = time.perf_counter() - started
        worker_cpu = cpu_seconds(worker.pid) - cpu_before

        took: list[float] = []
        for i in range(samples):
            pid = f"l{i}"
            for voter in voters[:-1]:
                _produce(single, votes_topic, vote(pid, voter), pid)
            single.flush(10)
            time.sleep(SETTLE_S)  # as for the manager: the first votes are counted first
            deciding = vote(pid, voters[-1])
            start = time.perf_counter()
            _produce(single, votes_topic, deciding, pid)
            single.flush(10)
            wait_for(fetch, C.EVENT_DECIDED, {pid}, WAIT_TIMEOUT_S)
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


def main(argv: list[str]) -> int:
    return baselines.run_worker({"floor-worker": _floor_worker}, argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
