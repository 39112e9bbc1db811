"""Ask scenario: request/reply pairs per second and round-trip latency between two real agent
processes (`await ctx.ask` on one side, `ctx.reply` on the other), next to a bare
confluent-kafka round trip on the same broker at the same fetch wait.

The agents: `Asker` (bench/waiters.py) asks `Answerer`, which replies at once from a sync
handler. The asker times every `await ctx.ask` itself (time.perf_counter) and writes what it
measured to Redis, where the bench reads it; the bench only sends it jobs. `repeats` latency
runs, each in turn:

- raw: `samples` round trips one at a time through bare clients (bench/roundtrip.py), on
  two partitions of the agents' topic that neither agent reads;
- one in flight: `samples` asks one at a time (round trip p50 / p99);

then `repeats` pipelined runs: `concurrency` asks kept in flight for `duration` seconds
after a warm-up (asks/s). The latency runs interleave the agents with the raw baseline, so
that a busy moment of the machine falls on both, and come first: the embedded broker's
fetches slow down as a partition grows, and a pipelined run adds thousands of records to
the agents' partitions. Every figure is the median over the runs.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli import events
from agentmesh_cli.bench.agents import AgentsMesh, agents_mesh
from agentmesh_cli.bench.infra import cpu_seconds, percentiles, ratio
from agentmesh_cli.bench.roundtrip import WARMUP, RawRoundTrip
from agentmesh_cli.bench.waiters import JOB_TYPE, PING_TYPE
from agentmesh_cli.bus import Bus
from agentmesh_cli.dozing import ringing, stop_ringing
from agentmesh_cli.envelope import now_ms
from agentmesh_cli.errors import BenchError
from agentmesh_cli.signing import mesh_signer
from agentmesh_cli.waiting import wait_until

ROLES = "agentmesh_cli.bench.waiters"
ASKER, ANSWERER = "Asker", "Answerer"  # inbox partitions 1 and 3 of 4: each reads its own
PIPELINE_WARMUP_S = 0.5
JOB_TIMEOUT_S = 120.0
TARGET_P50_TO_RAW = 1.5


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _summary(runs: list[dict[str, float]]) -> dict[str, float]:
    """Percentiles of several runs: the median of each run's p50, p99 and mean; the largest max."""
    return {"p50_ms": _median([r["p50_ms"] for r in runs]), "p99_ms": _median([r["p99_ms"] for r in runs]),
            "max_ms": max(r["max_ms"] for r in runs), "mean_ms": _median([r["mean_ms"] for r in runs])}


class Jobs:
    """The bench's side of the asker: a job sent as a message, its result read from Redis."""

    def __init__(self, agents: AgentsMesh) -> None:
        self.agents = agents
        mesh = agents.bench.mesh
        self.keys = C.Keys(mesh.config.mesh)
        # the operator sender; it signs when the bench mesh does
        self.bus = Bus(mesh.config.kafka, "bench-ask-jobs", signer=mesh_signer(mesh))
        ringing(self.bus, agents.store)  # a sleeping agent is rung (dozing.py)

    def run(self, **job: Any) -> dict[str, Any]:
        run = f"ask-{uuid.uuid4().hex[:10]}"
        self.bus.send_message(events.message(C.CLI_COUNTER_OWNER, ASKER, JOB_TYPE,
                                             {"run": run, "to": ANSWERER, **job}))
        if self.bus.flush(10):
            raise BenchError("the bench could not send the asker its job")
        key = self.keys.bench_result(run)

        def reported() -> dict[str, Any] | None:
            self.agents.check_alive()
            result: dict[str, Any] | None = self.agents.store.load_json(key)
            return result

        result = wait_until(reported, JOB_TIMEOUT_S, lambda: f"the asker to report run {run}; see "
                            f"{self.agents.log(ASKER)}", interval=0.05)
        if "error" in result:
            raise BenchError(f"the asker's job failed: {result['error']}; see {self.agents.log(ASKER)}")
        if not result["latencies_ms"]:
            raise BenchError(f"no ask of run {run} got its reply ({result['failed']} failed); "
                             f"see {self.agents.log(ASKER)}")
        return result

    def close(self) -> None:
        self.bus.flush(5)
        stop_ringing(self.bus)
        del self.bus  # its producer goes before the broker does (no "connection refused" lines)


def request_bytes() -> bytes:
    """An ask's request as the asker sends it (the raw baseline moves records of its size)."""
    return events.message(ASKER, ANSWERER, PING_TYPE, {}, {"deadline": now_ms() + 10_000}).encode()


def _free_partitions(partitions: int) -> tuple[int, int]:
    """Two partitions of `messages` that neither agent reads (their inboxes are others)."""
    used = {C.inbox_partition(ASKER, partitions), C.inbox_partition(ANSWERER, partitions)}
    free = [p for p in range(partitions) if p not in used]
    if len(free) < 2:
        raise BenchError(f"bench ask needs 4 partitions of messages, 2 of them free (got {partitions})")
    return free[0], free[1]


