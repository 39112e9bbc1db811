"""The topology manager's state machine without I/O: records in, graph and snapshot out."""

from __future__ import annotations

from agentmesh_cli import constants as C
from agentmesh_cli.bus import Record
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.topology.graph import SlimeMoldRules
from agentmesh_cli.topology.manager import TopologyState

TIMEOUT_MS = 90_000


def feed(state: TopologyState, topic: str, offset: int, envelope: Envelope) -> None:
    state.apply(Record(topic, 0, offset, None, envelope.encode()))


def join(name: str, ts: int) -> Envelope:
    return Envelope(type=C.EVENT_JOINED, from_agent_id=name, ts=ts)


def message(source: str, target: str, ts: int) -> Envelope:
    return Envelope(type="m", from_agent_id=source, to_agent_id=target, ts=ts)


def test_messages_read_before_joins_are_applied_when_the_agents_join() -> None:
    state = TopologyState(SlimeMoldRules(), TIMEOUT_MS)
    for i in range(3):  # a replay can read the messages topic ahead of the topology topic
        feed(state, C.TOPIC_MESSAGES, i, message("A", "B", 1000 + i))
    feed(state, C.TOPIC_TOPOLOGY, 0, join("A", 900))
    assert state.graph.edge("A", "B") is None and state.held_count == 3
    feed(state, C.TOPIC_TOPOLOGY, 1, join("B", 901))
    edge = state.graph.edge("A", "B")
    assert edge is not None and (edge.usage, edge.weight, edge.last_used) == (3, 0.8, 1002)
    assert state.held_count == 0 and state.counts["reinforcements"] == 3
    assert state.counts["unrouted"] == 0


def test_held_messages_survive_a_snapshot_and_expire_after_the_heartbeat_timeout() -> None:
    state = TopologyState(SlimeMoldRules(), TIMEOUT_MS)
    feed(state, C.TOPIC_TOPOLOGY, 0, join("A", 0))
    feed(state, C.TOPIC_MESSAGES, 0, message("A", "Ghost", 1_000))
    feed(state, C.TOPIC_MESSAGES, 1, message("A", "A", 1_000))  # a self-message is never held
    assert state.held_count == 1 and state.counts["unrouted"] == 1
    restored = TopologyState.restore(state.snapshot(2_000), SlimeMoldRules(), TIMEOUT_MS)
    assert restored.held == {"Ghost": [("A", "Ghost", 1_000)]}
    restored.tick(1_000 + TIMEOUT_MS)  # not yet
    assert restored.held_count == 1
    restored.tick(1_001 + TIMEOUT_MS)
    assert restored.held_count == 0 and restored.counts["unrouted"] == 1
