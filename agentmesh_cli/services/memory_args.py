"""The memory protocol's arguments and resources, checked: every value a tool call or a
resource path brings, before anything reaches Redis (a 400 naming the argument otherwise).
Cognition checks its own arguments with the same rules."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agentmesh_cli.constants import Keys
from agentmesh_cli.envelope import nests_deeper
from agentmesh_cli.errors import UnknownResource
from agentmesh_cli.services.auth import require_mesh, require_user
from agentmesh_cli.services.http import finite_number
from agentmesh_cli.services.protocol import ID_PATTERN, ID_RULE
from agentmesh_cli.services.seed import bad_argument, json_type

MAX_METADATA_DEPTH = 32  # JSON nesting of metadata (the codec refuses 255; nobody needs 32)
MAX_ITEMS = 1000  # the largest list a resource answers (and the highest /limit/{n})


# argument checks ----------------------------------------------------------------------
def _path(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def check_fields(value: Any, where: str, required: tuple[str, ...],
                 optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """An object with all of `required`, some of `optional` and nothing else.
    `where` is its argument path ("" for the top level)."""
    if not isinstance(value, dict):
        raise bad_argument(where or "arguments", f"must be an object, not {json_type(value)}")
    unknown = sorted(set(value) - set(required) - set(optional))
    if unknown:
        raise bad_argument(_path(where, unknown[0]), "is not known here")
    for name in required:
        if name not in value:
            raise bad_argument(_path(where, name), "is required")
    return value


def check_id(value: Any, argument: str) -> str:
    """A user, conversation or message id: safe inside a Redis key, no path tricks."""
    if not isinstance(value, str):
        raise bad_argument(argument, f"must be a string, not {json_type(value)}")
    if not ID_PATTERN.fullmatch(value):
        raise bad_argument(argument, f"must be {ID_RULE}")
    if not value.strip("."):
        # "." and ".." are path steps wherever an id goes into a URL (cognition reads
        # memory's history/{user_id}): a client would normalise them away
        raise bad_argument(argument, "must not be only dots")
    return value


def check_content(value: Any, argument: str) -> str:
    if not isinstance(value, str):
        raise bad_argument(argument, f"must be a string, not {json_type(value)}")
    if not value:
        raise bad_argument(argument, "must not be empty")
    return value


def check_metadata(value: Any, argument: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_argument(argument, f"must be an object, not {json_type(value)}")
    if nests_deeper(value, MAX_METADATA_DEPTH):
        raise bad_argument(argument, f"nests deeper than {MAX_METADATA_DEPTH} levels")
    return value


def check_timestamp(value: Any, argument: str) -> float:
    """Epoch seconds, from a number or an ISO-8601 string (no zone means UTC); default now."""
    if value is None:
        return time.time()
    if finite_number(value):
        return float(value)
    if not isinstance(value, str):
        raise bad_argument(argument, f"must be epoch seconds or an ISO-8601 string, not {json_type(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise bad_argument(argument, f"is not an ISO-8601 date-time: {value!r}") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def check_limit(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_ITEMS:
        raise bad_argument("limit", f"must be an integer from 1 to {MAX_ITEMS}, not {text!r}")
    return int(text)


# resources ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Resource:
    """One list: the index it reads, how many, and which changes a follower sees."""

    key: str
    limit: int
    user_id: str | None = None
    conversation_id: str | None = None

    def matches(self, item: dict[str, Any]) -> bool:
        return ((self.user_id is None or item.get("user_id") == self.user_id)
                and (self.conversation_id is None or item.get("conversation_id") == self.conversation_id))


def check_owner(value: Any, argument: str = "user_id") -> str:
    """A user id (check_id) that the caller may act for (services.auth.require_user: 403
    when a user token names someone else)."""
    return require_user(check_id(value, argument), argument)


def parse_resource(path: str, keys: Keys) -> Resource:
    """The list `path` names, every part checked before it goes into a key. A user token
    reads only its own user's lists; `conversation/{id}` holds every participant's messages,
    so it is the mesh's alone (403 for a user token, who reads their own part with
    `conversation/{id}/user/{user_id}`)."""
    match path.split("/"):
        case ["history", user]:
            uid = check_owner(user)
            return Resource(keys.memory_user(uid), MAX_ITEMS, user_id=uid)
        case ["history", user, "limit", n]:
            uid = check_owner(user)
            return Resource(keys.memory_user(uid), check_limit(n), user_id=uid)
        case ["conversation", conversation]:
            cid = check_id(conversation, "conversation_id")
            require_mesh(f"conversation/{cid}")
            return Resource(keys.memory_conversation(cid), MAX_ITEMS, conversation_id=cid)
        case ["conversation", conversation, "user", user]:
            cid, uid = check_id(conversation, "conversation_id"), check_owner(user)
            return Resource(keys.memory_conversation_user(cid, uid), MAX_ITEMS, uid, cid)
    raise UnknownResource(
        f"no resource {path!r}: use history/{{user_id}}, history/{{user_id}}/limit/{{n}}, "
        "conversation/{conversation_id} or conversation/{conversation_id}/user/{user_id}",
        {"path": path})
