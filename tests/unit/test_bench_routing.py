"""`agentmesh bench routing`, pure parts: the figures of a load generator's job
(bench/routing_figures.py) on scripted asks, in exact numbers; the replicas' service times
by name; and the CPU measure of routing on a scripted clock."""

from __future__ import annotations

import pytest

from agentmesh_cli.bench.routing_cpu import cpu_per_message, mesh_config
from agentmesh_cli.bench.routing_figures import (
    AskLog,
    back_after,
    kill_trial,
    latency,
    median,
    series,
    shares,
    throughput,
)
from agentmesh_cli.bench.routing_roles import service_ms
from agentmesh_cli.errors import RoleError

AB = ["A", "B"]


def log_of(rows: list[tuple[float, str | None, float | None]]) -> AskLog:
    """(scheduled s, replica, ms or None for a failed ask) per ask."""
    return AskLog([t for t, _, _ in rows], [0.5] * len(rows), [r for _, r, _ in rows],
                  [ms for _, _, ms in rows], ["ok" if ms is not None else "AskTimeout" for _, _, ms in rows])


# one ask every 0.5 s for 20 s: A until 5 s, B alone from 5 s to 10 s (A is dead), then A on
# every fourth ask from 10 s to 13 s, then every other one
def _timeline() -> AskLog:
    rows: list[tuple[float, str | None, float | None]] = []
    for i in range(40):
        t = i * 0.5
        if t < 5:
            who = "A" if i % 2 == 0 else "B"
        elif t < 10:
            who = "B"
        elif t < 13:
            who = "A" if i % 4 == 0 else "B"
        else:
            who = "A" if i % 2 == 0 else "B"
        rows.append((t, who, 10.0 + i))
    return log_of(rows)


@pytest.mark.parametrize(("start", "end", "expected"), [
    (0.0, 5.0, {"A": 0.5, "B": 0.5}),
    (5.0, 10.0, {"A": 0.0, "B": 1.0}),
    (10.0, 12.0, {"A": 0.25, "B": 0.75}),
    (30.0, 40.0, {"A": 0.0, "B": 0.0}),  # no ask: no share
])
def test_shares_count_asks_by_their_scheduled_time(start: float, end: float,
                                                   expected: dict[str, float]) -> None:
    assert shares(_timeline(), start, end, AB) == expected


def test_a_failed_ask_counts_in_the_total_and_for_the_replica_it_was_routed_to() -> None:
    log = log_of([(0.0, "A", 5.0), (0.1, "B", None), (0.2, None, None), (0.3, "A", 7.0)])
    assert shares(log, 0, 1, AB) == {"A": 0.5, "B": 0.25}
    assert log.failed() == 2


@pytest.mark.parametrize(("aim", "expected"), [
    (0.4, 5.0),  # the first window, 10-15 s: 4 of 10 asks to A, 0.4 >= 0.9 * 0.4
    (0.5, 6.5),  # 0.45 needed: 0.4 until the window 11.5-16.5 s (5 of 10), 6.5 s after the restart
    (0.6, None),  # 0.54 needed: never within 20 s
])
def test_back_is_the_end_of_the_first_window_with_nine_tenths_of_the_aim(aim: float,
                                                                        expected: float | None) -> None:
    assert back_after(_timeline(), "A", 10.0, 20.0, aim, AB) == expected


def test_a_kill_trial_s_figures() -> None:
    # killed at 5 s, restarted at 10 s: nothing went to A meanwhile; it had half before; 9 of
    # the last 20 asks
    figures = kill_trial(_timeline(), "A", 0.5, kill=5.0, restart=10.0, seconds=20.0, warmup_s=1.0,
                         replicas=AB)
    assert figures == {"dead_share": 0.0, "dead_share_first_2s": 0.0, "share_before": 0.5,
                       "back_to_fair_s": 6.5, "back_to_before_s": 6.5, "share_last_10s": 0.45}


def test_latency_leaves_the_warm_up_and_failures_out_and_counts_them() -> None:
    log = log_of([(0.5, "A", 999.0), (1.0, "A", 10.0), (1.5, "B", 20.0), (2.0, "B", None), (2.5, "A", 30.0)])
    figures = latency(log, 1.0, AB)
    assert (figures["p50_ms"], figures["p99_ms"], figures["max_ms"]) == (20.0, 30.0, 30.0)
    assert (figures["asks"], figures["answered"], figures["failed"]) == (5, 4, 1)
    assert figures["shares"] == {"A": 0.5, "B": 0.5}  # from the warm-up on, the failed ask included


def test_series_bins_per_replica_and_throughput_is_replies_over_the_busy_span() -> None:
    log = log_of([(0.2, "A", 100.0), (0.7, "B", 100.0), (1.1, "A", 100.0), (2.9, "A", 1100.0)])
    assert series(log, 3.0, AB) == {"A": [1, 1, 1], "B": [1, 0, 0]}
    assert throughput(log) == round(4 / (4.0 - 0.2), 2)


@pytest.mark.parametrize(("values", "expected"), [
    ([0.3, 0.1, 0.2], 0.2),
    ([5.0, None, 7.0], 7.0),  # a None (never back) is larger than any value
    ([5.0, None, None], None),
    ([], None),
])
def test_median_counts_never_as_the_largest(values: list[float | None], expected: float | None) -> None:
    assert median(values) == expected


@pytest.mark.parametrize(("name", "ms"), [("Pool-1", 10.0), ("Pool-2", 20.0), ("Pool-3", 40.0)])
def test_a_server_s_mean_service_time_comes_from_its_replica_index(name: str, ms: float) -> None:
    assert service_ms(name) == ms


@pytest.mark.parametrize("name", ["Pool", "Pool-4", "Pool-0"])
def test_a_server_outside_replicas_one_to_three_is_refused(name: str) -> None:
    with pytest.raises(RoleError):
        service_ms(name)


def test_routing_cpu_is_measured_for_a_group_and_for_a_fixed_name() -> None:
    config = mesh_config("Pool", "x.y:Z", 3, {"model": "physarum"})
    replicas = ["Pool-1", "Pool-2", "Pool-3"]
    assert cpu_per_message(config, "Pool", replicas, 500, None) > 0
    assert cpu_per_message(None, "Pool", replicas, 500, None) > 0
