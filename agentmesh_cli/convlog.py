"""A conversation's events for its user: the log behind the gateway's Server-Sent Events.

Each conversation has an ordered event log in Redis (constants.Keys):

- `conv:<id>` (hash): `owner`, the user the conversation belongs to ("" for the mesh),
  `created` (ms), and `trimmed`, the newest event id the log no longer keeps. The first
  append makes it; a later append by another user is refused (the gateway then answers
  404, as for a missing conversation).
- `conv-events:<id>` (stream): one entry per event, fields `event` and `data` (JSON). The
  stream id is the SSE event id. Trimmed to the newest `gateway.events_kept` entries;
  every key of the conversation expires `gateway.events_ttl` after its last append.
- `conv-seen:<id>` (sorted set): the envelope ids appended, so that an envelope sent again
  after a crash (the same derived id) is not appended twice.
- `conv-feed` (pub/sub channel): `<conversation> <stream id>` after each append, and the
  ephemeral `delta` events as JSON; the gateway's followers wake on it.

Who appends: whoever sends an envelope that is meant for the conversation's user. The
gateway and `agentmesh ask` append the request they send; an agent appends its reply to
an asker outside the mesh (`meta.reply_to`) and whatever it sends with `public=True`
(`meta.public`; a reply to a public request is public too). Agent-to-agent traffic is
not appended otherwise. Token deltas (`ctx.delta`) are published, never stored, and never
sent as Kafka messages.

The rules (which envelope is an event, its data, the `gone` test on stream ids) are pure
functions here; `ConversationLog` runs them on a synchronous redis-py client (agents and
the CLI), and the gateway runs the same scripts on its asyncio client.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from agentmesh_cli.envelope import Envelope, now_ms

CONVERSATION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_CONVERSATION = re.compile(CONVERSATION_PATTERN)
ANY_OWNER = "*"  # the mesh acting for nobody in particular: may append to any conversation
EVENT_MESSAGE = "message"  # an envelope of the conversation
EVENT_DELTA = "delta"  # streamed partial output: ephemeral, never stored
EVENT_GONE = "gone"  # the Last-Event-ID is older than what the log keeps
SEEN_FACTOR = 2  # envelope ids remembered per conversation: this many times events_kept

# KEYS: conversation hash, events stream, seen set
# ARGV: 1 actor (a user, "" the mesh as nobody, "*" the mesh for anyone), 2 envelope id,
#       3 event, 4 data, 5 events kept, 6 ttl (s), 7 channel, 8 conversation id, 9 now (ms)
# -> {1, stream id} appended, {1, ""} already there, {0, ""} another user's conversation
APPEND_SCRIPT = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then
  owner = ARGV[1]
  if owner == '*' then owner = '' end
  redis.call('HSET', KEYS[1], 'owner', owner, 'created', ARGV[9])
elseif ARGV[1] ~= '*' and owner ~= ARGV[1] then
  return {0, ''}
end
local ttl = tonumber(ARGV[6])
redis.call('EXPIRE', KEYS[1], ttl)
if ARGV[2] ~= '' then
  if redis.call('ZADD', KEYS[3], 'NX', ARGV[9], ARGV[2]) == 0 then return {1, ''} end
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[5]) * 2) - 1)
  redis.call('EXPIRE', KEYS[3], ttl)
end
local kept = tonumber(ARGV[5])
local len = redis.call('XLEN', KEYS[2])
if len >= kept then
  -- what this append trims: the newest of it is where a resume starts to lose events
  local old = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', len - kept + 1)
  redis.call('HSET', KEYS[1], 'trimmed', old[#old][1])
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', kept, '*', 'event', ARGV[3], 'data', ARGV[4])
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('PUBLISH', ARGV[7], ARGV[8] .. ' ' .. id)
return {1, id}
"""

# KEYS: conversation hash. ARGV: 1 actor, 2 ttl (s), 3 now (ms)
# -> 1 the actor may use it (made now if missing), 0 another user's
CLAIM_SCRIPT = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then
  owner = ARGV[1]
  if owner == '*' then owner = '' end
  redis.call('HSET', KEYS[1], 'owner', owner, 'created', ARGV[3])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
