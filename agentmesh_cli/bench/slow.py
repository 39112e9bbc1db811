"""Slow scenario: one agent at concurrency 1,000 whose async handler awaits 1 s per message
(`Sleeper`, bench/waiters.py), kept full: messages handled per second against the ideal
(concurrency / handler time), the agent's event-loop lag and its RSS growth, next to the
same wait in a sync handler at concurrency 1 (`SyncSleeper`: one message a second).

The bench feeds the agent as the operator, each message its own conversation, so that
`concurrency` handlers run and half as many more wait at the agent: every 20 ms it reads
the agent's `messages_in` counter (exact: written with its ledger as each turn settles)
and sends what keeps sent - handled at 1.5 x concurrency. Each run: a warm-up until the
first wave of handlers has finished, a window of `duration` seconds, then the feed stops
and the agent drains. Over the window:

- msgs/s: the difference of `messages_in` over the window's time;
- loop lag p99: from the difference of the agent's `loop_lag_ms` histogram counters (10 ms
  samples, flushed each second) over the window: the upper bound of the bucket that holds
  the p99; beside it the registry record's exact p99 of its newest 1,000 samples;
- RSS growth: the agent's RSS at the window's end minus at its start (after the warm-up).

At the start of each window the sync agent gets a few messages; its msgs/s is how many
over the time from their send to its `messages_in` counting them all.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Mapping
from typing import Any

import psutil

from agentmesh_cli import constants as C
from agentmesh_cli import events
from agentmesh_cli.bench.agents import AgentsMesh, agents_mesh
from agentmesh_cli.bench.infra import cpu_seconds, ratio
from agentmesh_cli.bench.waiters import SLEEP_TYPE
from agentmesh_cli.bus import Bus
from agentmesh_cli.dozing import ringing, stop_ringing
from agentmesh_cli.errors import BenchError
from agentmesh_cli.metrics.histogram import LOOP_LAG_BUCKETS
from agentmesh_cli.signing import mesh_signer

ROLES = "agentmesh_cli.bench.waiters"
SLEEPER, SYNC_SLEEPER = "Sleeper", "SyncSleeper"  # inbox partitions 3 and 0 of 4
QUEUED_SHARE = 0.5  # beyond the running handlers, this share of the concurrency waits at the agent
FEED_EVERY_S = 0.02
SAMPLE_EVERY_S = 0.5  # RSS and the registry record, during the window
SYNC_MESSAGES = 5  # the sync agent's messages per run, at most
WARMUP_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 60.0
TARGETS = {"to_ideal": 0.95, "loop_lag_p99_ms": 20.0, "rss_growth_mb": 30.0}


def bucket_quantile(counts: Mapping[str, int], name: str, q: float) -> float:
    """The smallest LOOP_LAG_BUCKETS bound (ms) with at least a share `q` of the observations
    of histogram `name` at or under it (its fields in `counts`, e.g. a window's difference):
    the q-quantile is at most this. 0.0 with no observations; the last bound when the
    quantile is past it (JSON has no infinity)."""
    cumulative, _ = LOOP_LAG_BUCKETS.read(counts, name)
    total = cumulative[-1][1]
    if not total:
        return 0.0
    bound = next(bound for bound, seen in cumulative if seen >= q * total)
    return round(min(bound, LOOP_LAG_BUCKETS.bounds_ms[-1] / 1000) * 1000, 3)


def difference(end: Mapping[str, int], start: Mapping[str, int]) -> dict[str, int]:
    return {name: value - start.get(name, 0) for name, value in end.items()}


class Feeder:
    """Sends the agents their messages and reads their counters."""

    def __init__(self, running: AgentsMesh, sleep: float) -> None:
        self.running, self.sleep = running, sleep
        mesh = running.bench.mesh
        # a load generator batches (linger 5 ms); it signs when the bench mesh does
        self.bus = Bus(mesh.config.kafka, "bench-slow-feeder", linger_ms=5, signer=mesh_signer(mesh))
        ringing(self.bus, running.store)  # a sleeping agent is rung (dozing.py)
        self.sent: dict[str, int] = {SLEEPER: 0, SYNC_SLEEPER: 0}
        self._tag = uuid.uuid4().hex[:8]

    def counters(self, name: str) -> dict[str, int]:
        return self.running.store.counters(name)

    def handled(self, name: str) -> int:
        return self.counters(name).get(C.COUNTER_IN, 0)

    def send(self, name: str, n: int) -> None:
        for _ in range(n):
            conversation = f"{self._tag}-{self.sent[name]}"  # each message its own conversation
            self.bus.send_message(events.message(C.CLI_COUNTER_OWNER, name, SLEEP_TYPE, {"sleep": self.sleep},
                                                 {"conversation": conversation}))
            self.sent[name] += 1
        self.bus.poll()

    def top_up(self, keep: int) -> int:
        """Send the sleeper what keeps `keep` messages sent and not handled; its handled count."""
        handled = self.handled(SLEEPER)
        if (missing := keep - (self.sent[SLEEPER] - handled)) > 0:
            self.send(SLEEPER, missing)
        return handled

    def close(self) -> None:
        self.bus.flush(5)
        stop_ringing(self.bus)
        del self.bus  # its producer goes before the broker does (no "connection refused" lines)


def _rss_mb(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / 2**20, 2)


class SyncTimer:
    """The sync agent's messages of one run: sent at once, timed until its `messages_in`
    counts them all."""

    def __init__(self, feeder: Feeder, messages: int) -> None:
        self.feeder, self.messages = feeder, messages
        self.base = feeder.handled(SYNC_SLEEPER)
        self.started = time.monotonic()
        feeder.send(SYNC_SLEEPER, messages)
        self.took: float | None = None

    def check(self) -> bool:
        """True once all of them are handled."""
        if self.took is None and self.feeder.handled(SYNC_SLEEPER) >= self.base + self.messages:
            self.took = time.monotonic() - self.started
        return self.took is not None

    def msgs_per_s(self) -> float:
        return round(self.messages / self.took, 3) if self.took else 0.0


def _warm_up(feeder: Feeder, running: AgentsMesh, concurrency: int, keep: int, sleep: float) -> None:
    """Feed until the first `concurrency` messages of the run are handled. They go at the
    ideal rate, so that the handlers start (and end, and are replaced) spread over time;
    sent at once, they would run in waves that start and end together, and the agent would
    wait for each wave's refill."""
    base = feeder.handled(SLEEPER)
    started = time.monotonic()
    while feeder.top_up(min(keep, max(1, int(concurrency * (time.monotonic() - started) / sleep)))) \
            < base + concurrency:
        running.check_alive()
        if time.monotonic() > started + WARMUP_TIMEOUT_S:
            raise BenchError(f"the sleeper did not finish {concurrency} messages within "
                             f"{WARMUP_TIMEOUT_S:.0f} s; see {running.log(SLEEPER)}")
        time.sleep(FEED_EVERY_S)


def _window(feeder: Feeder, running: AgentsMesh, keep: int, duration: float,
            sync: SyncTimer) -> dict[str, Any]:
    """Feed for `duration` seconds; the sleeper's figures over that window."""
    pid, broker = running.procs[SLEEPER].pid, running.bench.procs[0].pid
    start_counters, start = feeder.counters(SLEEPER), time.monotonic()
    rss_start, cpu_start = _rss_mb(pid), (cpu_seconds(pid), cpu_seconds(broker))
    rss_peak, next_sample = rss_start, start
    running_now: list[int] = []  # handlers running (registry record, each heartbeat)
    in_flight: list[int] = []  # messages read and not finished: running + queued at the agent
    while (now := time.monotonic()) < start + duration:
        feeder.top_up(keep)
        sync.check()
        if now >= next_sample:
            next_sample = now + SAMPLE_EVERY_S
            rss_peak = max(rss_peak, _rss_mb(pid))
            sampled = running.store.agents().get(SLEEPER, {})
            running_now.append(sampled.get("running", 0))
            in_flight.append(sampled.get("in_flight", 0))
            running.check_alive()
        time.sleep(FEED_EVERY_S)
    window, elapsed = difference(feeder.counters(SLEEPER), start_counters), time.monotonic() - start
    rss_end = _rss_mb(pid)
    cpu = [round((cpu_seconds(p) - before) / elapsed, 3)
           for p, before in zip((pid, broker), cpu_start, strict=True)]
    return {
        "msgs_per_s": round(window.get(C.COUNTER_IN, 0) / elapsed, 1),
        "handled": window.get(C.COUNTER_IN, 0),
        "seconds": round(elapsed, 3),
        "loop_lag_p99_ms": bucket_quantile(window, C.COUNTER_LOOP_LAG_MS, 0.99),
        "loop_lag_samples": window.get(f"{C.COUNTER_LOOP_LAG_MS}:count", 0),
        "registry_loop_lag_ms": running.store.agents().get(SLEEPER, {}).get("loop_lag_ms", {}),
        "running_mean": round(statistics.fmean(running_now), 1) if running_now else 0.0,
        "running_min": min(running_now, default=0),
        "in_flight_mean": round(statistics.fmean(in_flight), 1) if in_flight else 0.0,
        "rss_start_mb": rss_start, "rss_end_mb": rss_end, "rss_peak_mb": max(rss_peak, rss_end),
        "rss_growth_mb": round(rss_end - rss_start, 2),
        "agent_cpu_share": cpu[0], "broker_cpu_share": cpu[1],
    }


def _drain(feeder: Feeder, running: AgentsMesh, sync: SyncTimer) -> None:
    """The feed has stopped: wait until all that was sent is handled, by both agents."""
    until = time.monotonic() + DRAIN_TIMEOUT_S
    while not sync.check() or feeder.handled(SLEEPER) < feeder.sent[SLEEPER]:
        running.check_alive()
        if time.monotonic() > until:
            raise BenchError(f"the agents did not drain within {DRAIN_TIMEOUT_S:.0f} s; "
                             f"see {running.bench.root}")
        time.sleep(FEED_EVERY_S)


def _run_once(feeder: Feeder, running: AgentsMesh, concurrency: int, duration: float, sleep: float,
              sync_messages: int) -> dict[str, Any]:
    """One run: warm-up, the measured window, the drain (see the module doc)."""
    keep = concurrency + int(concurrency * QUEUED_SHARE)
    _warm_up(feeder, running, concurrency, keep, sleep)
    sync = SyncTimer(feeder, sync_messages)
    figures = _window(feeder, running, keep, duration, sync)
    _drain(feeder, running, sync)
    sync_lag = running.store.agents().get(SYNC_SLEEPER, {}).get("loop_lag_ms", {})
    return {**figures, "sync_msgs_per_s": sync.msgs_per_s(), "sync_loop_lag_max_ms": sync_lag.get("max", 0.0)}


def _registry_lag(runs: list[dict[str, Any]], field: str) -> float:
    """The median over the runs of a field of their registry records' loop lag."""
    return round(statistics.median(float(r["registry_loop_lag_ms"].get(field, 0.0)) for r in runs), 3)


def run(repeats: int = 3, concurrency: int = 1000, duration: float = 10.0,
        sleep: float = 1.0) -> dict[str, Any]:
    """The slow scenario and its baselines, in the bench result shape (cli/bench.py)."""
    if repeats < 1 or concurrency < 1 or duration <= 0 or sleep <= 0:
        raise BenchError("bench slow needs repeats >= 1, concurrency >= 1, duration > 0 and sleep > 0")
    load_start = round(os.getloadavg()[0], 2)
    sync_messages = max(1, min(SYNC_MESSAGES, int(duration / sleep) - 1))
    agents: list[dict[str, Any]] = [{"name": SLEEPER, "role": f"{ROLES}:Sleeper", "concurrency": concurrency},
              {"name": SYNC_SLEEPER, "role": f"{ROLES}:SyncSleeper"}]
    runs: list[dict[str, Any]] = []
    with agents_mesh(agents) as running:
        feeder = Feeder(running, sleep)
        try:
            for _ in range(repeats):
                runs.append(_run_once(feeder, running, concurrency, duration, sleep, sync_messages))
            first_rss, last_rss = runs[0]["rss_start_mb"], runs[-1]["rss_end_mb"]
        finally:
            feeder.close()
        cfg = running.bench.mesh.config

    def median(field: str) -> float:
        return round(statistics.median(r[field] for r in runs), 3)

    ideal = round(concurrency / sleep, 3)
    rate, lag_p99, growth = median("msgs_per_s"), median("loop_lag_p99_ms"), median("rss_growth_mb")
    sync_rate = median("sync_msgs_per_s")
    to_ideal = ratio(rate, ideal)
    figures = {
        "msgs_per_s": rate,
        "msgs_per_s_runs": [r["msgs_per_s"] for r in runs],
        "loop_lag_p99_ms": lag_p99,
        "loop_lag_p99_ms_runs": [r["loop_lag_p99_ms"] for r in runs],
        "registry_loop_lag_p99_ms": _registry_lag(runs, "p99"),
        "registry_loop_lag_max_ms": max(r["registry_loop_lag_ms"].get("max", 0.0) for r in runs),
        "rss_growth_mb": growth,
        "rss_growth_mb_runs": [r["rss_growth_mb"] for r in runs],
        "rss_growth_all_runs_mb": round(last_rss - first_rss, 2),
        "rss_end_mb": runs[-1]["rss_end_mb"],
        "rss_peak_mb": max(r["rss_peak_mb"] for r in runs),
        "running_mean": median("running_mean"),
        "running_min": min(r["running_min"] for r in runs),
        "in_flight_mean": median("in_flight_mean"),
        "agent_cpu_share": median("agent_cpu_share"),
        "broker_cpu_share": median("broker_cpu_share"),
    }
    floor = {"sync_msgs_per_s": sync_rate, "sync_msgs_per_s_runs": [r["sync_msgs_per_s"] for r in runs],
             "sync_messages_per_run": sync_messages,
             "sync_loop_lag_max_ms": max(r["sync_loop_lag_max_ms"] for r in runs)}
    checks = {
        "msgs_per_s_to_ideal": (f">= {TARGETS['to_ideal']}", to_ideal, to_ideal >= TARGETS["to_ideal"]),
        # the bucket's bound: the p99 is at most this (bounds ... 10, 20, 50 ms)
        "loop_lag_p99_ms": (f"<= {TARGETS['loop_lag_p99_ms']:g} ms (bucket bound)", lag_p99,
                            lag_p99 <= TARGETS["loop_lag_p99_ms"]),
        "rss_growth_mb": (f"< {TARGETS['rss_growth_mb']:g} MB", growth, growth < TARGETS["rss_growth_mb"]),
    }
    notes = [
        f"load average {load_start} at start, {round(os.getloadavg()[0], 2)} at end (2-core machine: "
        "figures move with what else runs)",
        f"median of {repeats} runs; each: a warm-up until the first {concurrency:,} messages were handled, "
        f"a window of {duration:g} s fed to keep {concurrency + int(concurrency * QUEUED_SHARE):,} sent and "
        "not handled, then a drain",
        f"raw: the ideal, concurrency / handler time = {concurrency:,} / {sleep:g} s; floor: the same wait "
        f"in a sync handler at concurrency 1 ({sync_messages} messages per run, timed from their send to "
        "their count)",
        "loop_lag_p99_ms is the upper bound of the histogram bucket (bounds 0.5, 1, 2, 5, 10, 20, 50 ... ms) "
        "holding the window's p99; registry_loop_lag_p99_ms is the exact p99 of the agent's newest 1,000 "
        "samples (about its last 10 s) at the window's end",
    ]
    notes += [f"target {name} {target}: {'met' if met else 'MISSED'} ({value:g})"
              for name, (target, value, met) in checks.items()]
    return {
        "scenario": "slow",
        "settings": {"repeats": repeats, "concurrency": concurrency, "duration_s": duration, "sleep_s": sleep,
                     "queued": int(concurrency * QUEUED_SHARE), "fetch_wait_ms": cfg.kafka.fetch_wait * 1000,
                     "sign_envelopes": cfg.security.sign_envelopes},
        "figures": figures,
        "raw": {"ideal_msgs_per_s": ideal},
        "floor": floor,
        "ratios": {"msgs_per_s_to_ideal": to_ideal, "msgs_per_s_to_sync": ratio(rate, sync_rate)},
        "targets": {name: {"target": target, "value": value, "met": met}
                    for name, (target, value, met) in checks.items()},
        "notes": notes,
    }

