"""The user token format: `u1.<user>.<signature>`, the signature base64url(HMAC-SHA256(service
token, "user:" + user)) without padding.

Pure (hashlib and hmac only), apart from auth.py, which checks tokens inside the web stack:
`agentmesh token --user` makes one in a script's loop and must not import fastapi for it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

USER_TOKEN_PREFIX = "u1"  # the version of the user token format: a new format gets u2


def signature(service_token: str, user: str) -> str:
    digest = hmac.new(service_token.encode(), f"user:{user}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def user_token(service_token: str, user: str) -> str:
    """The token that lets its bearer act as `user` (and no one else) on both services."""
    return f"{USER_TOKEN_PREFIX}.{user}.{signature(service_token, user)}"
