"""Poison and hostile input never stops a role (issue 6, point 4).

Real role processes (topology manager, consensus manager, one agent) on the session broker
and Valkey; records written with a plain confluent-kafka producer, as any Kafka client
would. Every named poison case must come out of the `dlq` topic with its reason, from the
role that owns it; then hypothesis throws more than 10,000 generated records at each
consumer, and every record must be accounted for by its reader's counters while the
roles keep their pids. The pure checks of the consensus manager's intake come first.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from agentmesh_cli import constants as C
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.errors import WaitTimeout
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.signing import mesh_signer
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import wait_until
from tests.helpers.poison import AGENT, AGENT_PROGRAM, CONSENSUS, TOPOLOGY, dead_letters, running_roles
from tests.helpers.tables import NO_ID, deep

PARTITIONS = 4  # Sales reads partition 0; Ghost's inbox is 1; nobody reads 1, 2, 3
LIMIT = 16_384  # kafka.max_record_bytes of these meshes
# what a `messages` record can end as in the topology manager (besides held)
MESSAGE_OUTCOMES = ("duplicates", "reinforcements", "self_messages", "operator_messages", "invalid",
                    "unknown_sender", "unrouted", C.dead_letters_counter(C.TOPIC_MESSAGES))


# -- the consensus manager's intake, pure ---------------------------------------------


# -- real roles ------------------------------------------------------------------------


def poison_mesh(external_mesh: Any) -> Mesh:
    mesh: Mesh = external_mesh(
        kafka={"partitions": PARTITIONS, "max_record_bytes": LIMIT},
        heartbeat={"interval": "1s", "missed": 3},  # a record waiting for a join waits 3 s
        topology={"snapshot_interval": "200ms", "decay_interval": "1h"},
        consensus={"proposal_timeout": "2s", "snapshot_interval": "200ms"},
        agents=[{"name": AGENT, "role": "agentmesh_cli.agent.base:Role"}],
    )
    return mesh


class Thrower:
    """A plain confluent-kafka producer, counting what the broker took per (topic, partition).
    It signs with the mesh key, as a buggy peer would: the garbage must pass the signature
    check and be refused for what it is (test_signing covers records without the key)."""

    def __init__(self, mesh: Mesh) -> None:
        self.prefix = mesh.config.kafka.topic_prefix
        signer = mesh_signer(mesh)
        assert signer is not None  # a mesh signs by default
        self.signer = signer
        self.producer = Producer({"bootstrap.servers": mesh.config.kafka.bootstrap, "linger.ms": 5,
                                  "allow.auto.create.topics": False})
        self.taken: Counter[tuple[str, int]] = Counter()
        self.failed = 0

    def _done(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed += 1
        else:
            self.taken[(msg.topic().removeprefix(self.prefix + "."), msg.partition())] += 1

    def throw(self, topic: str, value: bytes, partition: int = 0) -> None:
        while True:
            try:
                full = f"{self.prefix}.{topic}"
                self.producer.produce(full, value, partition=partition, on_delivery=self._done,
                                      headers=self.signer.headers(full, value))
                break
            except BufferError:
                self.producer.poll(0.1)
        self.producer.poll(0)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0 and self.failed == 0


def envelope(kind: str, sender: str, to: str = "", /, **payload: Any) -> bytes:
    return Envelope(type=kind, from_agent_id=sender, to_agent_id=to, payload=payload).encode()


def accounts(store: Store) -> dict[str, Any]:
    """Each reader's records against the sum of their outcomes (what the roles last saved)."""
    topo, cons, agent = (store.counters(o) for o in (TOPOLOGY, CONSENSUS, AGENT))
    snapshot = store.load_snapshot() or {}
    held = len(snapshot.get("held", [])) + len(snapshot.get("held_invalid", []))
    early = sum(len(v) for v in (store.load_json(store.keys.consensus_snapshot) or {})
                .get("early_votes", {}).values())
    return {
        "topology": (topo.get("records:topology", 0),
                     topo.get("events", 0) + topo.get("dead_letters:topology", 0)),
        "messages": (topo.get("records:messages", 0), sum(topo.get(k, 0) for k in MESSAGE_OUTCOMES) + held),
        "proposals": (cons.get("records:proposals", 0), cons.get("book_opened", 0) + cons.get("duplicates", 0)
                      + cons.get("dead_letters:proposals", 0)),
        "votes": (cons.get("records:votes", 0), sum(cons.get(f"votes_{r}", 0) for r in ("counted", "replaced",
                  "late")) + cons.get("dead_letters:votes", 0) + early),
        # the agent counts no records: what it read is what the broker took on its partition
        "inbox": (None, agent.get(C.COUNTER_IN, 0) + agent.get(C.COUNTER_DUPLICATES, 0)
                  + agent.get(C.COUNTER_SKIPPED, 0) + agent.get(C.COUNTER_DEAD, 0)
                  - agent.get("consensus_invalid", 0)),
        "held": held + early,
        "dead_letters": {o: c.get(C.COUNTER_DEAD, 0) for o, c in
                         ((TOPOLOGY, topo), (CONSENSUS, cons), (AGENT_PROGRAM, agent))},
        "handled_twice": agent.get(C.COUNTER_HANDLED_TWICE, 0),
        "agent_consensus_invalid": agent.get("consensus_invalid", 0),
    }


