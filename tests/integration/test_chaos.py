"""`agentmesh chaos` for real: its own embedded mesh under supervisord, an agent and the
topology manager killed with SIGKILL under a probe stream, every figure reported, none lost
or handled twice; the llm agent killed mid-answer, every chat answered once and its tool
asked once; a replica group's replicas killed mid-work and the group scaled down and up,
every ask to it answered and handled once; Ctrl+C tears the mesh down (test_chaos_readers.py:
the sleeping agents' and the host inbox reader's faults). And the scripted model
server the llm fault runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agentmesh_cli.errors import ConfigError
from agentmesh_cli.llm.process import model_calls, start_scripted
from agentmesh_cli.supervisor.control import _alive
from tests.helpers.chaos_mesh import chaos_workdir, mesh_processes, supervisord_pid
from tests.helpers.commands import agentmesh
from tests.helpers.tables import CHAOS_AGENTS


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """The chaos mesh's folder; a supervisord the command left behind is ended by pid."""
    yield from chaos_workdir(tmp_path)


def test_chaos_kills_an_agent_and_the_topology_manager_then_restarts_the_mesh(workdir: Path) -> None:
    result = agentmesh("chaos", "--faults", "agent-Sales,topology-manager,restart", "--pause", "1",
                       "--rate", "100", "--drain", "30", "--workdir", str(workdir), "--json",
                       timeout=170)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert {"v", "mesh", "embedded", "duration_s", "settings", "agents", "faults", "probes",
            "duplicates_handled", "duplicates_recognised", "messages_in", "demo_messages_in",
            "dead_letters", "proposals", "status", "ok"} <= set(data)
    assert data["ok"] and data["embedded"] and data["agents"] == CHAOS_AGENTS
    assert [(f["kind"], f["target"], f["phase"]) for f in data["faults"]] == [
        ("kill", "agent-Sales", "sequence"), ("kill", "topology-manager", "sequence"),
        ("restart", "", "sequence")]
    restart = data["faults"][2]
    assert restart["recover_s"] is not None and restart["detected_by"].startswith("down returned")
    assert restart["note"].startswith(("drained", "drain timeout")), restart["note"]
    for fault in data["faults"]:
        assert {"fault", "detect_s", "recover_s", "detected_by", "recovered_by", "lost", "note"} <= set(fault)
    probes = data["probes"]
    assert {"produced", "sent", "handled", "lost", "unconfirmed", "per_agent"} <= set(probes)
    assert set(probes["per_agent"]) == set(CHAOS_AGENTS)
    # the correctness figures (timings vary with the machine, these do not)
    assert probes["lost"] == 0 and data["duplicates_handled"] == 0
    assert probes["sent"] > 0 and probes["handled"] == probes["sent"]
    proposals = data["proposals"]
    assert {"opened", "decided", "opened_more_than_once", "decided_more_than_once", "overdue",
            "pending"} <= set(proposals)
    assert proposals["decided_more_than_once"] == 0 and proposals["overdue"] == 0
    assert {"samples", "disagreements", "failed", "examples"} <= set(data["status"])
    assert data["status"]["samples"] > 0
    # ask traffic through the faults: every ask answered (kill -9 of an answerer included), none twice
    asks = data["asks"]
    assert asks["agents"] == ["Fraud", "Inventory", "Sales"]
    assert asks["sent"] > 0 and asks["answered"] == asks["sent"] and asks["lost"] == 0
    assert asks["answered_twice"] == 0 and asks["error_replies"] == 0
    assert not _alive(supervisord_pid(workdir))  # the command stopped its mesh
    assert mesh_processes(workdir) == []


