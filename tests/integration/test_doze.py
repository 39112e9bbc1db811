"""Readers that sleep when idle (doze.py, doorbell.py, dozing.py), on real agent processes,
the session broker and Valkey: an idle agent stops fetching and says so; a sender that
rings wakes it; a record nobody rang for (its sender killed between the write and the
ring) is found by the agent's next probe; nothing is handled twice."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.bus import Bus
from agentmesh_cli.config import KafkaConfig
from agentmesh_cli.dozing import ringing, stop_ringing
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.reader import committed_offsets
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import wait_until
from tests.helpers.agents import agents
from tests.helpers.mesh import mesh_bus

ROLE = "tests.helpers.waiting_roles:SyncWorker"


def asleep(store: Store) -> dict[str, str]:
    return dict(store.redis.hgetall(store.keys.asleep))


def counter(store: Store, name: str, key: str) -> int:
    return int(store.counters(name).get(key, 0))


def work(tag: str, log: Path) -> Envelope:
    return Envelope(type="work", from_agent_id="cli", to_agent_id="W", payload={"tag": tag, "log": str(log)})


def test_an_idle_agent_sleeps_a_ring_wakes_it_and_a_probe_finds_what_nobody_rang_for(
        external_mesh: Any, tmp_path: Path) -> None:
    mesh = external_mesh(agents=[{"name": "W", "role": ROLE}], kafka={"idle_probe": "1s"})
    log = tmp_path / "work.log"
    with agents(mesh, tmp_path) as store:
        # said it sleeps (the hash), then stopped fetching (counted)
        wait_until(lambda: asleep(store).get("W") == "consensus,messages"
                   and counter(store, "W", "doze_sleeps") == 1, 20, "W asleep")
        bus = mesh_bus(mesh, ring=False)
        bell = ringing(bus, store)
        try:
            bus.send_message(work("rung", log))
            assert bus.flush(10) == 0
            assert bell.rings == 1
            wait_until(lambda: counter(store, "W", C.COUNTER_IN) == 1, 20, "the rung message handled")
            wait_until(lambda: counter(store, "W", "doze_rung") == 1, 20, "W counted its ring")
            assert counter(store, "W", "doze_probe_found") == 0

            # a sender that does not ring: W finds the record when it probes (every second)
            wait_until(lambda: "W" in asleep(store) and counter(store, "W", "doze_sleeps") >= 2, 20,
                       "W asleep again")
            silent = mesh_bus(mesh, "silent", ring=False)
            silent.send_message(work("unrung", log))
            assert silent.flush(10) == 0
            wait_until(lambda: counter(store, "W", C.COUNTER_IN) == 2, 20, "the unrung message handled")
            wait_until(lambda: counter(store, "W", "doze_probe_found") == 1, 20, "found by a probe")
        finally:
            bell.close()
        assert log.read_text(encoding="utf-8").split("\n") == [
            "start rung", "finish rung", "start unrung", "finish unrung", ""]
        assert counter(store, "W", C.COUNTER_DUPLICATES) == 0
    # an agent that left is nobody's to ring
    after = Store(mesh.config.redis.resolved_url, mesh.config.mesh)
    try:
        assert "W" not in asleep(after)
    finally:
        after.close()


def test_a_closed_doorbell_stops_listening_at_once(broker: str, valkey: str) -> None:
    """A bench or chaos load closes its sender's doorbell before its Redis stops: the
    listening thread ends with `close`, not up to its 5 s check later."""
    store = Store(valkey, "dz-close")
    bus = Bus(KafkaConfig(bootstrap_servers=broker, topic_prefix="dz-close"), "test-close")
    try:
        bell = ringing(bus, store)
        wait_until(lambda: bell.listening, 10, "the doorbell listening")
        thread = bell._thread
        assert thread is not None and thread.is_alive()
        stop_ringing(bus)
        assert not thread.is_alive() and bus.doorbell is None
    finally:
        store.close()


def test_an_agent_that_goes_quiet_commits_its_last_offsets(external_mesh: Any, tmp_path: Path) -> None:
    """A commit put off (one per 0.2 s at most) is made when due even if nothing else comes:
    an agent that went quiet, or to sleep, used to keep its last offsets uncommitted until
    its next record, and read them again after a kill (the ledger skipped them)."""
    mesh = external_mesh(agents=[{"name": "W", "role": ROLE}])
    log = tmp_path / "work.log"
    cfg = mesh.config.kafka
    partition = C.inbox_partition("W", cfg.partitions)
    with agents(mesh, tmp_path) as store:
        bus = mesh_bus(mesh)
        for i in range(30):  # in three bursts: the last commit of each is put off
            bus.send_message(work(f"t{i}", log))
            if i % 10 == 9:
                bus.flush(10)
                time.sleep(0.05)
        bus.flush(10)
        wait_until(lambda: counter(store, "W", C.COUNTER_IN) >= 30, 30, "30 handled")
        end = bus.delivered[(C.TOPIC_MESSAGES, partition)] + 1
        group = C.agent_group(cfg.topic_prefix, "W")
        wait_until(lambda: committed_offsets(cfg, group, [(C.TOPIC_MESSAGES, partition)]).get(
            (C.TOPIC_MESSAGES, partition)) == end, 10, f"offset {end} committed")