def settled(store: Store, thrower: Thrower, mesh: Mesh) -> dict[str, Any] | None:
    """The accounts once every record was read and settled and every dead letter written."""
    a = accounts(store)
    taken = thrower.taken
    # only our records on messages and proposals; the agent adds heartbeats and votes
    read_all = (a["messages"][0] == sum(n for (t, _p), n in taken.items() if t == C.TOPIC_MESSAGES)
                and a["topology"][0] >= taken[(C.TOPIC_TOPOLOGY, 0)]
                and a["proposals"][0] == taken[(C.TOPIC_PROPOSALS, 0)]
                and a["votes"][0] >= taken[(C.TOPIC_VOTES, 0)]
                and a["inbox"][1] == taken[(C.TOPIC_MESSAGES, 0)])
    balanced = all(a[k][0] == a[k][1] for k in ("topology", "messages", "proposals", "votes"))
    if not (read_all and balanced and a["held"] == 0):
        return None
    owners = Counter(letter["owner"] for letter in dead_letters(mesh, sum(a["dead_letters"].values())))
    return a if owners == +Counter(a["dead_letters"]) else None


def wait_settled(store: Store, thrower: Thrower, mesh: Mesh, timeout: float) -> dict[str, Any]:
    try:
        result: dict[str, Any] = wait_until(lambda: settled(store, thrower, mesh), timeout,
                                          "every record settled")
    except WaitTimeout as exc:
        raise AssertionError(f"{exc}\naccounts: {accounts(store)}\ntaken: {dict(thrower.taken)}") from None
    return result


def assert_alive(procs: dict[str, subprocess.Popen[Any]], store: Store) -> None:
    for program, proc in procs.items():
        assert proc.poll() is None, f"{program} exited with {proc.returncode}"
        assert store.ready_pid(program) == proc.pid, f"{program} restarted"


