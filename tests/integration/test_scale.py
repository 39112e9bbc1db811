"""`agentmesh scale` on a real mesh under supervisord: a group `Pool` of SlowReplica
(tests/helpers/roles.py, each job's id appended to handled/<replica>.ids) scaled up and
down while jobs flow to it, and an orphaned inbox (a replica stopped with jobs left
unread, then scaled away) handed over. Every job must be handled exactly once."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import yaml

from agentmesh_cli import constants as C
from agentmesh_cli import events
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.replicas import Groups
from agentmesh_cli.routing.dispatch import Dispatch
from agentmesh_cli.scalestate import load_scale
from agentmesh_cli.store import Store
from agentmesh_cli.supervisor.control import Supervisor
from agentmesh_cli.waiting import wait_until
from tests.helpers.commands import agentmesh
from tests.helpers.mesh import mesh_bus, running_mesh, write_mesh
from tests.helpers.scaling import Feeder, all_handled, programs


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("scale")
    config = write_mesh(root, [])
    data = yaml.safe_load(config.read_text())
    data["agents"] = [{"name": "Pool", "role": "tests.helpers.roles:SlowReplica", "replicas": 2}]
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    with running_mesh(config, test_roles=True) as running:
        yield running


def scale(mesh: Mesh, n: int, *options: str) -> str:
    result = agentmesh("scale", "Pool", str(n), "--config", str(mesh.config_file), *options, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_scale_up_and_down_under_traffic_loses_and_doubles_nothing(mesh: Mesh) -> None:
    feeder = Feeder(mesh)
    feeder.start()
    try:
        time.sleep(2)
        out = scale(mesh, 3)
        assert "ready  agent-Pool-3" in out and "Pool: 2 -> 3 replicas (mesh.yaml declares 2)" in out
        states = programs(mesh)  # ready, and RUNNING once it has stayed up supervisor.startsecs
        assert sorted(states) == ["agent-Pool-1", "agent-Pool-2", "agent-Pool-3"]
        assert set(states.values()) <= {"STARTING", "RUNNING"}
        assert load_scale(mesh) == {"Pool": 3}
        time.sleep(2)  # the routers find Pool-3 (they read the replicas every second) and send it work
        out = scale(mesh, 1)
        assert "drained Pool-2, Pool-3 after" in out and "Pool: 3 -> 1 replicas (mesh.yaml declares 2)" in out
        assert programs(mesh) == {"agent-Pool-1": "RUNNING"}
        time.sleep(2)
    finally:
        feeder.halt.set()
        feeder.join(60)
    counts = all_handled(mesh, feeder.ids)
    assert set(counts.values()) == {1} and len(counts) == len(feeder.ids)
    assert feeder.to["Pool-3"] > 0 and feeder.to["Pool-2"] > 0  # scaling changed where work went
    store = Store(mesh.redis_url, mesh.config.mesh)
    try:
        assert all(store.counters(a).get("handled_twice", 0) == 0 for a in ("Pool-1", "Pool-2", "Pool-3"))
        assert Groups(store).counts() == {"Pool": 1}
    finally:
        store.close()
    status = json.loads(agentmesh("status", "--json", "--config", str(mesh.config_file)).stdout)
    assert "agent-Pool-2" not in {p["name"] for p in status["programs"]}
    scale(mesh, 2)  # back to mesh.yaml's count for the next test


def test_an_orphaned_inbox_is_handed_over(mesh: Mesh) -> None:
    bus = mesh_bus(mesh, "test-orphan")
    first = [events.message(C.CLI_COUNTER_OWNER, "Pool-2", "job", {}) for _ in range(30)]
    for envelope in first:
        bus.send_message(envelope)
    assert bus.flush(10) == 0
    all_handled(mesh, [e.id for e in first])
    with Supervisor(mesh) as sup:
        assert sup.stop_programs([C.agent_program("Pool-2")], 60) == []  # gone, not restarted
    unread = [events.message(C.CLI_COUNTER_OWNER, "Pool-2", "job", {}) for _ in range(40)]
    for envelope in [*unread, *first[:10]]:  # and copies of jobs it handled (a redelivery)
        bus.send_message(envelope)
    assert bus.flush(10) == 0
    out = scale(mesh, 1)
    assert "Pool-2 is not running: what it left unread is handed over" in out
    assert "handed 50 unread messages of Pool-2 over to Pool" in out
    counts = all_handled(mesh, [e.id for e in [*first, *unread]])
    assert set(counts.values()) == {1}, counts
    pool1 = (mesh.root / "handled" / "Pool-1.ids").read_text().split()
    assert {e.id for e in unread} <= set(pool1)


def test_a_replica_kept_down_as_it_is_scaled_away_is_no_longer_routed_to(mesh: Mesh) -> None:
    """kill -9 of every process supervisord starts for Pool-2 while it is scaled away: it never
    leaves the mesh itself, so `scale` forgets it (unregisters it). What it left unread is handed
    over once, to Pool-1 (not back into its own inbox, where its conversations stuck), and no
    sender routes to it any more."""
    scale(mesh, 2)  # whichever test ran before
    halt = threading.Event()
    killed: list[int] = []

    def keep_down() -> None:
        with Supervisor(mesh) as sup:
            while not halt.is_set():
                p = {p["name"]: p for p in sup.processes()}.get("agent-Pool-2", {})
                if p.get("pid") and p["pid"] not in killed and p["statename"] in ("STARTING", "RUNNING"):
                    killed.append(p["pid"])
                    try:
                        os.kill(p["pid"], signal.SIGKILL)  # a pid of our own test mesh
                    except ProcessLookupError:
                        pass
                time.sleep(0.05)

    keeper = threading.Thread(target=keep_down, daemon=True)
    keeper.start()
    try:
        wait_until(lambda: killed, 30, "Pool-2 killed")
        bus = mesh_bus(mesh, "test-kept-down")
        groups = Groups(Store(mesh.redis_url, mesh.config.mesh))
        for i in range(20):  # conversations that stick to Pool-2, as when it was sent them
            groups.route("Pool", f"k{i}", "Pool-2", ["Pool-1", "Pool-2"], 600)
        groups.store.close()
        unread = [events.message(C.CLI_COUNTER_OWNER, "Pool-2", "job", {}, {"conversation": f"k{i}"})
                  for i in range(20)]
        for envelope in unread:
            bus.send_message(envelope)
        assert bus.flush(10) == 0
        out = scale(mesh, 1, "--drain-timeout", "1")
    finally:
        halt.set()
        keeper.join(10)
    assert "handed 20 unread messages of Pool-2 over to Pool" in out, out
    counts = all_handled(mesh, [e.id for e in unread])
    assert set(counts.values()) == {1}, counts
    assert {e.id for e in unread} <= set((mesh.root / "handled" / "Pool-1.ids").read_text().split())
    store = Store(mesh.redis_url, mesh.config.mesh)
    try:
        assert "Pool-2" not in store.agents()
        dispatch = Dispatch(mesh.config, Groups(store), C.CLI_COUNTER_OWNER, time.monotonic)
        assert {dispatch.target("Pool", f"new-{i}") for i in range(10)} == {"Pool-1"}
    finally:
        store.close()
    scale(mesh, 2)  # back to mesh.yaml's count for the next test
