"""Bus.hold / Bus.release without a broker: a real librdkafka producer whose local queue
holds two records (nothing is ever delivered, so it fills). A release that fails keeps
what it could not produce held, still counted in flight, in order."""

from __future__ import annotations

import pytest

from agentmesh_cli.bus import Bus
from agentmesh_cli.config import KafkaConfig
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.errors import BusError

NOWHERE = "127.0.0.1:9"  # discard port: nothing listens, the queue only fills


def envelope(n: int) -> Envelope:
    return Envelope(type="hello", from_agent_id="A", to_agent_id="B", payload={"n": n})


def test_a_failed_release_keeps_the_rest_held_and_in_flight() -> None:
    bus = Bus(KafkaConfig(bootstrap_servers=NOWHERE, partitions=1,
                          client={"queue.buffering.max.messages": 2, "log_level": 0}), "test")
    bus.hold()
    for n in range(4):
        bus.send("messages", envelope(n), partition=0)
    assert bus.sent_unconfirmed() == 4 and len(bus._held) == 4
    with pytest.raises(BusError, match="cannot produce"):
        bus.release()
    # two left the bus for the producer's queue; the third and fourth wait, in order
    assert [Envelope.decode(kwargs["value"]).payload["n"] for _, kwargs, _ in bus._held] == [2, 3]
    assert bus.sent_unconfirmed() == 4  # the turn stays unconfirmed: its records are read again
    assert not bus.holding


def test_without_hold_a_failed_send_raises_and_is_not_counted() -> None:
    bus = Bus(KafkaConfig(bootstrap_servers=NOWHERE, partitions=1,
                          client={"queue.buffering.max.messages": 1, "log_level": 0}), "test")
    bus.send("messages", envelope(0), partition=0)
    with pytest.raises(BusError):
        bus.send("messages", envelope(1), partition=0)
    assert bus.sent_unconfirmed() == 1 and not bus._held
