"""The envelope schema and inbox routing, exact."""

from __future__ import annotations

import json
import uuid
import zlib

import pytest

from agentmesh_cli.agent.handling import DERIVED, Handling, derived_id
from agentmesh_cli.constants import inbox_partition
from agentmesh_cli.envelope import Envelope, is_agent_name, shown
from agentmesh_cli.errors import InvalidEnvelope


def test_round_trip() -> None:
    env = Envelope(type="check_stock", from_agent_id="Sales", to_agent_id="Inventory",
                   payload={"order_id": "o-1", "name": "café"}, meta={"k": 1})
    data = json.loads(env.encode())
    assert set(data) == {"v", "id", "type", "from_agent_id", "to_agent_id", "ts", "payload", "meta"}
    assert data["v"] == 1 and isinstance(data["ts"], int)
    assert Envelope.decode(env.encode()) == env


GOOD = {"v": 1, "id": "x", "type": "t", "from_agent_id": "A", "to_agent_id": "B", "ts": 1,
        "payload": {}, "meta": {}}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty record"),
        (b"\xff\xfe garbage", "not JSON"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object but list"),
        (json.dumps({**GOOD, "v": 2}).encode(), "unsupported envelope version 2"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "id"}).encode(), "field 'id' missing"),
        (json.dumps({**GOOD, "to_agent_id": 5}).encode(), "field 'to_agent_id' missing or not a string"),
        (json.dumps({**GOOD, "type": ""}).encode(), "fields 'id' and 'type' must not be empty"),
        (json.dumps({**GOOD, "ts": "now"}).encode(), "field 'ts' missing"),
        (json.dumps({**GOOD, "ts": True}).encode(), "field 'ts' missing"),
        (json.dumps({**GOOD, "payload": [1]}).encode(), "field 'payload' is not an object"),
    ],
)
def test_bad_records(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEnvelope, match="^" + reason.replace("(", r"\(")):
        Envelope.decode(raw)


@pytest.mark.parametrize(
    ("agent", "partitions", "expected"),
    [("Sales", 16, zlib.crc32(b"Sales") % 16), ("Sales", 16, 0), ("Support", 16, 9),
     ("Inventory", 16, 5), ("Fraud", 16, 6), ("Fraud", 1, 0), ("Zoë", 7, zlib.crc32("Zoë".encode()) % 7)],
)
def test_inbox_partition(agent: str, partitions: int, expected: int) -> None:
    assert inbox_partition(agent, partitions) == expected


def test_a_record_over_the_limit_is_refused_before_it_is_parsed() -> None:
    raw = b"\xff" * 2000  # not JSON either: the size is what is said
    with pytest.raises(InvalidEnvelope) as caught:
        Envelope.decode(raw, max_bytes=1024)
    assert str(caught.value) == ("record of 2000 bytes is over the limit of 1024 bytes "
                                 "(kafka.max_record_bytes)")
    small = json.dumps(GOOD).encode()
    assert Envelope.decode(small, max_bytes=len(small)).id == "x"  # the limit itself is allowed


@pytest.mark.parametrize(
    ("name", "valid", "as_shown"),
    [("Sales", True, "Sales"), ("a.b-c_9", True, "a.b-c_9"), ("", False, "''"), ("9lives", False, "'9lives'"),
     ("two words", False, "'two words'"), ("x" * 63, True, "x" * 63),
     ("x" * 64, False, repr("x" * 64)), ("y" * 65, False, repr("y" * 64) + "...")],
)
def test_agent_names_and_how_reasons_show_them(name: str, valid: bool, as_shown: str) -> None:
    assert is_agent_name(name) is valid
    assert shown(name) == as_shown


@pytest.mark.parametrize(("message_id", "n"), [
    ("55783cb6-9d0c-4c3a-b54e-310136a6ea72", 1), ("55783cb6-9d0c-4c3a-b54e-310136a6ea72", 2),
    ("o-1", 17), ("é/ü", 1), ("", 0),
])
def test_derived_ids_are_the_uuid5_of_the_message_and_rank(message_id: str, n: int) -> None:
    # built by hand for speed (agent/ledger.py): exactly what uuid.uuid5 gives
    assert derived_id(message_id, n) == str(uuid.uuid5(DERIVED, f"{message_id}/{n}"))


def test_what_a_handling_sends_remembers_and_asks_by_key_has_ids_of_its_own() -> None:
    """A handling's sends are numbered 1, 2, ...; its Memory writes and keyed asks are derived
    apart from them, so neither shifts the ids of the sends (a re-run that asks other tools
    still sends its answer under the same id)."""
    first, again = Handling("m-1", None, "task"), Handling("m-1", None, "task")
    assert first.remember_id() == str(uuid.uuid5(DERIVED, "m-1/remember:1"))
    key = "Inventory\ncheck_stock\nabc"
    assert first.keyed_id(key) == str(uuid.uuid5(DERIVED, f"m-1/key:{key}"))
    assert first.next_id() == str(uuid.uuid5(DERIVED, "m-1/1"))  # the first send is still 1
    assert first.remember_id() == str(uuid.uuid5(DERIVED, "m-1/remember:2"))
    # a re-run that sends first and remembers after gets the same ids for the same acts
    assert again.next_id() == str(uuid.uuid5(DERIVED, "m-1/1"))
    assert again.remember_id() == str(uuid.uuid5(DERIVED, "m-1/remember:1"))
