"""The vectorised SlimeMold core against the rule tables, event by event.

A plain-dict model of DESIGN section 5 (one Python step per event, `round(x, 10)` after
every arithmetic step) and the NumPy core see the same random event sequences; the
weights, usages, last uses and edge sets must be exactly equal (bit for bit) after every
step. Then `TopologyState.apply_batch` against `apply` one record at a time on mixed
record streams, garbage included: the same counters, graph, held records and dead letters.
"""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentmesh_cli import constants as C
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.errors import InvalidEnvelope, TopologyError
from agentmesh_cli.records import Record
from agentmesh_cli.signing import BAD_SIGNATURE, UNSIGNED
from agentmesh_cli.topology.graph import Edge, SlimeMoldGraph, SlimeMoldRules, _rounded
from agentmesh_cli.topology.state import TopologyState

RULES = [
    SlimeMoldRules(),
    # steps that are not multiples of each other, a cap below 1 and a start off the lattice
    SlimeMoldRules(initial_weight=0.33, reinforcement=0.07, max_weight=0.9, decay=0.03,
                   prune_threshold=0.12),
    SlimeMoldRules(initial_weight=0.123456789012345, reinforcement=0.0999999999, max_weight=1.0,
                   decay=0.0111111111111, prune_threshold=0.05),
    # steps with digits beyond the 10th: k rounded steps differ from one step of k * r
    SlimeMoldRules(initial_weight=0.5, reinforcement=0.01234567894, max_weight=1.0,
                   decay=0.00234567896, prune_threshold=0.1),
]


class RuleTable:
    """DESIGN section 5 as written: plain dicts, one event at a time."""

    def __init__(self, rules: SlimeMoldRules) -> None:
        self.rules = rules
        self.agents: list[str] = []
        self.edges: dict[tuple[str, str], tuple[float, int, int | None]] = {}

    def join(self, agent: str) -> None:
        if agent in self.agents:
            return
        for other in self.agents:
            self.edges[(agent, other)] = (self.rules.initial_weight, 0, None)
            self.edges[(other, agent)] = (self.rules.initial_weight, 0, None)
        self.agents.append(agent)

    def leave(self, agent: str) -> None:
        if agent in self.agents:
            self.agents.remove(agent)
            self.edges = {k: v for k, v in self.edges.items() if agent not in k}

    def message(self, source: str, target: str, ts: int) -> None:
        if source == target or source not in self.agents or target not in self.agents:
            return
        w, usage, _last = self.edges.get((source, target), (self.rules.initial_weight, 0, None))
        self.edges[(source, target)] = (
            min(self.rules.max_weight, round(w + self.rules.reinforcement, 10)), usage + 1, ts)

    def decay(self) -> None:
        decayed = {k: (round(max(0.0, w - self.rules.decay), 10), u, t)
                   for k, (w, u, t) in self.edges.items()}
        self.edges = {k: v for k, v in decayed.items() if v[0] >= self.rules.prune_threshold}


def exact(edges: dict[tuple[str, str], tuple[float, int, int | None]]) -> dict[Any, Any]:
    # float.hex: equal bits, not just ==, so a -0.0 or a last-bit difference shows
    return {k: (float(w).hex(), u, t) for k, (w, u, t) in edges.items()}


def graph_edges(graph: SlimeMoldGraph) -> dict[tuple[str, str], tuple[float, int, int | None]]:
    return {(e.source, e.target): (e.weight, e.usage, e.last_used) for e in graph.edges()}


def test_rounding_matches_python_round_bit_for_bit() -> None:
    rng = np.random.default_rng(7)
    lattice = rng.integers(0, 10**6, 50_000) / 10**6
    ties = (rng.integers(0, 10**10, 50_000) + 0.5) / 1e10  # next to a tie of the 10th digit
    values = np.concatenate([rng.random(50_000), lattice + 0.1, lattice - 0.05, ties,
                             rng.random(1000) * 1e6, rng.random(100) * 1e20,
                             [0.0, -0.0, 1e-12, -1e-12, 5e-11, 0.1 + 0.2, 0.5 - 8 * 0.05]])
    got = _rounded(values.copy())
    want = np.array([round(v, 10) for v in values.tolist()])
    assert np.array_equal(got.view(np.int64), want.view(np.int64))


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300),
                min_size=1, max_size=50))