end
if ARGV[1] ~= '*' and owner ~= ARGV[1] then return 0 end
return 1
"""


def is_conversation_id(value: Any) -> bool:
    return isinstance(value, str) and _CONVERSATION.match(value) is not None


def actor(user: str | None, mesh: bool) -> str:
    """Who appends, for the scripts: a user acts for itself; the mesh without a user may
    use any conversation (ANY_OWNER)."""
    if user:
        return user
    return ANY_OWNER if mesh else ""


def is_public(envelope: Envelope) -> bool:
    """An envelope meant for its conversation's user: a reply to an asker outside the mesh
    is made public by the sender (agent/exchange.py), and so is one sent with public=True."""
    return envelope.meta.get("public") is True


def event_data(envelope: Envelope) -> dict[str, Any]:
    """What a follower sees of an envelope: no reply address, no signature."""
    data: dict[str, Any] = {"id": envelope.id, "type": envelope.type, "from": envelope.from_agent_id,
                            "to": envelope.to_agent_id, "ts": envelope.ts, "payload": envelope.payload}
    for name in ("conversation", "in_reply_to", "user"):
        if name in envelope.meta:
            data[name] = envelope.meta[name]
    return data


def delta_message(conversation: str, sender: str, text: str, in_reply_to: str | None,
                  offset: int = 0) -> bytes:
    """A delta as published on the channel (JSON; a notification is `<id> <stream id>`).
    `offset`: characters streamed before `text` by this run of the handler: a run started
    again after a crash streams from 0 again, and a client replaces what it showed."""
    data: dict[str, Any] = {"c": conversation, "from": sender, "text": text, "offset": offset,
                            "ts": now_ms()}
    if in_reply_to:
        data["in_reply_to"] = in_reply_to
    return orjson.dumps(data)


def parse_feed(raw: bytes) -> tuple[str, str | None, dict[str, Any] | None] | None:
    """A channel message as (conversation, stream id, None) for an append, (conversation,
    None, delta data) for a delta, or None when it is neither."""
    if raw[:1] == b"{":
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        conversation = data.pop("c", None) if isinstance(data, dict) else None
        return (conversation, None, data) if isinstance(conversation, str) else None
    conversation, _, stream_id = raw.decode("utf-8", "replace").partition(" ")
    return (conversation, stream_id, None) if conversation and stream_id else None


def stream_id(text: str) -> tuple[int, int] | None:
    """A Redis stream id `ms-seq` (or `ms`) as a comparable pair; None when it is not one."""
    ms, _, seq = text.strip().partition("-")
    if not ms.isdigit() or (seq and not seq.isdigit()):
        return None
    return int(ms), int(seq or 0)


def is_gone(last_event_id: tuple[int, int], exists: bool, trimmed: tuple[int, int] | None) -> bool:
    """Does resuming after `last_event_id` miss events the log no longer holds? Yes when
    an event after it was trimmed (`trimmed`, the newest id trimmed, is newer), or when the
    whole log expired and the id is not the start (0-0). (Redis's own
    max-deleted-entry-id counts XDEL only, not the trimming of XADD MAXLEN.)"""
    if not exists:
        return last_event_id != (0, 0)
    return trimmed is not None and trimmed > last_event_id


class ConversationLog:
    """The conversation log on a synchronous redis-py client (agents and the CLI)."""

    def __init__(self, client: Any, keys: Any, kept: int, ttl_s: float) -> None:
        self.client = client
        self.keys = keys
        self.kept = kept
        self.ttl = max(1, int(ttl_s))
        self._append = client.register_script(APPEND_SCRIPT)
        self._claim = client.register_script(CLAIM_SCRIPT)

    def claim(self, conversation: str, user: str | None, mesh: bool) -> bool:
        """Make the conversation if it is missing; False when it is another user's."""
        return bool(self._claim(keys=[self.keys.conversation(conversation)],
                                args=[actor(user, mesh), self.ttl, now_ms()]))

    def append(self, conversation: str, envelope: Envelope, user: str | None = None,
               mesh: bool = True) -> str | None:
        """Append `envelope` as a message event: its stream id, "" when it was already
        there, None when the conversation is another user's."""
        data = orjson.dumps(event_data(envelope))
        ok, stream = self._append(
            keys=[self.keys.conversation(conversation), self.keys.conversation_events(conversation),
                  self.keys.conversation_seen(conversation)],
            args=[actor(user, mesh), envelope.id, EVENT_MESSAGE, data, self.kept, self.ttl,
                  self.keys.conversation_channel, conversation, now_ms()])
        if not ok:
            return None
        return stream.decode() if isinstance(stream, bytes) else str(stream)

    def publish_delta(self, conversation: str, sender: str, text: str, in_reply_to: str | None,
                      offset: int = 0) -> None:
        self.client.publish(self.keys.conversation_channel,
                            delta_message(conversation, sender, text, in_reply_to, offset))

    def gone(self, conversation: str, last: tuple[int, int]) -> bool:
        """is_gone for a resume after `last` (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.exists(self.keys.conversation_events(conversation))
        pipe.hget(self.keys.conversation(conversation), "trimmed")
        exists, trimmed = pipe.execute()
        text = trimmed.decode() if isinstance(trimmed, bytes) else trimmed
        return is_gone(last, bool(exists), stream_id(text) if text else None)

    def last_id(self, conversation: str) -> str:
        """The newest event's id, or 0-0: where a follower that wants only what comes next starts."""
        newest = self.client.xrevrange(self.keys.conversation_events(conversation), count=1)
        if not newest:
            return "0-0"
        raw = newest[0][0]
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def after(self, conversation: str, last: str, count: int = 100) -> list[tuple[str, str, Any]]:
        """Events after `last`, oldest first: (stream id, event, data)."""
        entries = self.client.xrange(self.keys.conversation_events(conversation), min=f"({last}",
                                     count=count)
        return [decode_entry(entry) for entry in entries]


def decode_entry(entry: Any) -> tuple[str, str, Any]:
    """One XRANGE entry as (stream id, event, data)."""
    raw_id, fields = entry
    entry_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
    event = fields.get(b"event", fields.get("event", b"message"))
    data = fields.get(b"data", fields.get("data", b"null"))
    event_text = event.decode() if isinstance(event, bytes) else str(event)
    return entry_id, event_text, orjson.loads(data)