def test_each_poison_case_is_a_dead_letter_of_its_reader(external_mesh: Any, tmp_path: Path) -> None:
    mesh = poison_mesh(external_mesh)
    store = Store(mesh.redis_url, mesh.config.mesh)
    huge = b'{"v": 1, "pad": "' + b"x" * LIMIT + b'"}'
    big = f"record of {len(huge)} bytes is over the limit of {LIMIT} bytes (kafka.max_record_bytes)"
    bad_ts = json.loads(envelope(C.EVENT_HEARTBEAT, AGENT))
    bad_ts["ts"] = "now"
    bad_to = json.loads(envelope("m", AGENT, AGENT))
    bad_to["to_agent_id"] = 5
    # (topic, partition, value, owner, reason; a reason ending in ": " is a prefix)
    cases = [
        (C.TOPIC_TOPOLOGY, 0, b"\xff\xfe not json", TOPOLOGY, "not JSON: "),
        (C.TOPIC_TOPOLOGY, 0, b"[1, 2]", TOPOLOGY, "not a JSON object but list"),
        (C.TOPIC_TOPOLOGY, 0, json.dumps(bad_ts).encode(), TOPOLOGY,
         "field 'ts' missing or not a non-negative integer (epoch ms)"),
        (C.TOPIC_TOPOLOGY, 0, b'{"v": 1, "id": "x"}', TOPOLOGY, "field 'type' missing or not a string"),
        (C.TOPIC_TOPOLOGY, 0, huge, TOPOLOGY, big),
        (C.TOPIC_TOPOLOGY, 0, envelope(C.EVENT_JOINED, "no such agent!"), TOPOLOGY,
         "agent id 'no such agent!' is not a valid agent name"),
        (C.TOPIC_TOPOLOGY, 0, envelope(C.EVENT_LEFT, "Ghost"), TOPOLOGY,
         "agent_left from Ghost, which never joined"),
        (C.TOPIC_TOPOLOGY, 0, envelope("dance", AGENT), TOPOLOGY, "unknown topology event type dance"),
        # messages: the agent owns what reaches its partition, the topology manager what nobody reads
        (C.TOPIC_MESSAGES, 0, b"\xff\xfe not json", AGENT_PROGRAM, "not JSON: "),
        (C.TOPIC_MESSAGES, 0, huge, AGENT_PROGRAM, big),
        (C.TOPIC_MESSAGES, 0, json.dumps(bad_to).encode(), AGENT_PROGRAM,
         "field 'to_agent_id' missing or not a string"),
        (C.TOPIC_MESSAGES, 0, envelope("m", "Ghost", AGENT), AGENT_PROGRAM, "sender Ghost has not joined"),
        (C.TOPIC_MESSAGES, 1, envelope("m", AGENT, "Ghost"), TOPOLOGY, "unknown recipient Ghost"),
        (C.TOPIC_MESSAGES, 0, envelope("m", AGENT, "bad name"), TOPOLOGY, "unknown recipient 'bad name'"),
        (C.TOPIC_MESSAGES, 2, envelope("m", "cli", AGENT), TOPOLOGY,
         "message to Sales on partition 2, not its inbox partition 0"),
        (C.TOPIC_MESSAGES, 3, b"[1, 2]", TOPOLOGY, "not a JSON object but list (no agent reads partition 3)"),
        (C.TOPIC_MESSAGES, 0, envelope("m", AGENT, AGENT), None, ""),  # to itself: handled
        (C.TOPIC_MESSAGES, 0, envelope("m", "cli", AGENT), None, ""),  # from the operator: handled
        # proposals and votes
        (C.TOPIC_PROPOSALS, 0, b"\xff\xfe not json", CONSENSUS, "not JSON: "),
        (C.TOPIC_PROPOSALS, 0, huge, CONSENSUS, big),
        (C.TOPIC_PROPOSALS, 0, envelope(C.EVENT_PROPOSAL, AGENT, proposal_id="p-bad", type="poll"), CONSENSUS,
         "proposal type 'poll' is not one of decision, action, topology"),
        (C.TOPIC_PROPOSALS, 0, envelope(C.EVENT_PROPOSAL, AGENT, type="decision"), CONSENSUS,
         f"proposal {NO_ID}"),
        (C.TOPIC_PROPOSALS, 0, envelope(C.EVENT_PROPOSAL, AGENT, proposal_id="p-deep", type="decision",
                                        content=deep(40)), CONSENSUS,
         "proposal content is nested deeper than 32 levels"),
        (C.TOPIC_PROPOSALS, 0, envelope(C.EVENT_PROPOSAL, "Ghost", proposal_id="p-ghost", type="decision"),
         CONSENSUS, "proposer Ghost has not joined"),
        (C.TOPIC_PROPOSALS, 0, envelope(C.EVENT_PROPOSAL, AGENT, proposal_id="p-ok", type="decision"),
         None, ""),
        (C.TOPIC_VOTES, 0, b"[]", CONSENSUS, "not a JSON object but list"),
        (C.TOPIC_VOTES, 0, envelope(C.EVENT_VOTE, AGENT, proposal_id="p-ok", support="yes"), CONSENSUS,
         "vote 'support' is not true or false"),
        (C.TOPIC_VOTES, 0, envelope("ballot", AGENT, proposal_id="p-ok", support=True), CONSENSUS,
         "unexpected type 'ballot' on the votes topic"),
        (C.TOPIC_VOTES, 0, envelope(C.EVENT_VOTE, AGENT, proposal_id="nope", support=True), CONSENSUS,
         "vote for unknown proposal nope"),
        (C.TOPIC_VOTES, 0, envelope(C.EVENT_VOTE, "Ghost", proposal_id="p-ok", support=True), CONSENSUS,
         "voter Ghost is not in the electorate of p-ok"),
        # p-old was decided before the manager's snapshot (its record is in Redis): a late vote
        (C.TOPIC_VOTES, 0, envelope(C.EVENT_VOTE, AGENT, proposal_id="p-old", support=True), None, ""),
        (C.TOPIC_VOTES, 0, envelope(C.EVENT_VOTE, "Ghost", proposal_id="p-old", support=True), CONSENSUS,
         "voter Ghost is not in the electorate of p-old"),
        # the consensus topic has one writer, the manager: each agent dead-letters anything else
        (C.TOPIC_CONSENSUS, 0, b"\xff\xfe not json", AGENT_PROGRAM, "not a consensus broadcast: not JSON: "),
        (C.TOPIC_CONSENSUS, 0, envelope(C.EVENT_OPENED, "Ghost", id="p"), AGENT_PROGRAM,
         "not a consensus broadcast: "),
    ]
    decided = {"id": "p-old", "electorate": [AGENT], "created_at": 1, "status": "accepted"}
    store.save_consensus(None, [decided])
    with running_roles(mesh, tmp_path) as procs:
        thrower = Thrower(mesh)
        for topic, partition, value, _owner, _reason in cases:
            thrower.throw(topic, value, partition)
            if topic == C.TOPIC_PROPOSALS:
                thrower.producer.flush(10)  # p-ok opens before the votes that name it are read
        thrower.flush()
        a = wait_settled(store, thrower, mesh, 30)
        got = sorted((x["owner"], x["reason"], x["topic"].rsplit(".", 1)[1], x["partition"])
                     for x in dead_letters(mesh, sum(a["dead_letters"].values())))
        wanted = sorted((owner, reason, topic, partition) for topic, partition, _v, owner, reason in cases
                        if owner is not None)
        assert len(got) == len(wanted), got
        for (owner, reason, topic, partition), letter in zip(wanted, got, strict=True):
            said = letter[1]
            assert letter[0] == owner and letter[2:] == (topic, partition), letter
            assert said.startswith(reason) if reason.endswith(": ") else said == reason, (said, reason)
        topo = store.counters(TOPOLOGY)
        assert topo["self_messages"] == topo["operator_messages"] == topo["unknown_sender"] == 1
        assert topo["invalid"] == 3  # what the agent dead-letters on its partition
        cons = store.counters(CONSENSUS)
        assert (cons["votes_unknown"], cons["votes_not_member"], cons["votes_late"]) == (1, 2, 1)
        assert cons["decided_accepted"] == 1
        agent = store.counters(AGENT)
        assert agent[C.COUNTER_IN] == 2 and agent["consensus_invalid"] == 2 and a["handled_twice"] == 0
        assert_alive(procs, store)
    store.close()