@settings(max_examples=200, deadline=None)
def test_rounding_matches_python_round_on_any_float(values: list[float]) -> None:
    got = _rounded(np.array(values))
    assert [v.hex() for v in got.tolist()] == [round(v, 10).hex() for v in values]


@pytest.mark.parametrize("rules", RULES, ids=["defaults", "odd steps", "off lattice", "long steps"])
@pytest.mark.parametrize("seed", range(4))
def test_the_core_follows_the_rule_tables_on_random_event_sequences(rules: SlimeMoldRules,
                                                                    seed: int) -> None:
    rng = random.Random(seed)
    pool = [f"a{i}" for i in range(7)] + ["ghost"]  # ghost never joins
    table, graph = RuleTable(rules), SlimeMoldGraph(rules)
    ts = 0
    for _step in range(250):
        ts += 1
        kind = rng.choices(["join", "leave", "message", "batch", "decay"], [3, 1, 6, 4, 3])[0]
        if kind == "join":
            agent = rng.choice(pool[:-1])
            table.join(agent)
            graph.add_agent(agent)
        elif kind == "leave":
            agent = rng.choice(pool)
            table.leave(agent)
            graph.remove_agent(agent)
        elif kind == "message":  # incl. to itself, to a ghost, on a pruned edge
            source, target = rng.choice(pool), rng.choice(pool)
            table.message(source, target, ts)
            graph.reinforce(source, target, ts)
        elif kind == "batch":
            # skewed: a few edges get many messages in one batch, up to and past the cap
            hot = [(rng.choice(pool), rng.choice(pool)) for _ in range(3)]
            pairs = [rng.choice(hot) if rng.random() < 0.7 else (rng.choice(pool), rng.choice(pool))
                     for _ in range(rng.randint(1, 60))]
            times = [ts + i for i in range(len(pairs))]
            ts += len(pairs)
            for (source, target), t in zip(pairs, times, strict=True):
                table.message(source, target, t)
            if rng.random() < 0.5:
                graph.reinforce_many([s for s, _ in pairs], [t for _, t in pairs], times)
            else:  # by slots, as the state passes them
                slots = graph.slots
                graph.reinforce_many(np.array([slots.get(s, -1) for s, _ in pairs]),
                                     np.array([slots.get(t, -1) for _, t in pairs]), np.array(times))
        else:
            before = len(table.edges)
            table.decay()
            assert graph.decay() == before - len(table.edges)
        assert graph.agents() == sorted(table.agents)
        assert exact(graph_edges(graph)) == exact(table.edges)
    # and a snapshot of the result is the same graph
    rebuilt = SlimeMoldGraph.from_dict(json.loads(json.dumps(graph.to_dict())), rules)
    assert exact(graph_edges(rebuilt)) == exact(table.edges)


@pytest.mark.parametrize("k", [1, 2, 5, 6, 50])
def test_k_messages_in_one_batch_weigh_what_k_single_messages_do(k: int) -> None:
    one, many = SlimeMoldGraph(), SlimeMoldGraph()
    for graph in (one, many):
        graph.add_agent("A")
        graph.add_agent("B")
        graph.decay()
    for i in range(k):
        one.reinforce("A", "B", 10 + i)
    assert many.reinforce_many(["A"] * k, ["B"] * k, list(range(10, 10 + k))) == k
    assert many.edge("A", "B") == one.edge("A", "B")
    assert many.edge("A", "B") == Edge("A", "B", min(1.0, round(0.45 + 0.1 * k, 10)), k, 9 + k)


def test_a_batch_revives_pruned_edges_in_order_and_skips_what_reinforce_skips() -> None:
    graph = SlimeMoldGraph()
    for agent in "ABC":
        graph.add_agent(agent)
    for _ in range(9):
        graph.decay()
    assert graph.edges() == []
    sources, targets = ["C", "A", "A", "A", "Z", "B"], ["B", "B", "A", "B", "A", "Z"]
    assert graph.reinforce_many(sources, targets, [1, 2, 3, 4, 5, 6]) == 3
    assert graph.to_dict()["edges"] == [["A", "B", 0.7, 2, 4], ["C", "B", 0.6, 1, 1]]
    assert graph.route("C", "B") == (["C", "B"], pytest.approx(1 / 0.6))
    assert graph.reinforce_many([], [], []) == 0
    with pytest.raises(TopologyError, match="as many targets and times as sources"):
        graph.reinforce_many(["A", "B"], ["B"], [1, 2])


