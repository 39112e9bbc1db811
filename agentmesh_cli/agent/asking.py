"""Ask and reply on the agent's side: the asks waiting for their replies, the replies that
came before their ask, and the reply cache of what this agent answered.

- A reply (`meta.in_reply_to`) goes straight to the ask waiting for it, never through
  the conversation queue. One that comes while nobody waits, before its deadline, is
  kept until then (an asker restarted after a crash reads its inbox again and finds the
  first reply before its re-run handler asks again, under the same id); one past its
  deadline is dropped (`late_replies`), never handed to another handler.
- What this agent answers is kept by request id: in memory until the runtime writes it
  to Redis (`Store.cache_replies`, before the request's id enters the ledger), then in
  Redis, bounded like the ledger. A repeated request (a re-run asker, same derived id)
  is answered again from there.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from agentmesh_cli import constants as C
from agentmesh_cli.envelope import Envelope, now_ms

EARLY_KEPT = 10_000  # replies kept for an ask that has not been made (yet), at most
RECENT_REPLIES = 1_000  # replies of this agent kept in memory, beside the Redis cache


def deadline_of(envelope: Envelope) -> int | None:
    deadline = envelope.meta.get("deadline")
    return deadline if type(deadline) is int else None


def is_request(envelope: Envelope) -> bool:
    """A request waits for a reply: an ask sets its deadline."""
    return deadline_of(envelope) is not None


def reply_meta(request: Envelope) -> dict[str, Any]:
    """The meta of a reply to `request`: in_reply_to, and its conversation and deadline."""
    meta: dict[str, Any] = {"in_reply_to": request.id}
    for name in ("conversation", "deadline", "user"):
        if name in request.meta:
            meta[name] = request.meta[name]
    return meta


def error_payload(exc: BaseException) -> dict[str, Any]:
    return {"error": type(exc).__name__, "message": str(exc)[:1000]}


@dataclass(frozen=True)
class Sent:
    """Where a reply went, and its bytes: what the cache keeps to send it again."""

    topic: str  # short name: messages or replies
    key: str
    partition: int
    value: bytes

    def to_json(self) -> str:
        return orjson.dumps({"topic": self.topic, "key": self.key, "partition": self.partition,
                             "value": self.value.decode("utf-8")}).decode("utf-8")

    @classmethod
    def from_json(cls, raw: str) -> Sent:
        data = orjson.loads(raw)
        return cls(str(data["topic"]), str(data["key"]), int(data["partition"]),
                   str(data["value"]).encode("utf-8"))


class Asks:
    """The asks of one agent waiting for replies (on its event loop)."""

    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future[Envelope]] = {}
        self._early: OrderedDict[str, Envelope] = OrderedDict()

    def expect(self, request_id: str) -> asyncio.Future[Envelope]:
        future: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        early = self._early.pop(request_id, None)
        if early is not None and (deadline_of(early) or 0) > now_ms():
            future.set_result(early)
        self.waiting[request_id] = future
        return future

    def forget(self, request_id: str) -> None:
        self.waiting.pop(request_id, None)

    def deliver(self, reply: Envelope) -> str:
        """Hand a reply to its ask: the counter it counts in (replies_in or late_replies)."""
        request_id = reply.meta.get("in_reply_to")
        future = self.waiting.get(request_id) if isinstance(request_id, str) else None
        if future is not None:
            if future.done():
                return C.COUNTER_LATE_REPLIES  # a copy of one already handed over
            future.set_result(reply)
            return C.COUNTER_REPLIES_IN
        deadline = deadline_of(reply)
        if isinstance(request_id, str) and deadline is not None and deadline > now_ms():
            self._early[request_id] = reply
            while len(self._early) > EARLY_KEPT:
                self._early.popitem(last=False)
            return C.COUNTER_REPLIES_IN
        return C.COUNTER_LATE_REPLIES


class Answered:
    """Replies this agent sent, by request id, not yet written to the Redis cache, plus
    the newest ones (to answer a repeated request without a round trip)."""

    def __init__(self) -> None:
        self.unsaved: list[tuple[str, str]] = []
        self._recent: OrderedDict[str, Sent] = OrderedDict()

    def add(self, request_id: str, sent: Sent) -> None:
        self.unsaved.append((request_id, sent.to_json()))
        self._recent[request_id] = sent
        while len(self._recent) > RECENT_REPLIES:
            self._recent.popitem(last=False)

    def recent(self, request_id: str) -> Sent | None:
        return self._recent.get(request_id)
