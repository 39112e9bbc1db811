"""`agentmesh bench routing --quick` for real: three replicas and a load generator per model
on throwaway brokers and Valkeys, a kill -9 and a restart. The JSON has every field, every
ask was answered and none handled twice. Nothing here checks a speed or a share: the
targets live in the bench's output."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentmesh_cli.bench import routing
from tests.helpers.commands import agentmesh

CONTRACT = {"scenario", "settings", "figures", "raw", "floor", "ratios", "targets", "notes", "series"}
REPLICAS = {"Pool-1", "Pool-2", "Pool-3"}


def _latency(value: dict[str, Any]) -> None:
    assert 0 < value["p50_ms"] <= value["p99_ms"] <= value["max_ms"]
    assert len(value["p99_ms_runs"]) == 1
    assert set(value["shares"]) == REPLICAS and abs(sum(value["shares"].values()) - 1) < 0.01
    assert value["asks"] > 0 and value["failed"] == 0 and value["handled_twice"] == 0


@pytest.mark.timeout(420)
def test_a_quick_routing_run_answers_every_ask_and_reports_every_field() -> None:
    done = agentmesh("bench", "routing", "--quick", "--json", timeout=400)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == CONTRACT and result["scenario"] == "routing"
    settings, f = result["settings"], result["figures"]
    assert settings["runs"] == 1 and settings["models"] == list(routing.DEFAULT_MODELS)
    assert settings["routing"]["round_robin"]["weights"] == {"Pool-1": 4.0, "Pool-2": 2.0, "Pool-3": 1.0}
    assert settings["kill"]["replica"] == "Pool-3" and settings["kill"]["models"] == list(routing.KILL_MODELS)
    # every ask answered, none handled twice, every one in the group's ledger
    assert f["asks"]["asks"] > 0
    assert (f["asks"]["failed"], f["asks"]["unhandled"], f["asks"]["handled_twice"]) == (0, 0, 0)
    assert result["targets"]["lost_or_handled_twice"] == {"target": "0", "value": 0, "met": True}
    assert set(f["latency"]) == {"50%", "80%", "95%"}
    for by_model in f["latency"].values():
        assert set(by_model) == set(routing.DEFAULT_MODELS)
        for value in by_model.values():
            _latency(value)
    for model, trial in f["kill"].items():
        assert trial["asks"] > 0 and trial["failed"] == 0 and trial["handled"] == trial["asks"], model
        assert trial["handled_twice"] == 0
        assert 0 <= trial["dead_share"] <= 1 and 0 < trial["share_before"] <= 1
        assert trial["restart_ready_s"] is not None and trial["restart_ready_s"] > 0
    # the router's CPU per message, against an ask to a fixed name; and what each replica served
    assert set(f["routing_cpu_us"]["router_alone"]) == {"fixed_name", *routing.DEFAULT_MODELS}
    assert all(us > 0 for us in f["routing_cpu_us"]["router_alone"].values())
    assert set(result["raw"]["capacity_msg_s"]) == REPLICAS
    assert all(v > 0 for v in result["raw"]["capacity_msg_s"].values())
    for name in ("p99_physarum_to_p2c_ewma", "p99_physarum_to_p2c_ewma_paired"):
        assert set(result["ratios"][name]) == {"50%", "80%", "95%"}
    assert all(len(runs) == 1 for runs in result["ratios"]["p99_physarum_to_p2c_ewma_paired_runs"].values())
    assert set(result["targets"]) == {"p99_physarum_to_p2c_ewma_at_80%", "dead_share_physarum",
                                      "back_to_fair_share_physarum_s", "lost_or_handled_twice"}
    for target in result["targets"].values():
        assert set(target) == {"target", "value", "met"} and isinstance(target["met"], bool)
    # the series the plots draw: per-second counts per replica, the sender's router state
    for model in routing.KILL_MODELS:
        (trial_series,) = result["series"]["kill"][model]
        assert trial_series["kill_s"] < trial_series["restart_s"] < trial_series["seconds"]
        assert set(trial_series["per_second"]) == REPLICAS
        assert sum(map(sum, trial_series["per_second"].values())) == f["kill"][model]["asks"]
        assert trial_series["snapshots"] and set(trial_series["snapshots"][0]["replicas"]) == REPLICAS
    physarum_state = result["series"]["kill"]["physarum"][0]["snapshots"][-1]["replicas"]["Pool-1"]
    assert {"conductance", "probability", "outstanding", "ewma_ms"} <= set(physarum_state)
