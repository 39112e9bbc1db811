"""The two baselines every bench scenario stands next to, measured on the scenario's own
broker in the same run:

- raw: a confluent-kafka producer -> consumer pair moving records of the same bytes, the
  physical limit of the broker and the client library (`raw_throughput`), and one record
  produced and consumed at a time, the physical one-hop latency (`raw_latency`);
- floor: bare Python loops doing the scenario's job with no framework; the mesh's is
  bench/mesh_floor.py (on the helpers here: clients, topics, worker processes, polls).

Each baseline creates its own topics (named `bench.baseline.<kind>-<tag>`, so a running
mesh's topics are never touched), deletes them after, and stops every process it started.
The raw consumer runs this module: `python -m agentmesh_cli.bench.baselines raw-consumer
'<json settings>'`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from agentmesh_cli import environment
from agentmesh_cli.bench.infra import percentiles
from agentmesh_cli.config import KafkaConfig
from agentmesh_cli.constants import AGENT_LINGER_MS
from agentmesh_cli.errors import BenchError, WaitTimeout
from agentmesh_cli.signing import Signer
from agentmesh_cli.waiting import Deadline, wait_until

TOPIC_PREFIX = "bench.baseline."
END = b"bench-baseline-end"  # the raw producer's last record: the consumer stops on it
READY_TIMEOUT_S = 30.0  # a worker that is not fetching by then failed to start
DEFAULT_VALUE = b"x" * 100
# noida-db ignores a fetch's byte limits and answers a lagging consumer with all it has
# from the offset (251 MB seen in the raw phase): past librdkafka's 100 MB default the
# consumer fails on every fetch. A baseline consumer takes answers this large.
RECEIVE_MAX_BYTES = 1_000_000_000


# clients and topics -------------------------------------------------------------------
def _client(kafka: KafkaConfig, client_id: str) -> dict[str, Any]:
    # the settings every agentmesh client uses (broker.client_config), so that a baseline
    # differs from a role by the framework only, never by the socket settings
    settings = environment.expand_all(kafka.client, "kafka.client")
    return {"bootstrap.servers": kafka.bootstrap, "client.id": client_id,
            "socket.nagle.disable": True, "log_level": 5, **settings}


def linger(kafka: KafkaConfig) -> float:
    """The `linger.ms` an agent's producer gets: mesh.yaml `kafka.client`, else the runtime's."""
    return float(kafka.client.get("linger.ms", AGENT_LINGER_MS))


def _producer(kafka: KafkaConfig, client_id: str, linger_ms: float) -> Producer:
    return Producer({**_client(kafka, client_id), "linger.ms": linger_ms,
                     "enable.idempotence": False, "allow.auto.create.topics": False,
                     "queue.buffering.max.messages": 1_000_000})


def _consumer_config(kafka: KafkaConfig, client_id: str, fetch_wait: float | None = None) -> dict[str, Any]:
    wait = kafka.fetch_wait if fetch_wait is None else fetch_wait
    return {**_client(kafka, client_id), "group.id": f"{client_id}-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "enable.partition.eof": False, "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": max(1, round(wait * 1000)), "receive.message.max.bytes": RECEIVE_MAX_BYTES}


def _consumer(kafka: KafkaConfig, client_id: str, topic: str, partition: int,
              fetch_wait: float | None = None) -> Consumer:
    """Manually assigned from the beginning, like every agentmesh reader (no group joins)."""
    consumer = Consumer(_consumer_config(kafka, client_id, fetch_wait))
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
    return consumer


def create_topic(kafka: KafkaConfig, kind: str, partitions: int = 1, timeout: float = 10.0) -> str:
    """A fresh baseline topic (the embedded broker's fetches slow down as a topic grows, so
    every baseline starts on an empty one); returns its name."""
    name = f"{TOPIC_PREFIX}{kind}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(_client(kafka, "bench-baseline-admin"))
    futures = admin.create_topics([NewTopic(name, partitions, 1)], operation_timeout=timeout,
                                  request_timeout=timeout)
    futures[name].result(timeout=timeout)
    return name


def delete_topic(kafka: KafkaConfig, name: str, timeout: float = 10.0) -> None:
    """Best effort: a broker that cannot delete keeps a small dead topic, nothing worse."""
    admin = AdminClient(_client(kafka, "bench-baseline-admin"))
    with suppress(Exception):
        admin.delete_topics([name], operation_timeout=timeout, request_timeout=timeout)[name].result(timeout)


def _start_worker(kind: str, settings: dict[str, Any], module: str = "agentmesh_cli.bench.baselines"
                  ) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", module, kind, json.dumps(settings)]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _wait_ready(proc: subprocess.Popen[str], what: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the worker writes "ready" once it is fetching, or dies
    if line.strip() != "ready":
        raise BenchError(f"{what} did not start (exit code {proc.poll()}, said {line.strip()!r})")


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stop a worker we started, by its pid (it ends by itself when all went well)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    for pipe in (proc.stdin, proc.stdout):  # (communicate closed a worker's; a fetcher's are open)
        if pipe is not None:
            pipe.close()


# raw ------------------------------------------------------------------------------------
def raw_throughput(kafka: KafkaConfig, seconds: float = 2.0, value: bytes = DEFAULT_VALUE,
                   topic: str | None = None) -> dict[str, Any]:
    """A producer (this process, batched as a perf tool would: linger 5 ms) and a consumer
    (its own process) moving `value` records for `seconds`: records/s from the first
    record produced to the last one consumed."""
    name = topic or create_topic(kafka, "raw")
    consumer = _start_worker("raw-consumer", {"kafka": kafka.model_dump(), "topic": name})
    try:
        producer = _producer(kafka, "bench-raw-producer", linger_ms=5)
        producer.produce(name, b"warm-up", partition=0)  # the consumer says ready on it
        producer.flush(10)
        _wait_ready(consumer, "the raw consumer")
        records = 0
        started_ns = time.time_ns()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for _ in range(1000):
                try:
                    producer.produce(name, value, partition=0)
                except BufferError:  # the local queue is full: let the broker catch up
                    producer.poll(0.001)
                    continue
                records += 1
            producer.poll(0)
        producer.produce(name, END, partition=0)
        producer.flush(30)
        out, _ = consumer.communicate(timeout=60)
        got = json.loads(out)
    finally:
        _stop(consumer)
        if topic is None:
            delete_topic(kafka, name)
    elapsed = max(1e-9, (got["last_ns"] - started_ns) / 1e9)
    return {"records_per_s": round(got["records"] / elapsed), "mb_per_s": round(
        got["records"] * len(value) / elapsed / 1e6, 1), "records": got["records"],
        "produced": records, "value_bytes": len(value), "seconds": round(elapsed, 3)}


def raw_latency(kafka: KafkaConfig, samples: int = 300, value: bytes = DEFAULT_VALUE,
                fetch_wait: float | None = None) -> dict[str, Any]:
    """One record produced (no lingering) and consumed by a consumer that is already
    assigned and fetching, one at a time: the physical one-hop latency, with the agents'
    `fetch_wait` unless told otherwise (the embedded broker answers a waiting fetch only
    when the wait ends, so the wait decides most of this figure)."""
    name = create_topic(kafka, "latency")
    wait = kafka.fetch_wait if fetch_wait is None else fetch_wait
    producer = _producer(kafka, "bench-latency-producer", linger_ms=0)
    consumer = _consumer(kafka, "bench-latency-consumer", name, 0, wait)
    took: list[float] = []
    try:
        for i in range(samples + 1):  # the first one warms the consumer up, not counted
            started = time.perf_counter()
            producer.produce(name, value, partition=0)
            producer.poll(0)
            # no pause: the poll itself waits for the record
            wait_until(lambda: (msg := consumer.poll(0.5)) is not None and msg.error() is None, 10,
                       f"raw latency: record {i} to be consumed", interval=0)
            if i:
                took.append((time.perf_counter() - started) * 1000)
        producer.flush(5)
    finally:
        consumer.close()
        delete_topic(kafka, name)
    return {**percentiles(took), "samples": len(took), "fetch_wait_ms": wait * 1000,
            "value_bytes": len(value)}


def _raw_consumer(settings: dict[str, Any]) -> None:
    """Worker: count records until END; print {records, last_ns}."""
    kafka = KafkaConfig(**settings["kafka"])
    consumer = _consumer(kafka, "bench-raw-consumer", settings["topic"], 0)
    records, ready = 0, False
    # the worker's own loop (it counts what it reads), bounded in case END never comes
    deadline = Deadline(READY_TIMEOUT_S + 600)
    try:
        while not deadline.passed():
            for msg in consumer.consume(10_000, 0.1):
                if msg.error() is not None:
                    continue
                if not ready:  # the warm-up record: we are fetching
                    ready = True
                    print("ready", flush=True)
                    continue
                if msg.value() == END:
                    print(json.dumps({"records": records, "last_ns": time.time_ns()}), flush=True)
                    return
                records += 1
    finally:
        consumer.close()


# what the floors' workers share -------------------------------------------------------
def poll_values(consumer: Consumer, max_records: int, timeout: float) -> list[bytes]:
    """The values of what is fetched: up to `timeout` for the first record, then what is
    already there (as reader.Reader.poll_batch reads); errors and empty records left out."""
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [value for msg in (first, *consumer.consume(max_records - 1, 0))
            if msg.error() is None and (value := msg.value()) is not None]


def poll_checked(consumer: Consumer, max_records: int, timeout: float, signer: Signer) -> list[bytes]:
    """poll_values, keeping only the records whose signature checks (Reader's check)."""
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [value for msg in (first, *consumer.consume(max_records - 1, 0))
            if msg.error() is None and (value := msg.value()) is not None
            and signer.check(msg.topic() or "", value, msg.headers()) is None]


def worker_ready(producer: Producer, consumer: Consumer, topic: str, partition: int) -> bool:
    """A worker's start: a record to its own partition, read back (so the producer and the
    consumer are both connected and fetching), then "ready" on stdout for the parent.
    False when it did not come back within READY_TIMEOUT_S."""
    producer.produce(topic, b"hello", partition=partition)
    producer.flush(10)
    try:
        wait_until(lambda: (msg := consumer.poll(0.1)) is not None and msg.error() is None,
                   READY_TIMEOUT_S, "the worker's own record", interval=0)
    except WaitTimeout:
        return False
    print("ready", flush=True)
    return True


def run_worker(workers: dict[str, Callable[[dict[str, Any]], None]], argv: list[str]) -> int:
    """The entry of a worker process: `<kind> '<json settings>'`; its exit code."""
    kind, settings = argv[0], json.loads(argv[1])
    if kind not in workers:
        print(f"unknown worker {kind!r}; use {' or '.join(workers)}", file=sys.stderr)
        return 2
    try:
        workers[kind](settings)
    except (KafkaException, BrokenPipeError) as exc:
        print(f"{kind}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    return run_worker({"raw-consumer": _raw_consumer}, argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
