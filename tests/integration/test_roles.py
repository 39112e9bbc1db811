"""Role processes (agent, topology manager) run for real against the session broker and
Valkey, without supervisord: join, inbox, dead letters, resume, heartbeat, leave, snapshots."""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from agentmesh_cli import constants as C
from agentmesh_cli.broker import prepare_topics
from agentmesh_cli.embedded import stop
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.errors import SnapshotError
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.reader import Reader, beginning
from agentmesh_cli.records import Record
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import wait_until
from tests.helpers.commands import spawn_role
from tests.helpers.mesh import later_snapshot, mesh_bus


def read_topic(mesh: Mesh, topic: str, partitions: int, settle: float = 1.5,
               limit: float = 6.0) -> list[Record]:
    """The records of a topic: read until nothing new arrives for `settle` seconds
    (or `limit` seconds in all, for a topic that never goes quiet)."""
    started = time.monotonic()
    reader = Reader(mesh.config.kafka, f"t-{uuid.uuid4().hex}",
                    [(topic, p, beginning()) for p in range(partitions)])
    got: list[Record] = []
    quiet_since = time.monotonic()
    try:
        # not a wait_until: it reads (and keeps) every record until the topic is quiet
        while time.monotonic() - quiet_since < settle and time.monotonic() - started < limit:
            batch = reader.poll_batch(timeout=0.1)
            if batch:
                got += batch
                quiet_since = time.monotonic()
    finally:
        reader.close()
    return got


def counters(store: Store, owner: str) -> dict[str, int]:
    return store.counters(owner)


def test_agent_inbox_dead_letters_and_resume(external_mesh: Any, tmp_path: Path) -> None:
    mesh: Mesh = external_mesh(
        agents=[{"name": "Inventory", "role": "inventory"}],
        heartbeat={"interval": "500ms", "missed": 3},
    )
    cfg = mesh.config
    store = Store(cfg.redis.resolved_url, cfg.mesh)
    args = ("agent", "--name", "Inventory", "--config", str(mesh.config_file))
    proc = spawn_role(*args, log=tmp_path / "agent.log")
    try:
        wait_until(lambda: store.ready_pid("agent-Inventory") == proc.pid, 30, "agent ready")
        record = store.agents()["Inventory"]
        assert record["role"] == "inventory" and record["pid"] == proc.pid
        assert record["partition"] == C.inbox_partition("Inventory", 4)

        bus = mesh_bus(mesh)
        partition = C.inbox_partition("Inventory", 4)
        store.redis.sadd(store.keys.members, "Sales")  # Sales joined once (agents accept only members)
        bus.produce_raw(C.TOPIC_MESSAGES, b"\x00\x01 not an envelope", partition=partition)
        ask = Envelope(type="check_stock", from_agent_id="Sales", to_agent_id="Inventory",
                       payload={"order_id": "o-1", "items": {"cable": 2}})
        bus.send_message(ask)
        bus.flush()
        # the agent keeps working after the garbage: it answers the order that follows it
        wait_until(lambda: counters(store, "Inventory").get("messages_in") == 1, 20, "handled")
        # dead letters are counted with the other counters, once a second
        wait_until(lambda: counters(store, "Inventory").get("dead_letters") == 1, 5, "counted")
        (letter,) = [Envelope.decode(r.value) for r in read_topic(mesh, C.TOPIC_DLQ, 1)]
        assert letter.payload["reason"].startswith("not JSON")
        assert letter.payload["partition"] == partition and letter.payload["offset"] == 0
        replies = [Envelope.decode(r.value) for r in
                   read_topic(mesh, C.TOPIC_MESSAGES, 4) if r.partition == C.inbox_partition("Sales", 4)]
        assert [(e.type, e.payload) for e in replies] == [
            ("stock_result", {"order_id": "o-1", "approved": True})]

        # heartbeats reach the topology topic and the registry
        wait_until(lambda: any(Envelope.decode(r.value).type == C.EVENT_HEARTBEAT
                             for r in read_topic(mesh, C.TOPIC_TOPOLOGY, 1)), 10, "a heartbeat")

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert "Inventory" not in store.agents()
        events = [Envelope.decode(r.value).type for r in read_topic(mesh, C.TOPIC_TOPOLOGY, 1)]
        assert events[0] == C.EVENT_JOINED and events[-1] == C.EVENT_LEFT

        # sent while the agent is down: a restarted agent resumes from its committed offset
        bus.send_message(Envelope(type="check_stock", from_agent_id="Sales", to_agent_id="Inventory",
                                  payload={"order_id": "o-2", "items": {"laptop": 1}}))
        bus.flush()
        proc = spawn_role(*args, log=tmp_path / "agent2.log")
        wait_until(lambda: counters(store, "Inventory").get("messages_in") == 2, 30, "resumed")
        assert counters(store, "Inventory").get("dead_letters") == 1  # nothing re-read
    finally:
        stop(proc)
        store.close()


