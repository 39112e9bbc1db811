"""Who may call the mesh's HTTP services: bearer tokens, user tokens and the caller's identity.

Every request to memory and cognition except `GET /health` carries `Authorization: Bearer
<token>` (BearerAuthMiddleware); without one, or with a wrong one, the answer is 401
`unauthorized` with `WWW-Authenticate: Bearer`. Two kinds of token get in:

- the service token (`mesh.credentials.service_token`): the mesh's own identity. Agents,
  cognition (as memory's client) and operators act with it on behalf of any user;
- a user token, `u1.<user>.<signature>` with the signature base64url(HMAC-SHA256(service
  token, "user:" + user)) (services/tokens.py, printed by `agentmesh token --user NAME`). Both
  services check it from the service token alone: nothing is stored, and rotating the
  service token invalidates every user token. A user token acts for that user only: a
  tool or resource naming another user answers 403 `forbidden` (`require_user`), and a
  resource that names no user (memory's `conversation/{id}`, which holds everyone's
  messages) answers 403 too (`require_mesh`).

The caller of the request being handled is a context variable (`current_caller`), set by
the middleware for the seed endpoints and by the MCP handlers from their HTTP request
(`CALLER_SCOPE_KEY` in the ASGI scope), so the same checks in the tools serve both
protocols. Code that runs in process (services.local) has no request: it is the mesh.
Tokens are compared with hmac.compare_digest, and never logged or echoed.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from agentmesh_cli.errors import ConfigError, Forbidden, Unauthorized
from agentmesh_cli.services.http import error_response
from agentmesh_cli.services.tokens import USER_TOKEN_PREFIX, user_token

MIN_SERVICE_TOKEN = 16  # characters; the generated one has 43
MAX_TOKEN_BYTES = 512  # a longer Authorization value is refused before any hashing
CALLER_SCOPE_KEY = "agentmesh.caller"  # where the middleware leaves the Caller in the scope
OPEN_PATHS = frozenset({"/health"})  # readiness gates and load balancers probe it without a token


@dataclass(frozen=True)
class Caller:
    """Who sent the request: `user` for a user token, None for the mesh (service token)."""

    user: str | None = None

    @property
    def is_mesh(self) -> bool:
        return self.user is None


MESH = Caller()
_caller: ContextVar[Caller] = ContextVar("agentmesh_caller", default=MESH)


# tokens -------------------------------------------------------------------------------
def check_service_token(token: str, service: str) -> str:
    """The service token, or a ConfigError that says why the service cannot start."""
    if not token:
        raise ConfigError(f"the {service} service has no service token, so it would let anyone "
                          "in; run it with the mesh's secrets (agentmesh up makes them) or set "
                          "AGENTMESH_SERVICE_TOKEN")
    if len(token) < MIN_SERVICE_TOKEN:
        raise ConfigError(f"the {service} service's token is shorter than {MIN_SERVICE_TOKEN} "
                          "characters; use the generated one or a longer random value")
    return token


def identify(credential: bytes, service_token: str) -> Caller | None:
    """The caller a bearer credential proves, or None when it proves nothing.

    A user id may contain dots; the signature (base64url) never does, so it is the part
    after the last dot and the user the part between the prefix and it.
    """
    if len(credential) > MAX_TOKEN_BYTES:
        return None
    if hmac.compare_digest(credential, service_token.encode()):
        return MESH
    prefix, _, rest = credential.partition(b".")
    user_bytes = rest.rpartition(b".")[0]
    if prefix != USER_TOKEN_PREFIX.encode() or not user_bytes:
        return None
    try:
        user = user_bytes.decode("ascii")
    except UnicodeDecodeError:
        return None
    expected = user_token(service_token, user).encode()
    return Caller(user) if hmac.compare_digest(credential, expected) else None


def bearer_credential(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The credential of an `Authorization: Bearer <credential>` header, if there is one."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, credential = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and credential.strip():
                return credential.strip()
            return None
    return None


# the caller of the request being handled ----------------------------------------------
def current_caller() -> Caller:
    return _caller.get()


@contextmanager
def acting_as(caller: Caller) -> Iterator[None]:
    """Run the block as `caller` (the MCP handlers: their task is not the request's)."""
    reset = _caller.set(caller)
    try:
        yield
    finally:
        _caller.reset(reset)


def caller_of_scope(scope: Any) -> Caller:
    """The Caller the middleware put into an ASGI scope. A scope without one never passed
    the middleware; it gets the narrowest identity, which no user check accepts."""
    caller = scope.get(CALLER_SCOPE_KEY) if isinstance(scope, dict) else None
    return caller if isinstance(caller, Caller) else Caller(user="")


def require_user(user_id: str, argument: str = "user_id") -> str:
    """`user_id` when the caller may act for that user (the mesh, or that user's token);
    else 403. Call it on every user id a tool or resource takes."""
    caller = current_caller()
    if caller.is_mesh or caller.user == user_id:
        return user_id
    raise Forbidden(f"this token acts for another user, not {user_id!r}",
                    {"argument": argument, "user_id": user_id})


def require_mesh(what: str) -> None:
    """403 for a user token: `what` is not one user's and only the mesh may read it."""
    if not current_caller().is_mesh:
        raise Forbidden(f"{what} is not one user's, so a user token may not read it",
                        {"resource": what})


# the middleware -----------------------------------------------------------------------
def _unauthorized(message: str, error: str | None) -> Any:
    challenge = "Bearer" if error is None else f'Bearer error="{error}"'
    return error_response(Unauthorized.status, Unauthorized.code, message, None,
                          {"WWW-Authenticate": challenge})


class BearerAuthMiddleware:
    """401 for an HTTP request outside `open_paths` without a valid bearer token; else the
    request runs as its Caller (the context variable, and CALLER_SCOPE_KEY in the scope)."""

    def __init__(self, app: ASGIApp, token: str, open_paths: Iterable[str] = OPEN_PATHS) -> None:
        self.app = app
        self.token = token
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        credential = bearer_credential(scope["headers"])
        if credential is None:
            response = _unauthorized("this service needs 'Authorization: Bearer <token>' "
                                     "(the mesh's service token, or a user token)", None)
            await response(scope, receive, send)
            return
        caller = identify(credential, self.token)
        if caller is None:
            await _unauthorized("the bearer token is not valid here", "invalid_token")(
                scope, receive, send)
            return
        scope[CALLER_SCOPE_KEY] = caller
        with acting_as(caller):
            await self.app(scope, receive, send)
