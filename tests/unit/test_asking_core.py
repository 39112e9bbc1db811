"""The ask side of an agent (agent/asking.py): replies to waiting asks, early and late
replies, and the reply cache's record of where a reply went. Exact tables."""

from __future__ import annotations

import asyncio

from agentmesh_cli import constants as C
from agentmesh_cli.agent.asking import Answered, Asks, Sent, error_payload, is_request, reply_meta
from agentmesh_cli.envelope import Envelope, now_ms


def reply(request_id: str, deadline: int | None = None) -> Envelope:
    meta: dict[str, object] = {"in_reply_to": request_id}
    if deadline is not None:
        meta["deadline"] = deadline
    return Envelope(type="answer", from_agent_id="B", to_agent_id="A", meta=meta)


def test_replies_go_to_their_ask_early_ones_wait_late_ones_are_dropped() -> None:
    async def scenario() -> list[object]:
        asks = Asks()
        waiting = asks.expect("r1")
        later = now_ms() + 60_000
        table = [
            asks.deliver(reply("r1")),  # its ask waits
            asks.deliver(reply("r1")),  # a copy, once the first was handed over
            asks.deliver(reply("r2", later)),  # before its ask: kept until its deadline
            asks.deliver(reply("r3", now_ms() - 1)),  # nobody waits, deadline passed
            asks.deliver(reply("r4")),  # nobody waits, no deadline
        ]
        early = asks.expect("r2")
        table += [waiting.result().meta["in_reply_to"], early.done() and early.result().meta["in_reply_to"]]
        asks.forget("r1")
        table.append(sorted(asks.waiting))
        return table

    assert asyncio.run(scenario()) == [
        C.COUNTER_REPLIES_IN, C.COUNTER_LATE_REPLIES, C.COUNTER_REPLIES_IN, C.COUNTER_LATE_REPLIES,
        C.COUNTER_LATE_REPLIES, "r1", "r2", ["r2"]]


def test_request_and_reply_meta() -> None:
    request = Envelope(type="q", from_agent_id="A", to_agent_id="B", id="req-1",
                       meta={"deadline": 123, "conversation": "c", "reply_to": "cli-1", "other": 1})
    assert is_request(request)
    assert not is_request(Envelope(type="q", from_agent_id="A", meta={"deadline": "123"}))
    assert reply_meta(request) == {"in_reply_to": "req-1", "conversation": "c", "deadline": 123}
    assert error_payload(ValueError("x" * 2000)) == {"error": "ValueError", "message": "x" * 1000}


def test_the_cache_keeps_where_a_reply_went_and_its_bytes() -> None:
    answered = Answered()
    sent = Sent("replies", "cli-1", 3, b'{"id": "x"}')
    answered.add("req-1", sent)
    assert answered.recent("req-1") == sent and answered.recent("req-2") is None
    assert [rid for rid, _ in answered.unsaved] == ["req-1"]
    assert Sent.from_json(answered.unsaved[0][1]) == sent
