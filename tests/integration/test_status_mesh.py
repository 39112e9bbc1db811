"""`agentmesh status` against a real running mesh: --json against docs/status.schema.json,
the inbox backlog from our own counters, restart counts and staleness after a SIGKILL, and
the live dashboard in a real terminal (tmux)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agentmesh_cli import constants as C
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.status import collect
from agentmesh_cli.supervisor.control import Supervisor
from agentmesh_cli.waiting import wait_until
from tests.helpers.agents import ROLES, agents, send
from tests.helpers.commands import agentmesh
from tests.helpers.mesh import running_mesh, write_mesh

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "docs" / "status.schema.json").read_text(encoding="utf-8"))
TMUX = "/usr/bin/tmux"
# a title or header of each panel, and a row of the processes and agents panels
PANEL_MARKS = ("processes of supervisord", "(cpu over", "agent-Sales  ", "heartbeat", "in flight", "lag p99",
               "infra", "reachable",
               "topology", "strongest edges", "proposals", "services", "client breakers")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    config = write_mesh(tmp_path_factory.mktemp("status"), ["Sales", "Inventory"])
    with running_mesh(config) as running:
        yield running


def status_json(mesh: Mesh) -> dict[str, Any]:
    result = agentmesh("status", "--json", "--config", str(mesh.config_file))
    assert result.returncode in (0, 1), result.stderr
    return dict(json.loads(result.stdout))


def by_name(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(item for item in items if item["name"] == name)


def test_json_is_valid_against_the_schema(mesh: Mesh) -> None:
    result = agentmesh("status", "--json", "--config", str(mesh.config_file))
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    jsonschema.Draft202012Validator(SCHEMA).validate(data)
    assert data["v"] == 2 and data["errors"] == []
    assert {p["state"] for p in data["programs"]} == {"RUNNING"}
    assert all(p["rss_bytes"] > 0 and p["cpu_percent"] is not None for p in data["programs"])
    assert data["cpu_window_s"] > 0  # 0.3 s apart, or since an earlier status's samples
    assert [a["name"] for a in data["agents"]] == ["Inventory", "Sales"]
    assert all(probe["reachable"] for probe in data["infra"].values())
    assert data["topology"]["history"], "the topology manager writes topology:history"
    for agent in data["agents"]:  # the demo roles: one message at a time, and they never ask
        assert agent["concurrency"] == 1 and agent["loop_lag_ms"] is not None
        assert agent["asks"]["sent"] == 0 and agent["asks"]["p99_ms"] is None


def test_a_status_after_another_measures_cpu_from_its_samples(mesh: Mesh) -> None:
    """A script polling `status --json` gets CPU% since its previous call, without waiting
    the 0.3 s window again: the one-shot status leaves its samples in the state folder."""
    first = status_json(mesh)
    samples = mesh.state_dir / "status-cpu.json"
    saved = json.loads(samples.read_bytes())
    assert sorted(saved["pids"]) == sorted(str(p["pid"]) for p in first["programs"] if p["pid"])
    # as if the first call had been 5 s earlier: a resumed window is then over 5 s, a
    # window of its own 0.3 s
    saved["at"] -= 5
    for sample in saved["pids"].values():
        sample[2] -= 5
    samples.write_bytes(json.dumps(saved).encode())
    second = status_json(mesh)
    assert all(p["cpu_percent"] is not None for p in second["programs"])
    assert 5 < second["cpu_window_s"] < 60


def test_a_status_after_another_reads_supervisords_log_on_from_where_it_stopped(mesh: Mesh) -> None:
    """A one-shot status leaves where it stopped reading supervisord's main log (and the
    counts so far) in the state folder; the next reads on from there, not from the start."""
    before = by_name(status_json(mesh)["programs"], "agent-Sales")["restarts"]
    state = mesh.state_dir / C.STATUS_LOG
    saved = json.loads(state.read_bytes())
    assert 0 < saved["offset"] <= (mesh.logs_dir / C.SUPERVISORD_LOG).stat().st_size
    saved["spawns"]["agent-Sales"] += 5  # counted "before": only a status that goes on sees it
    state.write_bytes(json.dumps(saved).encode())
    try:
        assert by_name(status_json(mesh)["programs"], "agent-Sales")["restarts"] == before + 5
    finally:
        state.unlink()  # the next status reads the whole log again
    assert by_name(status_json(mesh)["programs"], "agent-Sales")["restarts"] == before


def test_a_kept_connection_supervisord_closed_does_not_fail_a_read(mesh: Mesh) -> None:
    """supervisord may close the connection a Supervisor keeps between calls; a read then
    goes again on a new connection instead of saying supervisord is unreachable."""
    with Supervisor(mesh) as sup:
        before = sup.processes()
        connection = sup._transport.connection  # the one kept since that read
        assert connection is not None and connection.sock is not None
        connection.sock.shutdown(socket.SHUT_RDWR)  # as when the other side closes it
        after = sup.processes()
        assert [p["name"] for p in after] == [p["name"] for p in before]
        assert sup._transport.connection is not connection  # a new one
        assert sup.pid() > 0


def test_backlog_from_our_own_counters(mesh: Mesh) -> None:
    """Messages sent to a stopped agent wait in its inbox; started again, it reads them."""
    config = str(mesh.config_file)
    with Supervisor(mesh) as sup:
        assert sup.stop_programs(["agent-Inventory"], timeout=30) == []
    inventory = wait_until(lambda: (a := by_name(status_json(mesh)["agents"], "Inventory"))
                         ["state"] == "not running" and a, 30, "Inventory to leave")
    before = inventory["backlog"]
    restarts = by_name(status_json(mesh)["programs"], "agent-Inventory")["restarts"]
    for _ in range(3):
        assert agentmesh("send", "Sales", "Inventory", "{}", "--config", config).returncode == 0
    data = status_json(mesh)
    inventory = by_name(data["agents"], "Inventory")
    assert inventory["backlog"] == before + 3
    jsonschema.Draft202012Validator(SCHEMA).validate(data)
    once = agentmesh("status", "--once", "--config", config)
    assert once.returncode == 1  # a program is not RUNNING
    assert "not running" in once.stdout and "STOPPED" in once.stdout

    with Supervisor(mesh) as sup:
        sup.start_programs(["agent-Inventory"])
    wait_until(lambda: (a := by_name(status_json(mesh)["agents"], "Inventory"))["state"] == "alive"
             and a["backlog"] == 0, 60, "Inventory to read its inbox")
    # a start after a stop is a restart too (supervisord spawned it again)
    assert by_name(status_json(mesh)["programs"], "agent-Inventory")["restarts"] == restarts + 1


def test_sigkill_raises_restarts_and_the_heartbeat_goes_stale_then_fresh(mesh: Mesh) -> None:
    data = wait_until(lambda: (d := status_json(mesh)) and all(
        p["state"] == "RUNNING" for p in d["programs"]) and d, 60, "every program RUNNING")
    program = by_name(data["programs"], "agent-Sales")
    old_pid, restarts = program["pid"], program["restarts"]
    os.kill(old_pid, signal.SIGKILL)
    # supervisord runs another pid than the one Sales registered: stale until it re-joins
    stale = wait_until(lambda: (a := by_name(collect(mesh, cpu_window=0)["agents"], "Sales"))
                     ["state"] == "stale" and a, 30, "Sales to be stale")
    assert stale["pid"] == old_pid
    data = wait_until(lambda: (d := status_json(mesh)) and (p := by_name(d["programs"], "agent-Sales"))
                    ["state"] == "RUNNING" and p["pid"] != old_pid and d, 60, "Sales restarted")
    assert by_name(data["programs"], "agent-Sales")["restarts"] == restarts + 1
    fresh = wait_until(lambda: (a := by_name(status_json(mesh)["agents"], "Sales"))
                     ["state"] == "alive" and a, 30, "Sales alive again")
    assert fresh["pid"] == by_name(data["programs"], "agent-Sales")["pid"]


def test_asking_agents_show_their_load_and_asks(external_mesh: Any, tmp_path: Path) -> None:
    """An Asker and an Answerer as processes of their own (no supervisord): while an ask
    waits both show it in their load; then the asker's counts and round trips."""
    mesh: Mesh = external_mesh(heartbeat={"interval": 0.5}, agents=[
        {"name": "Asker", "role": f"{ROLES}:Asker", "concurrency": 8},
        {"name": "Answerer", "role": f"{ROLES}:Answerer", "concurrency": 8}])
    asks = [{"to": "Answerer", "type": "slow", "payload": {"sleep": 3}, "timeout": 10},
            *({"to": "Answerer", "type": "double", "payload": {"x": x}} for x in range(3)),
            {"to": "Answerer", "type": "fail", "payload": {"x": 0}},
            # given up after 0.5 s, answered late at 1.5 s (0.5 s, not less: under load the
            # Answerer must read it before its deadline, else it is skipped, never late)
            {"to": "Answerer", "type": "slow", "payload": {"sleep": 1.5}, "timeout": 0.5}]

    def agent(name: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        return by_name((data or collect(mesh, cpu_window=0))["agents"], name)

    with agents(mesh, tmp_path):
        send(mesh, "Asker", "ask", asks, conversation=[f"c{i}" for i in range(len(asks))])
        # the 3 s ask: the Asker's handler awaits it, the Answerer's sleeps in it
        wait_until(lambda: (a := agent("Asker"))["asks_pending"] == 1 and a["running"] == 1
                   and agent("Answerer")["running"] == 1, 15, "the long ask in both agents' load",
                   interval=0.2)
        # (the record is written every 0.5 s, the counters flushed every second)
        asker = wait_until(lambda: (a := agent("Asker"))["asks_pending"] == 0
                           and a["asks"]["late_replies"] == 1
                           and a["counters"].get(f"{C.COUNTER_ASK_MS}:count") == 5 and a, 20,
                           "every ask answered or given up", interval=0.3)
        result = agentmesh("status", "--json", "--config", str(mesh.config_file))
    assert result.returncode == 1, result.stderr  # no supervisord here: no program RUNNING
    data = json.loads(result.stdout)
    jsonschema.Draft202012Validator(SCHEMA).validate(data)
    assert (asker["concurrency"], asker["in_flight"], asker["running"]) == (8, 0, 0)
    rounds = asker["asks"]
    # five replies (the error reply too), the 3 s one past the 2.5 s bucket; one timed out
    assert {k: v for k, v in rounds.items() if not k.endswith("_ms")} == {
        "sent": 6, "timeouts": 1, "error_replies": 1, "late_replies": 1, "expired_requests": 0,
        "cached_replies": 0}
    assert rounds["p50_ms"] < 2500 < rounds["p99_ms"] <= 5000
    answerer = agent("Answerer", data)
    assert answerer["asks"]["sent"] == 0 and answerer["concurrency"] == 8
    assert set(answerer["loop_lag_ms"]) == {"p50", "p99", "max"}


def test_live_dashboard_in_a_terminal(mesh: Mesh, tmp_path: Path) -> None:
    name = f"agentmesh-status-{uuid.uuid4().hex[:8]}"
    rc_file, err_file = tmp_path / "rc", tmp_path / "stderr"
    q = shlex.quote  # the clone may live in a path with spaces
    command = (f"{q(sys.executable)} -m agentmesh_cli status --config {q(str(mesh.config_file))} "
               f"--interval 0.5 2>{q(str(err_file))}; echo $? >{q(str(rc_file))}; sleep 60")
    # a server of our own (socket in tmp_path): our environment, nobody else's sessions
    tmux = [TMUX, "-S", str(tmp_path / "tmux.sock")]
    # the pane's size is the terminal's: LINES and COLUMNS (pytest-xdist's workers have
    # 24 x 80) would override it for rich and crop the dashboard
    env = {**{k: v for k, v in os.environ.items() if k not in ("LINES", "COLUMNS")}, "PYTHONPATH": str(REPO)}
    subprocess.run([*tmux, "new-session", "-d", "-s", name, "-x", "160", "-y", "60", "-c", str(REPO),
                    "bash", "-c", command], check=True, env=env, timeout=30)
    try:
        def screen() -> str:
            return subprocess.run([*tmux, "capture-pane", "-p", "-t", name], capture_output=True,
                                  text=True, timeout=30).stdout

        def panels_shown() -> str | None:
            shot = screen()
            return shot if all(t in shot for t in PANEL_MARKS) else None

        first = wait_until(panels_shown, 60, "the dashboard's panels")
        assert "mesh e2e  every 0.5s, Ctrl+C to quit" in first
        wait_until(lambda: (shot := panels_shown()) is not None and shot != first, 60,
                 "a later frame with other values")
        subprocess.run([*tmux, "send-keys", "-t", name, "C-c"], check=True, timeout=30)
        wait_until(rc_file.exists, 30, "status to exit")
        assert rc_file.read_text().strip() == "0"  # every program RUNNING
        assert err_file.read_text() == ""  # no traceback
        assert "processes" not in screen()  # the alternate screen was given back
    finally:
        subprocess.run([*tmux, "kill-session", "-t", name], capture_output=True, timeout=30)
