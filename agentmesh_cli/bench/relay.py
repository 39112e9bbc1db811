"""The bench agent role: messages relayed from agent to agent inside the real runtime.

`role: agentmesh_cli.bench.relay:Relay` in mesh.yaml (the `mesh` bench scenario runs it).
A bench message's payload carries a run id, `sent_ns` (`time.time_ns()` when it was sent)
and the hops left. On one, the relay records the send -> handler latency and, while hops
are left and its run is the current one, forwards it to the next of its peers (round
robin over the other relays, never itself) with a fresh `sent_ns`. In paced mode it also
emits messages of 0 hops to its peers at a fixed rate from its tick, so latency can be
measured at a known load.

Settings come from one Redis key that the bench writes (`settings_key`: JSON `{run,
rate}`); a relay reads it when it flushes its figures, about once a second, in the same
round trip. Nothing touches Redis per message: latencies go into a fixed in-memory
histogram (`Histogram`, log-spaced buckets from 1 us to 10 s) and counts, flushed as one
JSON value per relay into the hash `stats_key(run)`, so the bench reads exact counts and
percentiles per agent and run. A message of an older run is counted but not forwarded:
changing the run drains the previous one.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from agentmesh_cli import environment, events
from agentmesh_cli.agent.base import Role
from agentmesh_cli.config import MeshConfig
from agentmesh_cli.constants import OPERATOR_SENDERS, Keys
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.errors import ConfigError
from agentmesh_cli.mesh import redis_url

BENCH_TYPE = "bench"
FLUSH_S = 1.0
STATS_TTL_S = 86_400  # a run's figures outlive the bench by a day, then Redis drops them
MAXES_KEPT = 120  # per-flush maxima kept (2 minutes): the bench takes a window's max from them
PACED_CATCH_UP_S = 1.0  # after a stall, at most this much of the paced schedule is sent at once
SETTINGS_SUFFIX = "bench:relay"


def settings_key(mesh: str) -> str:
    """String: JSON `{run, rate}` that every relay of mesh `mesh` follows."""
    return Keys(mesh).prefix + SETTINGS_SUFFIX


def stats_key(mesh: str, run: str) -> str:
    """Hash: relay name -> JSON of its figures in run `run`."""
    return f"{Keys(mesh).prefix}{SETTINGS_SUFFIX}:{run}"


def bench_payload(run: str, hops: int) -> dict[str, Any]:
    return {"run": run, "sent_ns": time.time_ns(), "hops": hops}


def sample_envelope(run: str, sender: str, recipient: str, hops: int) -> bytes:
    """A bench message as a relay sends it (the baselines move records of its size)."""
    return events.message(sender, recipient, BENCH_TYPE, bench_payload(run, hops)).encode()


def relay_redis_url(cfg: MeshConfig, environ: Mapping[str, str] | None = None) -> str:
    """The URL the runtime connects to Redis with (`Mesh.redis_url`). A role sees the config,
    not the mesh's folder: a bench mesh names its Redis by URL (bench/infra.py); a supervised
    mesh's embedded Valkey takes the password `up` hands every program (credentials.py)."""
    password = environment.secret_overrides(environ)["redis_password"]
    if cfg.redis.embedded and not password:
        variable = environment.SECRETS["redis_password"]
        raise ConfigError(f"the embedded Valkey's password is not in ${variable}: run the relays "
                          "under `agentmesh up`, or name Redis by URL in mesh.yaml")
    return redis_url(cfg.redis, password)


# the histogram (pure) ------------------------------------------------------------------
PER_DECADE = 40  # buckets per power of ten: each is 5.9% wide
DECADES = 7  # 1 us .. 10 s
# upper bounds in nanoseconds: bucket i holds (BOUNDS_NS[i-1], BOUNDS_NS[i]]; one more
# bucket past the last bound holds everything slower than 10 s
BOUNDS_NS = tuple(round(1000 * 10 ** (i / PER_DECADE)) for i in range(DECADES * PER_DECADE + 1))


