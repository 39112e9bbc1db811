"""The whole mesh for real: `agentmesh up` -> supervisord -> embedded broker and Valkey ->
topology manager -> agents; send, reinforce, SIGKILL and resume, apply changes, down."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agentmesh_cli.constants import inbox_partition
from agentmesh_cli.embedded import free_port
from agentmesh_cli.supervisor.control import _alive
from agentmesh_cli.waiting import wait_until
from tests.helpers.commands import agentmesh
from tests.helpers.mesh import REPO, edge, pids, status, write_mesh


@pytest.fixture
def mesh_dir(tmp_path: Path) -> Iterator[Path]:
    """A mesh folder; whatever `up` started there is stopped afterwards, by pid."""
    yield tmp_path
    pidfile = tmp_path / ".agentmesh" / "supervisord.pid"
    if not pidfile.exists():
        return
    agentmesh("down", "--config", str(tmp_path / "mesh.yaml"), timeout=60)
    pid = int(pidfile.read_text().strip() or 0) if pidfile.exists() else 0
    if pid and _alive(pid):  # down failed: end supervisord; it ends its children
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not _alive(pid), 30, "supervisord to exit")


def test_up_send_kill_resume_change_down(mesh_dir: Path) -> None:
    config = write_mesh(mesh_dir, ["Sales", "Inventory", "Fraud"])
    up = agentmesh("up", "--config", str(config), "--timeout", "60")
    assert up.returncode == 0, up.stderr
    assert "ready  agent-Sales" in up.stderr

    data = status(config)
    assert data["v"] == 2 and data["supervisord"]["running"]
    assert sorted(p["name"] for p in data["programs"]) == [
        "agent-Fraud", "agent-Inventory", "agent-Sales", "cognition", "consensus-manager", "gateway",
        "kafka", "memory", "metrics", "redis", "topology-manager"]
    assert {p["state"] for p in data["programs"]} == {"RUNNING"}
    seen_pids = set(pids(data).values())
    supervisord_pid = int((mesh_dir / ".agentmesh" / "supervisord.pid").read_text())
    seen_pids.add(supervisord_pid)

    # supervisorctl works on the same configs
    ctl = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c",
                          str(mesh_dir / "supervisor.d" / "supervisord.conf"), "status"],
                         capture_output=True, text=True, timeout=30)
    assert ctl.returncode == 0, ctl.stdout
    assert len([line for line in ctl.stdout.splitlines() if " RUNNING " in line]) == 11

    # agents registered with the pids supervisord reports; a full mesh of 6 edges at 0.5
    data = wait_until(lambda: (d := status(config))["topology"] and
                    d["topology"]["stats"]["edges"] == 6 and d, 30, "6 edges")
    by_pid = pids(data)
    assert {a["name"]: a["pid"] for a in data["agents"]} == {
        n: by_pid[f"agent-{n}"] for n in ("Sales", "Inventory", "Fraud")}
    assert {e["weight"] for e in data["topology"]["edges"]} == {0.5}

    for _ in range(3):
        sent = agentmesh("send", "Sales", "Inventory", '{"note": "hi"}', "--config", str(config))
        assert sent.returncode == 0, sent.stderr
    data = wait_until(lambda: (d := status(config)) and (edge(d, "Sales", "Inventory") or {})
                    .get("usage") == 3 and d, 30, "3 reinforcements")
    assert edge(data, "Sales", "Inventory")["weight"] == 0.8  # type: ignore[index]
    tailed = agentmesh("tail", "messages", "--config", str(config))
    assert tailed.returncode == 0, tailed.stderr
    lines = [json.loads(line) for line in tailed.stdout.splitlines()]
    assert [(x["envelope"]["from_agent_id"], x["envelope"]["to_agent_id"]) for x in lines] == [
        ("Sales", "Inventory")] * 3
    assert {x["partition"] for x in lines} == {inbox_partition("Inventory", 4)}
    inventory = next(a for a in data["agents"] if a["name"] == "Inventory")
    wait_until(lambda: next(a for a in status(config)["agents"] if a["name"] == "Inventory")
             ["counters"].get("messages_in") == 3, 20, "Inventory to handle 3 messages")
    assert inventory["alive"]

    # SIGKILL the topology manager mid-stream: supervisord restarts it, it resumes from its
    # snapshot, and no reinforcement is lost or doubled
    old = by_pid["topology-manager"]
    os.kill(old, signal.SIGKILL)
    for _ in range(2):
        assert agentmesh("send", "Sales", "Inventory", "{}", "--config", str(config)).returncode == 0
    data = wait_until(lambda: (d := status(config)) and pids(d).get("topology-manager") not in (None, old)
                    and (edge(d, "Sales", "Inventory") or {}).get("usage") == 5 and d,
                    60, "the restarted manager to count 5")
    seen_pids.update(pids(data).values())
    assert edge(data, "Sales", "Fraud")["usage"] == 0  # type: ignore[index]
    log = (mesh_dir / "logs" / "topology-manager.log").read_text()
    assert "resumed from snapshot" in log
    for _ in range(6):  # usage stays exactly 5: nothing replayed twice
        assert edge(status(config), "Sales", "Inventory")["usage"] == 5  # type: ignore[index]

    # `up` again: the same supervisord, nothing changed
    again = agentmesh("up", "--config", str(config), "--timeout", "60")
    assert again.returncode == 0, again.stderr
    assert "no changes" in again.stdout
    assert int((mesh_dir / ".agentmesh" / "supervisord.pid").read_text()) == supervisord_pid

    # change mesh.yaml: Fraud removed, Support added; the difference is applied
    fraud_pid = pids(status(config))["agent-Fraud"]
    cfg = yaml.safe_load(config.read_text())
    cfg["agents"] = [a for a in cfg["agents"] if a["name"] != "Fraud"] + [
        {"name": "Support", "role": "support"}]
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    changed = agentmesh("up", "--config", str(config), "--timeout", "60")
    assert changed.returncode == 0, changed.stderr
    assert "added 1" in changed.stdout and "removed 1" in changed.stdout
    data = status(config)
    assert sorted(p["name"] for p in data["programs"]) == [
        "agent-Inventory", "agent-Sales", "agent-Support", "cognition", "consensus-manager", "gateway",
        "kafka", "memory", "metrics", "redis", "topology-manager"]
    assert not _alive(fraud_pid)
    assert not (mesh_dir / "supervisor.d" / "agent-Fraud.ini").exists()
    seen_pids.update(pids(data).values())
    wait_until(lambda: sorted(status(config)["topology"]["agents"]) == ["Inventory", "Sales", "Support"],
             30, "Fraud to leave the graph and Support to join")

    down = agentmesh("down", "--config", str(config))
    assert down.returncode == 0, down.stderr
    assert "stopping agents" in down.stderr and down.stderr.index("agents") < down.stderr.index("infra")
    assert [p for p in seen_pids if _alive(p)] == []
    assert agentmesh("status", "--config", str(config)).returncode == 1


def test_port_in_use_is_refused(mesh_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_mesh(mesh_dir, ["Sales"])
        cfg = yaml.safe_load(config.read_text())
        cfg["kafka"]["port"] = port
        config.write_text(yaml.safe_dump(cfg))
        result = agentmesh("up", "--config", str(config), "--timeout", "20")
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "kafka.port" in result.stderr
    assert not (mesh_dir / ".agentmesh" / "supervisord.pid").exists()


def test_failing_program_shows_its_log_tail(mesh_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # so supervisord's agent can import the test role
    config = write_mesh(mesh_dir, ["Sales", "Broken"])
    cfg = yaml.safe_load(config.read_text())
    cfg["agents"][1]["role"] = "tests.helpers.roles:BrokenRole"
    # FATAL after one retry (about 2 s of backoff), well within the timeout even on a
    # loaded machine, where the agents that do start may take long to be ready
    cfg["supervisor"] = {**cfg.get("supervisor", {}), "startretries": 1}
    config.write_text(yaml.safe_dump(cfg))
    result = agentmesh("up", "--config", str(config), "--timeout", "60")
    assert result.returncode == 1
    assert "agent-Broken" in result.stderr
    assert "last lines of logs/agent-Broken.log" in result.stderr
    assert "RuntimeError: this role cannot start" in result.stderr


def test_port_free_ignores_time_wait_but_not_a_listener() -> None:
    """`down` then `up` at once: the connections the stopped services closed linger in
    TIME_WAIT on their ports, which must not read as "port in use"."""
    from agentmesh_cli.lifecycle import port_free

    port = free_port()
    server = socket.create_server(("127.0.0.1", port))
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    assert not port_free(port)  # listening
    accepted.close()  # the server side closes first: its end of the connection is TIME_WAIT
    client.close()
    server.close()
    assert port_free(port)