# -- hypothesis: more than 10,000 generated records at each reader ---------------------

EXAMPLES = 220  # batches; each batch: 46 messages (43 to Sales's partition), 5 consensus,
PER_BATCH = {C.TOPIC_MESSAGES: 46, C.TOPIC_CONSENSUS: 5, C.TOPIC_TOPOLOGY: 3,  # 3 topology,
             C.TOPIC_PROPOSALS: 19, C.TOPIC_VOTES: 27}  # 19 proposals, 27 votes

# Pools drawn from with one choice each: hypothesis spends its time per choice, and these
# records must come by the ten thousand.
NAMES = [AGENT] * 4 + ["Ghost", "Zed", "cli", "chaos", "", "no such agent", "x" * 80, "Zoë", "a\nb"]
WRONG = [None, True, False, 0, -1, 2**64 - 1, 1.5, -0.0, "", "x", "yes", [], [1, "a"], {}, {"a": 1}]
BODIES = [{}, {"order_id": "o-1", "items": {"cable": 2}}, {"amount": 5000, "priority": "high"}, {"a": WRONG}]
ROLES = [{}, {"role": "sales"}, {"role": 5}, {"role": "r" * 300}, {"role": None}, {"role": ["x"]}]
CONTENTS = [{}, {"priority": "high", "urgent": True}, {"amount": 1e308, "confidence": "x"}, deep(40), [1],
            "x"]