@dataclass
class Histogram:
    """Latencies in fixed log-spaced buckets, with exact count, sum and maximum.

    A percentile is the upper bound of the bucket that holds the sample of that rank (the
    rank rule of `bench.infra.percentiles`), never above the exact maximum: at most 5.9%
    above the true value, never below it. Histograms add and subtract bucket by bucket, so
    the bench merges agents and takes windows (a later flush minus an earlier one)."""

    counts: dict[int, int] = field(default_factory=dict)  # bucket index -> observations
    count: int = 0
    sum_ns: int = 0
    max_ns: int = 0

    def observe(self, ns: int) -> None:
        ns = max(0, ns)  # clocks of two processes: never a negative latency
        index = bisect.bisect_left(BOUNDS_NS, ns)
        self.counts[index] = self.counts.get(index, 0) + 1
        self.count += 1
        self.sum_ns += ns
        if ns > self.max_ns:
            self.max_ns = ns

    def quantile_ns(self, q: float) -> int:
        if not self.count:
            return 0
        rank = min(self.count - 1, int(q * self.count))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen > rank:
                bound = BOUNDS_NS[index] if index < len(BOUNDS_NS) else self.max_ns
                return min(bound, self.max_ns)
        return self.max_ns

    def percentiles(self) -> dict[str, float]:
        """The fields of `bench.infra.percentiles`, plus the count."""
        mean = self.sum_ns / self.count if self.count else 0.0
        return {"p50_ms": round(self.quantile_ns(0.50) / 1e6, 3),
                "p99_ms": round(self.quantile_ns(0.99) / 1e6, 3),
                "max_ms": round(self.max_ns / 1e6, 3), "mean_ms": round(mean / 1e6, 3),
                "count": self.count}

    def to_dict(self) -> dict[str, Any]:
        return {"buckets": {str(i): n for i, n in self.counts.items()}, "count": self.count,
                "sum_ns": self.sum_ns, "max_ns": self.max_ns}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Histogram:
        return cls({int(i): int(n) for i, n in data.get("buckets", {}).items()},
                   int(data.get("count", 0)), int(data.get("sum_ns", 0)), int(data.get("max_ns", 0)))

    @classmethod
    def merged(cls, histograms: Iterable[Histogram]) -> Histogram:
        total = cls()
        for h in histograms:
            for i, n in h.counts.items():
                total.counts[i] = total.counts.get(i, 0) + n
            total.count += h.count
            total.sum_ns += h.sum_ns
            total.max_ns = max(total.max_ns, h.max_ns)
        return total

    def minus(self, earlier: Histogram, max_ns: int | None = None) -> Histogram:
        """What was observed after `earlier` (a flush of the same relay and run). The window's
        maximum cannot be subtracted: the caller gives it (from the per-flush maxima)."""
        counts = {i: n - earlier.counts.get(i, 0) for i, n in self.counts.items()}
        return Histogram({i: n for i, n in counts.items() if n > 0}, self.count - earlier.count,
                         self.sum_ns - earlier.sum_ns, self.max_ns if max_ns is None else max_ns)


# the role ------------------------------------------------------------------------------
@dataclass
class RunStats:
    """One relay's figures in one run."""

    latency: Histogram = field(default_factory=Histogram)  # agent -> agent hops only
    handled: int = 0  # bench messages from agents
    injected: int = 0  # bench messages from an operator sender (the bench's first hop)
    sent: int = 0  # bench messages this relay sent (forwards and paced)
    interval_max: int = 0  # slowest hop since the last flush
    maxes: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=MAXES_KEPT))


