"""The topology manager's state machine without I/O: records in; graph, counters, dead
letters and snapshot out. Every record read ends in exactly one counted outcome."""

from __future__ import annotations

import json

import pytest

from agentmesh_cli import constants as C
from agentmesh_cli.config import parse_config
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.errors import SnapshotError
from agentmesh_cli.records import Record
from agentmesh_cli.topology import state as state_module
from agentmesh_cli.topology.graph import SlimeMoldRules
from agentmesh_cli.topology.manager import TopologyState, expected_agents

TIMEOUT_MS = 90_000
PARTITIONS = 4  # A reads partition 3, B 1, D 0, E 2; nobody of A and B reads 0 and 2
LIMIT = 2048
T0 = 1_000_000
LATER = T0 + TIMEOUT_MS + 1  # every record read at T0 is past its hold
# what a messages record can end as (besides held)
MESSAGE_OUTCOMES = ("duplicates", "reinforcements", "self_messages", "operator_messages", "invalid",
                    "unknown_sender", "unrouted", C.dead_letters_counter(C.TOPIC_MESSAGES))


def feed(state: TopologyState, topic: str, offset: int, envelope: Envelope, now: int = T0,
         partition: int | None = None) -> str | None:
    if partition is None:
        partition = C.inbox_partition(envelope.to_agent_id, PARTITIONS) if topic == C.TOPIC_MESSAGES else 0
    return state.apply(Record(topic, partition, offset, None, envelope.encode()), now)


def join(name: str, ts: int = T0, **payload: object) -> Envelope:
    return Envelope(type=C.EVENT_JOINED, from_agent_id=name, ts=ts, payload=dict(payload))


def message(source: str, target: str, ts: int = T0) -> Envelope:
    return Envelope(type="m", from_agent_id=source, to_agent_id=target, ts=ts)


def mesh_of(*agents: str, checked: bool = True) -> TopologyState:
    state = TopologyState(SlimeMoldRules(), TIMEOUT_MS)
    if checked:
        state.partitions, state.max_record_bytes = PARTITIONS, LIMIT
    for i, name in enumerate(agents):
        feed(state, C.TOPIC_TOPOLOGY, i, join(name))
    state.counts.clear()
    return state


def outcomes(state: TopologyState) -> dict[str, int]:
    return {k: v for k, v in state.counts.items() if v and not k.startswith("records:")}


def reasons(state: TopologyState) -> list[str]:
    return [reason for _record, reason, _size in state.take_letters()]


def test_messages_read_before_joins_are_applied_when_the_agents_join() -> None:
    state = mesh_of()
    for i in range(3):  # a replay can read the messages topic ahead of the topology topic
        feed(state, C.TOPIC_MESSAGES, i, message("A", "B", 1000 + i))
    feed(state, C.TOPIC_TOPOLOGY, 0, join("A", 900))
    assert state.graph.edge("A", "B") is None and state.held_count == 3
    feed(state, C.TOPIC_TOPOLOGY, 1, join("B", 901))
    edge = state.graph.edge("A", "B")
    assert edge is not None and (edge.usage, edge.weight, edge.last_used) == (3, 0.8, 1002)
    assert state.held_count == 0 and state.counts["reinforcements"] == 3
    assert state.counts["unrouted"] == 0


def garbage(partition: int) -> Record:
    return Record(C.TOPIC_MESSAGES, partition, 7, None, b"[1, 2]")


def raw_message(partition: int, **fields: object) -> Record:
    data = {"v": 1, "id": "x", "type": "m", "from_agent_id": "A", "to_agent_id": "B", "ts": 5,
            "payload": {}, "meta": {}, **fields}
    return Record(C.TOPIC_MESSAGES, partition, 7, None, json.dumps(data).encode())