def test_topology_manager_rebuilds_from_the_topics_past_an_unreadable_snapshot(
        external_mesh: Any, tmp_path: Path) -> None:
    """A snapshot that is not JSON (hand-edited, cut short) is logged and replaced: the
    manager reads the topics from the beginning instead of crashing at every start."""
    mesh: Mesh = external_mesh(topology={"snapshot_interval": "200ms", "decay_interval": "1h"})
    cfg = mesh.config
    store = Store(cfg.redis.resolved_url, cfg.mesh)
    prepare_topics(cfg.kafka, store)
    store.redis.set(store.keys.topology_snapshot, b'{"graph": {"agents": ["A", "A"')
    bus = mesh_bus(mesh)
    for name in ("A", "B"):
        bus.send(C.TOPIC_TOPOLOGY, Envelope(type=C.EVENT_JOINED, from_agent_id=name), key=name)
    bus.flush()
    log = tmp_path / "topo.log"
    proc = spawn_role("topology", "--config", str(mesh.config_file), log=log)

    def agents() -> list[str] | None:
        try:
            return (store.load_snapshot() or {}).get("graph", {}).get("agents")
        except SnapshotError:  # still the unreadable one
            return None

    try:
        wait_until(lambda: agents() == ["A", "B"], 30, "a new snapshot of A and B")
        text = log.read_text()
        assert "snapshot unreadable (malformed topology snapshot in Redis: not JSON" in text
        assert "rebuilding from the beginning" in text and "Traceback" not in text
        assert proc.poll() is None
    finally:
        stop(proc)
        store.close()


