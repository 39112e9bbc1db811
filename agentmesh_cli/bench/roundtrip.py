"""The raw baseline of `agentmesh bench ask`: a request/reply round trip through the broker
with bare confluent-kafka clients and no framework, at the agents' fetch wait.

The bench process produces a request to one partition; the echo worker (its own process,
as the answering agent is) reads it and at once produces the same bytes as the reply to
another; the bench process reads the reply. One at a time: the physical round-trip
latency. No producer lingers (a lone record leaves at once); both consumers fetch with
`kafka.fetch_wait` (the embedded broker answers a waiting fetch only when its wait ends, so
the wait decides most of the figure). The partitions may be two of the agents' own topic
that no agent reads: the embedded broker's fetches slow down as a topic grows, so the
baseline then sees the topic the agents see. The worker:

    python -m agentmesh_cli.bench.roundtrip echo '<json settings>'
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from types import TracebackType
from typing import Any

from agentmesh_cli.bench import baselines
from agentmesh_cli.bench.infra import percentiles
from agentmesh_cli.config import KafkaConfig
from agentmesh_cli.waiting import Deadline, wait_until

WARMUP = 5  # round trips not counted at the start of each measurement (the agents' asker too)
REPLY_TIMEOUT_S = 10.0


class RawRoundTrip:
    """The echo worker and the bench's two clients, kept for several measurements (so that
    they interleave with the agents' rounds); `with RawRoundTrip(...) as raw: raw.measure(n)`."""

    def __init__(self, kafka: KafkaConfig, value: bytes, topic: str | None = None,
                 partitions: tuple[int, int] = (0, 1)) -> None:
        """`topic` (full name) and its `partitions` (requests, replies); by default a topic
        of its own, deleted after."""
        self.kafka, self.value = kafka, value
        self.requests, self.replies = partitions
        self._own = topic is None
        self.topic = baselines.create_topic(kafka, "roundtrip", partitions=2) if topic is None else topic
        self._worker: subprocess.Popen[str] | None = None
        self._producer = baselines._producer(kafka, "bench-roundtrip-asker", linger_ms=0)
        self._consumer = baselines._consumer(kafka, "bench-roundtrip-asker", self.topic, self.replies)

    def __enter__(self) -> RawRoundTrip:
        try:
            command = [sys.executable, "-m", "agentmesh_cli.bench.roundtrip", "echo",
                       json.dumps({"kafka": self.kafka.model_dump(), "topic": self.topic,
                                   "requests": self.requests, "replies": self.replies})]
            self._worker = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            text=True)
            baselines._wait_ready(self._worker, "the raw round trip's echo worker")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def measure(self, samples: int) -> dict[str, Any]:
        """`samples` round trips one at a time, after WARMUP; percentiles in ms."""
        took: list[float] = []
        for i in range(WARMUP + samples):
            started = time.perf_counter()
            self._producer.produce(self.topic, self.value, partition=self.requests)
            self._producer.poll(0)
            # no pause: the poll itself waits for the reply
            wait_until(lambda: (msg := self._consumer.poll(0.5)) is not None and msg.error() is None,
                       REPLY_TIMEOUT_S, f"raw round trip {i}: the echo's reply", interval=0)
            if i >= WARMUP:
                took.append((time.perf_counter() - started) * 1000)
        return {**percentiles(took), "samples": len(took)}

    def close(self) -> None:
        if self._worker is not None:
            if self._worker.poll() is None:
                self._producer.produce(self.topic, baselines.END, partition=self.requests)
                self._producer.flush(5)
            try:
                self._worker.communicate(timeout=10)  # it ends on END; its pipe is closed
            except subprocess.TimeoutExpired:
                baselines._stop(self._worker)
                self._worker.communicate()
        self._consumer.close()
        self._producer.flush(5)
        del self._producer  # gone before the broker is (no "connection refused" lines)
        if self._own:
            baselines.delete_topic(self.kafka, self.topic)


def _echo(settings: dict[str, Any]) -> None:
    """Worker: every request read is produced again as the reply, at once, until END."""
    kafka = KafkaConfig(**settings["kafka"])
    topic, requests, replies = settings["topic"], settings["requests"], settings["replies"]
    consumer = baselines._consumer(kafka, "bench-roundtrip-echo", topic, requests)
    producer = baselines._producer(kafka, "bench-roundtrip-echo", linger_ms=0)
    # bounded in case END never comes (the bench died): its own loop, it echoes as it reads
    deadline = Deadline(3600)
    try:
        if not baselines.worker_ready(producer, consumer, topic, requests):
            return
        while not deadline.passed():
            for value in baselines.poll_values(consumer, 500, 0.1):
                if value == baselines.END:
                    return
                producer.produce(topic, value, partition=replies)
                producer.poll(0)
    finally:
        consumer.close()
        producer.flush(1)


def main(argv: list[str]) -> int:
    return baselines.run_worker({"echo": _echo}, argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
