"""A conversation's events through the real gateway: GET /conversations/{id}/events as
Server-Sent Events, read with httpx streaming from `agentmesh gateway` beside a real
Inventory agent, on the session broker and Valkey, with gateway.events_kept at its
minimum (10) so that retention is reached in a few requests.

Each SSE id is checked against the Redis stream itself. Resume (Last-Event-ID, or
?after=) must lose and repeat nothing; a resume past what the log keeps starts with
`gone`. To know a stream has nothing more to say, a test sends a last marker message and
reads up to it: no read ever waits out a timeout to prove an absence.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from agentmesh_cli.constants import Keys
from tests.helpers.gateway import (
    RunningGateway,
    SseEvent,
    error_of,
    running_gateway,
    sse_events,
    write_gateway_mesh,
)

KEPT = 10  # gateway.events_kept: its minimum
READ_TIMEOUT_S = 20.0  # the longest wait for one event (keepalives come every 15 s)


@pytest.fixture(scope="module")
def gateway(broker: str, valkey: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("gateway-events")
    mesh = write_gateway_mesh(folder, broker, valkey, [{"name": "Inventory", "role": "inventory"}],
                              events_kept=KEPT)
    with running_gateway(mesh, folder) as running:
        yield running


def user(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@contextmanager
def follow(gateway: RunningGateway, conversation: str, who: str | None = None, last: str | None = None,
           after: str | None = None) -> Iterator[Iterator[SseEvent]]:
    """The conversation's event stream, open (the follower is subscribed once this yields)."""
    headers = {**gateway.headers(who), **({"Last-Event-ID": last} if last else {})}
    params = {"after": after} if after else None
    with (httpx.Client(base_url=gateway.url, timeout=httpx.Timeout(10.0, read=READ_TIMEOUT_S)) as client,
          client.stream("GET", f"/conversations/{conversation}/events", headers=headers,
                        params=params) as response):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield sse_events(response)


def until(events: Iterator[SseEvent], message_id: str) -> list[SseEvent]:
    """The events up to and with the one of envelope `message_id`."""
    seen = []
    for event in events:
        seen.append(event)
        if isinstance(event.data, dict) and event.data.get("id") == message_id:
            return seen
    raise AssertionError(f"the stream ended before {message_id}: {seen}")


def logged(gateway: RunningGateway, conversation: str) -> list[tuple[str, dict[str, Any]]]:
    """(stream id, event data) of the conversation's log, read from Redis itself."""
    key = Keys(gateway.mesh.config.mesh).conversation_events(conversation)
    entries: list[tuple[str, dict[str, str]]] = gateway.store.redis.xrange(key)  # type: ignore[assignment]
    return [(entry_id, json.loads(fields["data"])) for entry_id, fields in entries]


def send(client: httpx.Client, conversation: str, n: int) -> str:
    answer = client.post("/agents/Inventory/messages", json={"type": "note", "payload": {"n": n},
                                                             "conversation": conversation})
    assert answer.status_code == 202, answer.text
    message_id: str = answer.json()["id"]
    return message_id


# following ----------------------------------------------------------------------------
def test_a_user_follows_their_ask_and_its_reply(gateway: RunningGateway) -> None:
    alice = user("alice")
    with gateway.client(alice) as own:
        conversation = own.post("/conversations").json()["conversation"]
        with follow(gateway, conversation, alice) as events:
            asked = own.post("/agents/Inventory/ask", json={
                "type": "check_stock", "payload": {"order_id": "o-7", "items": {}},
                "conversation": conversation})
            assert asked.status_code == 200, asked.text
            reply = asked.json()
            request, answer = next(events), next(events)
            marker = send(own, conversation, 0)
            rest = until(events, marker)
    assert request.event == "message"
    assert request.data["from"] == "gateway" and request.data["to"] == "Inventory"
    assert request.data["id"] == reply["in_reply_to"] and request.data["type"] == "check_stock"
    assert request.data["payload"] == {"order_id": "o-7", "items": {}}
    assert request.data["conversation"] == conversation and request.data["user"] == alice
    assert "reply_to" not in request.data  # the gateway's reply address is not the user's business
    # the reply to an asker outside the mesh is shown to the conversation's user too
    assert answer.event == "message" and answer.data["from"] == "Inventory"
    assert answer.data["id"] == reply["id"] and answer.data["type"] == "stock_result"
    assert answer.data["in_reply_to"] == reply["in_reply_to"] and answer.data["user"] == alice
    assert answer.data["payload"] == reply["payload"]
    assert [e.data["id"] for e in rest] == [marker]  # nothing else, nothing twice
    # the SSE ids are the stream ids
    assert [request.id, answer.id, rest[0].id] == [i for i, _ in logged(gateway, conversation)]


def test_the_mesh_follows_a_conversation_before_it_exists(gateway: RunningGateway) -> None:
    conversation = f"c-new-{uuid.uuid4().hex[:8]}"
    with gateway.client() as mesh, follow(gateway, conversation) as events:
        sent = send(mesh, conversation, 1)
        event = next(events)
    assert event.event == "message" and event.data["id"] == sent
    assert [entry_id for entry_id, _ in logged(gateway, conversation)] == [event.id]


