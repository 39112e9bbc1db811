"""`agentmesh chaos`, the doze fault's pure parts: its plan, its row (judged), its note, the
figures summed over its rows, the summary lines and the verdict."""

from __future__ import annotations

import io
import math
from array import array
from typing import Any

import pytest
from rich.console import Console

from agentmesh_cli.chaos.faults import DOZE, KILL, STALL, Fault, plan_faults
from agentmesh_cli.chaos.figures import doze_figures
from agentmesh_cli.chaos.figures import judge as judge_result
from agentmesh_cli.chaos.report import chaos_table
from agentmesh_cli.chaos.sleep_tally import (
    doze_note,
    doze_row,
    first_probe_after,
    longest_gap,
    wake_summary,
)
from agentmesh_cli.errors import ConfigError
from tests.helpers.tables import CHAOS_AGENTS, quiet_chaos_result

PROGRAMS = sorted(["kafka", "redis", "memory", "cognition", "metrics", "topology-manager",
                   "consensus-manager", *(f"agent-{a}" for a in CHAOS_AGENTS)])
COUNTERS = {"doze_sleeps": 12, "doze_rung": 11, "doze_probe_found": 0, "doze_deaf": 4}


@pytest.mark.parametrize(("spec", "programs", "expected"), [
    # the first agent asleep, then Redis while they sleep
    ("doze", PROGRAMS, [Fault(DOZE, "agent-Sales"), Fault(DOZE, "redis")]),
    ("doze:Fraud,stall", PROGRAMS, [Fault(DOZE, "agent-Fraud"), Fault(DOZE, "redis"), Fault(STALL, "Fraud")]),
    # Redis is not the mesh's own (--config with an external Redis): the agent alone
    ("doze", [p for p in PROGRAMS if p != "redis"], [Fault(DOZE, "agent-Sales")]),
    ("agent-Sales,doze:Inventory", PROGRAMS,
     [Fault(KILL, "agent-Sales"), Fault(DOZE, "agent-Inventory"), Fault(DOZE, "redis")]),
])
def test_doze_plan(spec: str, programs: list[str], expected: list[Fault]) -> None:
    assert plan_faults(spec, programs, CHAOS_AGENTS) == expected


def test_doze_plan_labels_and_bad_names() -> None:
    everything = plan_faults("all", PROGRAMS, CHAOS_AGENTS)
    at = everything.index(Fault(DOZE, "agent-Sales"))  # after Redis and the broker, before the stall
    assert everything[at - 1:at + 3] == [Fault(KILL, "kafka"), Fault(DOZE, "agent-Sales"),
                                         Fault(DOZE, "redis"), Fault(STALL, "Fraud")]
    # with an llm agent first, the doze fault's agent is still a plain one
    assert plan_faults("doze", [*PROGRAMS, "agent-Concierge"], ["Concierge", *CHAOS_AGENTS], "Concierge")[0] \
        == Fault(DOZE, "agent-Sales")
    assert Fault(DOZE, "agent-Sales").label == "kill -9 agent-Sales asleep, probes to every agent"
    assert Fault(DOZE, "redis").label == "restart redis while the agents sleep (kill -9)"
    with pytest.raises(ConfigError, match="doze:Nobody: no agent 'Nobody'"):
        plan_faults("doze:Nobody", PROGRAMS, CHAOS_AGENTS)


def test_the_first_probe_after_a_mark() -> None:
    assert first_probe_after(CHAOS_AGENTS, "Inventory", -1) == 2  # none sent yet: its first
    assert first_probe_after(CHAOS_AGENTS, "Inventory", 42) == 46


def test_wake_summary_and_the_longest_gap() -> None:
    assert wake_summary({}) == (None, None)
    assert wake_summary({"Fraud": 30.0, "Inventory": 10.0, "Support": 20.0}) == (20.0, 30.0)
    assert wake_summary({"Fraud": 30.0, "Inventory": 10.0}) == (20.0, 30.0)
    produced = array("d", [1.000, 1.005, math.nan, 1.010, 1.060, 1.065])
    assert longest_gap(produced, 0, 6) == (50.0, 0.01)  # a refused probe (nan) is no gap of its own
    assert longest_gap(produced, 0, 3) == (5.0, 0.0)
    assert longest_gap(produced, 5, 6) == (0.0, 0.0)


