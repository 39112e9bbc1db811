"""The envelope schema and inbox routing, exact."""

from __future__ import annotations

import json
import zlib

import pytest

from agentmesh_cli.constants import inbox_partition
from agentmesh_cli.envelope import Envelope
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
