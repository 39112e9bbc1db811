"""Message integrity, pure parts: the MAC and its wire format (pinned by vectors checked with
`openssl dgst -sha256 -hmac`), and what the readers' cores (consensus intake, topology state)
do with records that do not verify."""

from __future__ import annotations

from typing import Any

import pytest

from agentmesh_cli import constants as C
from agentmesh_cli.consensus.intake import parse_proposal, parse_vote
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.errors import ConfigError, InvalidEnvelope, WrongSender
from agentmesh_cli.records import Record
from agentmesh_cli.signing import (
    BAD_SIGNATURE,
    HEADER,
    UNSIGNED,
    WRONG_SENDER,
    Signer,
    refused_counter,
    refused_totals,
    signed_state,
    signing_key,
)
from agentmesh_cli.topology.graph import SlimeMoldRules
from agentmesh_cli.topology.state import TopologyState
from tests.helpers.tables import OTHER_KEY, VALUE, joined

MESH_KEY = "test-mesh-key"
# HMAC-SHA256("test-mesh-key", "agentmesh envelope signing v1")
KEY_HEX = "ed302ad81b072d7c60646c9077bacc2b784979b4652153b011b4982028ceed8e"
KEY = bytes.fromhex(KEY_HEX)
# HMAC-SHA256(KEY, "t.votes\0" + VALUE), and of an empty value
SIG = bytes.fromhex("b9a09da26d7f112dda85a19cf52359c301097c80061bd04864e02e4c97ad71be")
SIG_EMPTY = bytes.fromhex("fa287aec8e93e9699c7be4791116f6b20a89ce2a0e008c1d4e9e0269a105f3a7")


# -- the pure core --------------------------------------------------------------------


def test_the_signing_key_and_the_mac_are_pinned() -> None:
    assert signing_key(MESH_KEY) == KEY
    signer = Signer(KEY)
    assert signer.sign("t.votes", VALUE) == SIG
    assert signer.sign("t.votes", VALUE) == SIG  # the per-topic state is copied, never spent
    assert signer.sign("t.votes", None) == signer.sign("t.votes", b"") == SIG_EMPTY
    assert signer.headers("t.votes", VALUE) == [(HEADER, SIG)]
    assert Signer.from_mesh_key(MESH_KEY).sign("t.votes", VALUE) == SIG


@pytest.mark.parametrize(
    ("topic", "value", "headers", "verdict"),
    [
        ("t.votes", VALUE, [(HEADER, SIG)], None),
        ("t.votes", VALUE, {HEADER: SIG}, None),  # headers as a dict
        ("t.votes", VALUE, [("trace", b"x"), (HEADER, SIG)], None),
        ("t.votes", None, [(HEADER, SIG_EMPTY)], None),
        ("t.votes", VALUE, None, UNSIGNED),
        ("t.votes", VALUE, [], UNSIGNED),
        ("t.votes", VALUE, [("trace", b"x")], UNSIGNED),
        ("t.votes", VALUE, [(HEADER, None)], UNSIGNED),
        ("t.votes", VALUE, [(HEADER, Signer(OTHER_KEY).sign("t.votes", VALUE))], BAD_SIGNATURE),  # wrong key
        ("t.proposals", VALUE, [(HEADER, SIG)], BAD_SIGNATURE),  # replayed onto another topic
        ("u.votes", VALUE, [(HEADER, SIG)], BAD_SIGNATURE),  # ... or another mesh's topic
        ("t.votes", b'{"v":2}', [(HEADER, SIG)], BAD_SIGNATURE),  # tampered value
        ("t.votes", VALUE + b" ", [(HEADER, SIG)], BAD_SIGNATURE),
        ("t.votes", VALUE, [(HEADER, SIG[:16])], BAD_SIGNATURE),  # cut
        ("t.votes", VALUE, [(HEADER, b"")], BAD_SIGNATURE),
        ("t.votes", VALUE, [(HEADER, SIG.hex())], BAD_SIGNATURE),  # a str, not bytes
        ("t.votes", VALUE, [(HEADER, b"x" * 32), (HEADER, SIG)], BAD_SIGNATURE),  # the first one counts
    ],
)
def test_check(topic: str, value: bytes | None, headers: Any, verdict: str | None) -> None:
    assert Signer(KEY).check(topic, value, headers) == verdict


def test_keys_must_not_be_empty() -> None:
    with pytest.raises(ConfigError, match="no mesh key"):
        signing_key("")
    with pytest.raises(ConfigError, match="must not be empty"):
        Signer(b"")


@pytest.mark.parametrize(
    ("reason", "counter", "shown"),
    [(None, None, "ok"), (UNSIGNED, "refused:unsigned", "none"),
     (BAD_SIGNATURE, "refused:bad_signature", "bad"), (WRONG_SENDER, "refused:wrong_sender", None)],
)
def test_names_of_refusals(reason: str | None, counter: str | None, shown: str | None) -> None:
    if counter is not None:
        assert refused_counter(reason or "") == counter
    if shown is not None:
        assert signed_state(reason) == shown


