"""Who gets into the services, pure parts: bearer headers, user tokens, resource paths and ownership."""

from __future__ import annotations

import pytest

from agentmesh_cli.constants import Keys
from agentmesh_cli.errors import ApiError
from agentmesh_cli.services.auth import (
    MESH,
    Caller,
    acting_as,
    bearer_credential,
    identify,
    user_token,
)
from agentmesh_cli.services.memory_args import parse_resource

# pure cores -----------------------------------------------------------------------------
SERVICE_TOKEN = "s" * 43


@pytest.mark.parametrize(("header", "caller"), [
    (f"Bearer {SERVICE_TOKEN}", MESH),
    (f"bearer {SERVICE_TOKEN}", MESH),  # the scheme is case-insensitive (RFC 7235)
    (f"Bearer {user_token(SERVICE_TOKEN, 'alice')}", Caller("alice")),
    (f"Bearer {user_token(SERVICE_TOKEN, 'a.b:c@d')}", Caller("a.b:c@d")),  # dots in a user id
    (f"Bearer {user_token(SERVICE_TOKEN, 'alice').replace('alice', 'bob')}", None),  # renamed
    (f"Bearer {user_token('t' * 43, 'alice')}", None),  # another mesh's (or a rotated) token
    (f"Bearer {user_token(SERVICE_TOKEN, 'alice')[:-1]}", None),
    (f"Bearer {SERVICE_TOKEN[:-1]}", None),
    (f"Bearer {SERVICE_TOKEN}x", None),
    (f"Basic {SERVICE_TOKEN}", None),
    ("Bearer ", None),
    ("Bearer u1..sig", None),
    ("Bearer " + "x" * 600, None),
])
def test_identify_a_bearer_header(header: str, caller: Caller | None) -> None:
    credential = bearer_credential([(b"authorization", header.encode())])
    found = identify(credential, SERVICE_TOKEN) if credential is not None else None
    assert found == caller


def test_user_token_format() -> None:
    assert user_token("secret-service-token", "alice") == \
        "u1.alice.WdJMSOGStHG6Ec1QYqMw2-UjjoazEgjF2cllT0rb6n8"


# every resource path: the key it reads, or the error (before any key is made)
KEYS = Keys("m")
P = "agentmesh:m:memory:"


@pytest.mark.parametrize(("path", "key", "error"), [
    ("history/alice", P + "user:alice", None),
    ("history/a:b", P + "user:a:b", None),  # ':' only inside the user part: no other kind of key
    ("history/alice/limit/5", P + "user:alice", None),
    ("conversation/c1/user/alice", P + "conversation-user:c1/alice", None),  # '/' is in no id
    ("history/..", None, 400),
    ("history/.", None, 400),
    ("history/...", None, 400),
    ("history/.a", P + "user:.a", None),
    ("history/../..", None, 404),
    ("history/a%2Fb", None, 400),
    ("history/a\x00b", None, 400),
    ("history/*", None, 400),
    ("history/a*", None, 400),
    ("history/a?b", None, 400),
    ("history/[ab]", None, 400),
    ("history/a b", None, 400),
    ("history/a\nb", None, 400),
    ("history/" + "x" * 129, None, 400),
    ("history/é", None, 400),
    ("history/", None, 400),
    ("history", None, 404),
    ("history/alice/limit/0", None, 400),
    ("history/alice/limit/1001", None, 400),
    ("history/alice/limit/١", None, 400),  # an Arabic-Indic digit is not an ASCII number
    ("conversation/c1/user/*", None, 400),
    ("conversation/*", None, 400),
    ("../history/alice", None, 404),
])
def test_resource_paths_to_keys(path: str, key: str | None, error: int | None) -> None:
    if error is None:
        assert parse_resource(path, KEYS).key == key
    else:
        with pytest.raises(ApiError) as raised:
            parse_resource(path, KEYS)
        assert raised.value.status == error


@pytest.mark.parametrize(("caller", "path", "status"), [
    (Caller("alice"), "history/alice", None),
    (Caller("alice"), "history/bob", 403),
    (Caller("alice"), "history/bob/limit/3", 403),
    (Caller("alice"), "conversation/c1/user/alice", None),
    (Caller("alice"), "conversation/c1/user/bob", 403),
    (Caller("alice"), "conversation/c1", 403),  # holds every participant's messages
    (MESH, "conversation/c1", None),
    (MESH, "history/bob", None),
])
def test_resource_ownership(caller: Caller, path: str, status: int | None) -> None:
    with acting_as(caller):
        if status is None:
            parse_resource(path, KEYS)
        else:
            with pytest.raises(ApiError) as raised:
                parse_resource(path, KEYS)
            assert raised.value.status == status and raised.value.code == "forbidden"


