"""benchmarks/scale_curve_figures.py: a run's record from the mesh scenario's result, and a
size's medians over its runs, by exact tables."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.scale_curve_figures import median_of, run_record, size_record, table_row


@pytest.mark.parametrize(("values", "median"), [
    ([3, 1, 2], 2),
    ([1, 2], 1.5),  # an even count: the mean of the middle two
    ([0.1, 0.2, 0.4, 1.0], 0.3),
    ([1.23456, 2.0], 1.6173),  # to 4 digits
    ([5, None, 1], 3),  # a missing value is left out
    ([None], None),
    ([{"a": 1, "b": 10}, {"a": 3}, {"a": 2, "b": 20}], {"a": 2, "b": 15}),  # key by key
    ([{"p": {"q": 1}}, {"p": {"q": 3}}], {"p": {"q": 2}}),
    ([True, False, False], True),  # not a number: the first
    (["x", "y"], "x"),
])
def test_median_of(values: list[Any], median: Any) -> None:
    assert median_of(values) == median


def _mesh(rate: int, floor: int, p99: float, cpu: tuple[float, float, float, float],
          met: bool = True) -> dict[str, Any]:
    """A result of bench.mesh.run, reduced to what a run's record reads."""
    topology, broker, valkey, agents = cpu
    return {
        "settings": {"sign_envelopes": True},
        "figures": {"msgs_per_s": rate, "peak_latency": {"p50_ms": p99 / 2, "p99_ms": p99},
                    "paced": {"rate": rate // 2, "msgs_per_s": rate // 2, "latency": {"p99_ms": p99 / 4}},
                    "one_hop": {"p50_ms": 1.0}, "topology_cpu_share": topology, "broker_cpu_share": broker,
                    "valkey_cpu_share": valkey, "agents_cpu_share": agents, "topology_keeps_up": met,
                    "topology_backlog": [0, 0, 0], "agent_rss_mb": {"max": 80.0, "mean": 70.0}},
        "raw": {"throughput": {"records_per_s": 3 * floor}, "one_hop": {"p50_ms": 0.5}},
        "floor": {"replies_per_s": floor, "latency": {"p50_ms": 2.0, "p99_ms": 9.0}},
        "ratios": {"msgs_per_s_to_floor": round(rate / floor, 3)},
        "targets": {"msgs_per_s_to_floor": {"target": ">= 0.7", "value": round(rate / floor, 3), "met": met}},
        "notes": [],
    }


RSS = {"agent": {"processes": 4, "max": 80.0, "mean": 70.0}}


def test_a_run_record_has_the_cpu_of_every_program() -> None:
    run = run_record(4, _mesh(1000, 2000, 50.0, (0.1, 0.8, 0.2, 0.6)), "", RSS)
    assert run["cpu_share"] == {"topology": 0.1, "broker": 0.8, "valkey": 0.2, "agents": 0.6,
                                "inbox_reader": 0.0, "per_agent": 0.15, "total": 1.7}
    assert (run["msgs_per_s"], run["floor_replies_per_s"], run["raw_records_per_s"]) == (1000, 2000, 6000)
    assert (run["one_hop_p50_ms"], run["raw_one_hop_p50_ms"]) == (1.0, 0.5)
    assert run["ratios"] == {"msgs_per_s_to_floor": 0.5}
    assert run["peak_rss_mb"] == RSS


def test_a_size_record_holds_the_medians_of_the_runs_that_succeeded() -> None:
    runs = [run_record(4, _mesh(1000, 2000, 50.0, (0.1, 0.8, 0.2, 0.6)), "", RSS),
            run_record(4, None, "BenchError: the bench mesh did not start", {}),
            run_record(4, _mesh(3000, 2000, 30.0, (0.3, 1.0, 0.2, 1.0), met=False), "", RSS),
            run_record(4, _mesh(2000, 2500, 70.0, (0.2, 0.9, 0.4, 0.8)), "", RSS)]
    record = size_record(4, runs, decay={"error": "RuntimeError: no"}, status=None)
    assert (record["runs_ok"], record["runs_failed"], record["runs"]) == (3, 1, runs)
    assert (record["msgs_per_s"], record["floor_replies_per_s"]) == (2000, 2000)
    assert record["ratios"] == {"msgs_per_s_to_floor": 0.8}  # the median ratio, not a ratio of medians
    assert record["peak_latency"]["p99_ms"] == 50.0
    assert record["paced"]["latency"]["p99_ms"] == 12.5
    # each figure's own median: the total's (of 1.7, 2.5, 2.3) is not the sum of the others'
    assert record["cpu_share"] == {"topology": 0.2, "broker": 0.9, "valkey": 0.2, "agents": 0.8,
                                   "inbox_reader": 0.0, "per_agent": 0.2, "total": 2.3}
    assert record["targets"] == {"msgs_per_s_to_floor": {"value": 0.8, "met_runs": 2, "runs": 3}}
    assert record["topology_keeps_up"] is False  # not in every run
    assert (record["decay_error"], "status" in record, "mesh_error" in record) == ("RuntimeError: no", False,
                                                                                 False)
    assert table_row(record, "4 med").split()[:4] == ["4", "med", "2,000", "2,000"]


def test_a_size_whose_runs_all_failed_says_why() -> None:
    runs = [run_record(64, None, "WaitTimeout: the relays to flush", {"broker": {"max": 300.0}})]
    record = size_record(64, runs)
    assert record["mesh_error"] == "WaitTimeout: the relays to flush"
    assert record["peak_rss_mb"] == {"broker": {"max": 300.0}}
    assert "msgs_per_s" not in record
    assert "mesh scenario failed: WaitTimeout" in table_row(record, "64 med")