# (record, outcome counter once settled, dead letter reason of ours or None)
MESSAGE_CASES = [
    pytest.param(raw_message(1), "reinforcements", None, id="A to B"),
    pytest.param(raw_message(3, to_agent_id="A"), "self_messages", None, id="to itself"),
    pytest.param(raw_message(1, from_agent_id="cli"), "operator_messages", None, id="from the CLI"),
    pytest.param(raw_message(1, to_agent_id="Ghost"), C.dead_letters_counter(C.TOPIC_MESSAGES),
                 "unknown recipient Ghost", id="to an agent that never joined"),
    pytest.param(raw_message(1, from_agent_id="Ghost", to_agent_id="Ghost"), C.dead_letters_counter(
        C.TOPIC_MESSAGES), "unknown recipient Ghost", id="stranger to itself"),
    pytest.param(raw_message(0, to_agent_id="no such agent"), C.dead_letters_counter(C.TOPIC_MESSAGES),
                 "unknown recipient 'no such agent'", id="to a name no agent can have"),
    pytest.param(raw_message(2), C.dead_letters_counter(C.TOPIC_MESSAGES),
                 "message to B on partition 2, not its inbox partition 1", id="misrouted"),
    pytest.param(raw_message(1, from_agent_id="Ghost"), "unknown_sender", None, id="from a stranger"),
    pytest.param(raw_message(1, from_agent_id=""), "unknown_sender", None, id="from nobody"),
    pytest.param(garbage(1), "invalid", None, id="garbage B reads"),
    pytest.param(raw_message(3, ts="now"), "invalid", None, id="wrong type A reads"),
    pytest.param(Record(C.TOPIC_MESSAGES, 1, 7, None, b"{" + b" " * LIMIT), "invalid", None,
                 id="huge record B reads"),
    pytest.param(garbage(0), C.dead_letters_counter(C.TOPIC_MESSAGES),
                 "not a JSON object but list (no agent reads partition 0)",
                 id="garbage nobody reads"),
    pytest.param(raw_message(2, to_agent_id=5), C.dead_letters_counter(C.TOPIC_MESSAGES),
                 "field 'to_agent_id' missing or not a string (no agent reads partition 2)",
                 id="wrong type nobody reads"),
]


@pytest.mark.parametrize(("record", "outcome", "reason"), MESSAGE_CASES)
def test_every_message_record_ends_in_one_outcome(record: Record, outcome: str, reason: str | None) -> None:
    state = mesh_of("A", "B")
    state.apply(record, T0)
    state.drop_silent(LATER)  # settles whatever was held (A and B time out too)
    assert state.counts[C.records_counter(C.TOPIC_MESSAGES)] == 1
    assert {k: state.counts[k] for k in MESSAGE_OUTCOMES if state.counts[k]} == {outcome: 1}
    assert reasons(state) == ([] if reason is None else [reason])
    assert state.counts[C.COUNTER_DEAD] == (reason is not None) and state.held_count == 0


@pytest.mark.parametrize(
    ("envelope", "reason"),
    [
        (join("A"), None),
        (Envelope(type=C.EVENT_HEARTBEAT, from_agent_id="B", ts=T0), None),
        (Envelope(type=C.EVENT_LEFT, from_agent_id="B", ts=T0), None),
        (Envelope(type="dance", from_agent_id="A", ts=T0), "unknown topology event type dance"),
        (Envelope(type="a b", from_agent_id="A", ts=T0), "unknown topology event type 'a b'"),
        (join(""), "agent id '' is not a valid agent name"),
        (join("x" * 70), f"agent id {'x' * 64!r}... is not a valid agent name"),
        (Envelope(type=C.EVENT_LEFT, from_agent_id="Ghost", ts=T0),
         "agent_left from Ghost, which never joined"),
        (join("C", role=5), "field 'payload.role' is not a string of at most 200 characters"),
        (join("C", role="r" * 201), "field 'payload.role' is not a string of at most 200 characters"),
    ],
)
def test_every_topology_record_is_an_event_or_a_dead_letter(envelope: Envelope, reason: str | None) -> None:
    state = mesh_of("A", "B")
    assert feed(state, C.TOPIC_TOPOLOGY, 9, envelope) == reason
    assert outcomes(state).get("events", 0) == (reason is None)
    assert state.counts[C.dead_letters_counter(C.TOPIC_TOPOLOGY)] == (reason is not None)
    assert reasons(state) == ([] if reason is None else [reason])


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x00\x01", "not JSON: "),
        (b"[1]", "not a JSON object but list"),
        (b'{"v": 1, "id": "x"}', "field 'type' missing or not a string"),
        (b"{" + b" " * LIMIT, f"record of {LIMIT + 1} bytes is over the limit of {LIMIT} bytes "
                               "(kafka.max_record_bytes)"),
    ],
)
def test_topology_records_that_do_not_decode(raw: bytes, reason: str) -> None:
    state = mesh_of("A")
    said = state.apply(Record(C.TOPIC_TOPOLOGY, 0, 3, None, raw), T0)
    assert said is not None and said.startswith(reason)  # the JSON parser's words follow
    assert [(r.offset, why, size) for r, why, size in state.take_letters()] == [(3, said, len(raw))]


