"""Recovery with nothing lost (issue 6, point 3), on one real mesh under supervisord:
SIGKILL of an agent and of the topology manager mid-stream, a Redis restart and a broker
restart. Every kill is a SIGKILL of the pid supervisord reports."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentmesh_cli import constants as C
from agentmesh_cli.bus import Bus
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.mesh import Mesh, load_mesh
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import wait_until
from tests.helpers.commands import agentmesh
from tests.helpers.mesh import later_snapshot, mesh_bus, pids, running_mesh, status, write_mesh

AGENTS = ["Sales", "Inventory", "Fraud"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("recovery")
    config = write_mesh(root, AGENTS, heartbeat={"interval": "1s", "missed": 3},
                        topology={"snapshot_interval": "1s"})
    with running_mesh(config, timeout=90) as m:
        yield m


def store_of(mesh: Mesh) -> Store:
    return Store(mesh.redis_url, mesh.config.mesh)


def config_of(mesh: Mesh) -> Path:
    return mesh.root / "mesh.yaml"


def program_pids(mesh: Mesh) -> dict[str, int]:
    return pids(status(config_of(mesh)))


def usage(store: Store, source: str, target: str) -> int:
    snapshot = store.load_snapshot() or {}
    for s, t, _w, used, *_ in snapshot.get("graph", {}).get("edges", []):
        if (s, t) == (source, target):
            return int(used)
    return 0


def handled_from(store: Store, agent: str, sender: str) -> int:
    return store.counters(agent).get(C.COUNTER_HANDLED_FROM_PREFIX + sender, 0)


def stream(bus: Bus, n: int, source: str = "Sales", target: str = "Inventory",
           rate: float = 1000.0, during: Any = None, at: int = -1) -> list[str]:
    """Send `n` messages source -> target at about `rate`/s; call `during()` after `at`."""
    ids = []
    started = time.monotonic()
    for i in range(n):
        if i == at and during is not None:
            during()
        envelope = Envelope(type="note", from_agent_id=source, to_agent_id=target, payload={"i": i})
        bus.send_message(envelope)
        ids.append(envelope.id)
        ahead = started + (i + 1) / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)  # the pace of the load, not a wait
        bus.poll()
    assert bus.flush(30) == 0
    return ids


def kill(mesh: Mesh, program: str) -> int:
    pid = program_pids(mesh)[program]
    os.kill(pid, signal.SIGKILL)
    return pid


def wait_restarted(mesh: Mesh, program: str, old: int, timeout: float = 60) -> int:
    return int(wait_until(lambda: (p := program_pids(mesh).get(program)) not in (None, old) and p,
                        timeout, f"{program} to run again"))


def test_sigkilled_agent_handles_every_message_once(mesh: Mesh) -> None:
    store = store_of(mesh)
    bus = mesh_bus(mesh, "test-recovery")
    before = handled_from(store, "Inventory", "Sales")
    killed: list[int] = []
    stream(bus, 3000, rate=1500, during=lambda: killed.append(kill(mesh, "agent-Inventory")), at=1000)
    wait_restarted(mesh, "agent-Inventory", killed[0])
    wait_until(lambda: handled_from(store, "Inventory", "Sales") - before >= 3000, 60,
             "Inventory to handle all 3000")
    time.sleep(1.5)  # time passes on purpose: anything handled twice would be counted by now
    counters = store.counters("Inventory")
    assert handled_from(store, "Inventory", "Sales") - before == 3000
    assert counters.get(C.COUNTER_HANDLED_TWICE, 0) == 0

    # a copy of a message already handled (same id) is recognised, not handled again
    dupes_before = counters.get(C.COUNTER_DUPLICATES, 0)
    copy = Envelope(type="note", from_agent_id="Sales", to_agent_id="Inventory", payload={})
    for _ in range(2):
        bus.send_message(copy)
    assert bus.flush(10) == 0
    wait_until(lambda: store.counters("Inventory").get(C.COUNTER_DUPLICATES, 0) == dupes_before + 1,
             20, "the copy to be recognised")
    assert handled_from(store, "Inventory", "Sales") - before == 3001
    log = (mesh.root / "logs" / "agent-Inventory.log").read_text()
    assert "handled ids in the ledger" in log


def test_sigkilled_topology_manager_loses_and_doubles_no_reinforcement(mesh: Mesh) -> None:
    store = store_of(mesh)
    bus = mesh_bus(mesh, "test-recovery")
    before = usage(store, "Fraud", "Sales")
    killed: list[int] = []

    def kill_manager() -> None:
        killed.append(kill(mesh, "topology-manager"))

    stream(bus, 2000, source="Fraud", target="Sales", rate=1000, during=kill_manager, at=700)
    new = wait_restarted(mesh, "topology-manager", killed[0])
    old = new
    stream(bus, 1000, source="Fraud", target="Sales", rate=1000,
           during=lambda: killed.append(kill(mesh, "topology-manager")), at=300)
    wait_restarted(mesh, "topology-manager", old)
    wait_until(lambda: usage(store, "Fraud", "Sales") - before >= 3000, 60, "3000 reinforcements")
    later_snapshot(store, 1.0)  # two more snapshots: a doubled replay would show in them
    assert usage(store, "Fraud", "Sales") - before == 3000


def test_redis_restart_roles_keep_running_and_catch_up(mesh: Mesh) -> None:
    store = store_of(mesh)
    bus = mesh_bus(mesh, "test-recovery")
    before_pids = program_pids(mesh)
    handled_before = handled_from(store, "Fraud", "Inventory")
    usage_before = usage(store, "Inventory", "Fraud")
    os.kill(before_pids["redis"], signal.SIGKILL)
    stream(bus, 500, source="Inventory", target="Fraud", rate=500)  # while Redis is away
    wait_until(store.ping, 30, "Redis to be back")
    wait_until(lambda: handled_from(store, "Fraud", "Inventory") - handled_before >= 500, 60,
             "Fraud to record what it handled while Redis was down")
    wait_until(lambda: usage(store, "Inventory", "Fraud") - usage_before >= 500, 60,
             "the topology to catch up")
    time.sleep(1.5)  # time passes on purpose: the counters flush every second, a double would show
    assert handled_from(store, "Fraud", "Inventory") - handled_before == 500
    assert usage(store, "Inventory", "Fraud") - usage_before == 500
    assert store.counters("Fraud").get(C.COUNTER_HANDLED_TWICE, 0) == 0
    after = program_pids(mesh)
    for program in ("topology-manager", "consensus-manager", *(f"agent-{a}" for a in AGENTS)):
        assert after[program] == before_pids[program], f"{program} restarted"
    assert after["redis"] != before_pids["redis"]


def test_broker_restart_is_detected_and_the_mesh_rebuilt(mesh: Mesh) -> None:
    store = store_of(mesh)
    bus = mesh_bus(mesh, "test-recovery")
    epoch = store.kafka_epoch()
    snapshot = store.load_snapshot() or {}
    edges_before = {(s, t): w for s, t, w, *_ in snapshot["graph"]["edges"]}
    before_pids = program_pids(mesh)
    os.kill(before_pids["kafka"], signal.SIGKILL)
    new_epoch = wait_until(lambda: (e := store.kafka_epoch()) != epoch and e, 60, "a new broker epoch")
    assert new_epoch
    # the topology is rebuilt from the snapshot: every agent, every edge and its weight
    wait_until(lambda: (store.load_snapshot() or {}).get("epoch") == new_epoch, 30,
             "a snapshot of the new epoch")
    graph = (store.load_snapshot() or {})["graph"]
    assert sorted(graph["agents"]) == sorted(AGENTS)
    assert {(s, t) for s, t, *_ in graph["edges"]} == set(edges_before)
    # messages flow again, counted once
    handled = handled_from(store, "Sales", "Fraud")
    used = usage(store, "Fraud", "Sales")
    stream(bus, 300, source="Fraud", target="Sales", rate=500)
    wait_until(lambda: handled_from(store, "Sales", "Fraud") - handled >= 300, 60, "Sales to handle 300")
    wait_until(lambda: usage(store, "Fraud", "Sales") - used >= 300, 60, "300 reinforcements")
    time.sleep(1.5)  # time passes on purpose: the counters flush every second, a double would show
    assert handled_from(store, "Sales", "Fraud") - handled == 300
    assert usage(store, "Fraud", "Sales") - used == 300
    after = program_pids(mesh)
    for program in ("topology-manager", "consensus-manager", *(f"agent-{a}" for a in AGENTS)):
        assert after[program] == before_pids[program], f"{program} restarted"
    for agent in AGENTS:  # each announced itself again to the new broker
        log = (mesh.root / "logs" / f"agent-{agent}.log").read_text()
        assert "new broker epoch" in log


def test_silent_agent_is_removed_for_timeout_then_rejoins_fresh(mesh: Mesh) -> None:
    store = store_of(mesh)
    config = config_of(mesh)
    pid = program_pids(mesh)["agent-Fraud"]
    handled_before = store.counters("Fraud").get(C.COUNTER_IN, 0)
    assert handled_before > 0  # earlier tests sent it messages: its history must survive
    os.kill(pid, signal.SIGSTOP)  # hung, not dead: supervisord sees it RUNNING
    stopped = time.monotonic()
    try:
        snapshot = wait_until(lambda: (s := store.load_snapshot() or {}) and
                            "Fraud" not in s["graph"]["agents"] and s, 30, "Fraud to be removed")
        detected = time.monotonic() - stopped
        assert snapshot["departed"]["Fraud"]["reason"] == "timeout"
        assert detected < 3 + 3  # heartbeat 1 s x missed 3, plus a snapshot and a check
        # and out of the electorate of what is proposed now: the consensus manager ages the
        # registry's heartbeats by the same rule, which may come a beat after the topology's
        # (the agent writes Redis after it sends its heartbeat), so within one more interval
        proposed = wait_until(lambda: (p := agentmesh_propose(config)) and "Fraud" not in p["electorate"]
                              and p, 3, "a proposal whose electorate has no Fraud", interval=0.2)
        assert sorted(proposed["electorate"]) == ["Inventory", "Sales"]
    finally:
        os.kill(pid, signal.SIGCONT)
    snapshot = wait_until(lambda: (s := store.load_snapshot() or {}) and
                        "Fraud" in s["graph"]["agents"] and s, 30, "Fraud to rejoin")
    assert "Fraud" not in snapshot["departed"]
    fresh = [(w, used) for s, t, w, used, *_ in snapshot["graph"]["edges"] if "Fraud" in (s, t)]
    assert len(fresh) == 4 and set(fresh) == {(0.5, 0)}  # its edges start fresh
    assert program_pids(mesh)["agent-Fraud"] == pid
    assert store.counters("Fraud").get(C.COUNTER_IN, 0) >= handled_before  # history kept
    log = (mesh.root / "logs" / "topology-manager.log").read_text()
    assert "agent Fraud removed: timeout" in log and "Fraud joined (heartbeat) again" in log


def agentmesh_propose(config: Path) -> dict[str, Any]:
    """Open a proposal from the CLI; its Redis record once the manager opened it."""
    result = agentmesh("propose", "--type", "decision", "--content", '{"priority": "high"}',
                       "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    proposal_id = result.stdout.strip()
    store = store_of(load_mesh(config))
    return dict(wait_until(lambda: store.proposal(proposal_id), 20, "the proposal to open"))


def test_a_ledger_batch_sent_again_is_counted_once(valkey: str) -> None:
    store = Store(valkey, "ledger-" + os.urandom(4).hex())
    batch = [("m1", "Sales"), ("m2", "Sales"), ("m3", "Fraud")]
    assert store.record_handled("A", batch, 1000, 100) == (3, 0)
    assert store.record_handled("A", batch, 1000, 100) == (0, 0)  # its answer was lost: sent again
    assert store.counters("A") == {"messages_in": 3, "handled_from:Sales": 2, "handled_from:Fraud": 1}
    assert store.record_handled("A", [("m3", "Fraud"), ("m4", "Fraud")], 1003, 100) == (1, 1)
    assert store.counters("A") == {"messages_in": 4, "handled_from:Sales": 2, "handled_from:Fraud": 2,
                                   "handled_twice": 1}
    assert store.record_handled("A", [(f"n{i}", "S") for i in range(200)], 2000, 100) == (200, 0)
    ids, last = store.handled_ids("A", 100)
    assert ids == [f"n{i}" for i in range(100, 200)] and last == 2199  # the newest 100 kept


def test_garbage_on_every_topic_is_dead_lettered_by_its_reader(mesh: Mesh) -> None:
    """What the checkers do with a Kafka command-line client, under supervisord: bytes that
    are no envelope, on every topic the roles read; every reader counts and dead-letters
    them, and no program restarts."""
    store = store_of(mesh)
    before_pids = program_pids(mesh)
    owners = {C.TOPIC_TOPOLOGY: [C.PROGRAM_TOPOLOGY], C.TOPIC_PROPOSALS: [C.PROGRAM_CONSENSUS],
              C.TOPIC_VOTES: [C.PROGRAM_CONSENSUS], C.TOPIC_CONSENSUS: AGENTS,
              C.TOPIC_MESSAGES: ["Inventory"]}

    def dead(owner: str, topic: str) -> int:
        return store.counters(owner).get(C.dead_letters_counter(topic), 0)

    was = {(o, t): dead(o, t) for t, os_ in owners.items() for o in os_}
    bus = mesh_bus(mesh, "test-garbage")
    for topic in owners:
        partition = C.inbox_partition("Inventory", mesh.config.kafka.partitions) \
            if topic == C.TOPIC_MESSAGES else 0
        for garbage in (b"\x00\xff not json", b"[1, 2]", b'{"v": 1, "id": 5}'):
            bus.produce_raw(topic, garbage, partition=partition)
    assert bus.flush(10) == 0
    wait_until(lambda: all(dead(o, t) - n == 3 for (o, t), n in was.items()), 30,
             "every reader to dead-letter its 3 records")
    time.sleep(1.5)  # time passes on purpose: the counters flush every second, a 4th would show
    assert {(o, t): dead(o, t) - n for (o, t), n in was.items()} == {k: 3 for k in was}
    assert program_pids(mesh) == before_pids