def test_route_is_rebuilt_after_the_edges_change() -> None:
    graph = SlimeMoldGraph()
    for agent in "ABC":
        graph.add_agent(agent)
    assert graph.route("A", "B") == (["A", "B"], 2.0)
    for _ in range(8):
        graph.decay()
    graph.reinforce_many(["A"] * 9 + ["C"] * 9, ["C"] * 9 + ["B"] * 9, list(range(18)))
    graph.decay()  # only A->C and C->B are left
    assert graph.route("A", "B")[0] == ["A", "C", "B"]
    graph.remove_agent("C")
    with pytest.raises(Exception, match="no path"):
        graph.route("A", "B")


# -- apply_batch against apply ------------------------------------------------------

PARTITIONS = 4
NAMES = ["A", "B", "D", "E", "F"]
T0 = 1_000_000


def _stream(seed: int, length: int) -> list[Record]:
    """Records as a hostile, busy mesh has them: mostly messages, with joins, leaves,
    heartbeats, copies, garbage, strangers, operators, misrouted and oversized records, and
    records whose signature does not verify (security.sign_envelopes)."""
    rng = random.Random(seed)
    offsets = {C.TOPIC_MESSAGES: 0, C.TOPIC_TOPOLOGY: 0}
    sent: list[bytes] = []
    out: list[Record] = []

    def add(topic: str, value: bytes | None, partition: int) -> None:
        forged = rng.choice([UNSIGNED, BAD_SIGNATURE]) if rng.random() < 0.03 else None
        out.append(Record(topic, partition, offsets[topic], None, value, forged))
        offsets[topic] += 1

    for i in range(length):
        roll = rng.random()
        ts = T0 + i
        if roll < 0.06:
            kind = rng.choice([C.EVENT_JOINED, C.EVENT_JOINED, C.EVENT_HEARTBEAT, C.EVENT_LEFT, "dance"])
            who = rng.choice([*NAMES, "Ghost", "not a name"])
            add(C.TOPIC_TOPOLOGY, Envelope(type=kind, from_agent_id=who, ts=ts,
                                           payload={"role": "r"}).encode(), 0)
        elif roll < 0.08:
            add(C.TOPIC_TOPOLOGY, rng.choice([b"[1]", b"\x00", None]), 0)
        elif roll < 0.12 and sent:  # a copy of an earlier message
            value = rng.choice(sent)
            add(C.TOPIC_MESSAGES, value, C.inbox_partition(orjson.loads(value)["to_agent_id"],
                                                           PARTITIONS))
        elif roll < 0.18:
            partition = rng.randrange(PARTITIONS)
            add(C.TOPIC_MESSAGES, rng.choice([b"[1, 2]", b"{", b"null", b"{" + b" " * 3000, None,
                                              b'{"v": 1, "id": "q", "type": "m", "from_agent_id": '
                                              b'"A", "to_agent_id": "B", "ts": true}',
                                              b'{"v": 1, "id": "", "type": "m", "from_agent_id": '
                                              b'"A", "to_agent_id": "B", "ts": 1}']), partition)
        else:
            source = rng.choice([*NAMES, *NAMES, "Ghost", C.CLI_COUNTER_OWNER, ""])
            target = rng.choice([*NAMES, *NAMES, *NAMES, "Ghost", "no such agent"])
            value = Envelope(type="m", from_agent_id=source, to_agent_id=target, ts=ts).encode()
            sent.append(value)
            right = C.inbox_partition(target, PARTITIONS)
            add(C.TOPIC_MESSAGES, value, right if rng.random() < 0.95 else (right + 1) % PARTITIONS)
    return out


def _state() -> TopologyState:
    state = TopologyState(SlimeMoldRules(), 5_000)
    state.partitions, state.max_record_bytes = PARTITIONS, 2048
    state.expected = frozenset({"F"})
    return state


