"""`agentmesh bench ask` and `bench slow`, pure parts: the loop-lag quantile read from a
window of histogram counters, a window's difference, the median over runs, and the
partitions the raw round trip borrows. Exact tables."""

from __future__ import annotations

import pytest

from agentmesh_cli import constants as C
from agentmesh_cli.bench import ask, slow
from agentmesh_cli.errors import BenchError

LAG = C.COUNTER_LOOP_LAG_MS


def _buckets(**by_bound: int) -> dict[str, int]:
    """Histogram fields of loop_lag_ms: _buckets(b1=99, b50=1) -> bucket:1 = 99, bucket:50 = 1."""
    fields = {f"{LAG}:bucket:{bound[1:].replace('_', '.')}": n for bound, n in by_bound.items()}
    fields[f"{LAG}:count"] = sum(by_bound.values())
    return fields


@pytest.mark.parametrize(("counts", "q", "bound_ms"), [
    ({}, 0.99, 0.0),  # no observation
    (_buckets(b0_5=100), 0.99, 0.5),
    (_buckets(b1=99, b50=1), 0.99, 1.0),  # 99 of 100 at or under 1 ms
    (_buckets(b1=98, b50=2), 0.99, 50.0),  # 98: the p99 is in the 50 ms bucket
    (_buckets(b2=50, b5=50), 0.5, 2.0),
    (_buckets(b2=49, b20=51), 0.5, 20.0),
    (_buckets(binf=10), 0.99, 1000.0),  # past the last bound: that bound (no infinity in JSON)
    ({f"{LAG}:bucket:5": 3, "messages_in": 7}, 0.99, 5.0),  # other counters are ignored
])
def test_bucket_quantile(counts: dict[str, int], q: float, bound_ms: float) -> None:
    assert slow.bucket_quantile(counts, LAG, q) == bound_ms


def test_a_window_is_the_difference_of_two_reads() -> None:
    start = {"messages_in": 100, f"{LAG}:bucket:1": 40}
    end = {"messages_in": 1100, f"{LAG}:bucket:1": 140, f"{LAG}:bucket:5": 2}
    assert slow.difference(end, start) == {"messages_in": 1000, f"{LAG}:bucket:1": 100,
                                           f"{LAG}:bucket:5": 2}


def test_runs_are_summed_up_by_their_medians_and_the_largest_max() -> None:
    runs = [{"p50_ms": 10.0, "p99_ms": 30.0, "max_ms": 40.0, "mean_ms": 11.0},
            {"p50_ms": 12.0, "p99_ms": 20.0, "max_ms": 90.0, "mean_ms": 13.0},
            {"p50_ms": 11.0, "p99_ms": 25.0, "max_ms": 50.0, "mean_ms": 12.0}]
    assert ask._summary(runs) == {"p50_ms": 11.0, "p99_ms": 25.0, "max_ms": 90.0, "mean_ms": 12.0}


def test_the_raw_round_trip_borrows_two_partitions_no_agent_reads() -> None:
    # Asker reads partition 1 of 4, Answerer 3
    assert (C.inbox_partition(ask.ASKER, 4), C.inbox_partition(ask.ANSWERER, 4)) == (1, 3)
    assert ask._free_partitions(4) == (0, 2)
    assert ask._free_partitions(8) == (0, 1)  # of 8: Asker reads 5, Answerer 7
    with pytest.raises(BenchError, match="needs 4 partitions"):
        ask._free_partitions(2)
