"""`agentmesh chaos` for real: its own embedded mesh under supervisord, an agent and the
topology manager killed with SIGKILL under a probe stream, every figure reported, none lost
or handled twice; Ctrl+C tears the mesh down. Plus the pure parts: the fault plan, the
judge of status frames, the table."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from rich.console import Console

from agentmesh_cli.chaos.faults import GARBAGE, KILL, STALL, Fault, plan_faults
from agentmesh_cli.chaos.observe import judge
from agentmesh_cli.chaos.report import chaos_table
from agentmesh_cli.errors import ConfigError
from agentmesh_cli.supervisor.control import _alive
from tests.conftest import agentmesh, wait_for

AGENTS = ["Sales", "Support", "Inventory", "Fraud"]
PROGRAMS = sorted(["kafka", "redis", "memory", "cognition", "metrics", "topology-manager",
                   "consensus-manager", *(f"agent-{a}" for a in AGENTS)])


def mesh_processes(root: Path) -> list[int]:
    """Pids of processes whose command line names the mesh folder (its programs)."""
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if any(str(root) in arg for arg in p.info["cmdline"] or [])]


def supervisord_pid(root: Path) -> int:
    pidfile = root / ".agentmesh" / "supervisord.pid"
    return int(pidfile.read_text().strip() or 0) if pidfile.exists() else 0


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """The chaos mesh's folder; a supervisord the command left behind is ended by pid."""
    root = tmp_path / "mesh"
    yield root
    pid = supervisord_pid(root)
    if pid and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not _alive(pid), 30, "supervisord to exit")


def test_chaos_kills_an_agent_and_the_topology_manager(workdir: Path) -> None:
    result = agentmesh("chaos", "--faults", "agent-Sales,topology-manager", "--pause", "1",
                       "--rate", "100", "--drain", "30", "--workdir", str(workdir), "--json",
                       timeout=170)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert {"v", "mesh", "embedded", "duration_s", "settings", "agents", "faults", "probes",
            "duplicates_handled", "duplicates_recognised", "messages_in", "demo_messages_in",
            "dead_letters", "proposals", "status", "ok"} <= set(data)
    assert data["ok"] and data["embedded"] and data["agents"] == AGENTS
    assert [(f["target"], f["phase"]) for f in data["faults"]] == [
        ("agent-Sales", "sequence"), ("topology-manager", "sequence")]
    for fault in data["faults"]:
        assert {"fault", "detect_s", "recover_s", "detected_by", "recovered_by", "lost", "note"} <= set(fault)
    probes = data["probes"]
    assert {"produced", "sent", "handled", "lost", "unconfirmed", "per_agent"} <= set(probes)
    assert set(probes["per_agent"]) == set(AGENTS)
    # the correctness figures (timings vary with the machine, these do not)
    assert probes["lost"] == 0 and data["duplicates_handled"] == 0
    assert probes["sent"] > 0 and probes["handled"] == probes["sent"]
    proposals = data["proposals"]
    assert {"opened", "decided", "opened_more_than_once", "decided_more_than_once", "overdue",
            "pending"} <= set(proposals)
    assert proposals["decided_more_than_once"] == 0 and proposals["overdue"] == 0
    assert {"samples", "disagreements", "failed", "examples"} <= set(data["status"])
    assert data["status"]["samples"] > 0
    assert not _alive(supervisord_pid(workdir))  # the command stopped its mesh
    assert mesh_processes(workdir) == []


def test_ctrl_c_stops_the_mesh(workdir: Path) -> None:
    with subprocess.Popen([sys.executable, "-m", "agentmesh_cli", "chaos", "--faults", "agents",
                           "--workdir", str(workdir)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                if line.startswith("probes flowing"):
                    break
            pid = supervisord_pid(workdir)
            assert pid and _alive(pid)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(90) == 130
            assert not _alive(pid) and mesh_processes(workdir) == []
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.parametrize(("spec", "expected"), [
    ("agent-Sales,topology-manager", [Fault(KILL, "agent-Sales"), Fault(KILL, "topology-manager")]),
    ("managers,stall:Sales", [Fault(KILL, "topology-manager"), Fault(KILL, "consensus-manager"),
                              Fault(STALL, "Sales")]),
    ("infra, garbage, stall", [Fault(KILL, "redis"), Fault(KILL, "kafka"), Fault(GARBAGE),
                               Fault(STALL, "Fraud")]),
    ("all", [*(Fault(KILL, f"agent-{a}") for a in AGENTS),
             *(Fault(KILL, p) for p in ("topology-manager", "consensus-manager", "memory",
                                        "cognition", "metrics", "redis", "kafka")),
             Fault(STALL, "Fraud"), Fault(GARBAGE)]),
])
def test_fault_plan(spec: str, expected: list[Fault]) -> None:
    assert plan_faults(spec, PROGRAMS, AGENTS) == expected


def test_fault_plan_without_embedded_infra_and_bad_names() -> None:
    external = [p for p in PROGRAMS if p not in ("kafka", "redis")]
    assert plan_faults("infra,services", external, AGENTS) == [
        Fault(KILL, "memory"), Fault(KILL, "cognition"), Fault(KILL, "metrics")]
    with pytest.raises(ConfigError, match="unknown fault 'agent-Nobody'"):
        plan_faults("agent-Nobody", PROGRAMS, AGENTS)
    with pytest.raises(ConfigError, match="no agent 'Nobody'"):
        plan_faults("stall:Nobody", PROGRAMS, AGENTS)


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
        "embedded": True, "mesh": "chaos", "agents": AGENTS, "duration_s": 61.0,
        "settings": {"rate": 200}, "faults": [fault, *randoms],
        "probes": {"sent": 1000, "produced": 1002, "refused": 2, "unconfirmed": 0,
                   "handled": 998, "lost": 2},
        "duplicates_handled": 0, "duplicates_recognised": 5, "dead_letters": 0, "demo_messages_in": 40,
        "proposals": {"opened": 3, "decided": 3, "opened_more_than_once": 0,
                      "decided_more_than_once": 0, "overdue": 0, "pending": 0},
        "status": {"samples": 60, "disagreements": 0, "failed": 0, "slowest_s": 0.4}, "ok": False,
    }
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(chaos_table(result))
    text = out.getvalue()
    assert "kill -9 agent-Sales" in text and "3.50" in text
    assert "random: kill -9 agent-Sales x3" in text and "3.00 / 4.00" in text and "1 not recovered" in text
    assert "probes lost" in text and "must be 0: FAILED" in text
    assert "duplicates handled" in text and "must be 0: ok" in text
