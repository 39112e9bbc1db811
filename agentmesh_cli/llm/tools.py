"""The llm role's tools (pure): what the model is offered, and what its calls become.

Each agent and message type of the `tools` allowlist is offered to the model as one
function tool `<agent>__<type>` (toolnames.py) whose parameters are the payload schema
the agent publishes (`Role.accepts`). A call the model makes becomes an ask of that
agent with the arguments as payload; the reply (or the error) goes back to the model as
the tool's text. A call of a tool the model was not offered, or with arguments that are
not a JSON object, ends the turn (ToolNotAllowed, ToolCallInvalid): nothing is sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from agentmesh_cli.config_llm import tool_ref
from agentmesh_cli.errors import (
    AskError,
    AskTimeout,
    RemoteError,
    ToolCallInvalid,
    ToolNotAllowed,
    UnknownAgent,
)
from agentmesh_cli.toolnames import tool_name

ANY_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}
MAX_RESULT_CHARS = 16_000  # a tool's text given back to the model, at most
SHOWN_ARGUMENTS = 200  # characters of a malformed call's arguments quoted in the error


@dataclass(frozen=True)
class Tool:
    name: str  # the function's name, as the model calls it
    agent: str
    type: str
    description: str
    parameters: dict[str, Any]
    validator: Draft202012Validator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "validator", Draft202012Validator(self.parameters))

    def mismatch(self, arguments: Mapping[str, Any]) -> str | None:
        """Why `arguments` do not fit the parameters' schema (naming the field), or None.
        Given back to the model as the tool's text, so that it can call again."""
        error = best_match(self.validator.iter_errors(dict(arguments)))
        if error is None:
            return None
        where = ".".join(str(part) for part in error.absolute_path) or "(the arguments)"
        return f"error: invalid arguments for {self.name}: {where}: {error.message}"

    def spec(self) -> dict[str, Any]:
        """The Chat Completions `tools` entry."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


@dataclass(frozen=True)
class Call:
    """One tool call of the model, as it sent it."""

    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it (may be anything)


def offered(refs: Sequence[str], accepts: Mapping[str, Mapping[str, Any]],
            roles: Mapping[str, str] | None = None) -> tuple[dict[str, Tool], list[str]]:
    """(tool name -> Tool, notes) for the allowlist `refs`: an agent name offers every type
    the agent declares in `accepts`, `agent:type` that type (with any object as payload
    when the agent declares no schema for it). A note says what an entry left out."""
    tools: dict[str, Tool] = {}
    notes: list[str] = []
    taken: set[str] = set()
    for ref in refs:
        agent, only = tool_ref(ref)
        declared = accepts.get(agent) or {}
        if only is None and not declared:
            notes.append(f"tools: {agent} declares no accepts (yet): nothing of it is offered; "
                         f"name a type as '{agent}:TYPE'")
        for type_ in [only] if only is not None else sorted(declared):
            if any(t.agent == agent and t.type == type_ for t in tools.values()):
                continue  # named twice (an agent and one of its types)
            schema = declared.get(type_) or {}
            name = tool_name(agent, type_, taken)
            taken.add(name)
            about = schema.get("description") or schema.get("title") or ""
            role = (roles or {}).get(agent)
            who = f"agent {agent}" + (f" (role {role})" if role else "")
            description = f"Ask {who} a `{type_}` request and get its reply. {about}".strip()
            parameters = schema if schema.get("type") == "object" else ANY_OBJECT
            tools[name] = Tool(name, agent, type_, description, parameters)
    return tools, notes


def resolve(call: Call, tools: Mapping[str, Tool]) -> tuple[Tool, dict[str, Any]]:
    """The tool a call names and its arguments as a payload; ToolNotAllowed for a tool the
    model was not offered, ToolCallInvalid for arguments that are not a JSON object."""
    tool = tools.get(call.name)
    if tool is None:
        offer = ", ".join(sorted(tools)) or "none"
        raise ToolNotAllowed(f"the model called tool {call.name[:100]!r}, which it was not offered "
                             f"(offered: {offer})")
    text = call.arguments.strip() or "{}"
    try:
        arguments = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ToolCallInvalid(f"the model called {call.name} with arguments that are not JSON: "
                              f"{text[:SHOWN_ARGUMENTS]!r}") from None
    if not isinstance(arguments, dict):
        raise ToolCallInvalid(f"the model called {call.name} with arguments that are not a JSON "
                              f"object: {text[:SHOWN_ARGUMENTS]!r}")
    return tool, arguments


def ask_key(tool: Tool, arguments: Mapping[str, Any]) -> str:
    """The key a tool call's ask is sent under (AgentContext.ask's `key`): the same tool
    with the same arguments is the same request, in any run of the handler."""
    canonical = orjson.dumps(dict(arguments), option=orjson.OPT_SORT_KEYS)
    return f"{tool.agent}\n{tool.type}\n{hashlib.sha256(canonical).hexdigest()}"


def result_text(payload: Mapping[str, Any]) -> str:
    """A reply's payload as the tool's text for the model (compact JSON, bounded)."""
    text = orjson.dumps(dict(payload)).decode("utf-8")
    return text if len(text) <= MAX_RESULT_CHARS else text[:MAX_RESULT_CHARS] + " ...(cut)"


def error_text(error: AskError) -> str:
    """A failed ask as the tool's text: the model reads why and may answer without it."""
    if isinstance(error, RemoteError):
        return f"error: {error.peer} failed: {error.remote_type}: {error.remote_message}"
    if isinstance(error, AskTimeout):
        return f"error: {error.peer} did not answer within {error.timeout:g} s"
    if isinstance(error, UnknownAgent):
        return f"error: there is no agent {error.peer} in the mesh"
    return f"error: {error}"