def test_a_forged_future_heartbeat_does_not_keep_an_agent_alive() -> None:
    state = mesh_of()
    feed(state, C.TOPIC_TOPOLOGY, 0, join("A", ts=2**62), now=T0)
    assert state.last_seen["A"] == T0
    assert state.drop_silent(LATER) == ["A"]


def test_held_records_are_released_by_joins() -> None:
    state = mesh_of("A", "B")
    feed(state, C.TOPIC_MESSAGES, 0, message("A", "D"))  # D reads partition 0
    state.apply(garbage(0), T0)
    state.apply(garbage(2), T0)
    assert state.held_count == 3 and outcomes(state) == {}
    feed(state, C.TOPIC_TOPOLOGY, 5, join("D"))
    assert outcomes(state) == {"events": 1, "joins": 1, "reinforcements": 1, "invalid": 1}
    assert state.held_count == 1 and list(state.held_invalid) == [2]


def test_a_message_to_an_agent_that_left_is_unrouted_when_its_hold_ends() -> None:
    state = mesh_of("A", "B")
    feed(state, C.TOPIC_TOPOLOGY, 5, Envelope(type=C.EVENT_LEFT, from_agent_id="B", ts=T0))
    feed(state, C.TOPIC_MESSAGES, 0, message("A", "B"))
    assert state.held_count == 1
    state.drop_silent(T0 + TIMEOUT_MS)  # not yet
    assert state.held_count == 1
    state.drop_silent(LATER)
    assert state.held_count == 0 and state.counts["unrouted"] == 1 and reasons(state) == []


def test_held_records_survive_a_snapshot_and_settle_after_the_heartbeat_timeout() -> None:
    state = mesh_of("A", "B")
    feed(state, C.TOPIC_MESSAGES, 4, message("A", "Ghost"))
    state.apply(garbage(2), T0 + 5)
    assert state.held_count == 2
    restored = TopologyState.restore(json.loads(json.dumps(state.snapshot(T0))), SlimeMoldRules(),
                                     TIMEOUT_MS)
    restored.partitions = PARTITIONS
    assert restored.held_count == 2
    restored.drop_silent(T0 + TIMEOUT_MS + 1)  # the message is due, the garbage not yet
    assert [(r.partition, r.offset, reason, size) for r, reason, size in restored.take_letters()] == [
        (1, 4, "unknown recipient Ghost", len(message("A", "Ghost").encode()))]
    restored.drop_silent(T0 + TIMEOUT_MS + 6)
    assert [(r.partition, r.offset) for r, _reason, _size in restored.take_letters()] == [(2, 7)]
    assert restored.held_count == 0


def test_a_snapshot_without_record_coordinates_still_loads() -> None:
    snapshot = mesh_of("A").snapshot(T0)
    snapshot["held"] = [["A", "Ghost", T0]]
    del snapshot["held_invalid"]
    state = TopologyState.restore(snapshot, SlimeMoldRules(), TIMEOUT_MS)
    state.drop_silent(LATER)
    assert reasons(state) == ["unknown recipient Ghost"]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"graph": None}, "the graph is not an object"),
        ({"last_seen": []}, "AttributeError"),
        ({"offsets": {"t.messages": {"zero": 1}}}, "ValueError"),
        ({"held": [7]}, "TypeError"),
        ({"held_invalid": [[0, 1, 2]]}, "ValueError"),
    ],
)
def test_a_malformed_snapshot_is_a_snapshot_error(change: dict[str, object], problem: str) -> None:
    """What the manager reads back from Redis may be anything: one SnapshotError (the
    manager then rebuilds from the topics), never a bare TypeError or AttributeError."""
    snapshot = {**mesh_of("A").snapshot(T0), **change}
    with pytest.raises(SnapshotError, match=f"^malformed topology snapshot: .*{problem}"):
        TopologyState.restore(snapshot, SlimeMoldRules(), TIMEOUT_MS)
    with pytest.raises(SnapshotError, match="not an object but list"):
        TopologyState.restore([snapshot], SlimeMoldRules(), TIMEOUT_MS)  # type: ignore[arg-type]


