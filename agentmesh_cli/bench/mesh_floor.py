"""The mesh's floor: bare Python loops, separate OS processes like agents, that receive the
scenario's JSON envelope, decode it with orjson, check its signature when the mesh signs,
and pass a copy on to the other loops in turn, with no framework, no Redis, no ledger: the
best a Python agent could do (`floor`, beside `bench mesh`). Each loop fetches its own
partition, or, for a mesh of `kafka.inbox_reader: host`, one bare fetching loop reads for
all of them (bench/host_floor.py), as the mesh's architecture does.

The floor creates its own topic (baselines.create_topic), deletes it after, and stops every
process it started. The workers run this module: `python -m agentmesh_cli.bench.mesh_floor
floor-worker|floor-fetcher '<json settings>'`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import orjson

from agentmesh_cli import events
from agentmesh_cli.bench import baselines
from agentmesh_cli.bench.host_floor import SocketSource, fetcher, loop_key, loop_ready
from agentmesh_cli.bench.infra import percentiles
from agentmesh_cli.config import KafkaConfig
from agentmesh_cli.errors import BenchError
from agentmesh_cli.signing import Signer

MODULE = "agentmesh_cli.bench.mesh_floor"
FLOOR_WARMUP_S = 0.5  # the floor loops run this long before their counted window
FLOOR_HOPS = 10**9  # hops of a floor message: it circulates for the whole run
# the floor's loops sign and check as a signing mesh does (`sign`): a throwaway key, public
# on purpose (what is measured is the cost of an HMAC per record, not a secret)
FLOOR_SIGNING_KEY = b"agentmesh-bench-floor"


def default_envelope() -> bytes:
    """An envelope shaped like the mesh scenario's (type, two agent names, a run id, a send
    time and a hop count); scenarios pass their own when their records differ."""
    return events.message("floor-0", "floor-1", "bench", {
        "run": uuid.uuid4().hex[:12], "sent_ns": time.time_ns(), "hops": FLOOR_HOPS}).encode()


def floor(kafka: KafkaConfig, seconds: float = 2.0, loops: int = 2, window: int = 100,
          envelope: bytes | None = None, linger_ms: float | None = None,
          fetch_wait: float | None = None, sign: bool = False, host: bool = False,
          partitions: int | None = None) -> dict[str, Any]:
    """`loops` bare loops (processes) passing the envelope on, each to
    the others in turn (the relays' traffic: a loop's sends spread over every other
    partition, and every partition costs the broker a produce request per flush), each
    loop keeping `window` messages in flight: replies/s of all loops together over
    `seconds` (after a short warm-up) and the latency of a hop (sent -> decoded).

    The loops use the clients' settings an agent of this mesh gets (`linger.ms` from
    `kafka.client`, else 0 as the agents' Bus; `kafka.fetch_wait`), so the floor differs
    from an agent by the framework only; `linger_ms` / `fetch_wait` override them. `sign`:
    each record is signed and each one read checked, as in a mesh that signs (the default).
    `host`: the architecture of `kafka.inbox_reader: host`, one fetching loop for all
    (bench/host_floor.py); else each loop fetches its own partition. `partitions`: of the
    floor topic, one per loop when None; fewer (loop n on partition n % partitions) only
    with `host`, whose fetcher hands each loop the records keyed to it, as the host's inbox
    reader does for agents that share a partition."""
    if loops < 2:
        raise BenchError("the floor needs at least 2 loops")
    partitions = partitions or loops
    if partitions < loops and not host:
        raise BenchError(f"{loops} loops that fetch for themselves need {loops} partitions "
                         f"(got {partitions})")
    template = envelope or default_envelope()
    name = baselines.create_topic(kafka, "floor", partitions=partitions)
    workers: list[subprocess.Popen[str]] = []
    fetchers: list[subprocess.Popen[str]] = []  # the host architecture's one
    folder = tempfile.mkdtemp(prefix="agentmesh-floor-") if host else None
    via = None if folder is None else os.path.join(folder, "s")
    try:
        if via is not None:
            fetchers.append(baselines._start_worker("floor-fetcher", {
                "kafka": kafka.model_dump(), "topic": name, "loops": loops, "partitions": partitions,
                "path": via, "fetch_wait": fetch_wait, "max_s": seconds + FLOOR_WARMUP_S + 90}, MODULE))
            baselines._wait_ready(fetchers[0], "the floor's fetcher")
        for i in range(loops):
            workers.append(baselines._start_worker("floor-worker", {
                "kafka": kafka.model_dump(), "topic": name, "me": i, "partitions": partitions,
                "peers": [j for j in range(loops) if j != i], "window": window,
                "seconds": seconds, "warmup": FLOOR_WARMUP_S, "template": template.decode(),
                "linger_ms": baselines.linger(kafka) if linger_ms is None else linger_ms,
                "fetch_wait": fetch_wait, "sign": sign, "via": via}, MODULE))
        for worker in workers:
            baselines._wait_ready(worker, "a floor loop")
        for worker in workers:  # all go at once; each counts its own window
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = [json.loads(worker.communicate(timeout=seconds + 60)[0]) for worker in workers]
    finally:
        for worker in [*workers, *fetchers]:
            baselines._stop(worker)
        baselines.delete_topic(kafka, name)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    replies = sum(r["replies"] for r in results)
    hops_ms = [us / 1000 for r in results for us in r["latencies_us"]]
    cpu = sum(r["cpu_s"] for r in results)
    return {"replies_per_s": round(replies / seconds), "replies": replies,
            "linger_ms": baselines.linger(kafka) if linger_ms is None else linger_ms,
            "fetch_wait_ms": (kafka.fetch_wait if fetch_wait is None else fetch_wait) * 1000,
            "latency": percentiles(hops_ms) if hops_ms else {},
            "cpu_share": round(cpu / seconds, 2),  # of one core, all loops together
            "cpu_us_per_reply": round(cpu / max(1, replies) * 1e6, 1),
            "loops": loops, "partitions": partitions, "window": window, "envelope_bytes": len(template),
            "seconds": seconds, "signed": sign,
            "fetching": "one fetcher for all loops" if host else "each loop its own"}


def _floor_worker(settings: dict[str, Any]) -> None:
    """Worker: one bare loop. It reads its records (its own partition, or what the fetcher
    hands it), decodes every record with orjson, takes the hop's latency from
    `payload.sent_ns`, and passes on a copy with a fresh id and send time to the next of its
    peers in turn: what an agent must do at the least."""
    kafka = KafkaConfig(**settings["kafka"])
    topic, me, peers = settings["topic"], settings["me"], settings["peers"]
    partitions = settings.get("partitions") or len(peers) + 1
    name, mine = f"floor-{me}", me % partitions
    # (partition, recipient, key) of each peer, taken in turn
    targets = [(p % partitions, f"floor-{p}", loop_key(p)) for p in peers]
    turn = 0
    template = orjson.loads(settings["template"])
    # an id as long as a uuid4 (36 characters), unique without uuid4's cost per message
    base = uuid.uuid4().hex[:23]
    producer = baselines._producer(kafka, f"bench-floor-{me}", linger_ms=settings["linger_ms"])
    signer = Signer(FLOOR_SIGNING_KEY) if settings.get("sign") else None
    # its records handed over by the one fetcher (`via`, the host architecture), or fetched itself
    source = None if settings.get("via") is None else SocketSource(settings["via"], me, topic, signer)
    consumer = None if source is not None else baselines._consumer(kafka, f"bench-floor-{me}", topic, mine,
                                                         settings["fetch_wait"])

    def poll() -> list[bytes]:
        if source is not None:
            return source.poll(500, 0.1)
        assert consumer is not None
        if signer is None:
            return baselines.poll_values(consumer, 500, 0.1)
        return baselines.poll_checked(consumer, 500, 0.1, signer)

    def send(n: int, hops: int) -> None:
        nonlocal turn
        partition, recipient, key = targets[turn]
        turn = (turn + 1) % len(targets)
        value = orjson.dumps({
            **template, "id": f"{base}-{n:012x}", "from_agent_id": name, "to_agent_id": recipient,
            "ts": time.time_ns() // 1_000_000,
            "payload": {**template["payload"], "sent_ns": time.time_ns(), "hops": hops}})
        extra: dict[str, Any] = {} if signer is None else {"headers": signer.headers(topic, value)}
        producer.produce(topic, value, key=key, partition=partition, **extra)

    try:
        if consumer is not None:
            ready = baselines.worker_ready(producer, consumer, topic, mine)
        else:
            ready = source is not None and loop_ready(producer, source, topic, mine, me, signer,
                                                      baselines.READY_TIMEOUT_S)
        if not ready:
            return
        sys.stdin.readline()  # "go"
        sent = 0
        for _ in range(settings["window"]):
            send(sent, FLOOR_HOPS)
            sent += 1
        producer.poll(0)
        start = time.monotonic() + settings["warmup"]
        end = start + settings["seconds"]
        counting, replies, latencies, cpu_start = False, 0, [], 0.0
        while (now := time.monotonic()) < end:
            if not counting and now >= start:
                counting, cpu_start = True, time.process_time()
            batch = poll()
            for value in batch:
                data = orjson.loads(value)
                payload = data["payload"]
                if counting:
                    latencies.append((time.time_ns() - payload["sent_ns"]) // 1000)
                send(sent, payload["hops"] - 1)
                sent += 1
                if counting:
                    replies += 1
            if batch:
                # the batch's replies leave now in one request, as an agent's settle step
                # sends what its handlers sent (with linger, they would wait for it)
                producer.flush(10)
        cpu = time.process_time() - cpu_start
        print(json.dumps({"replies": replies, "latencies_us": latencies, "cpu_s": cpu}), flush=True)
    finally:
        if consumer is not None:
            consumer.close()
        if source is not None:
            source.close()
        # what is still on its way once the run is counted matters to nobody: dropped, not
        # waited for (at 128 loops a second was not enough, and librdkafka warned of it)
        producer.purge()
        producer.flush(1)


def _floor_fetcher(settings: dict[str, Any]) -> None:
    """Worker: the host architecture's one fetching loop (bench/host_floor.py)."""
    kafka = KafkaConfig(**settings["kafka"])
    fetcher(settings, baselines._consumer_config(kafka, "bench-floor-fetcher", settings["fetch_wait"]))


def main(argv: list[str]) -> int:
    return baselines.run_worker({"floor-worker": _floor_worker, "floor-fetcher": _floor_fetcher}, argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
