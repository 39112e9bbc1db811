"""Several hosts and supervisord's restart policy, for real.

Two hosts of one mesh run from one folder on this machine, each under its own
supervisord, sharing the session broker and Valkey as their "external" Kafka and Redis:
agents on both hosts talk, one topology and one consensus span them, and stopping one
host leaves the other working. Then a program that crashes at once ends FATAL after
`startretries` retries with growing delays, instead of spinning.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from agentmesh_cli.mesh import load_mesh
from agentmesh_cli.store import Store
from agentmesh_cli.supervisor.control import _alive
from agentmesh_cli.waiting import wait_until
from tests.helpers.commands import agentmesh
from tests.helpers.tables import AGENTS, ALPHA, BETA, external

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, config: Path, host: str | None = None, check: bool = True) -> Any:
    where = ["--config", str(config), *(["--host", host] if host else [])]
    return agentmesh(*args, *where, check=check)


def status(config: Path, host: str | None) -> tuple[int, dict[str, Any]]:
    result = run("status", "--once", "--json", config=config, host=host, check=False)
    return result.returncode, json.loads(result.stdout)


def supervisord_pid(root: Path, host: str | None) -> int:
    pidfile = root / ".agentmesh" / (host or "") / "supervisord.pid"
    text = pidfile.read_text().strip() if pidfile.exists() else ""
    return int(text) if text and _alive(int(text)) else 0


def stop_all(config: Path, hosts: list[str | None]) -> None:
    """`down` each host; supervisord ended by the pid in its pid file if `down` could not."""
    for host in hosts:
        run("down", config=config, host=host, check=False)
        if pid := supervisord_pid(config.parent, host):
            os.kill(pid, signal.SIGTERM)


@pytest.fixture
def two_hosts(tmp_path: Path, broker: str, valkey: str) -> Iterator[Path]:
    data = external(broker, valkey,
                    # Sales orders from Inventory and Fraud, on the other host, who answer
                    workload={"order_rate": 4, "lead_rate": 0, "refund_rate": 0,
                              "discount_threshold": 1e9},
                    agents=[{"name": n, "role": r} for n, r in AGENTS.items()],
                    hosts={"alpha": ALPHA, "beta": ["agent-[IF]*"]})  # a glob
    config = tmp_path / "mesh.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    try:
        yield config
    finally:
        stop_all(config, ["beta", "alpha"])


def test_two_hosts_share_one_mesh(two_hosts: Path, valkey: str) -> None:
    config, root = two_hosts, two_hosts.parent
    mesh = load_mesh(config)
    refused = run("up", config=config, check=False)
    assert refused.returncode == 2
    assert "spreads its programs over hosts alpha, beta: pass --host NAME" in refused.stderr

    # beta first: its `up` does not wait for the topology manager, which is alpha's
    assert "is up on host beta" in run("up", "--timeout", "60", config=config, host="beta").stdout
    run("up", "--timeout", "60", config=config, host="alpha")
    pids = {host: supervisord_pid(root, host) for host in ("alpha", "beta")}
    assert all(pids.values()) and pids["alpha"] != pids["beta"]
    assert sorted(p.name for p in (root / "supervisor.d" / "beta").glob("*.ini")) == [
        "agent-Fraud.ini", "agent-Inventory.ini"]
    assert (root / "logs" / "beta" / "agent-Fraud.log").exists()

    code, alpha = status(config, "alpha")
    assert code == 0 and sorted(p["name"] for p in alpha["programs"]) == sorted(ALPHA)
    code, beta = status(config, "beta")
    assert code == 0 and sorted(p["name"] for p in beta["programs"]) == sorted(BETA)
    assert beta["supervisord"]["pid"] == pids["beta"]

    # one topology of all four; orders flow both ways between the hosts
    store = Store(valkey, mesh.config.mesh, timeout=2.0)
    try:
        def talked() -> dict[str, dict[str, int]] | None:
            counters = store.all_counters()
            pairs = [("Inventory", "Sales"), ("Fraud", "Sales"), ("Sales", "Inventory"), ("Sales", "Fraud")]
            done = all(counters.get(to, {}).get(f"handled_from:{frm}", 0) > 0 for to, frm in pairs)
            return counters if done else None

        wait_until(talked, 60, "messages between the hosts")
        snapshot = wait_until(lambda: (s := store.load_snapshot()) and len(s["graph"]["agents"]) == 4
                            and s, 30, "one topology of four agents")
        used = {(e[0], e[1]) for e in snapshot["graph"]["edges"] if e[3] > 0}
        wait_until(lambda: {("Sales", "Inventory"), ("Inventory", "Sales")} <= {
            (e[0], e[1]) for e in (store.load_snapshot() or {})["graph"]["edges"] if e[3] > 0},
            30, f"edges across the hosts reinforced (used so far: {sorted(used)})")

        # one consensus: the electorate and the votes span both hosts
        proposed = run("propose", "--content", '{"priority": "high"}', "--wait", "--timeout", "30",
                       config=config)
        assert "accepted" in proposed.stdout
        proposal = store.proposal(proposed.stdout.split()[0])
        assert proposal is not None and sorted(proposal["electorate"]) == sorted(AGENTS)
        # accepted at 3 of 4 supporting votes (a fourth may come after the decision): the
        # counted votes hold both hosts' agents, whichever three came first
        voters = set(proposal["votes"])
        assert len(voters) >= 3 and voters & {"Sales", "Support"} and voters & {"Inventory", "Fraud"}

        # alpha's metrics exporter reads alpha's supervisord ($AGENTMESH_HOST)
        scrape = httpx.get(f"http://127.0.0.1:{mesh.config.metrics.port}/metrics", timeout=5).text
        assert 'agentmesh_up{source="supervisord"} 1.0' in scrape
        assert 'agentmesh_program_up{program="agent-Sales"} 1.0' in scrape
        assert 'agentmesh_program_up{program="agent-Fraud"}' not in scrape

        # beta goes away: its agents leave; alpha keeps working
        assert "is down on host beta" in run("down", config=config, host="beta").stdout
        assert not _alive(pids["beta"])
        departed = wait_until(lambda: (s := store.load_snapshot()) and sorted(s["graph"]["agents"])
                            == ["Sales", "Support"] and s, 30, "beta's agents to leave")
        assert {n: d["reason"] for n, d in departed.get("departed", {}).items()} == {
            "Inventory": "left", "Fraud": "left"}
        code, alpha = status(config, "alpha")
        assert code == 0, alpha["programs"]
        assert {a["name"]: a["state"] for a in alpha["agents"]} == {
            "Sales": "alive", "Support": "alive", "Inventory": "not running", "Fraud": "not running"}
        assert status(config, "beta")[0] == 1  # its supervisord is not running
        after = run("propose", "--content", '{"priority": "high"}', "--wait", "--timeout", "30",
                    config=config)
        assert "accepted" in after.stdout
        proposal = store.proposal(after.stdout.split()[0])
        assert proposal is not None and sorted(proposal["electorate"]) == ["Sales", "Support"]
    finally:
        store.close()
    assert "is down on host alpha" in run("down", config=config, host="alpha").stdout
    assert not _alive(pids["alpha"])


def _log_time(line: str) -> float:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_a_crash_loop_ends_fatal_with_growing_delays(tmp_path: Path, broker: str, valkey: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """supervisord retries a program that dies within startsecs after 1, 2, ... s and
    gives up (FATAL) after startretries retries: startretries + 1 spawns in all. (Only
    the broken agent's host is started: the services and managers are not needed.)"""
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # so supervisord's agent can import the test role
    data = external(broker, valkey, supervisor={"startretries": 2},
                    agents=[{"name": "Broken", "role": "tests.helpers.roles:BrokenRole"}],
                    hosts={"rest": ["memory", "cognition", "metrics", "*-manager"], "crash": ["agent-*"]})
    config = tmp_path / "mesh.yaml"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    try:
        up = run("up", "--timeout", "40", config=config, host="crash", check=False)
        assert up.returncode == 1
        assert "agent-Broken is FATAL" in up.stderr
        assert "last lines of logs/crash/agent-Broken.log" in up.stderr
        assert "RuntimeError: this role cannot start" in up.stderr
        log = (tmp_path / "logs" / "crash" / "supervisord.log").read_text().splitlines()
        spawns = [_log_time(line) for line in log if "spawned: 'agent-Broken'" in line]
        exits = [_log_time(line) for line in log if "exited: agent-Broken" in line]
        assert len(spawns) == 3 and len(exits) == 3
        assert "gave up: agent-Broken entered FATAL state" in log[-1]
        for attempt in (1, 2):  # the delay before the next start grows by a second each time
            assert attempt - 0.2 < spawns[attempt] - exits[attempt - 1] < attempt + 1.5
        code, frame = status(config, "crash")
        assert code == 1
        assert [(p["name"], p["state"], p["restarts"]) for p in frame["programs"]] == [
            ("agent-Broken", "FATAL", 2)]
    finally:
        stop_all(config, ["crash"])
