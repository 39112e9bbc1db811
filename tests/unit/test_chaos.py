"""`agentmesh chaos`, pure parts: the fault plan, the judge of status frames, the table."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from agentmesh_cli.chaos.faults import GARBAGE, KILL, RESTART, STALL, Fault, plan_faults
from agentmesh_cli.chaos.observe import judge
from agentmesh_cli.chaos.report import chaos_table
from agentmesh_cli.errors import ConfigError
from tests.helpers.tables import CHAOS_AGENTS

PROGRAMS = sorted(["kafka", "redis", "memory", "cognition", "metrics", "topology-manager",
                   "consensus-manager", *(f"agent-{a}" for a in CHAOS_AGENTS)])


@pytest.mark.parametrize(("spec", "expected"), [
    ("agent-Sales,topology-manager", [Fault(KILL, "agent-Sales"), Fault(KILL, "topology-manager")]),
    ("managers,stall:Sales", [Fault(KILL, "topology-manager"), Fault(KILL, "consensus-manager"),
                              Fault(STALL, "Sales")]),
    ("infra, garbage, stall", [Fault(KILL, "redis"), Fault(KILL, "kafka"), Fault(GARBAGE),
                               Fault(STALL, "Fraud")]),
    ("all", [*(Fault(KILL, f"agent-{a}") for a in CHAOS_AGENTS),
             *(Fault(KILL, p) for p in ("topology-manager", "consensus-manager", "memory",
                                        "cognition", "metrics", "redis", "kafka")),
             Fault(STALL, "Fraud"), Fault(GARBAGE), Fault(RESTART)]),
    ("restart,agent-Sales", [Fault(RESTART), Fault(KILL, "agent-Sales")]),
])
def test_fault_plan(spec: str, expected: list[Fault]) -> None:
    assert plan_faults(spec, PROGRAMS, CHAOS_AGENTS) == expected


def test_fault_plan_without_embedded_infra_and_bad_names() -> None:
    external = [p for p in PROGRAMS if p not in ("kafka", "redis")]
    assert plan_faults("infra,services", external, CHAOS_AGENTS) == [
        Fault(KILL, "memory"), Fault(KILL, "cognition"), Fault(KILL, "metrics")]
    with pytest.raises(ConfigError, match="unknown fault 'agent-Nobody'"):
        plan_faults("agent-Nobody", PROGRAMS, CHAOS_AGENTS)
    with pytest.raises(ConfigError, match="no agent 'Nobody'"):
        plan_faults("stall:Nobody", PROGRAMS, CHAOS_AGENTS)


def frame(programs: dict[str, tuple[str, int]], agents: dict[str, tuple[bool, int]]) -> dict[str, Any]:
    return {"programs": [{"name": n, "state": s, "pid": p} for n, (s, p) in programs.items()],
            "agents": [{"name": n, "program": f"agent-{n}", "alive": a, "pid": p}
                       for n, (a, p) in agents.items()]}


@pytest.mark.parametrize(("shown", "before", "after", "frozen", "problems"), [
    # agrees
    (frame({"agent-Sales": ("RUNNING", 7)}, {"Sales": (True, 7)}),
     {"agent-Sales": ("RUNNING", 7)}, {"agent-Sales": ("RUNNING", 7)}, {}, 0),
    # a new process that joined before supervisord calls it RUNNING
    (frame({"agent-Sales": ("STARTING", 8)}, {"Sales": (True, 8)}),
     {"agent-Sales": ("STARTING", 8)}, {"agent-Sales": ("STARTING", 8)}, {}, 0),
    # changed while the frame was taken: either answer is right
    (frame({"agent-Sales": ("RUNNING", 7)}, {"Sales": (True, 7)}),
     {"agent-Sales": ("RUNNING", 7)}, {"agent-Sales": ("BACKOFF", 0)}, {}, 0),
    # a dead agent shown alive, and a program shown with the wrong state
    (frame({"agent-Sales": ("RUNNING", 7)}, {"Sales": (True, 7)}),
     {"agent-Sales": ("BACKOFF", 0)}, {"agent-Sales": ("BACKOFF", 0)}, {}, 2),
    # alive with the old pid while another runs
    (frame({"agent-Sales": ("RUNNING", 9)}, {"Sales": (True, 7)}),
     {"agent-Sales": ("RUNNING", 9)}, {"agent-Sales": ("RUNNING", 9)}, {}, 1),
    # stopped for 10 s (timeout 3 s), still shown alive
    (frame({"agent-Sales": ("RUNNING", 7)}, {"Sales": (True, 7)}),
     {"agent-Sales": ("RUNNING", 7)}, {"agent-Sales": ("RUNNING", 7)}, {"Sales": 90.0}, 1),
])
def test_status_judge(shown: dict[str, Any], before: dict[str, tuple[str, int]],
                      after: dict[str, tuple[str, int]], frozen: dict[str, float], problems: int) -> None:
    assert len(judge(shown, before, after, frozen, 3.0, now=100.0)) == problems


def test_table_shows_faults_and_verdicts() -> None:
    fault = {"fault": "kill -9 agent-Sales", "phase": "sequence", "detect_s": 0.2, "recover_s": 3.5,
             "lost": 0, "note": "", "recovered_by": "new pid ready"}
    randoms = [{**fault, "phase": "random", "recover_s": r, "lost": 1} for r in (2.0, 4.0, None)]
    result = {
        "embedded": True, "mesh": "chaos", "agents": CHAOS_AGENTS, "duration_s": 61.0,
        "settings": {"rate": 200}, "faults": [fault, *randoms],
        "probes": {"sent": 1000, "produced": 1002, "refused": 2, "unconfirmed": 0,
                   "handled": 998, "lost": 2},
        "duplicates_handled": 0, "duplicates_recognised": 5, "dead_letters": 0, "demo_messages_in": 40,
        "proposals": {"opened": 3, "decided": 3, "opened_more_than_once": 0,
                      "decided_more_than_once": 0, "overdue": 0, "pending": 0},
        "status": {"samples": 60, "disagreements": 0, "failed": 0, "slowest_s": 0.4}, "ok": False,
        "asks": {"agents": ["Fraud", "Inventory"], "produced": 100, "refused": 0, "sent": 100,
                 "answered": 99, "lost": 1, "answered_twice": 0, "error_replies": 0,
                 "p50_ms": 12.0, "p99_ms": 80.0},
    }
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(chaos_table(result))
    text = out.getvalue()
    assert "kill -9 agent-Sales" in text and "3.50" in text
    assert "random: kill -9 agent-Sales x3" in text and "3.00 / 4.00" in text and "1 not recovered" in text
    assert "probes lost" in text and "must be 0: FAILED" in text
    assert "duplicates handled" in text and "must be 0: ok" in text
    assert "asks sent" in text and "to Fraud, Inventory, round trip p50 12 ms, p99 80 ms" in text
    assert "asks lost" in text and "asks answered twice" in text