def _pipelined(jobs: Jobs, pids: dict[str, int], concurrency: int, duration: float) -> dict[str, Any]:
    """One pipelined round: asks/s, its round trips, the CPU each process used meanwhile."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    result = jobs.run(in_flight=concurrency, seconds=duration, warmup_s=PIPELINE_WARMUP_S)
    elapsed = time.monotonic() - started
    return {"asks_per_s": round(len(result["latencies_ms"]) / duration), "failed": result["failed"],
            "latency": percentiles(result["latencies_ms"]),
            # over the whole job (warm-up and the last asks' tail included): shares of one core
            "cpu": {name: round((cpu_seconds(pid) - before[name]) / elapsed, 3)
                    for name, pid in pids.items()}}


def run(repeats: int = 5, samples: int = 200, concurrency: int = 64, duration: float = 2.0,
        linger_ms: float | None = None) -> dict[str, Any]:
    """The ask scenario and its raw baseline, in the bench result shape (cli/bench.py).

    `linger_ms`: the agents' producers' linger (mesh.yaml `kafka.client` `linger.ms`; the
    runtime's default otherwise), to measure what it costs a round trip."""
    if repeats < 1 or samples < 1 or concurrency < 2:
        raise BenchError("bench ask needs repeats >= 1, samples >= 1 and concurrency >= 2")
    load_start = round(os.getloadavg()[0], 2)
    kafka: dict[str, Any] = {} if linger_ms is None else {"client": {"linger.ms": linger_ms}}
    agents = [{"name": ASKER, "role": f"{ROLES}:Asker"}, {"name": ANSWERER, "role": f"{ROLES}:Answerer"}]
    value = request_bytes()
    raw_runs: list[dict[str, Any]] = []
    sequential_runs: list[dict[str, Any]] = []
    pipelined_runs: list[dict[str, Any]] = []
    with agents_mesh(agents, kafka=kafka) as running:
        cfg = running.bench.mesh.config
        pids = {"asker": running.procs[ASKER].pid, "answerer": running.procs[ANSWERER].pid,
                "broker": running.bench.procs[0].pid}
        jobs = Jobs(running)
        try:
            # the raw round trip on the agents' topic, on two partitions neither agent reads
            # (the embedded broker's fetches slow down as a topic grows: the pipelined phases
            # add thousands of records each run)
            with RawRoundTrip(cfg.kafka, value, f"{cfg.kafka.topic_prefix}.{C.TOPIC_MESSAGES}",
                              _free_partitions(cfg.kafka.partitions)) as raw:
                for _ in range(repeats):
                    raw_runs.append(raw.measure(samples))
                    result = jobs.run(in_flight=1, samples=samples, warmup=WARMUP)
                    sequential_runs.append({**percentiles(result["latencies_ms"]),
                                            "failed": result["failed"]})
            # after every latency run: each pipelined run adds thousands of records to the
            # agents' partitions, the raw baseline's only hundreds
            for _ in range(repeats):
                pipelined_runs.append(_pipelined(jobs, pids, concurrency, duration))
        finally:
            jobs.close()
    round_trip, raw_round_trip = _summary(sequential_runs), _summary(raw_runs)
    asks_per_s = round(statistics.median(r["asks_per_s"] for r in pipelined_runs))
    p50_ratio = ratio(round_trip["p50_ms"], raw_round_trip["p50_ms"])
    met = 0 < p50_ratio <= TARGET_P50_TO_RAW
    figures = {
        "asks_per_s": asks_per_s,
        "asks_per_s_runs": [r["asks_per_s"] for r in pipelined_runs],
        "pipelined_round_trip": _summary([r["latency"] for r in pipelined_runs]),
        "round_trip": round_trip,
        "round_trip_p50_runs": [r["p50_ms"] for r in sequential_runs],
        "asks_failed": sum(r["failed"] for r in sequential_runs + pipelined_runs),
        "cpu_share_pipelined": {name: _median([r["cpu"][name] for r in pipelined_runs]) for name in pids},
    }
    raw_figures = {"round_trip": raw_round_trip, "round_trip_p50_runs": [r["p50_ms"] for r in raw_runs],
                   "fetch_wait_ms": cfg.kafka.fetch_wait * 1000, "value_bytes": len(value)}
    verdict = "met" if met else "MISSED"
    notes = [
        f"load average {load_start} at start, {round(os.getloadavg()[0], 2)} at end (2-core machine: "
        "figures move with what else runs)",
        f"target: one-in-flight round trip p50 at most {TARGET_P50_TO_RAW}x raw: {verdict} "
        f"({round_trip['p50_ms']:.2f} ms against {raw_round_trip['p50_ms']:.2f} ms raw, {p50_ratio:.2f}x)",
        f"median of {repeats} runs; each latency run: {samples} raw round trips, then {samples} asks one at "
        f"a time (after {WARMUP} not counted, both); then {repeats} pipelined runs: {concurrency} asks in "
        f"flight for {duration:g} s after {PIPELINE_WARMUP_S:g} s",
        "raw: bare confluent-kafka clients, a request to one partition of the agents' `messages` topic "
        "that no agent reads, an echo process producing the reply to another, no lingering, fetch wait "
        f"{cfg.kafka.fetch_wait * 1000:g} ms as the agents; the agents sign their records "
        f"(security.sign_envelopes {cfg.security.sign_envelopes}), raw does not",
        "round trips are timed inside the asker around `await ctx.ask` (time.perf_counter); the "
        "answerer replies from a sync handler at concurrency 1 (on its loop)",
    ]
    return {
        "scenario": "ask",
        "settings": {"repeats": repeats, "samples": samples, "concurrency": concurrency,
                     "duration_s": duration,
                     "fetch_wait_ms": cfg.kafka.fetch_wait * 1000,
                     "linger_ms": float(cfg.kafka.client.get("linger.ms", C.AGENT_LINGER_MS)),
                     "sign_envelopes": cfg.security.sign_envelopes, "asker": ASKER, "answerer": ANSWERER},
        "figures": figures,
        "raw": raw_figures,
        "floor": {},
        "ratios": {
            "round_trip_p50_to_raw": p50_ratio,
            "round_trip_p99_to_raw": ratio(round_trip["p99_ms"], raw_round_trip["p99_ms"]),
        },
        "targets": {
            "round_trip_p50_to_raw": {"target": f"<= {TARGET_P50_TO_RAW}", "value": p50_ratio, "met": met},
        },
        "notes": notes,
    }
