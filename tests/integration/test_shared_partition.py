"""Two agents on one inbox partition: each looks at a record's key before anything else
(Reader `only_keys`), so a record keyed to the other is skipped unverified and undecoded,
and a record that must be refused is refused once, by the agent its key names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import wait_until
from tests.helpers.agents import agents
from tests.helpers.mesh import mesh_bus

ROLE = "tests.helpers.waiting_roles:SyncWorker"


def count(store: Store, agent: str, counter: str) -> int:
    return int(store.counters(agent).get(counter, 0))


def test_agents_sharing_a_partition_skip_each_others_records_by_key(external_mesh: Any,
                                                                   tmp_path: Path) -> None:
    mesh = external_mesh(agents=[{"name": "A", "role": ROLE}, {"name": "B", "role": ROLE}],
                         kafka={"partitions": 1})
    log = tmp_path / "work.log"
    with agents(mesh, tmp_path) as store:
        bus = mesh_bus(mesh)
        for tag in ("a1", "a2", "a3"):
            bus.send_message(Envelope(type="work", from_agent_id="cli", to_agent_id="A",
                                      payload={"tag": tag, "log": str(log)}))
        # keyed to A, addressed to B: B skips it by its key, A refuses it (nobody else would)
        crossed = Envelope(type="work", from_agent_id="cli", to_agent_id="B",
                           payload={"tag": "x", "log": str(log)})
        bus.produce_raw(C.TOPIC_MESSAGES, crossed.encode(), key="A", partition=0)
        # keyed to B and not an envelope: only B refuses it
        bus.produce_raw(C.TOPIC_MESSAGES, b"not json", key="B", partition=0)
        assert bus.flush(10) == 0

        def settled() -> bool:
            return (count(store, "A", C.COUNTER_IN) == 3 and count(store, "A", C.COUNTER_DEAD) == 1
                    and count(store, "B", C.COUNTER_DEAD) == 1 and count(store, "B", C.COUNTER_SKIPPED) == 4
                    and count(store, "A", C.COUNTER_SKIPPED) == 1)

        wait_until(settled, 30, "both agents settled the five records")
        assert count(store, "B", C.COUNTER_IN) == 0
        assert log.read_text(encoding="utf-8").split("\n") == [
            "start a1", "finish a1", "start a2", "finish a2", "start a3", "finish a3", ""]
        for agent in ("A", "B"):
            assert count(store, agent, C.records_counter(C.TOPIC_MESSAGES)) == 5
