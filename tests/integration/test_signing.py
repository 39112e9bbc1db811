"""Message integrity for real: role processes with `security.sign_envelopes` on, and forged records
refused while a signed mesh still decides."""

from __future__ import annotations

import json
import uuid
from typing import Any

from confluent_kafka import Producer

from agentmesh_cli import constants as C
from agentmesh_cli.bus import Bus
from agentmesh_cli.envelope import Envelope, now_ms
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.reader import Reader, beginning
from agentmesh_cli.records import Record
from agentmesh_cli.signing import (
    BAD_SIGNATURE,
    HEADER,
    UNSIGNED,
    Signer,
    mesh_signer,
)
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import wait_until
from tests.helpers.commands import agentmesh
from tests.helpers.poison import AGENT, AGENT_PROGRAM, CONSENSUS, TOPOLOGY, dead_letters, running_roles
from tests.helpers.tables import OTHER_KEY, VALUE, joined

# -- the pure core --------------------------------------------------------------------


def test_a_mesh_signs_unless_its_mesh_yaml_says_not_to(external_mesh: Any) -> None:
    assert mesh_signer(external_mesh(security={"sign_envelopes": False})) is None
    mesh = external_mesh()  # on by default
    assert mesh.config.security.sign_envelopes
    signer = mesh_signer(mesh)
    assert signer is not None
    same = Signer.from_mesh_key(mesh.credentials.mesh_key)
    assert signer.sign("t.votes", VALUE) == same.sign("t.votes", VALUE)


# -- who sent it: the voter and the proposer are the sender ---------------------------


# -- the topology manager's state: forged records change nothing ----------------------


# -- real roles, signing on -------------------------------------------------------------


class Forger:
    """A process that reaches the broker without the mesh key: a plain confluent-kafka
    producer, writing records with no signature or one made with another key."""

    def __init__(self, mesh: Mesh) -> None:
        self.prefix = mesh.config.kafka.topic_prefix
        self.producer = Producer({"bootstrap.servers": mesh.config.kafka.bootstrap,
                                  "allow.auto.create.topics": False})

    def write(self, topic: str, value: bytes, partition: int = 0, headers: Any = None) -> None:
        self.producer.produce(f"{self.prefix}.{topic}", value, partition=partition, headers=headers)

    def flush(self) -> None:
        assert self.producer.flush(10) == 0