def _everything(state: TopologyState) -> dict[str, Any]:
    snapshot = state.snapshot(T0)
    return {"snapshot": snapshot, "counts": {k: v for k, v in state.counts.items() if v},
            "letters": [(r, reason, size) for r, reason, size in state.take_letters()],
            "held": state.held_count, "seen": list(state.seen._ids)}


@pytest.mark.parametrize("seed", range(5))
def test_apply_batch_gives_what_apply_gives_one_by_one(seed: int) -> None:
    records = _stream(seed, 3000)
    one, batched = _state(), _state()
    rng = random.Random(seed)
    at = 0
    for round_ in range(6):  # batches of any size, ticks and timeouts in between
        size = rng.choice([1, 7, 100, 600])
        now = T0 + 2_000 * round_
        for record in records[at:at + size]:
            one.apply(record, now)
        batched.apply_batch(records[at:at + size], now)
        at += size
        for state in (one, batched):
            state.tick(now)
        assert _everything(batched) == _everything(one)
    one_all, batched_all = _state(), _state()
    for record in records:
        one_all.apply(record, T0)
    batched_all.apply_batch(records, T0)
    assert _everything(batched_all) == _everything(one_all)
    counts = batched_all.counts
    assert counts[C.records_counter(C.TOPIC_MESSAGES)] > 2000 and counts["reinforcements"] > 500


_VALID = {"v": 1, "id": "i", "type": "m", "from_agent_id": "A", "to_agent_id": "B", "ts": 5,
          "payload": {}, "meta": {}}
_ANY = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=2), st.just({}),
                 st.just([]), st.floats(0, 2))


# a valid envelope with a few fields changed or dropped: what a near-miss record looks like
@given(st.dictionaries(st.sampled_from([*_VALID, "x"]), _ANY, max_size=3),
       st.sets(st.sampled_from(list(_VALID)), max_size=2))
@settings(max_examples=1000, deadline=None)
def test_the_batch_path_refuses_what_envelope_decode_refuses(changed: dict[str, Any],
                                                             dropped: set[str]) -> None:
    """apply_batch checks the fields inline (no Envelope built): a record it takes is one
    that decodes, and one it passes on gets decode's own reason."""
    data = {k: v for k, v in {**_VALID, **changed}.items() if k not in dropped}
    value = orjson.dumps(data)
    try:
        Envelope.decode(value)
        decodes = True
    except InvalidEnvelope:
        decodes = False
    record = Record(C.TOPIC_MESSAGES, C.inbox_partition("B", PARTITIONS), 0, None, value)
    one, batched = _joined("A", "B"), _joined("A", "B")
    one.apply(record, T0)
    batched.apply_batch([record], T0)
    assert _everything(batched) == _everything(one)
    assert (batched.counts["invalid"] == 0) == decodes


def _joined(*names: str) -> TopologyState:
    state = _state()
    for name in names:
        state.apply(Record(C.TOPIC_TOPOLOGY, 0, 0, None,
                           Envelope(type=C.EVENT_JOINED, from_agent_id=name, ts=T0).encode()), T0)
    return state


def test_a_bug_in_the_batch_path_makes_a_dead_letter_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    state = _joined("A", "B")
    message = Envelope(type="m", from_agent_id="A", to_agent_id="B").encode()
    record = Record(C.TOPIC_MESSAGES, C.inbox_partition("B", PARTITIONS), 0, None, message)

    def broken(*_args: Any) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(state.graph, "reinforce_many", broken)
    state.apply_batch([record], T0)
    letters = state.take_letters()
    assert [(r.offset, reason) for r, reason, _ in letters] == [(0, "topology manager error: "
                                                                     "RuntimeError('boom')")]
    assert state.counts[C.records_counter(C.TOPIC_MESSAGES)] == 1


# -- the bench scenario: every field, consistent (no speed thresholds) -----------------


def test_the_core_simulation_reports_its_phases() -> None:
    from agentmesh_cli.bench import topology

    result = topology.simulate(40, 20_000, decay_every=2000, churn=3)
    assert result["edges_after_join"] == 40 * 39
    assert result["decays"] == 10 and result["pruned"] > 0
    assert result["edges_at_end"] < result["peak_edges"]
    assert set(result["phases_s"]) == {"join_s", "churn_s", "messages_s"}
    json.dumps(result)
