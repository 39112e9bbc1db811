"""What a service offers, described once and served twice: over the seed protocol
(`POST /tool/{name}`, `GET /resource/{path}`) and over the Model Context Protocol at `/mcp`.

A service's FastAPI app carries its catalogue in `app.state.catalogue` (a Catalogue); the
seed endpoints and the MCP server both dispatch through it, so a tool behaves the same
whichever protocol calls it, including its argument errors (ApiError subclasses).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# a user, conversation or message id: safe inside a Redis key and a URL path. Here, apart from
# the web stack, because `agentmesh token --user` checks it too and must stay quick
ID_PATTERN = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
ID_RULE = "1 to 128 characters of A-Z a-z 0-9 _ . : @ -"

ToolHandler = Callable[[dict[str, Any]], Awaitable[Any]]
"""Runs a tool on its arguments; raises an ApiError (400, 404, 503...) when it cannot."""

ResourceReader = Callable[[str, Mapping[str, str]], Awaitable[Any]]
"""Reads a resource once: (path, query parameters) -> its JSON value, e.g. {"items": [...]}.
Raises an ApiError (404 unknown resource, 400 bad path part, 503) when it cannot."""


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]  # JSON Schema of the `arguments` object
    handler: ToolHandler


@dataclass(frozen=True)
class ResourceSpec:
    template: str  # a path under /resource/, e.g. "history/{user_id}/limit/{n}"
    name: str
    description: str


@dataclass(frozen=True)
class Catalogue:
    service: str  # "memory" | "cognition": also the MCP server's name and URI scheme
    tools: Mapping[str, ToolSpec]
    resources: tuple[ResourceSpec, ...]
    read_resource: ResourceReader
    instructions: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def tool(self, name: str) -> ToolSpec | None:
        return self.tools.get(name)


def catalogue_of(tools: list[ToolSpec]) -> dict[str, ToolSpec]:
    return {tool.name: tool for tool in tools}
