"""The conversation log's pure rules (convlog.py): stream ids, the `gone` test, the feed's
messages, who appends, what a follower sees of an envelope. Exact tables."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from agentmesh_cli import convlog
from agentmesh_cli.envelope import Envelope


@pytest.mark.parametrize(("text", "pair"), [
    ("1-0", (1, 0)), ("1796594431398-7", (1796594431398, 7)), ("42", (42, 0)), (" 5-1 ", (5, 1)),
    ("", None), ("-", None), ("a-1", None), ("1-b", None), ("1-2-3", None), ("$", None),
])
def test_stream_ids(text: str, pair: tuple[int, int] | None) -> None:
    assert convlog.stream_id(text) == pair


@pytest.mark.parametrize(("last", "exists", "trimmed", "gone"), [
    ((5, 0), True, None, False),        # nothing ever trimmed
    ((5, 0), True, (0, 0), False),
    ((5, 0), True, (4, 9), False),      # trimmed only what came before the client's last
    ((5, 0), True, (5, 0), False),      # ... up to and including it
    ((5, 0), True, (5, 1), True),       # one after it was trimmed: lost
    ((5, 0), True, (9, 0), True),
    ((5, 0), False, None, True),        # the whole log expired
    ((0, 0), False, None, False),       # resuming from the start of nothing loses nothing
])
def test_gone(last: tuple[int, int], exists: bool, trimmed: tuple[int, int] | None, gone: bool) -> None:
    assert convlog.is_gone(last, exists, trimmed) is gone


@pytest.mark.parametrize(("raw", "parsed"), [
    (b"c-1 1796-0", ("c-1", "1796-0", None)),
    (b'{"c": "c-1", "from": "A", "text": "hi"}', ("c-1", None, {"from": "A", "text": "hi"})),
    (b"c-1", None), (b" 1-0", None), (b"{not json", None), (b'{"text": "no conversation"}', None),
    (b'{"c": 7}', None), (b"[1]", None),
])
def test_feed_messages(raw: bytes, parsed: Any) -> None:
    assert convlog.parse_feed(raw) == parsed


def test_a_delta_on_the_feed_reads_back() -> None:
    raw = convlog.delta_message("c-9", "Support", "Thanks ", "r-1")
    conversation, stream, data = convlog.parse_feed(raw) or ("", "", None)
    assert (conversation, stream) == ("c-9", None)
    assert data is not None and {k: data[k] for k in ("from", "text", "in_reply_to", "offset")} == \
        {"from": "Support", "text": "Thanks ", "in_reply_to": "r-1", "offset": 0}
    later = orjson.loads(convlog.delta_message("c-9", "Support", "you", "r-1", offset=7))
    assert (later["text"], later["offset"]) == ("you", 7)
    assert "in_reply_to" not in orjson.loads(convlog.delta_message("c-9", "S", "x", None))


@pytest.mark.parametrize(("user", "mesh", "actor"), [
    ("alice", False, "alice"), ("alice", True, "alice"), (None, True, "*"), (None, False, ""),
    ("", True, "*"),
])
def test_who_appends(user: str | None, mesh: bool, actor: str) -> None:
    assert convlog.actor(user, mesh) == actor


@pytest.mark.parametrize(("value", "ok"), [
    ("c-7", True), ("c-" + "a" * 24, True), ("T-12", True), ("a" * 128, True), ("a" * 129, False),
    ("", False), ("-c", False), ("c 7", False), ("c/7", False), (7, False), (None, False),
])
def test_conversation_ids(value: Any, ok: bool) -> None:
    assert convlog.is_conversation_id(value) is ok


def test_what_a_follower_sees_of_an_envelope() -> None:
    envelope = Envelope(type="ticket_answer", from_agent_id="Support", to_agent_id="gateway",
                        payload={"answer": "ok"}, id="r-1", ts=5,
                        meta={"conversation": "c-1", "in_reply_to": "q-1", "user": "alice",
                              "reply_to": "gateway-h-9200", "deadline": 9, "public": True})
    assert convlog.event_data(envelope) == {
        "id": "r-1", "type": "ticket_answer", "from": "Support", "to": "gateway", "ts": 5,
        "payload": {"answer": "ok"}, "conversation": "c-1", "in_reply_to": "q-1", "user": "alice"}
    assert convlog.is_public(envelope)
    assert not convlog.is_public(Envelope(type="t", from_agent_id="A", meta={"public": "yes"}))
