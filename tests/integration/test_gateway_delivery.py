"""The gateway's Kafka side on the session's real broker: a message's delivery is waited for,
an ask's request is not (its reply future is left alone when the broker takes it), and a
request the broker never takes fails its ask's reply future with BrokerUnavailable."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from agentmesh_cli import constants as C
from agentmesh_cli import events
from agentmesh_cli.config import KafkaConfig
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.errors import BrokerUnavailable
from agentmesh_cli.gateway import kafka as gateway_kafka
from agentmesh_cli.gateway.kafka import GatewayBus

ADDRESS = "gateway-test"


def on_bus(broker: str, topics: tuple[str, ...], scenario: Callable[[GatewayBus], Awaitable[None]]) -> None:
    """Run `scenario(bus)` with a GatewayBus on a fresh topic prefix that has `topics`."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    kafka = KafkaConfig(bootstrap_servers=broker, topic_prefix=prefix, partitions=4)
    admin = AdminClient({"bootstrap.servers": broker})
    for future in admin.create_topics([NewTopic(f"{prefix}.{t}", 4, 1) for t in topics]).values():
        future.result(10)

    async def main() -> None:
        bus = await asyncio.to_thread(GatewayBus, kafka, ADDRESS, None, asyncio.get_running_loop())
        try:
            await scenario(bus)
        finally:
            await asyncio.to_thread(bus.close)

    asyncio.run(main())


def request() -> Envelope:
    return events.message(C.GATEWAY_SENDER, "Nobody", "ping", {}, {"reply_to": ADDRESS})


def test_a_delivered_request_leaves_its_reply_waiting_and_a_message_is_settled(broker: str) -> None:
    async def scenario(bus: GatewayBus) -> None:
        message = request()
        await asyncio.wait_for(bus.send(message), 10)  # the broker took it
        envelope = request()
        reply = bus.expect(envelope.id)
        bus.send_request(envelope, reply)
        await asyncio.wait_for(bus.send(request()), 10)  # sent after: delivered after it
        await asyncio.sleep(0.2)  # a failure would be handed over by now
        assert not reply.done() and bus.broker_down is None

    on_bus(broker, (C.TOPIC_MESSAGES, C.TOPIC_REPLIES), scenario)


def test_a_request_the_broker_never_takes_fails_its_ask(broker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_kafka, "DELIVERY_TIMEOUT_MS", 1500)

    async def scenario(bus: GatewayBus) -> None:
        envelope = request()
        reply = bus.expect(envelope.id)
        started = time.monotonic()
        bus.send_request(envelope, reply)  # no `messages` topic: it times out
        with pytest.raises(BrokerUnavailable, match="did not take the request"):
            await asyncio.wait_for(asyncio.shield(reply), 15)
        assert time.monotonic() - started < 10

    on_bus(broker, (C.TOPIC_REPLIES,), scenario)