def test_a_new_broker_epoch_settles_what_was_held() -> None:
    state = mesh_of("A", "B")
    feed(state, C.TOPIC_MESSAGES, 0, message("A", "Ghost"))
    feed(state, C.TOPIC_MESSAGES, 1, message("Stranger", "B"))
    state.new_epoch("e2")
    assert state.held_count == 0 and state.counts["unknown_sender"] == 1
    assert reasons(state) == ["unknown recipient Ghost"]


def test_a_new_broker_epoch_counts_every_agent_as_seen_then() -> None:
    """Nobody could be heard while the broker was away: the liveness check gives every
    agent a whole timeout from the new epoch to be heard on the new broker."""
    state = mesh_of("A", "B")
    state.last_seen = {"A": T0, "B": T0 + 5}
    state.new_epoch("e2", T0 + TIMEOUT_MS + 100)
    assert state.last_seen == {"A": T0 + TIMEOUT_MS + 100, "B": T0 + TIMEOUT_MS + 100}
    assert state.drop_silent(T0 + 2 * TIMEOUT_MS) == []
    assert state.drop_silent(T0 + 2 * TIMEOUT_MS + 101) == ["A", "B"]
    state = mesh_of("A")
    state.last_seen = {"A": T0}
    state.new_epoch("e3")  # without a time: seen as before
    assert state.last_seen == {"A": T0}


def test_holding_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "MAX_HELD", 2)
    state = mesh_of("A", "B")
    for i in range(4):
        feed(state, C.TOPIC_MESSAGES, i, message("A", "Ghost"))
    assert state.held_count == 2 and reasons(state) == ["unknown recipient Ghost"] * 2


def test_without_kafka_settings_nothing_is_checked_against_them() -> None:
    state = mesh_of("A", "B", checked=False)
    state.apply(raw_message(2), T0)  # not B's partition, but partitions are unknown
    state.apply(garbage(0), T0)
    assert outcomes(state) == {"reinforcements": 1, "invalid": 1}


def test_agents_of_mesh_yaml_read_their_inbox_even_before_they_first_join() -> None:
    state = mesh_of("A", "B")
    state.expected = frozenset({"D"})  # D reads partition 0 once it starts
    feed(state, C.TOPIC_MESSAGES, 0, message("A", "D"))
    state.apply(garbage(0), T0)
    state.apply(garbage(2), T0)  # nobody, not even D, reads partition 2
    state.drop_silent(LATER)
    assert outcomes(state)["unrouted"] == 1 and outcomes(state)["invalid"] == 1
    assert reasons(state) == ["not a JSON object but list (no agent reads partition 2)"]


def test_a_copy_of_a_message_already_read_is_not_reinforced_again() -> None:
    """Copies carry their original's id: sent again after a broker restart, or by a
    handler that ran again after its agent crashed."""
    state = mesh_of("A", "B")
    first, other = message("A", "B"), message("A", "B")
    for offset, envelope in enumerate([first, first, other, first]):
        assert feed(state, C.TOPIC_MESSAGES, offset, envelope) is None
    assert outcomes(state) == {"reinforcements": 2, "duplicates": 2}
    edge = state.graph.edge("A", "B")
    assert edge is not None and edge.usage == 2