def test_forged_records_are_refused_and_a_signed_mesh_still_decides(external_mesh: Any,
                                                                    tmp_path: Any) -> None:
    mesh: Mesh = external_mesh(
        security={"sign_envelopes": True},
        heartbeat={"interval": "1s", "missed": 3},
        topology={"snapshot_interval": "200ms", "decay_interval": "1h"},
        consensus={"proposal_timeout": "30s", "snapshot_interval": "200ms"},
        agents=[{"name": AGENT, "role": "agentmesh_cli.agent.base:Role"}],
    )
    signer = mesh_signer(mesh)
    assert signer is not None
    store = Store(mesh.redis_url, mesh.config.mesh)
    with running_roles(mesh, tmp_path):  # Sales's join was signed, or it would not be in the graph
        # a second member that this test speaks for, with the key: 2 votes of 2 needed
        store.register_agent("Support", {"name": "Support", "last_heartbeat": now_ms() + 60_000})
        bus = Bus(mesh.config.kafka, "test", signer=signer)
        pid = "cli-signed"
        bus.send(C.TOPIC_PROPOSALS, Envelope(type=C.EVENT_PROPOSAL, from_agent_id="cli",
                                             payload={"proposal_id": pid, "type": "decision",
                                                      "content": {"priority": "high"}}), key=pid)
        assert bus.flush(10) == 0
        record = wait_until(lambda: (r := store.proposal(pid)) and r["tally"]["for"] == 1 and r, 20,
                          "the proposal opened and Sales's vote counted")
        assert record["electorate"] == ["Sales", "Support"] and record["status"] == "pending"

        def ballot(sender: str, **payload: Any) -> bytes:
            return Envelope(type=C.EVENT_VOTE, from_agent_id=sender,
                            payload={"proposal_id": pid, "support": True, **payload}).encode()

        votes_topic = mesh.topic(C.TOPIC_VOTES)
        signed_vote = ballot("Support")
        forger = Forger(mesh)
        forger.write(C.TOPIC_VOTES, ballot("Support"))  # no signature
        forger.write(C.TOPIC_VOTES, signed_vote,  # signed with another key
                     headers=[(HEADER, Signer(OTHER_KEY).sign(votes_topic, signed_vote))])
        # a real signature, of the same bytes on another topic: replayed onto proposals
        forger.write(C.TOPIC_PROPOSALS, signed_vote, headers=signer.headers(votes_topic, signed_vote))
        forger.write(C.TOPIC_TOPOLOGY, joined("Mallory"))
        forger.write(C.TOPIC_MESSAGES, Envelope(type="m", from_agent_id="cli", to_agent_id=AGENT).encode(),
                     partition=C.inbox_partition(AGENT, mesh.config.kafka.partitions))
        forger.flush()
        # a key holder's vote naming another voter than its sender
        bus.produce_raw(C.TOPIC_VOTES, ballot("Sales", voter="Support"), key=pid)
        assert bus.flush(10) == 0

        wanted = sorted([
            (CONSENSUS, "votes", UNSIGNED), (CONSENSUS, "votes", BAD_SIGNATURE),
            (CONSENSUS, "proposals", BAD_SIGNATURE), (TOPOLOGY, "topology", UNSIGNED),
            (AGENT_PROGRAM, "messages", UNSIGNED),
            (CONSENSUS, "votes", "vote's voter Support is not the sender Sales"),
        ])

        def letters() -> list[tuple[str, str, str]] | None:
            got = sorted((x["owner"], x["topic"].rsplit(".", 1)[1], x["reason"])
                         for x in dead_letters(mesh, len(wanted)))
            return got if len(got) >= len(wanted) else None

        assert wait_until(letters, 20, "the dead letters") == wanted
        reader = Reader(mesh.config.kafka, f"t-{uuid.uuid4().hex}", [(C.TOPIC_DLQ, 0, beginning())],
                        signer=signer)
        dlq: list[Record] = []
        try:
            wait_until(lambda: dlq.extend(reader.poll_batch(timeout=0.2)) or len(dlq) >= len(wanted), 10,
                     "the dead letters, read with the key")
        finally:
            reader.close()
        assert len(dlq) == len(wanted) and [r.forged for r in dlq] == [None] * len(wanted)  # signed too
        consensus = wait_until(lambda: (c := store.counters(CONSENSUS)).get("refused:wrong_sender") and c, 10,
                             "the consensus manager's counters")
        assert (consensus["refused:unsigned"], consensus["refused:bad_signature"],
                consensus["refused:wrong_sender"]) == (1, 2, 1)
        assert wait_until(lambda: store.counters(TOPOLOGY).get("refused:unsigned"), 10, "topology's") == 1
        agent = wait_until(lambda: (c := store.counters(AGENT)).get("refused:unsigned") and c, 10,
                         "the agent's counters")
        assert agent.get(C.COUNTER_IN, 0) == 0 and agent[C.COUNTER_DEAD] == 1
        # none of it counted: the tally is Sales's vote alone, Mallory never joined
        record = store.proposal(pid)
        assert record is not None and record["status"] == "pending" and list(record["votes"]) == ["Sales"]
        assert "Mallory" not in (store.load_snapshot() or {})["graph"]["agents"]

        # the same vote, signed: it counts, and decides
        bus.produce_raw(C.TOPIC_VOTES, signed_vote, key=pid)
        assert bus.flush(10) == 0
        decided = wait_until(lambda: (r := store.proposal(pid)) and r["status"] != "pending" and r, 20,
                           "the decision")
        assert decided["status"] == "accepted" and decided["tally"]["for"] == 2

        # `tail` shows every record with its signature's state
        tailed = agentmesh("tail", "votes", "--config", str(mesh.config_file), check=True)
        states = [json.loads(line)["signed"] for line in tailed.stdout.splitlines()]
        assert states == ["ok", "none", "bad", "ok", "ok"]  # Sales's, the two forged, the two of the test
        del bus, forger  # their producers go before the session's broker does
    store.close()