BROADCASTS = [  # what the consensus topic may carry, fitting or not
    {"proposer_id": AGENT, "type": "decision", "content": {}, "waggle": {"intensity": 0.5, "duration_ms": 500,
     "angle": 180.0, "repetitions": 5}, "electorate": [AGENT], "quorum": 0.6, "created_at": 1,
     "expires_at": 2**62},
    {"proposer_id": AGENT, "type": "decision", "content": {}, "waggle": {}, "electorate": [AGENT],
     "quorum": 0.6, "created_at": 1, "expires_at": 2**62},
    {"electorate": "Sales", "quorum": "most"},
    {},
]
names = st.sampled_from(NAMES)
wrong = st.sampled_from(WRONG)
proposal_ids = st.integers(0, 3000).map(lambda i: f"fz-{i}")
vote_ids = st.integers(0, 3500).map(lambda i: f"fz-{i}")  # 3001.. are never proposed
PAYLOADS = {
    C.TOPIC_MESSAGES: st.sampled_from(BODIES),
    C.TOPIC_TOPOLOGY: st.sampled_from(ROLES),
    C.TOPIC_PROPOSALS: st.fixed_dictionaries({
        "proposal_id": proposal_ids, "type": st.sampled_from(["decision", "action", "topology", "poll"]),
        "content": st.sampled_from(CONTENTS)}),
    C.TOPIC_VOTES: st.fixed_dictionaries({
        "proposal_id": vote_ids, "support": st.sampled_from([True, True, False, "yes", None]),
        "intensity": st.sampled_from([0.8, 1, 0, "high", True, 1e308])}),
    C.TOPIC_CONSENSUS: st.builds(lambda pid, template: {**template, "id": pid}, proposal_ids,
                                 st.sampled_from(BROADCASTS)),
}
TYPES = {
    C.TOPIC_MESSAGES: ["m", "order"],
    C.TOPIC_TOPOLOGY: [C.EVENT_JOINED, C.EVENT_HEARTBEAT, C.EVENT_LEFT, "dance"],
    C.TOPIC_PROPOSALS: [C.EVENT_PROPOSAL] * 3 + ["vote"],
    C.TOPIC_VOTES: [C.EVENT_VOTE] * 3 + ["ballot"],
    C.TOPIC_CONSENSUS: [C.EVENT_OPENED, C.EVENT_DECIDED, C.EVENT_MANAGER_MARK, "other"],
}
FIELDS = ["v", "id", "type", "from_agent_id", "to_agent_id", "ts", "payload", "meta"]
# every topic's envelopes, built once (a strategy is checked when it is built)
BASES = {topic: st.fixed_dictionaries({
    "v": st.just(1), "id": st.integers(0, 2**40).map(str), "type": st.sampled_from(TYPES[topic]),
    "from_agent_id": names, "to_agent_id": names if topic == C.TOPIC_MESSAGES else st.just(""),
    "ts": st.integers(0, 2**62), "payload": PAYLOADS[topic], "meta": st.just({})}) for topic in PER_BATCH}
