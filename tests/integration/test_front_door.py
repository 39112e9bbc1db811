"""The agents' side of the front door, for real: the conversation log's scripts on the
session Valkey, what agent processes show a conversation's user (a reply to an asker
outside the mesh, a public ask and its reply, deltas), `agentmesh ask --follow`, the
declared `accepts`, a repeated request answered where it now waits, and the README's
customer chat through the gateway."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis

from agentmesh_cli import constants as C
from agentmesh_cli import convlog, events
from agentmesh_cli.asker import Asker
from agentmesh_cli.envelope import Envelope, now_ms
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.waiting import wait_until
from tests.helpers.agents import ROLES, agents
from tests.helpers.commands import agentmesh
from tests.helpers.gateway import SseEvent, running_gateway, sse_events, write_gateway_mesh


def envelope(id: str) -> Envelope:
    return events.message("cli", "Support", "ticket", {"text": id}, {"conversation": "c-1"}, id=id)


def test_the_conversation_log(valkey: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(valkey, decode_responses=True)
    keys = C.Keys(f"log{tmp_path.name[-8:]}")
    log = convlog.ConversationLog(client, keys, kept=10, ttl_s=60)
    try:
        first = log.append("c-1", envelope("e0"), "alice", mesh=False)
        assert first and client.hget(keys.conversation("c-1"), "owner") == "alice"
        assert log.append("c-1", envelope("e0"), "alice", mesh=False) == ""  # the same envelope again
        assert log.append("c-1", envelope("e1"), "bob", mesh=False) is None  # another user's
        assert log.append("c-1", envelope("e2"), None, mesh=True)  # the mesh may append anywhere
        assert log.claim("c-1", "bob", mesh=False) is False and log.claim("c-1", "alice", mesh=False)
        assert [data["id"] for _, _, data in log.after("c-1", "0-0")] == ["e0", "e2"]
        assert 0 < client.ttl(keys.conversation_events("c-1")) <= 60
        ids = {n: log.append("c-1", envelope(f"e{n}"), "alice", mesh=False) for n in range(3, 15)}
        kept = log.after("c-1", "0-0")
        assert [data["id"] for _, _, data in kept] == [f"e{n}" for n in range(5, 15)]
        trimmed = client.hget(keys.conversation("c-1"), "trimmed")
        assert trimmed == ids[4]  # 14 events in all, 10 kept: e4 is the newest trimmed
        assert log.gone("c-1", convlog.stream_id(first) or (0, 0))  # e0 was trimmed, e2.. too
        assert not log.gone("c-1", convlog.stream_id(kept[0][0]) or (0, 0))  # e5 was seen: none lost
        assert not log.gone("c-1", convlog.stream_id(trimmed) or (0, 0))  # e4, the last trimmed, seen
        assert log.gone("c-gone", (5, 0)) and not log.gone("c-gone", (0, 0))  # expired, or never
        assert log.last_id("c-1") == kept[-1][0] and log.last_id("c-none") == "0-0"
    finally:
        client.delete(*client.keys(keys.prefix + "*"))
        client.close()


def demo_mesh(external_mesh: Any) -> Mesh:
    mesh: Mesh = external_mesh(agents=[{"name": "Support", "role": "support", "concurrency": 4},
                                       {"name": "Sales", "role": "sales"},
                                       {"name": "Inventory", "role": "inventory"}])
    return mesh


def test_a_ticket_shows_its_user_the_work_behind_the_answer(external_mesh: Any, tmp_path: Path) -> None:
    mesh = demo_mesh(external_mesh)
    with agents(mesh, tmp_path) as store:
        accepts = json.loads(store.redis.hget(store.keys.accepts, "Support") or "{}")
        assert accepts["ticket"]["required"] == ["text"] and "kind" in accepts["ticket"]["properties"]
        assert "check_stock" in json.loads(store.redis.hget(store.keys.accepts, "Inventory") or "{}")
        result = agentmesh("ask", "Support", "ticket", '{"text": "where is my cable"}', "--user", "alice",
                           "--conversation", "c-7", "--follow", "--timeout", "20",
                           "--config", str(mesh.config_file), check=True)
        printed = [json.loads(line) for line in result.stdout.splitlines()]
        summary, shown = printed[-1], printed[:-1]
        assert summary["type"] == "ticket_answer" and summary["payload"]["customer"] == "alice"
        messages = [(e["data"]["from"], e["data"]["to"], e["data"]["type"])
                    for e in shown if e["event"] == "message"]
        assert messages == [("cli", "Support", "ticket"), ("Support", "Sales", "recent_orders"),
                            ("Sales", "Support", "recent_orders"), ("Support", "cli", "ticket_answer")]
        assert all(e["data"]["user"] == "alice" and e["data"]["conversation"] == "c-7"
                   for e in shown if e["event"] == "message")
        deltas = "".join(e["data"]["text"] for e in shown if e["event"] == "delta")
        assert deltas == "Thanks alice, looking at your recent orders... "
        # the same events stay in the log, in that order, each once
        log = convlog.ConversationLog(store.redis, store.keys, 1000, 60)
        assert [(d["from"], d["type"]) for _, _, d in log.after("c-7", "0-0")] == \
            [(f, t) for f, _, t in messages]
        # an agent-to-agent exchange that is not public stays out of it: Sales asks Inventory
        # nothing here, and the order flow is off; a plain ask without a conversation adds none
        before = store.redis.keys(store.keys.conversation_events("*"))
        agentmesh("ask", "Inventory", "check_stock", '{"items": {"cable": 1}}',
                  "--config", str(mesh.config_file), check=True)
        assert store.redis.keys(store.keys.conversation_events("*")) == before


def wait_reply(asker: Asker, request_id: str, timeout: float = 15) -> Envelope:
    def got() -> Envelope | None:
        for record in asker.reader.poll_batch(timeout=0.1):
            reply = Envelope.decode(record.value)
            if reply.meta.get("in_reply_to") == request_id:
                return reply
        return None
    return wait_until(got, timeout, f"the reply to {request_id}")


def test_a_repeated_request_is_answered_where_it_now_waits(external_mesh: Any, tmp_path: Path) -> None:
    """A gateway that retries after a crash, or another gateway, has another reply address
    than the first copy: the reply cache answers at the new one."""
    mesh = demo_mesh(external_mesh)
    with agents(mesh, tmp_path) as store:
        first, second = Asker(mesh, address="first-address"), Asker(mesh, address="second-address")
        try:
            def request(asker: Asker) -> Envelope:
                meta = {"reply_to": asker.address, "deadline": now_ms() + 30_000, "conversation": "c-r"}
                return events.message("cli", "Inventory", "check_stock", {"items": {"cable": 1}}, meta,
                                      id="repeated-1")
            first.bus.send_message(request(first))
            assert first.bus.flush(10) == 0
            answer = wait_reply(first, "repeated-1")
            second.bus.send_message(request(second))
            assert second.bus.flush(10) == 0
            again = wait_reply(second, "repeated-1")
            assert (again.id, again.payload) == (answer.id, answer.payload)  # the same reply
            wait_until(lambda: store.counters("Inventory").get(C.COUNTER_CACHED_REPLIES, 0) >= 1, 20,
                       "the cached reply counted")
            counts = store.counters("Inventory")
            assert counts[C.COUNTER_DUPLICATES] == 1 and counts.get(C.COUNTER_HANDLED_TWICE, 0) == 0
        finally:
            first.close()
            second.close()


def test_a_copy_asked_after_the_reply_while_the_handler_lingers_is_answered(external_mesh: Any,
                                                                             tmp_path: Path) -> None:
    """The handler replied and still works on: a retry from another address is answered at
    once (from the replies sent), not when the handler ends nor never."""
    mesh: Mesh = external_mesh(agents=[{"name": "Lingerer", "role": f"{ROLES}:Lingerer", "concurrency": 2}])
    with agents(mesh, tmp_path) as store:
        first, second = Asker(mesh, address="linger-first"), Asker(mesh, address="linger-second")
        try:
            def request(asker: Asker) -> Envelope:
                meta = {"reply_to": asker.address, "deadline": now_ms() + 30_000}
                return events.message("cli", "Lingerer", "work", {"n": 1, "linger": 20}, meta,
                                      id="lingered-1")
            first.bus.send_message(request(first))
            assert first.bus.flush(10) == 0
            answer = wait_reply(first, "lingered-1")
            second.bus.send_message(request(second))
            assert second.bus.flush(10) == 0
            again = wait_reply(second, "lingered-1", timeout=10)  # well before the 20 s linger ends
            assert (again.id, again.payload) == (answer.id, {"n": 1})
            assert store.counters("Lingerer").get(C.COUNTER_HANDLED_TWICE, 0) == 0
        finally:
            first.close()
            second.close()


def test_a_chat_window_sees_the_deltas_and_the_answer(broker: str, valkey: str, tmp_path: Path) -> None:
    """The README's customer chat through the gateway: a user's events stream, opened before
    the conversation exists, shows the ticket, Support's streamed words (`delta`, no id),
    its public ask to Sales and the answer, then Support's reply, all with SSE ids but the
    deltas."""
    mesh = write_gateway_mesh(tmp_path, broker, valkey, [{"name": "Support", "role": "support"},
                                                         {"name": "Sales", "role": "sales"}])
    with running_gateway(mesh, tmp_path) as gateway, gateway.client("alice") as client:
        seen: list[SseEvent] = []
        with client.stream("GET", "/conversations/c-7/events") as stream:
            assert stream.status_code == 200
            answer = client.post("/agents/Support/ask", json={
                "type": "ticket", "payload": {"text": "where is my cable"}, "conversation": "c-7"})
            assert answer.status_code == 200, answer.text
            for event in sse_events(stream):
                seen.append(event)
                if event.event == "message" and event.data.get("type") == "ticket_answer":
                    break
        messages = [(e.data["from"], e.data["type"]) for e in seen if e.event == "message"]
        assert messages == [("gateway", "ticket"), ("Support", "recent_orders"), ("Sales", "recent_orders"),
                            ("Support", "ticket_answer")]
        # the deltas (one or two, as the 50 ms windows fall) come before Support asks Sales
        deltas = [i for i, e in enumerate(seen) if e.event == "delta"]
        ask = next(i for i, e in enumerate(seen) if e.event == "message" and e.data["to"] == "Sales")
        assert deltas and max(deltas) < ask and all(seen[i].id is None for i in deltas)
        streamed = "".join(seen[i].data["text"] for i in deltas)
        assert streamed == "Thanks alice, looking at your recent orders... "
        assert all(e.id for e in seen if e.event == "message")
        assert seen[-1].data["payload"] == answer.json()["payload"]
