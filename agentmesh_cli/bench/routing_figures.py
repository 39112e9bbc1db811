"""`agentmesh bench routing`, pure part: the figures of one load generator's job, from the
file it wrote (bench/routing_roles.py `LoadGenerator`): latency percentiles, each
replica's share of the new conversations over a span, the share series for the plots, and
the kill trial's figures (the share sent to a dead replica, how soon a restarted one is
back to its share). Times are seconds from the job's start; a share counts asks by their
scheduled time, whatever became of them."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agentmesh_cli.bench.infra import percentiles

OK = "ok"
DEAD_AFTER_S = 2.0  # the dead share is counted from this long after the kill until the restart
BACK_WINDOW_S = 5.0  # "back to its share": the first window this long whose share is high enough
BACK_STEP_S = 0.5
BACK_WITHIN = 0.9  # ... at least this much of the share aimed at (within 10% of it, from below)


@dataclass(frozen=True)
class AskLog:
    """One job's asks, in the order they were scheduled (LoadGenerator's file)."""

    t: list[float]  # scheduled, seconds from the job's start
    lag_ms: list[float]  # how late each left
    replica: list[str | None]  # who answered (or, for a failed ask, where it was routed)
    ms: list[float | None]  # latency from the scheduled time; None: no reply
    outcome: list[str]

    @classmethod
    def of(cls, data: dict[str, Any]) -> AskLog:
        return cls(list(data["t"]), list(data["lag_ms"]), list(data["replica"]), list(data["ms"]),
                   list(data["outcome"]))

    def __len__(self) -> int:
        return len(self.t)

    def failed(self) -> int:
        return sum(1 for outcome in self.outcome if outcome != OK)


def latency(log: AskLog, warmup_s: float, replicas: Sequence[str]) -> dict[str, Any]:
    """Percentiles of the asks scheduled from `warmup_s` on, answered; the shares over that span."""
    kept = [ms for t, ms in zip(log.t, log.ms, strict=True) if t >= warmup_s and ms is not None]
    figures: dict[str, Any] = percentiles(kept) if kept else {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0,
                                                             "mean_ms": 0.0}
    lags = sorted(log.lag_ms)
    figures.update(asks=len(log), answered=len(log) - log.failed(), failed=log.failed(),
                   send_lag_p99_ms=lags[min(len(lags) - 1, int(0.99 * len(lags)))] if lags else 0.0,
                   shares=shares(log, warmup_s, math.inf, replicas))
    return figures


def shares(log: AskLog, start: float, end: float, replicas: Sequence[str]) -> dict[str, float]:
    """Each replica's share of the asks scheduled in [start, end) (0.0 each when none were)."""
    counts = dict.fromkeys(replicas, 0)
    total = 0
    for t, replica in zip(log.t, log.replica, strict=True):
        if start <= t < end:
            total += 1
            if replica in counts:
                counts[replica] += 1
    return {name: round(c / total, 4) if total else 0.0 for name, c in counts.items()}


def series(log: AskLog, seconds: float, replicas: Sequence[str], bin_s: float = 1.0) -> dict[str, list[int]]:
    """Per replica, how many asks were scheduled in each `bin_s` bin (for the plots)."""
    bins = max(1, math.ceil(seconds / bin_s))
    counts = {name: [0] * bins for name in replicas}
    for t, replica in zip(log.t, log.replica, strict=True):
        if replica in counts:
            counts[replica][min(bins - 1, max(0, int(t / bin_s)))] += 1
    return counts


def back_after(log: AskLog, replica: str, restart: float, end: float, aim: float,
               replicas: Sequence[str]) -> float | None:
    """Seconds from `restart` to the end of the first BACK_WINDOW_S window (sliding by
    BACK_STEP_S) in which `replica`'s share is at least BACK_WITHIN * `aim`; None: none
    before `end`."""
    start = restart
    while start + BACK_WINDOW_S <= end + 1e-9:
        if shares(log, start, start + BACK_WINDOW_S, replicas)[replica] >= BACK_WITHIN * aim:
            return round(start + BACK_WINDOW_S - restart, 2)
        start += BACK_STEP_S
    return None


def kill_trial(log: AskLog, replica: str, fair: float, kill: float, restart: float, seconds: float,
               warmup_s: float, replicas: Sequence[str]) -> dict[str, Any]:
    """The figures of one kill trial (times from the job's start): the share of new
    conversations sent to the killed `replica` from DEAD_AFTER_S after the kill until the
    restart (and in the first DEAD_AFTER_S), its share before the kill, how soon after the
    restart it is back to its fair (capacity) share and to its share before, and its share
    over the last 10 s."""
    before = shares(log, warmup_s, kill, replicas)[replica]
    return {
        "dead_share": shares(log, kill + DEAD_AFTER_S, restart, replicas)[replica],
        "dead_share_first_2s": shares(log, kill, kill + DEAD_AFTER_S, replicas)[replica],
        "share_before": before,
        "back_to_fair_s": back_after(log, replica, restart, seconds, fair, replicas),
        "back_to_before_s": back_after(log, replica, restart, seconds, before, replicas),
        "share_last_10s": shares(log, seconds - 10.0, seconds, replicas)[replica],
    }


def throughput(log: AskLog) -> float:
    """Replies per second from the first ask's scheduled time to the last reply: a replica's
    capacity when the job kept it busy throughout (asked at twice its capacity)."""
    ends = [t + ms / 1000 for t, ms in zip(log.t, log.ms, strict=True) if ms is not None]
    if not ends or not log.t:
        return 0.0
    return round(len(ends) / (max(ends) - min(log.t)), 2)


def median(values: Sequence[float | None]) -> float | None:
    """The median, a None counted as larger than any value (a replica never back); None when
    the median itself is one."""
    ranked = sorted(math.inf if v is None else v for v in values)
    if not ranked:
        return None
    middle = statistics.median(ranked)
    return None if math.isinf(middle) or math.isnan(middle) else round(middle, 4)