@pytest.mark.parametrize(("ts", "decodes"), [(2**63 - 1, True), (2**63, False), (2**64 - 1, False)])
def test_a_time_past_int64_does_not_decode_and_a_held_message_keeps_one_outcome(ts: int,
                                                                               decodes: bool) -> None:
    """A message waiting for its sender's join, with the largest time an edge can keep and
    past it: the join is one event, the message one outcome (found by test_poison, where a
    time of 2**64 - 1 made the join both an event and a dead letter and lost the message)."""
    state = mesh_of("A")
    value = json.dumps({**json.loads(message("E", "A").encode()), "ts": ts}).encode()
    state.apply(Record(C.TOPIC_MESSAGES, C.inbox_partition("A", PARTITIONS), 0, None, value), T0)
    feed(state, C.TOPIC_TOPOLOGY, 7, join("E"))
    if decodes:
        assert outcomes(state) == {"events": 1, "joins": 1, "reinforcements": 1}
        edge = state.graph.edge("E", "A")
        assert edge is not None and edge.last_used == ts
    else:
        assert outcomes(state) == {"events": 1, "joins": 1, "invalid": 1}  # A dead-letters it
    assert state.held_count == 0 and state.take_letters() == []


def test_a_held_message_that_raises_is_its_own_dead_letter(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug one released message triggers costs that message only: the join that released
    it stays one event, and the messages held after it still reach their edges."""
    state = mesh_of("A")
    for offset, ts in enumerate((T0, T0 + 13, T0 + 2)):
        feed(state, C.TOPIC_MESSAGES, offset, message("E", "A", ts=ts))
    reinforce = state.graph.reinforce

    def fragile(source: str, target: str, ts_ms: int) -> object:
        if ts_ms == T0 + 13:
            raise RuntimeError("thirteen")
        return reinforce(source, target, ts_ms)

    monkeypatch.setattr(state.graph, "reinforce", fragile)
    assert feed(state, C.TOPIC_TOPOLOGY, 7, join("E")) is None
    assert outcomes(state) == {"events": 1, "joins": 1, "reinforcements": 2, "dead_letters": 1,
                               C.dead_letters_counter(C.TOPIC_MESSAGES): 1}
    assert [(r.offset, why) for r, why, _size in state.take_letters()] == \
        [(1, "topology manager error: RuntimeError('thirteen')")]
    edge = state.graph.edge("E", "A")
    assert state.held_count == 0 and edge is not None and edge.usage == 2


# counts (replicas each group runs now) -> the agents the manager expects to read their inbox:
# a group's replicas up to its max, or its count when scaled beyond
EXPECTED_CONFIG = parse_config({"mesh": "m", "agents": [
    {"name": "Sales", "role": "sales"}, {"name": "Support", "role": "support", "replicas": 2},
    {"name": "Chat", "role": "llm", "llm": {"model": "m"}, "replicas": {"min": 1, "max": 3}}]})


@pytest.mark.parametrize(("counts", "expected"), [
    ({}, {"Sales", "Support-1", "Support-2", "Chat-1", "Chat-2", "Chat-3"}),
    ({"Support": 4, "Chat": 1}, {"Sales", "Support-1", "Support-2", "Support-3", "Support-4", "Chat-1",
                                 "Chat-2", "Chat-3"}),
])
def test_the_agents_the_topology_manager_expects(counts: dict[str, int], expected: set[str]) -> None:
    assert expected_agents(EXPECTED_CONFIG, counts) == expected
    alone = parse_config({"mesh": "m", "agents": [{"name": "A", "role": "sales"}]})
    assert expected_agents(alone, {}) == {"A"}  # no group: mesh.yaml's agents


@pytest.mark.parametrize(("beats", "dropped", "seen_after"), [
    ({}, ["A", "B"], {}),  # nothing in the registry: both silent, both dropped
    ({"A": LATER - 10}, ["B"], {"A": LATER - 10}),  # A beat in Redis lately: alive, seen then
    ({"A": LATER - TIMEOUT_MS - 1, "B": LATER}, ["A"], {"B": LATER}),  # A's beat is too old
    ({"A": LATER + 50_000}, ["B"], {"A": LATER}),  # a beat from a clock ahead counts as now
    ({"C": LATER}, ["A", "B"], {}),  # a beat of an agent not in the graph changes nothing
])
def test_an_agent_silent_on_the_broker_but_beating_in_the_registry_is_kept(
        beats: dict[str, int], dropped: list[str], seen_after: dict[str, int]) -> None:
    state = mesh_of("A", "B")
    state.last_seen = {"A": T0, "B": T0}
    assert state.silent(LATER) == ["A", "B"]
    assert state.drop_silent(LATER, beats) == dropped
    assert state.last_seen == seen_after
    assert sorted(state.graph.agents()) == sorted(seen_after)