def test_refused_totals_for_status() -> None:
    counters = {"Sales": {"dead_letters": 3, "refused:unsigned": 2, "refused:bad_signature": 0},
                "consensus-manager": {"refused:wrong_sender": 1, "refused:bad_signature": 4},
                "topology-manager": {"records:topology": 9}}
    assert refused_totals(counters) == {"Sales": {"unsigned": 2},
                                        "consensus-manager": {"bad_signature": 4, "wrong_sender": 1}}
    assert refused_totals({}) == {}


# -- who sent it: the voter and the proposer are the sender ---------------------------


def vote(sender: str, **payload: Any) -> Envelope:
    return Envelope(type=C.EVENT_VOTE, from_agent_id=sender, payload={"proposal_id": "p", "support": True,
                                                                      **payload})


def proposal(sender: str, **payload: Any) -> Envelope:
    return Envelope(type=C.EVENT_PROPOSAL, from_agent_id=sender,
                    payload={"proposal_id": "p", "type": "decision", **payload})


@pytest.mark.parametrize(
    ("parse", "envelope", "reason"),
    [
        (parse_vote, vote("Sales"), None),
        (parse_vote, vote("Sales", voter="Sales"), None),
        (parse_vote, vote("Sales", voter="Support"), "vote's voter Support is not the sender Sales"),
        (parse_vote, vote("Sales", voter=""), "vote's voter '' is not the sender Sales"),
        (parse_vote, vote("Sales", voter=5), "vote's voter '5' is not the sender Sales"),
        (parse_vote, vote("bad name", voter="Sales"), "vote's voter Sales is not the sender 'bad name'"),
        (parse_proposal, proposal("Sales"), None),
        (parse_proposal, proposal("cli", proposer_id="cli"), None),
        (parse_proposal, proposal("Sales", proposer_id="Fraud"),
         "proposal's proposer_id Fraud is not the sender Sales"),
    ],
)
def test_votes_and_proposals_are_the_senders(parse: Any, envelope: Envelope, reason: str | None) -> None:
    if reason is None:
        assert parse(envelope)[0] == "p"
        return
    with pytest.raises(WrongSender) as caught:
        parse(envelope)
    assert isinstance(caught.value, InvalidEnvelope) and str(caught.value) == reason


# -- the topology manager's state: forged records change nothing ----------------------


def test_forged_records_do_not_join_or_reinforce() -> None:
    state = TopologyState(SlimeMoldRules(), 90_000)
    state.partitions = 4
    state.apply(Record(C.TOPIC_TOPOLOGY, 0, 0, None, joined("A")), 1000)
    state.apply(Record(C.TOPIC_TOPOLOGY, 0, 1, None, joined("B")), 1000)
    state.counts.clear()
    to_b = Envelope(type="m", from_agent_id="A", to_agent_id="B").encode()
    b_inbox = C.inbox_partition("B", 4)
    records = [
        Record(C.TOPIC_TOPOLOGY, 0, 2, None, joined("Mallory"), UNSIGNED),
        Record(C.TOPIC_TOPOLOGY, 0, 3, None, Envelope(type=C.EVENT_LEFT, from_agent_id="B").encode(),
               BAD_SIGNATURE),
        Record(C.TOPIC_MESSAGES, b_inbox, 0, None, to_b, UNSIGNED),  # its reader refuses it
        Record(C.TOPIC_MESSAGES, b_inbox, 1, None, to_b),  # a real one: reinforced
    ]
    state.apply_batch(records, 2000)  # the batch path, as the manager runs it
    assert sorted(state.graph.agents()) == ["A", "B"]
    assert [reason for _r, reason, _s in state.take_letters()] == [UNSIGNED, BAD_SIGNATURE]
    assert {k: v for k, v in state.counts.items() if v} == {
        "records:topology": 2, "dead_letters": 2, "dead_letters:topology": 2,
        "refused:unsigned": 1, "refused:bad_signature": 1,
        "records:messages": 2, "invalid": 1, "reinforcements": 1,
    }
    assert state.offsets == {(C.TOPIC_TOPOLOGY, 0): 4, (C.TOPIC_MESSAGES, b_inbox): 2}
    # on a partition no agent reads, a forged message waits like one that does not decode,
    # then is the manager's dead letter
    nobody = next(p for p in range(4) if p not in {C.inbox_partition(a, 4) for a in ("A", "B")})
    state.apply(Record(C.TOPIC_MESSAGES, nobody, 0, None, to_b, UNSIGNED), 2000)
    state.drop_silent(2000 + 90_001)
    assert [reason for _r, reason, _s in state.take_letters()] == [
        f"unsigned record (no agent reads partition {nobody})"]
    assert state.counts["refused:unsigned"] == 2


# -- real roles, signing on -------------------------------------------------------------