class Relay(Role):
    """Relays bench messages around the mesh and reports latencies (see the module doc)."""

    def on_start(self) -> None:
        cfg = self.ctx.config
        # a client of its own for the bench keys (the runtime's Store is not the role's)
        self._redis = redis.Redis.from_url(relay_redis_url(cfg), socket_timeout=2.0,
                                           socket_connect_timeout=2.0)
        self._settings_key = settings_key(cfg.mesh)
        self.run: str | None = None
        self.rate = 0.0
        self.stats: dict[str, RunStats] = {}
        self.peers: list[str] = []
        self.sent_total = 0  # every bench message sent, all runs
        self.ticks = 0  # runtime loop turns (a tick follows every polled batch): batch sizes
        self._next_peer = 0
        self._paced_since = 0.0
        self._emitted = 0
        self._next_flush = 0.0

    def _stats(self, run: str) -> RunStats:
        stats = self.stats.get(run)
        if stats is None:
            if len(self.stats) >= 8:  # old runs are over: keep the newest few
                del self.stats[next(iter(self.stats))]
            stats = self.stats[run] = RunStats()
        return stats

    def _send(self, run: str, hops: int, stats: RunStats) -> None:
        peer = self.peers[self._next_peer % len(self.peers)]
        self._next_peer += 1
        self.ctx.send(peer, BENCH_TYPE, bench_payload(run, hops))
        stats.sent += 1
        self.sent_total += 1

    def on_message(self, message: Envelope) -> None:
        if message.type != BENCH_TYPE:
            return
        received = time.time_ns()
        payload = message.payload
        run = str(payload.get("run"))
        stats = self._stats(run)
        if message.from_agent_id in OPERATOR_SENDERS:
            stats.injected += 1
        else:
            stats.handled += 1
            took = received - int(payload.get("sent_ns", received))
            stats.latency.observe(took)
            if took > stats.interval_max:
                stats.interval_max = took
        hops = int(payload.get("hops", 0))
        if hops > 0 and run == self.run and self.peers:
            self._send(run, hops - 1, stats)

    def on_tick(self, now: float) -> None:
        self.ticks += 1
        if self.run is not None and self.rate > 0 and self.peers:
            due = int((now - self._paced_since) * self.rate) - self._emitted
            if due > self.rate * PACED_CATCH_UP_S:  # a stall: skip what is long overdue
                self._emitted += due - int(self.rate * PACED_CATCH_UP_S)
                due = int(self.rate * PACED_CATCH_UP_S)
            stats = self._stats(self.run)
            for _ in range(due):
                self._send(self.run, 0, stats)
            self._emitted += due
        if now >= self._next_flush:
            self._next_flush = now + FLUSH_S
            self._flush(now)

    def _flush(self, now: float) -> None:
        """One round trip: write this relay's figures, read the settings."""
        wall = time.time()
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(self._settings_key)
        for run, stats in self.stats.items():
            stats.maxes.append((wall, stats.interval_max))
            stats.interval_max = 0
            pipe.hset(stats_key(self.ctx.config.mesh, run), self.ctx.name, orjson.dumps({
                "ts": wall, "handled": stats.handled, "injected": stats.injected, "sent": stats.sent,
                "sent_total": self.sent_total, "ticks": self.ticks,
                "latency": stats.latency.to_dict(), "maxes": list(stats.maxes),
                "peers": len(self.peers), "current": run == self.run, "rate": self.rate}))
            pipe.expire(stats_key(self.ctx.config.mesh, run), STATS_TTL_S)
        try:
            raw = pipe.execute()[0]
        except redis.RedisError as exc:
            self.ctx.log.warning("bench figures not flushed (kept for the next flush): %s", exc)
            return
        self.peers = self.ctx.peers(self.ctx.role)
        settings = orjson.loads(raw) if raw else {}
        current = settings.get("run")
        if current != self.run:
            self.run, self.rate = current, float(settings.get("rate", 0.0))
            self._paced_since, self._emitted = now, 0
            if current is not None:
                self._stats(current)  # flushed from now on: the bench sees that we follow it
                self._next_flush = now  # at once, not a second later

    def on_stop(self) -> None:
        self._redis.close()