# resuming -----------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["Last-Event-ID", "after"])
def test_a_resumed_stream_loses_and_repeats_nothing(gateway: RunningGateway, how: str) -> None:
    alice = user("alice")
    with gateway.client(alice) as own:
        conversation = own.post("/conversations").json()["conversation"]
        sent = [send(own, conversation, n) for n in range(5)]
        with follow(gateway, conversation, alice) as events:
            read = [next(events) for _ in range(3)]  # then the connection drops
        sent += [send(own, conversation, n) for n in range(5, 8)]
        last = read[-1].id
        assert last is not None
        resume = {"last": last} if how == "Last-Event-ID" else {"after": last}
        with follow(gateway, conversation, alice, **resume) as events:
            rest = until(events, sent[-1])
    log = logged(gateway, conversation)
    assert [e.data["id"] for e in read + rest] == sent
    assert [e.id for e in read + rest] == [entry_id for entry_id, _ in log]
    assert all(e.event == "message" for e in read + rest)


def test_a_resume_past_what_is_kept_starts_with_gone(gateway: RunningGateway) -> None:
    alice = user("alice")
    with gateway.client(alice) as own:
        conversation = own.post("/conversations").json()["conversation"]
        ids, sent = [], []
        for n in range(KEPT + 5):
            sent.append(send(own, conversation, n))
            ids.append(logged(gateway, conversation)[-1][0])  # its stream id, while it is kept
        marker = send(own, conversation, 99)
        with follow(gateway, conversation, alice, last=ids[0]) as events:
            from_first = until(events, marker)
        with follow(gateway, conversation, alice, last=ids[4]) as events:
            missed_one = until(events, marker)
        # the newest trimmed event's id: nothing after it is missing
        with follow(gateway, conversation, alice, last=ids[5]) as events:
            missed_none = until(events, marker)
    kept = logged(gateway, conversation)
    assert len(kept) == KEPT and kept[-1][1]["id"] == marker
    gone = from_first[0]
    assert gone.event == "gone" and gone.id is None
    assert gone.data == {"conversation": conversation, "last_event_id": ids[0], "kept": KEPT}
    assert [(e.id, e.data["id"]) for e in from_first[1:]] == [(i, d["id"]) for i, d in kept]
    assert [e.event for e in missed_one][:1] == ["gone"] and missed_one[1:] == from_first[1:]
    assert missed_none == from_first[1:]
    assert [e.data["id"] for e in missed_none] == [*sent[6:], marker]


def test_a_follower_outrun_by_a_burst_is_told_what_it_missed(gateway: RunningGateway) -> None:
    """80 messages at once into one conversation: the log keeps 10, so a live follower may
    find events trimmed before it read them. It gets them all, or a `gone` before the gap:
    never a silent hole."""
    conversation = f"c-burst-{uuid.uuid4().hex[:8]}"

    async def burst(n: int) -> list[str]:
        async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.headers(), timeout=30,
                                     limits=httpx.Limits(max_connections=n)) as client:
            answers = await asyncio.gather(*(client.post("/agents/Inventory/messages", json={
                "type": "note", "payload": {"n": i}, "conversation": conversation}) for i in range(n)))
        assert all(a.status_code == 202 for a in answers), [a.text for a in answers if a.status_code != 202]
        return [a.json()["id"] for a in answers]

    with gateway.client() as mesh, follow(gateway, conversation) as events:
        sent = set(asyncio.run(burst(80)))
        marker = send(mesh, conversation, 99)
        got = until(events, marker)
    messages = [e for e in got if e.event == "message"]
    ids = [tuple(int(part) for part in (e.id or "").split("-")) for e in messages]
    assert ids == sorted(set(ids))  # in log order, none twice
    assert {e.data["id"] for e in messages} <= sent | {marker}
    if len(messages) < len(sent) + 1:
        assert "gone" in [e.event for e in got], f"{len(sent) + 1 - len(messages)} events missed silently"


@pytest.mark.parametrize("last", ["abc", "1-x", "-1"])
def test_a_last_event_id_that_is_not_one_is_a_400(gateway: RunningGateway, last: str) -> None:
    with gateway.client() as mesh:
        answer = mesh.get(f"/conversations/c-{uuid.uuid4().hex[:8]}/events", headers={"Last-Event-ID": last})
    assert error_of(answer, 400, "invalid_argument")["details"]["argument"] == "Last-Event-ID"


# whose events -------------------------------------------------------------------------
def test_another_users_conversation_is_a_404(gateway: RunningGateway) -> None:
    alice, bob = user("alice"), user("bob")
    with gateway.client(alice) as own, gateway.client(bob) as other, gateway.client() as mesh:
        theirs = own.post("/conversations").json()["conversation"]
        send(own, theirs, 1)
        meshs = mesh.post("/conversations").json()["conversation"]  # the mesh's: no user's
        answers = {conversation: other.get(f"/conversations/{conversation}/events")
                   for conversation in (theirs, meshs)}
        posted = other.post("/agents/Inventory/messages", json={"type": "note", "conversation": theirs})
    errors = [error_of(answer, 404, "conversation_not_found") for answer in (*answers.values(), posted)]
    shown = {str(error).replace(conversation, "<id>")
             for error, conversation in zip(errors, (theirs, meshs, theirs), strict=True)}
    assert len(shown) == 1  # the same answer, whatever makes it not bob's
    with follow(gateway, theirs, alice) as events:  # the owner reads it
        assert next(events).data["from"] == "gateway"


def test_a_conversation_followed_before_it_exists_becomes_the_followers(gateway: RunningGateway) -> None:
    alice, bob = user("alice"), user("bob")
    new = "c-" + uuid.uuid4().hex[:24]
    with gateway.client(alice) as own, gateway.client(bob) as other:
        with follow(gateway, new, alice) as events:  # a chat window opens before the first message
            sent = send(own, new, 1)
            assert next(events).data["id"] == sent
        error_of(other.get(f"/conversations/{new}/events"), 404, "conversation_not_found")
        error_of(other.post("/agents/Inventory/messages", json={"type": "note", "conversation": new}),
                 404, "conversation_not_found")
