"""`agentmesh bench ask` and `agentmesh bench slow` for real, with small settings: a
throwaway broker and Valkey, the bench's waiting roles as agent processes. Every field is
reported, sane, and each ratio is computed from its figures. Nothing here checks a speed:
the targets live in the bench's output."""

from __future__ import annotations

import json
from typing import Any

from agentmesh_cli.bench import ask
from agentmesh_cli.bench.infra import ratio
from tests.helpers.commands import agentmesh

CONTRACT = {"scenario", "settings", "figures", "raw", "floor", "ratios", "targets", "notes"}


def _percentiles(value: dict[str, Any]) -> None:
    assert 0 < value["p50_ms"] <= value["p99_ms"] <= value["max_ms"]
    assert value["mean_ms"] > 0


def _targets(result: dict[str, Any], names: set[str]) -> None:
    assert set(result["targets"]) == names
    for target in result["targets"].values():
        assert set(target) == {"target", "value", "met"}
        assert isinstance(target["target"], str) and isinstance(target["met"], bool)
    assert result["notes"] and all(isinstance(note, str) for note in result["notes"])


def test_a_short_ask_run_has_every_field() -> None:
    result = ask.run(repeats=2, samples=20, concurrency=8, duration=0.5)
    json.dumps(result)  # JSON all the way down
    assert set(result) == CONTRACT and result["scenario"] == "ask"
    assert result["settings"]["repeats"] == 2 and result["settings"]["concurrency"] == 8
    f, raw = result["figures"], result["raw"]
    assert f["asks_per_s"] > 0 and len(f["asks_per_s_runs"]) == 2 and all(r > 0 for r in f["asks_per_s_runs"])
    for latency in (f["round_trip"], f["pipelined_round_trip"], raw["round_trip"]):
        _percentiles(latency)
    assert len(f["round_trip_p50_runs"]) == len(raw["round_trip_p50_runs"]) == 2
    assert f["asks_failed"] == 0
    assert set(f["cpu_share_pipelined"]) == {"asker", "answerer", "broker"}
    assert all(share > 0 for share in f["cpu_share_pipelined"].values())
    assert raw["fetch_wait_ms"] == result["settings"]["fetch_wait_ms"] > 0 and raw["value_bytes"] > 0
    # the ratio is the figures' own, and the target judges it
    p50_ratio = ratio(f["round_trip"]["p50_ms"], raw["round_trip"]["p50_ms"])
    assert result["ratios"] == {"round_trip_p50_to_raw": p50_ratio,
                                "round_trip_p99_to_raw": ratio(f["round_trip"]["p99_ms"],
                                                               raw["round_trip"]["p99_ms"])}
    _targets(result, {"round_trip_p50_to_raw"})
    target = result["targets"]["round_trip_p50_to_raw"]
    assert target["value"] == p50_ratio and target["met"] == (p50_ratio <= ask.TARGET_P50_TO_RAW)
    assert any(("met" in note or "MISSED" in note) and "1.5x raw" in note for note in result["notes"])


def test_a_short_slow_run_through_the_command_line_has_every_field() -> None:
    done = agentmesh("bench", "slow", "--repeats", "2", "--concurrency", "200", "--duration", "2", "--json",
                     timeout=170)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == CONTRACT and result["scenario"] == "slow"
    # the options given reach the scenario; the one not given (sleep) keeps its default
    settings = result["settings"]
    assert (settings["repeats"], settings["concurrency"], settings["duration_s"], settings["sleep_s"]) == \
        (2, 200, 2.0, 1.0)
    f, floor = result["figures"], result["floor"]
    assert f["msgs_per_s"] > 0 and len(f["msgs_per_s_runs"]) == 2
    assert f["loop_lag_p99_ms"] > 0 and len(f["loop_lag_p99_ms_runs"]) == 2
    assert 0 <= f["registry_loop_lag_p99_ms"] <= f["registry_loop_lag_max_ms"]
    assert 0 < f["rss_end_mb"] <= f["rss_peak_mb"]
    assert len(f["rss_growth_mb_runs"]) == 2 and isinstance(f["rss_growth_all_runs_mb"], float)
    # handlers running (at most the concurrency) and messages read and not finished
    assert 0 < f["running_min"] <= f["running_mean"] <= 200 and f["in_flight_mean"] > 0
    assert f["agent_cpu_share"] > 0 and f["broker_cpu_share"] > 0
    assert result["raw"] == {"ideal_msgs_per_s": 200.0}
    assert floor["sync_msgs_per_s"] > 0 and floor["sync_messages_per_run"] == 1
    # a sync handler that sleeps 1 s blocks its loop for as long
    assert floor["sync_loop_lag_max_ms"] >= 900
    assert result["ratios"] == {"msgs_per_s_to_ideal": ratio(f["msgs_per_s"], 200.0),
                                "msgs_per_s_to_sync": ratio(f["msgs_per_s"], floor["sync_msgs_per_s"])}
    _targets(result, {"msgs_per_s_to_ideal", "loop_lag_p99_ms", "rss_growth_mb"})
    assert result["targets"]["msgs_per_s_to_ideal"]["value"] == result["ratios"]["msgs_per_s_to_ideal"]
    assert result["targets"]["loop_lag_p99_ms"]["value"] == f["loop_lag_p99_ms"]
    assert result["targets"]["rss_growth_mb"]["value"] == f["rss_growth_mb"]
