"""What the user of a chat saw, for the llm fault (chaos/llm.py): the text streamed to each
request (`delta` events, heard on the conversations' pub/sub channel as the gateway's
followers hear them) and the envelopes its conversation's log holds (convlog.py).

The log keeps an envelope once per id, so a re-run handler that sends what it sent before
under the same derived id adds nothing, and one that sent under a new id adds a second
entry: two replies to one request, or two asks of a tool for one call, show up there.
Deltas are never stored: they are heard live (`DeltaLog`) and judged afterwards.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agentmesh_cli.convlog import EVENT_MESSAGE, ConversationLog, parse_feed
from agentmesh_cli.errors import AgentMeshError
from agentmesh_cli.store import Store, redis_errors

log = logging.getLogger(__name__)

Streamed = Sequence[tuple[float, str]]  # one request's deltas: (monotonic time heard, text), in order
READ_WAIT_S = 0.1


class DeltaLog:
    """Hears the deltas `sender` streams, per request (`in_reply_to`), from its own thread."""

    def __init__(self, store: Store, sender: str) -> None:
        self.sender = sender
        self.problem = ""  # why it stopped hearing before `stop`, when it did
        self._store = store
        self._streams: dict[str, list[tuple[float, str]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-deltas", daemon=True)

    def start(self, timeout: float = 5.0) -> None:
        """Subscribe, and return once subscribed (or it failed: `problem`)."""
        self._thread.start()
        self._subscribed.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def streams(self) -> dict[str, list[tuple[float, str]]]:
        with self._lock:
            return {request: list(deltas) for request, deltas in self._streams.items()}

    def _run(self) -> None:
        try:
            with redis_errors("subscribe to the conversations' channel"):
                pubsub = self._store.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self._store.keys.conversation_channel)
        except AgentMeshError as exc:
            self.problem = str(exc)
            self._subscribed.set()
            return
        self._subscribed.set()
        try:
            while not self._stop.is_set():
                with redis_errors("hear the conversations' channel"):
                    message = pubsub.get_message(timeout=READ_WAIT_S)
                if message is not None:
                    self._heard(message.get("data"), time.monotonic())
        except AgentMeshError as exc:  # Redis went away: what was heard is judged as it is
            self.problem = str(exc)
            log.debug("deltas no longer heard: %s", exc)
        finally:
            try:
                pubsub.close()
            except Exception:  # noqa: BLE001  (closing a connection that may be gone)
                pass

    def _heard(self, raw: object, at: float) -> None:
        delta = heard_delta(raw, self.sender)
        if delta is not None:
            with self._lock:
                self._streams.setdefault(delta[0], []).append((at, delta[1]))


def heard_delta(raw: object, sender: str) -> tuple[str, str] | None:
    """A channel message as (the request it answers, the text) when it is a delta `sender`
    streamed; None for an append's notice, another sender's delta, or anything else."""
    if not isinstance(raw, bytes | str):
        return None
    parsed = parse_feed(raw.encode() if isinstance(raw, str) else raw)
    data = parsed[2] if parsed is not None else None
    if data is None or data.get("from") != sender:
        return None
    request, text = data.get("in_reply_to"), data.get("text")
    return (request, text) if isinstance(request, str) and isinstance(text, str) else None


def mid_stream(streams: Mapping[str, Streamed], now: float, started_before: float = 0.2,
               quiet_for: float = 0.2) -> int:
    """Requests streaming right now, well into their text: the first delta heard more than
    `started_before` seconds ago, the last less than `quiet_for` ago."""
    return sum(1 for deltas in streams.values()
               if deltas and now - deltas[0][0] > started_before and now - deltas[-1][0] < quiet_for)


def streaming_at(kill: float, streams: Mapping[str, Streamed], answered: Mapping[str, float]) -> int:
    """Requests caught mid-answer by a kill at `kill`: text streamed before it, the answer
    (`answered`: request -> when the asker got it) after it."""
    return sum(1 for request, at in answered.items()
               if (deltas := streams.get(request)) and deltas[0][0] < kill < at)


def restreamed(streams: Mapping[str, Streamed], answers: Mapping[str, str]) -> int:
    """Requests streamed more text than their answer holds: a turn run again after a kill
    streams its text again from the start, after what the killed run had streamed."""
    return sum(1 for request, text in answers.items()
               if sum(len(piece) for _, piece in streams.get(request, ())) > len(text))


def conversation_tally(events: Iterable[tuple[str, str, Any]], request: str, agent: str) -> tuple[int, int]:
    """In one request's conversation log: (the distinct replies `agent` sent to `request`,
    the distinct requests `agent` sent: its tool asks)."""
    replies: set[str] = set()
    asks: set[str] = set()
    for _, event, data in events:
        if event != EVENT_MESSAGE or not isinstance(data, dict) or data.get("from") != agent:
            continue
        if data.get("in_reply_to") == request:
            replies.add(str(data.get("id")))
        elif "in_reply_to" not in data:
            asks.add(str(data.get("id")))
    return len(replies), len(asks)


def all_events(log: ConversationLog, conversation: str, page: int = 100) -> list[tuple[str, str, Any]]:
    """Every event of a conversation's log, oldest first, read `page` at a time. StoreError
    when Redis fails."""
    events: list[tuple[str, str, Any]] = []
    last = "0-0"
    while True:
        with redis_errors("read a conversation's events"):
            read = log.after(conversation, last, page)
        events += read
        if len(read) < page:
            return events
        last = read[-1][0]


def read_logs(log: ConversationLog, requests: Iterable[tuple[str, str]], agent: str) -> tuple[int, int]:
    """Of the requests (request id, its conversation): how many `agent` answered twice (two
    replies with different ids) and how many made it ask a tool twice (two asks with
    different ids; one tool call per request). StoreError when Redis fails."""
    twice = asked_twice = 0
    for request, conversation in requests:
        with redis_errors("read a conversation's events"):
            events = log.after(conversation, "0-0")
        replies, asks = conversation_tally(events, request, agent)
        twice += int(replies > 1)
        asked_twice += int(asks > 1)
    return twice, asked_twice
