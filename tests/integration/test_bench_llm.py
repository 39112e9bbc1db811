"""`agentmesh bench llm` for real, through the command line, with small settings: the
scripted model server, a throwaway broker and Valkey, the asker, the llm agent and
Inventory as processes. Every field is reported and sane, every chat and ask is answered,
and each overhead and ratio is the one worked out from the figures. Nothing here checks a
speed or compares two (docs/performance.md has the figures)."""

from __future__ import annotations

import json
from typing import Any

from agentmesh_cli.bench.llm import Measured, overheads
from tests.helpers.commands import agentmesh

CONTRACT = {"scenario", "settings", "figures", "raw", "floor", "ratios", "targets", "notes"}


def _percentiles(value: dict[str, Any]) -> None:
    assert 0 < value["p50_ms"] <= value["p99_ms"] <= value["max_ms"]
    assert value["mean_ms"] > 0


def test_a_short_llm_run_through_the_command_line_has_every_field() -> None:
    done = agentmesh("bench", "llm", "--samples", "10", "--repeats", "1", "--json", timeout=170)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == CONTRACT and result["scenario"] == "llm"
    settings = result["settings"]
    assert (settings["samples"], settings["repeats"], settings["model"]) == (10, 1, "scripted")
    f, raw, floor = result["figures"], result["raw"], result["floor"]

    # every chat and every ask got its answer; each latency is sane
    assert f["chats_failed"] == 0 and raw["asks_failed"] == 0
    for latency in (f["one_round"], f["tool_turn"], raw["ctx_ask"], floor["sdk_call"],
                    floor["sdk_tool_call"]):
        _percentiles(latency)
    assert f["one_round_p50_runs"] == [f["one_round"]["p50_ms"]]
    assert f["tool_turn_p50_runs"] == [f["tool_turn"]["p50_ms"]]
    assert raw["ctx_ask_p50_runs"] == [raw["ctx_ask"]["p50_ms"]]
    assert floor["sdk_call_p50_runs"] == [floor["sdk_call"]["p50_ms"]]

    # no comparison of speeds here (they flake on a shared machine: a bench's figures are
    # for the bench to print); only what holds by construction
    # CPU above the idle share is at least 0 (it is cut there); the gross figure holds it all
    assert f["llm_cpu_us_per_round_gross"] > 0 and floor["sdk_client_cpu_us_per_call"] > 0
    assert f["llm_cpu_us_per_round"] >= 0 and f["llm_cpu_us_per_tool_turn"] >= 0
    assert f["llm_cpu_us_per_round"] <= f["llm_cpu_us_per_round_gross"]
    assert 0 <= f["llm_idle_cpu_share"] < 1
    assert floor["sdk_client_cpu_us_per_tool_call"] > 0
    assert raw["asker_cpu_us_per_ask"] >= 0 and raw["inventory_cpu_us_per_ask"] >= 0
    # the server's CPU over ten calls can be below /proc's 10 ms tick
    assert floor["server_cpu_us_per_call"] >= 0 and f["server_cpu_us_per_role_call"] >= 0

    # one run: each overhead and ratio is the one worked out from the figures shown
    measured = Measured(
        sdk_p50_ms=floor["sdk_call"]["p50_ms"], sdk_tool_p50_ms=floor["sdk_tool_call"]["p50_ms"],
        ask_p50_ms=raw["ctx_ask"]["p50_ms"], round_p50_ms=f["one_round"]["p50_ms"],
        tool_turn_p50_ms=f["tool_turn"]["p50_ms"], sdk_cpu_us=floor["sdk_client_cpu_us_per_call"],
        sdk_tool_cpu_us=floor["sdk_client_cpu_us_per_tool_call"], asker_cpu_us=raw["asker_cpu_us_per_ask"],
        answerer_cpu_us=raw["inventory_cpu_us_per_ask"], round_cpu_us=f["llm_cpu_us_per_round"],
        tool_turn_cpu_us=f["llm_cpu_us_per_tool_turn"])
    worked_out = overheads(measured)
    assert result["ratios"] == {name: value for name, value in worked_out.items() if "_to_" in name}
    assert {name: f[name] for name in worked_out if "_to_" not in name} == \
        {name: value for name, value in worked_out.items() if "_to_" not in name}
    assert f["round_added_ms_runs"] == [f["round_added_ms"]]
    assert f["tool_round_added_ms_runs"] == [f["tool_round_added_ms"]]
    assert result["targets"] == {}
    assert any(note.startswith("the role's overhead per model round: ") for note in result["notes"])
    assert any(note.startswith("a tool round adds ") for note in result["notes"])