def row(victim: str | None = "Sales", woke: dict[str, float] | None = None, twice: int | None = 0,
        back: bool = True, believed: list[str] | None = None) -> dict[str, Any]:
    sleepers = [a for a in CHAOS_AGENTS if a != victim]
    woke = {"Support": 12.0, "Inventory": 20.0, "Fraud": 31.0} if woke is None else woke
    return doze_row(victim, 1.8, sleepers, woke, twice, back,
                    ["Sales"] if believed is None else believed, gap=(24.0, 0.02))


@pytest.mark.parametrize(("kwargs", "ok"), [
    ({}, True),
    ({"twice": None}, True),  # Redis could not be read: the run's own figure judges
    ({"twice": 1}, False),
    ({"back": False}, False),  # the agent killed asleep never came back
    ({"woke": {"Support": 12.0, "Inventory": 20.0}}, False),  # Fraud never woke
    ({"victim": None, "woke": {a: 40.0 for a in CHAOS_AGENTS}}, True),
    ({"victim": None, "woke": {a: 40.0 for a in CHAOS_AGENTS if a != "Sales"}}, False),
])
def test_doze_row_verdict(kwargs: dict[str, Any], ok: bool) -> None:
    assert row(**kwargs)["ok"] is ok


def test_doze_row_and_note() -> None:
    killed = row()
    assert (killed["killed"], killed["wake_p50_ms"], killed["wake_max_ms"], killed["not_woken"],
            killed["stale_entry"], killed["believed_asleep"]) == ("Sales", 20.0, 31.0, [], True, None)
    assert doze_note(killed) == (
        "all asleep after 1.8 s; 3 of 3 sleepers woke, first probe to handled p50 20 ms, max 31 ms; "
        "Sales killed asleep, its stale asleep entry rung in vain; handled twice 0; probe stream's "
        "longest gap 24 ms (+0.0 s)")
    redis = row(None, {"Sales": 40.0, "Support": 52.0}, twice=None, believed=["Sales", "Support"])
    assert redis["killed"] == "redis" and redis["not_woken"] == ["Inventory", "Fraud"]
    assert doze_note(redis) == (
        "all asleep after 1.8 s; 2 of 4 sleepers woke, first probe to handled p50 46 ms, max 52 ms; "
        "[red]not woken: Inventory, Fraud[/]; 2 of 4 in the asleep hash when the probes resumed; "
        "handled twice unknown; probe stream's longest gap 24 ms (+0.0 s)")
    assert doze_note(row(woke={})).startswith(
        "all asleep after 1.8 s; none of 3 sleepers woke; [red]not woken")


def test_doze_figures_lines_and_verdict() -> None:
    assert doze_figures([], COUNTERS) is None
    redis = row(None, {a: 40.0 + i for i, a in enumerate(CHAOS_AGENTS)})
    figures = doze_figures([row(), redis], COUNTERS)
    assert figures == {"rows": 2, "woken": 7, "not_woken": 0, "wake_p50_ms": 40.0, "wake_max_ms": 43.0,
                       "handled_twice": 0, "counters": COUNTERS, "ok": True}
    fault = {"fault": "kill -9 agent-Sales asleep, probes to every agent", "phase": "sequence",
             "detect_s": 0.21, "recover_s": 3.45, "lost": 0, "note": doze_note(row()),
             "recovered_by": "new pid ready", "doze": row()}
    result = quiet_chaos_result(fault, CHAOS_AGENTS, 21.0, doze=figures)
    result["ok"] = judge_result(result)
    assert result["ok"]
    out = io.StringIO()
    Console(file=out, width=320, color_system=None).print(chaos_table(result))
    text = out.getvalue()
    assert "kill -9 agent-Sales asleep, probes to every agent" in text
    assert "ok: all asleep after 1.8 s" in text
    assert "sleeping agents woken (doze)" in text
    assert ("first probe sent to first handled: p50 40 ms, max 43 ms; over the run 12 sleeps, woken 11 by a "
            "ring, 0 by their probe, 4 deaf (Redis away)") in text
    assert "sleeping agents not woken" in text and "must be 0: ok" in text
    # a sleeper never woken fails the run, as a lost probe would
    failed = doze_figures([row(woke={"Support": 12.0})], COUNTERS)
    assert failed is not None and failed["not_woken"] == 2 and not failed["ok"]
    assert not judge_result({**result, "doze": failed})
