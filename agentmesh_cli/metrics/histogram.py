"""Latency histograms kept as counters, so that they ride the roles' batched counters.

A role observes a latency into its in-memory Counter (one increment of the bucket it falls
in, plus sum and count); the Counter reaches Redis with the role's other counters once a
second. The exporter reads the fields back and cumulates them into a Prometheus histogram;
`status` estimates quantiles from the same buckets (`quantile`).

Fields of histogram `<name>`: `<name>:bucket:<bound>` observations in (previous bound,
bound] milliseconds (`inf` for the rest), `<name>:sum_us` the sum in microseconds (Redis
adds integers only), `<name>:count` the number of observations.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

INF = "inf"


def bound_label(bound: float) -> str:
    """5 -> "5", 2.5 -> "2.5": the bound as it appears in a field name."""
    return f"{bound:g}"


@dataclass(frozen=True)
class Buckets:
    """Fixed upper bounds in milliseconds, ascending (the +Inf bucket is implied)."""

    bounds_ms: tuple[float, ...]

    def observe(self, counts: Counter[str], name: str, ms: float) -> None:
        """Count one observation of `ms` milliseconds under histogram `name`."""
        index = bisect.bisect_left(self.bounds_ms, ms)
        bucket = bound_label(self.bounds_ms[index]) if index < len(self.bounds_ms) else INF
        counts[f"{name}:bucket:{bucket}"] += 1
        counts[f"{name}:sum_us"] += max(0, round(ms * 1000))
        counts[f"{name}:count"] += 1

    def read(self, counters: Mapping[str, int], name: str) -> tuple[list[tuple[float, int]], float]:
        """(cumulative [(upper bound in seconds, count)] ending with +Inf, sum in seconds) of
        histogram `name` (all zero when `counters` has none of its fields)."""
        cumulative: list[tuple[float, int]] = []
        total = 0
        for bound in self.bounds_ms:
            total += counters.get(f"{name}:bucket:{bound_label(bound)}", 0)
            cumulative.append((bound / 1000, total))
        total += counters.get(f"{name}:bucket:{INF}", 0)
        cumulative.append((float("inf"), total))
        return cumulative, counters.get(f"{name}:sum_us", 0) / 1e6


def quantile(cumulative: Sequence[tuple[float, int]], q: float) -> float | None:
    """The q-quantile (0 < q <= 1) of a histogram given as cumulative [(upper bound, count)]
    ending with +Inf (what `Buckets.read` returns), estimated as Prometheus'
    histogram_quantile does, so the two agree: linear within the bucket the rank falls in,
    the first bucket starting at 0, and the largest finite bound when the rank falls in +Inf.
    None without an observation."""
    total = cumulative[-1][1] if cumulative else 0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0
    for upper, count in cumulative[:-1]:
        if count >= rank and count > below:
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def observed(counters: Mapping[str, int], name: str) -> bool:
    """Whether histogram `name` has had an observation."""
    return counters.get(f"{name}:count", 0) > 0


# decided_at - created_at of a proposal (the timeout bounds it, 30 s by default)
DECISION_BUCKETS = Buckets((5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000))
# an ask's round trip, and the lag of an agent's event loop
ASK_BUCKETS = Buckets((1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000))
# a model call: a first token in tens of ms locally, whole answers in seconds to a minute
LLM_BUCKETS = Buckets((10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000))
LOOP_LAG_BUCKETS = Buckets((0.5, 1, 2, 5, 10, 20, 50, 100, 250, 1000))
# one call of a service as the agent sees it, retries included (loopback calls take ~1 ms)
SERVICE_CALL_BUCKETS = Buckets((1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000))
