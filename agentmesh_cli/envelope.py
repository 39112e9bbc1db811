"""The one message envelope of every topic (DESIGN section 3), pure: encode, decode, validate."""

from __future__ import annotations

import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson

from agentmesh_cli.constants import ENVELOPE_VERSION, NAME_PATTERN
from agentmesh_cli.errors import InvalidEnvelope

_STR_FIELDS = ("id", "type", "from_agent_id", "to_agent_id")
_NAME = re.compile(NAME_PATTERN)
SHOWN_CHARS = 64  # how much of a bad name a dead letter's reason quotes


def now_ms() -> int:
    return int(time.time() * 1000)


def is_agent_name(name: str) -> bool:
    """Could an agent have this name (mesh.yaml's rule)? Any other name is nobody's."""
    return _NAME.fullmatch(name) is not None


def shown(name: str) -> str:
    """A name as a dead letter's reason shows it: as is when it is a possible agent name,
    else quoted and cut (a hostile record's name may be long, empty or hold anything)."""
    if is_agent_name(name):
        return name
    return repr(name[:SHOWN_CHARS]) + ("..." if len(name) > SHOWN_CHARS else "")


def nests_deeper(value: Any, limit: int) -> bool:
    """Do arrays and objects nest more than `limit` levels in this JSON value? (No
    recursion: a body may nest 1,024 levels, beyond Python's recursion limit.)"""
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth + 1 > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def new_id() -> str:
    """A fresh envelope id (a uuid4)."""
    return str(uuid.uuid4())


class RecentIds:
    """The newest `limit` envelope ids seen, to recognise copies (a redelivery, a record
    sent again after a crash or a broker restart): the oldest are forgotten first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # an OrderedDict, not a dict: a dict keeps the holes of deleted keys at its front,
        # so once full, finding its oldest key scans them (about 20 us an id at 50,000
        # ids); popitem(last=False) unlinks the oldest at once
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, envelope_id: str) -> bool:
        return envelope_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, envelope_id: str) -> bool:
        """Remember an id; False when it was remembered already."""
        if envelope_id in self._ids:
            return False
        self._ids[envelope_id] = None
        if len(self._ids) > self.limit:
            self._ids.popitem(last=False)
        return True


_EMPTY: dict[str, Any] = {}
MAX_TS_MS = 2**63 - 1


def envelope_problem(data: Any) -> str | None:
    """What is wrong with a parsed record value as an envelope, or None: the checks of
    `Envelope.decode`, also run alone by the topology manager's batch path. `type() is`
    rather than isinstance: JSON gives exact types, and a bool is no timestamp."""
    if type(data) is not dict:
        return f"not a JSON object but {type(data).__name__}"
    if data.get("v") != ENVELOPE_VERSION:
        return f"unsupported envelope version {data.get('v')!r}"
    for name in _STR_FIELDS:
        if type(data.get(name)) is not str:
            return f"field {name!r} missing or not a string"
    if not data["id"] or not data["type"]:
        return "fields 'id' and 'type' must not be empty"
    ts = data.get("ts")
    if type(ts) is not int or ts < 0:
        return "field 'ts' missing or not a non-negative integer (epoch ms)"
    if ts > MAX_TS_MS:  # it is kept in int64 arrays (an edge's last use), like any time
        return f"field 'ts' is over {MAX_TS_MS} (epoch ms, a signed 64-bit integer)"
    for name in ("payload", "meta"):
        if type(data.get(name, _EMPTY)) is not dict:
            return f"field {name!r} is not an object"
    return None


@dataclass(frozen=True)
class Envelope:
    type: str
    from_agent_id: str
    to_agent_id: str = ""
    payload: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: new_id())
    ts: int = field(default_factory=now_ms)
    v: int = ENVELOPE_VERSION

    def encode(self) -> bytes:
        # a plain dict, not dataclasses.asdict: that deep-copies the payload (the hot path)
        data = {"v": self.v, "id": self.id, "type": self.type, "from_agent_id": self.from_agent_id,
                "to_agent_id": self.to_agent_id, "ts": self.ts, "payload": self.payload,
                "meta": self.meta}
        return orjson.dumps(data)

    @classmethod
    def decode(cls, raw: bytes | None, max_bytes: int | None = None) -> Envelope:
        """Parse and check a record value; raise InvalidEnvelope saying what is wrong.
        `max_bytes`: a longer record is refused before it is parsed."""
        data = decode_fields(raw, max_bytes)
        return cls(
            type=data["type"],
            from_agent_id=data["from_agent_id"],
            to_agent_id=data["to_agent_id"],
            payload=data.get("payload", {}),
            meta=data.get("meta", {}),
            id=data["id"],
            ts=data["ts"],
        )


def decode_fields(raw: bytes | None, max_bytes: int | None = None) -> dict[str, Any]:
    """What `Envelope.decode` checks and builds its Envelope from: the record value parsed
    and checked, as a dict. A reader on a hot path that needs a few fields (the consensus
    manager's votes) takes them from here rather than build an Envelope (~1.5 us)."""
    if raw is None:
        raise InvalidEnvelope("empty record (no value)")
    if max_bytes is not None and len(raw) > max_bytes:
        raise InvalidEnvelope(f"record of {len(raw)} bytes is over the limit of {max_bytes} "
                              "bytes (kafka.max_record_bytes)")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEnvelope(f"not JSON: {exc}") from exc
    if (problem := envelope_problem(data)) is not None:
        raise InvalidEnvelope(problem)
    return data  # type: ignore[no-any-return]