def test_chaos_kills_the_llm_agent_mid_answer(workdir: Path) -> None:
    result = agentmesh("chaos", "--faults", "llm", "--pause", "0", "--rate", "50", "--ask-rate", "0",
                       "--drain", "20", "--workdir", str(workdir), "--json", timeout=170)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] and data["agents"] == ["Concierge", *CHAOS_AGENTS]
    assert [(f["kind"], f["target"]) for f in data["faults"]] == [("llm", "agent-Concierge")]
    fault = data["faults"][0]
    chats = fault["chats"]
    assert chats["ok"] and fault["recover_s"] is not None, fault["note"]
    assert len(chats["kills"]) == 2 and all(k["recover_s"] is not None for k in chats["kills"])
    # every chat answered once, handled once, and its one tool request handled once
    assert chats["sent"] > 0
    assert chats["sent"] == chats["answered"] == chats["handled"] == chats["tool_requests"]
    assert (chats["lost"], chats["failed"], chats["answered_twice"], chats["handled_twice"],
            chats["tool_asked_twice"], chats["tool_handled_twice"], chats["without_tool"]) == (0,) * 7
    # the kills landed while a chat streamed, and its re-run asked its tool again under the
    # same id: answered from Inventory's reply cache, not handled again
    assert data["llm"]["kills_mid_answer"] >= 1 and chats["tool_cached_replies"] >= 1, fault["note"]
    assert chats["model_calls"] is not None and chats["model_calls"] >= 2 * chats["answered"]
    assert (workdir / "scripted-llm.json").exists()
    assert not _alive(supervisord_pid(workdir)) and mesh_processes(workdir) == []  # the model server too


def test_chaos_kills_replicas_mid_work_and_scales_the_group_under_asks(workdir: Path) -> None:
    result = agentmesh("chaos", "--faults", "replicas", "--pause", "0", "--rate", "50", "--ask-rate", "0",
                       "--drain", "20", "--workdir", str(workdir), "--json", timeout=200)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] and [(f["kind"], f["target"]) for f in data["faults"]] == [("replicas", "Support")]
    fault = data["faults"][0]
    row = fault["replicas"]
    assert row["ok"] and fault["recover_s"] is not None, fault["note"]
    # kill -9 of a replica every few seconds, each back and at work again
    assert len(row["kills"]) == 6 and all(k["recover_s"] is not None for k in row["kills"])
    assert sum(1 for k in row["kills"] if k["in_flight"] > 0) >= 1  # mid-work: asks waited on it
    # scaled down (the leaving replica killed as it retired, its unread asks handed over) and back up
    scale = row["scale"]
    assert scale["done"] and scale["killed_retiring"] >= 1 and scale["leaving"] == "Support-3", scale
    assert scale["handed_over"] >= 1 and scale["waited_for_return"] == 0, scale  # handed to the others
    assert set(row["per_replica"]) == {"Support-1", "Support-2", "Support-3"}
    # every ask answered once, handled once by the group, nothing asked of Sales twice
    assert row["sent"] > 0 and row["sent"] == row["answered"] == row["handled"] + row["unrecorded"]
    assert (row["lost"], row["failed"], row["handled_twice"], row["answered_twice"], row["asked_twice"],
            row["asked_handled_twice"]) == (0,) * 6
    assert row["conversations"] > 1 and data["replicas"]["ok"]
    # the probes to the replica scaled away were held, not handed over: none lost
    assert data["probes"]["lost"] == 0 and data["duplicates_handled"] == 0
    assert not _alive(supervisord_pid(workdir)) and mesh_processes(workdir) == []


def test_the_scripted_model_server_starts_counts_and_stops(tmp_path: Path) -> None:
    script = {"scenarios": [{"steps": [{"text": "hi there"}]}]}
    server = start_scripted(script, tmp_path)
    try:
        assert server.base_url.startswith("http://127.0.0.1:") and server.base_url.endswith("/v1")
        assert model_calls(server.base_url) == 0
        answer = httpx.post(server.base_url + "/chat/completions", timeout=10,
                            json={"model": "scripted", "messages": [{"role": "user", "content": "hello"}]})
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "hi there"
        assert model_calls(server.base_url) == 1
    finally:
        server.stop()
    assert not _alive(server.pid) and server.proc.returncode == 0
    assert model_calls(server.base_url) is None  # gone: no answer, not an error


def test_a_bad_script_is_refused_before_a_server_starts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"the model script: scenarios: List should have at least 1 item"):
        start_scripted({"scenarios": []}, tmp_path)
    assert not (tmp_path / "scripted-llm.log").exists()  # nothing was started


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