KINDS = ["fit"] * 5 + ["dropped", "wrong", "bytes", "json", "huge"]


@st.composite
def record(draw: Any, topic: str) -> bytes:
    """A record for `topic`: fitting, mutated (a field dropped or of a wrong type), not an
    envelope, or over the size limit. Names, ids and proposals come from pools, so that
    strangers, duplicates, early and unknown votes and misrouted messages all occur."""
    kind = draw(st.sampled_from(KINDS))
    if kind == "bytes":
        return bytes(draw(st.binary(max_size=40)))
    if kind == "json":
        return json.dumps(draw(wrong)).encode()
    data = draw(BASES[topic])
    if kind == "dropped":
        del data[draw(st.sampled_from(FIELDS))]
    elif kind == "wrong":
        data[draw(st.sampled_from(FIELDS))] = draw(wrong)
    elif kind == "huge":
        data["meta"] = {"pad": "x" * (LIMIT + draw(st.integers(0, 100)))}
    return json.dumps(data).encode()


def batch() -> st.SearchStrategy[list[tuple[str, int, bytes]]]:
    """PER_BATCH records of each topic; messages go to Sales's partition but for 3 of 46."""
    parts = [st.lists(record(topic), min_size=n, max_size=n).map(
        lambda values, topic=topic: [(topic, 0, v) for v in values])
        for topic, n in PER_BATCH.items() if topic != C.TOPIC_MESSAGES]
    elsewhere = st.lists(st.tuples(st.sampled_from([1, 2, 3]), record(C.TOPIC_MESSAGES)),
                         min_size=3, max_size=3)
    parts.append(st.tuples(st.lists(record(C.TOPIC_MESSAGES), min_size=43, max_size=43), elsewhere).map(
        lambda m: [(C.TOPIC_MESSAGES, 0, v) for v in m[0]] + [(C.TOPIC_MESSAGES, p, v) for p, v in m[1]]))
    return st.tuples(*parts).map(lambda lists: [r for part in lists for r in part])


def test_hypothesis_records_at_every_reader_are_all_accounted_for(external_mesh: Any, tmp_path: Path) -> None:
    mesh = poison_mesh(external_mesh)
    store = Store(mesh.redis_url, mesh.config.mesh)
    with running_roles(mesh, tmp_path) as procs:
        thrower = Thrower(mesh)

        @settings(max_examples=EXAMPLES, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(batch())
        def throw(records: list[tuple[str, int, bytes]]) -> None:
            for topic, partition, value in records:
                thrower.throw(topic, value, partition)

        throw()
        thrower.flush()
        taken = thrower.taken
        assert sum(taken.values()) == EXAMPLES * sum(PER_BATCH.values())
        a = wait_settled(store, thrower, mesh, 60)
        assert_alive(procs, store)
        # more than 10,000 records at each reader, each one accounted for
        assert min(a["topology"][0] + a["messages"][0], a["proposals"][0] + a["votes"][0],
                   a["inbox"][1] + taken[(C.TOPIC_CONSENSUS, 0)]) >= 10_000, a
        assert a["handled_twice"] == 0
        letters = dead_letters(mesh, sum(a["dead_letters"].values()))
        agent_consensus = [x for x in letters if x["owner"] == AGENT_PROGRAM
                           and x["reason"].startswith("not a consensus broadcast")]
        assert len(agent_consensus) == a["agent_consensus_invalid"]
    store.close()
