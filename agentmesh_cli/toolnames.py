"""Tool names for an agent's message types (pure): `<agent>__<type>`, as MCP clients
(the gateway's /mcp) and language models (the llm role) see them. Both allow only
[A-Za-z0-9_-] and 64 characters; a short hash keeps a shortened or clashing name unique."""

from __future__ import annotations

import hashlib
import re

MAX_NAME = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def tool_name(agent: str, type: str, taken: set[str]) -> str:
    """`<agent>__<type>` within the allowed characters and MAX_NAME, not one of `taken`."""
    name = _UNSAFE.sub("_", f"{agent}__{type}")
    if len(name) > MAX_NAME or name in taken:
        digest = hashlib.sha256(f"{agent}\n{type}".encode()).hexdigest()[:8]
        name = f"{name[:MAX_NAME - 9]}_{digest}"
    return name