def test_topology_manager_builds_graph_and_resumes(external_mesh: Any, tmp_path: Path) -> None:
    mesh: Mesh = external_mesh(topology={"snapshot_interval": "200ms", "decay_interval": "1h"})
    cfg = mesh.config
    store = Store(cfg.redis.resolved_url, cfg.mesh)
    prepare_topics(cfg.kafka, store)  # as `up` does before any role starts
    bus = mesh_bus(mesh)
    for name in ("A", "B", "C", "D"):
        bus.send(C.TOPIC_TOPOLOGY, Envelope(type=C.EVENT_JOINED, from_agent_id=name), key=name)
    for _ in range(3):
        bus.send_message(Envelope(type="m", from_agent_id="A", to_agent_id="B"))
    bus.produce_raw(C.TOPIC_TOPOLOGY, b"garbage", key="A")
    bus.flush()
    args = ("topology", "--config", str(mesh.config_file))
    proc = spawn_role(*args, log=tmp_path / "topo.log")

    def usage(source: str, target: str) -> int | None:
        snap = store.load_snapshot()
        if not snap:
            return None
        for s, t, _w, u, _lu in snap["graph"]["edges"]:
            if (s, t) == (source, target):
                return int(u)
        return None

    try:
        wait_until(lambda: usage("A", "B") == 3, 30, "3 reinforcements of A->B")
        snap = store.load_snapshot()
        assert snap is not None
        assert snap["stats"]["agents"] == 4 and snap["stats"]["edges"] == 12
        assert snap["offsets"]["topology"] == {"0": 5}  # 4 joins + the garbage, one partition
        dlq = [Envelope.decode(r.value).payload for r in read_topic(mesh, C.TOPIC_DLQ, 1)]
        assert [d["reason"][:8] for d in dlq] == ["not JSON"]

        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        for _ in range(2):
            bus.send_message(Envelope(type="m", from_agent_id="A", to_agent_id="B"))
        bus.send(C.TOPIC_TOPOLOGY, Envelope(type=C.EVENT_LEFT, from_agent_id="D"), key="D")
        bus.flush()
        proc = spawn_role(*args, log=tmp_path / "topo2.log")
        wait_until(lambda: usage("A", "B") == 5, 30, "5 reinforcements after the restart")
        later_snapshot(store, 0.8)  # five more snapshots: a doubled replay would show in them
        assert usage("A", "B") == 5
        wait_until(lambda: (store.load_snapshot() or {}).get("stats", {}).get("edges") == 6, 10,
                 "D's edges removed")
        assert "resumed from snapshot" in (tmp_path / "topo2.log").read_text()
        assert len(read_topic(mesh, C.TOPIC_DLQ, 1)) == 1  # the garbage is not re-read
        assert json.loads(json.dumps(store.load_snapshot()))["graph"]["agents"] == ["A", "B", "C"]

        # the broker loses its data (as the embedded one does when it restarts): the
        # snapshot's graph stands, its offsets do not; the new topics are read from 0
        stop(proc)
        admin = AdminClient({"bootstrap.servers": cfg.kafka.bootstrap})
        for future in admin.delete_topics([f"{cfg.kafka.topic_prefix}.{t}" for t in C.ALL_TOPICS]).values():
            future.result(10)
        old_epoch = store.kafka_epoch()
        assert prepare_topics(cfg.kafka, store) != old_epoch  # the topology topic was made anew
        bus.send_message(Envelope(type="m", from_agent_id="A", to_agent_id="B"))
        bus.flush()
        proc = spawn_role(*args, log=tmp_path / "topo3.log")
        wait_until(lambda: "earlier broker" in (tmp_path / "topo3.log").read_text(), 30, "rebuild")
        wait_until(lambda: (store.load_snapshot() or {}).get("epoch") == store.kafka_epoch(), 30,
                 "a snapshot of the new epoch")
        wait_until(lambda: usage("A", "B") == 6, 30, "the graph kept, one more reinforcement")
        later_snapshot(store, 0.8)  # five more snapshots: still exactly 6, nothing applied twice
        assert usage("A", "B") == 6
        assert store.load_snapshot()["graph"]["agents"] == ["A", "B", "C"]  # type: ignore[index]
    finally:
        stop(proc)
        store.close()


def test_a_role_written_against_the_public_api_runs_in_a_real_agent(external_mesh: Any,
                                                                      tmp_path: Path) -> None:
    """tests/helpers/roles.py:Echo imports nothing but `agentmesh`; an agent process runs it."""
    mesh: Mesh = external_mesh(agents=[{"name": "Echo", "role": "tests.helpers.roles:Echo"}])
    store = Store(mesh.config.redis.resolved_url, mesh.config.mesh)
    proc = spawn_role("agent", "--name", "Echo", "--config", str(mesh.config_file),
                      log=tmp_path / "echo.log")
    try:
        wait_until(lambda: store.ready_pid("agent-Echo") == proc.pid or proc.poll() is not None, 30,
                   "agent Echo ready")
        assert proc.poll() is None, (tmp_path / "echo.log").read_text()
        store.redis.sadd(store.keys.members, "Sales")  # a sender the agent accepts
        bus = mesh_bus(mesh)
        bus.send_message(Envelope(type="ping", from_agent_id="Sales", to_agent_id="Echo",
                                  payload={"n": 1}))
        bus.flush()
        sales = C.inbox_partition("Sales", mesh.config.kafka.partitions)
        reader = Reader(mesh.config.kafka, f"t-{uuid.uuid4().hex}", [(C.TOPIC_MESSAGES, sales, beginning())])
        pongs: list[Envelope] = []

        def pong() -> list[Envelope]:  # one reader, polled until Echo's answer is in Sales's inbox
            pongs.extend(e for r in reader.poll_batch(timeout=0.2)
                         if (e := Envelope.decode(r.value)).type == "pong")
            return pongs

        try:
            (answer,) = wait_until(pong, 30, "Echo's pong")
        finally:
            reader.close()
        assert answer.from_agent_id == "Echo" and answer.to_agent_id == "Sales"
        assert answer.payload == {"echo": {"n": 1}, "by": "Echo"}
    finally:
        stop(proc)
        store.close()
