"""`agentmesh bench gateway` for real, through the command line, with small settings: a
throwaway broker and Valkey, the asker and answerer agents and the gateway as processes.
Every field is reported and sane, every ask sent is answered, every follower gets every
event of its conversation, and each ratio and target is computed from its figures. Nothing
here checks a speed: the targets live in the bench's output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

from agentmesh_cli.bench import gateway
from agentmesh_cli.bench.infra import ratio

CONTRACT = {"scenario", "settings", "figures", "raw", "floor", "ratios", "targets", "notes"}
RUN_TIMEOUT_S = 120


def bench_gateway(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command; on a timeout it gets SIGINT (the bench then stops what it started,
    by pid) before the test fails."""
    command = [sys.executable, "-m", "agentmesh_cli", "bench", "gateway", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "160"})
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        raise AssertionError(f"bench gateway did not finish in {RUN_TIMEOUT_S} s:\n{err[-2000:]}") from None
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _percentiles(value: dict[str, Any]) -> None:
    assert 0 < value["p50_ms"] <= value["p99_ms"] <= value["max_ms"]
    assert value["mean_ms"] > 0


def test_a_short_gateway_run_through_the_command_line_has_every_field() -> None:
    done = bench_gateway("--repeats", "1", "--rate", "100", "--duration", "1", "--samples", "20",
                         "--followers", "20", "--follower-events", "3", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == CONTRACT and result["scenario"] == "gateway"
    settings = result["settings"]
    assert (settings["repeats"], settings["rate"], settings["duration_s"], settings["samples"],
            settings["followers"], settings["follower_events"]) == (1, 100, 1.0, 20, 20, 3)
    f, raw = result["figures"], result["raw"]

    # every ask sent on the schedule was answered, through the gateway and directly
    assert f["asks_sent"] == f["asks_answered"] == 100 and f["asks_failed"] == 0
    assert raw["direct_asks_sent"] == raw["direct_asks_answered"] == 100 and raw["direct_asks_failed"] == 0
    for latency in (f["gateway_ask"], f["gateway_one_in_flight"], raw["direct_ask"],
                    raw["direct_one_in_flight"]):
        _percentiles(latency)
    assert f["gateway_ask_p50_runs"] == [f["gateway_ask"]["p50_ms"]]
    assert raw["direct_ask_p50_runs"] == [raw["direct_ask"]["p50_ms"]]
    # one round: the difference is that round's own
    assert f["p50_added_ms"] == round(f["gateway_ask"]["p50_ms"] - raw["direct_ask"]["p50_ms"], 3)
    assert f["p50_added_ms_runs"] == [f["p50_added_ms"]]
    assert f["p50_added_one_in_flight_ms"] == round(
        f["gateway_one_in_flight"]["p50_ms"] - raw["direct_one_in_flight"]["p50_ms"], 3)
    # the gateway and the generator both used CPU, and each figure is per answered ask
    assert f["gateway_cpu_us_per_ask"] > 0
    assert f["gateway_cpu_us_per_ask_runs"] == [f["gateway_cpu_us_per_ask"]]
    assert 0 < f["gateway_cpu_share"] < 2 and 0 <= f["gateway_idle_cpu_share"] < 2
    assert f["gateway_cpu_us_per_ask_above_idle"] <= f["gateway_cpu_us_per_ask"]
    assert f["generator_cpu_us_per_ask"] > 0 and 0 < f["generator_cpu_share"] < 2

    # every follower got every event of its conversation, in order, and nothing else
    sse = f["sse"]
    assert sse["followers"] == 20 and sse["events_per_follower"] == 3
    assert sse["events_appended"] == sse["events_delivered"] == 60
    assert sse["followers_complete"] == sse["followers_in_order"] == 20 and sse["problems"] == 0
    _percentiles(sse["delivery"])
    assert sse["open_s"] > 0 and sse["append_rate"] > 0
    assert sse["gateway_cpu_s_open"] >= 0 and sse["gateway_cpu_s_delivery"] >= 0
    # per event delivered: the delivery phase's CPU over the 60 events (both rounded)
    assert abs(sse["gateway_cpu_us_per_event"] * 60 / 1e6 - sse["gateway_cpu_s_delivery"]) < 0.001
    rss = sse["rss_mb"]
    assert 0 < rss["before"] <= rss["peak"] and rss["open"] <= rss["peak"] and rss["after"] <= rss["peak"]

    # the floors: servers answering at once, loaded the same way (bench/floor_echo.py)
    floor = result["floor"]
    assert set(floor) == {"bare_http", "uvicorn_http"}
    assert all(kind["cpu_us_per_request"] >= 0 and kind["p50_ms"] > 0 for kind in floor.values())
    assert result["ratios"] == {
        "p50_gateway_to_direct": ratio(f["gateway_ask"]["p50_ms"], raw["direct_ask"]["p50_ms"]),
        "p99_gateway_to_direct": ratio(f["gateway_ask"]["p99_ms"], raw["direct_ask"]["p99_ms"]),
        "p50_one_in_flight_gateway_to_direct": ratio(f["gateway_one_in_flight"]["p50_ms"],
                                                     raw["direct_one_in_flight"]["p50_ms"]),
        "gateway_cpu_per_ask_to_uvicorn_floor": ratio(f["gateway_cpu_us_per_ask"],
                                                      floor["uvicorn_http"]["cpu_us_per_request"]),
    }
    targets = result["targets"]
    assert set(targets) == {"gateway_cpu_us_per_ask", "p50_added_ms", "p50_added_one_in_flight_ms",
                            "followers_complete"}
    for target in targets.values():
        assert set(target) == {"target", "value", "met"}
        assert isinstance(target["target"], str) and isinstance(target["met"], bool)
    assert targets["gateway_cpu_us_per_ask"]["value"] == f["gateway_cpu_us_per_ask"]
    assert targets["gateway_cpu_us_per_ask"]["met"] == (f["gateway_cpu_us_per_ask"]
                                                        <= gateway.TARGET_CPU_US_PER_ASK)
    assert targets["p50_added_ms"]["value"] == f["p50_added_ms"]
    assert targets["p50_added_ms"]["met"] == (f["p50_added_ms"] <= gateway.TARGET_P50_ADDED_MS)
    assert targets["p50_added_one_in_flight_ms"]["value"] == f["p50_added_one_in_flight_ms"]
    assert targets["p50_added_one_in_flight_ms"]["met"] == (f["p50_added_one_in_flight_ms"]
                                                            <= gateway.TARGET_P50_ADDED_MS)
    assert targets["followers_complete"] == {"target": "= 20", "value": 20, "met": True}
    assert any("met" in note or "MISSED" in note for note in result["notes"])
