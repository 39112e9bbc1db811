"""The mesh as MCP tools and resources at the gateway's /mcp (official `mcp` SDK, Streamable
HTTP, stateless: any gateway process can take any request).

Tools, one per (agent, message type) that the agent's role declares in `accepts` (a
replica group once, by its name: gateway/listing.py):

    <agent>__<type>     ask the agent; the arguments are the payload (the declared schema)

plus three that take any agent and type:

    ask                 {agent, type, payload, conversation?, timeout?}: the agent's reply
    send                {agent, type, payload, conversation?}: the envelope id
    propose             {type: decision|action|topology, content}: the proposal id

Names keep to MCP's rules and to what common clients accept (A-Z a-z 0-9 _ -, at most 64
characters): other characters become `_`, and a name that would be too long or taken
ends with a short hash. Resources: `mesh://agents`, `mesh://topology`,
`mesh://proposals` and the templates `mesh://proposals/{id}`,
`mesh://conversations/{id}` (the events so far). Origins and tokens are checked as on the
services (services/mcp.py): each call runs as the caller of its own HTTP request.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from fastapi import FastAPI
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CallToolRequestParams,
    CallToolResult,
    ListResourcesResult,
    ListResourceTemplatesResult,
    ListToolsResult,
    PaginatedRequestParams,
    ReadResourceRequestParams,
    ReadResourceResult,
    Resource,
    ResourceTemplate,
    TextContent,
    TextResourceContents,
    Tool,
)
from pydantic import ValidationError

from agentmesh_cli import __version__, convlog, events
from agentmesh_cli import constants as C
from agentmesh_cli.consensus.core import PROPOSAL_TYPES
from agentmesh_cli.errors import ApiError, BadRequest, StoreError, UnknownResource
from agentmesh_cli.gateway.app import Gateway
from agentmesh_cli.gateway.models import Ask, Send
from agentmesh_cli.services.auth import acting_as
from agentmesh_cli.services.mcp import (
    JSON,
    McpEndpoint,
    _as_api_error,
    _caller,
    _protocol_error,
    _tool_error,
    mount_mcp,
    security_settings,
)
from agentmesh_cli.toolnames import tool_name

SCHEME = "mesh"
ANY_OBJECT = {"type": "object", "additionalProperties": True}
GENERIC = {
    "ask": ("Ask any agent of the mesh and get its reply (GET mesh://agents lists them and "
            "what they accept).",
            {"type": "object", "required": ["agent", "type"], "additionalProperties": False,
             "properties": {"agent": {"type": "string"}, "type": {"type": "string"},
                            "payload": ANY_OBJECT, "conversation": {"type": "string"},
                            "timeout": {"type": "number", "exclusiveMinimum": 0}}}),
    "send": ("Send any agent a message without waiting for an answer; returns the envelope id.",
             {"type": "object", "required": ["agent", "type"], "additionalProperties": False,
              "properties": {"agent": {"type": "string"}, "type": {"type": "string"},
                             "payload": ANY_OBJECT, "conversation": {"type": "string"}}}),
    "propose": ("Open a Bee consensus proposal; the agents vote and 60% decides. Returns its "
                "id; read mesh://proposals/{id} for the outcome.",
                {"type": "object", "required": ["type"], "additionalProperties": False,
                 "properties": {"type": {"enum": list(PROPOSAL_TYPES)}, "content": ANY_OBJECT}}),
}
RESOURCES = {"agents": "The agents, their state and what they accept.",
             "topology": "The SlimeMold topology: agents, edges and their strengths.",
             "proposals": "The newest Bee consensus proposals, newest first."}
TEMPLATES = {"proposals/{id}": "One proposal: votes, tally and status.",
             "conversations/{id}": "A conversation's events so far (oldest first)."}


def agent_tools(agents: Iterable[dict[str, Any]]) -> dict[str, tuple[str, str, Tool]]:
    """tool name -> (agent, type, Tool) for every declared (agent, type)."""
    tools: dict[str, tuple[str, str, Tool]] = {}
    taken = set(GENERIC)
    for agent in agents:
        for type, schema in sorted((agent.get("accepts") or {}).items()):
            name = tool_name(agent["name"], type, taken)
            taken.add(name)
            about = schema.get("description") or schema.get("title") or type
            # a replica group is one tool: the gateway routes each conversation to a replica
            group = f", {len(agent['replicas'])} replicas" if agent.get("replicas") else ""
            description = (f"Ask {agent['name']} (role {agent['role']}, {agent['state']}{group}) a "
                           f"`{type}` message and get its reply. {about}")
            input_schema = schema if schema.get("type") == "object" else ANY_OBJECT
            tools[name] = (agent["name"], type, Tool(name=name, description=description,
                                                     input_schema=input_schema))
    return tools


def build_server(gateway: Gateway) -> Server[Any]:
    def current_tools() -> dict[str, tuple[str, str, Tool]]:
        return agent_tools(gateway.agents())

    async def list_tools(ctx: ServerRequestContext[Any],
                         params: PaginatedRequestParams | None) -> ListToolsResult:
        generic = [Tool(name=name, description=text, input_schema=schema)
                   for name, (text, schema) in GENERIC.items()]
        return ListToolsResult(tools=[*generic, *(tool for _, _, tool in current_tools().values())])

    async def call(name: str, arguments: dict[str, Any]) -> Any:
        if name == "ask":
            ask = Ask.model_validate({k: v for k, v in arguments.items() if k != "agent"})
            return await gateway.ask(str(arguments.get("agent", "")), ask, None)
        if name == "send":
            send = Send.model_validate({k: v for k, v in arguments.items() if k != "agent"})
            return await gateway.send(str(arguments.get("agent", "")), send, None)
        if name == "propose":
            return await propose(arguments)
        agent, type, _ = current_tools()[name]
        return await gateway.ask(agent, Ask(type=type, payload=arguments), None)

    async def propose(arguments: dict[str, Any]) -> dict[str, Any]:
        kind, content = arguments.get("type"), arguments.get("content") or {}
        if kind not in PROPOSAL_TYPES or not isinstance(content, dict):
            raise BadRequest(f"type must be one of {', '.join(PROPOSAL_TYPES)} and content an object",
                             {"argument": "type"})
        bus = gateway.open_bus()
        proposal_id = events.new_proposal_id(C.GATEWAY_SENDER)
        await bus.send(events.proposal(C.GATEWAY_SENDER, proposal_id, kind, content),
                       C.TOPIC_PROPOSALS, proposal_id)
        return {"proposal_id": proposal_id}

    async def call_tool(ctx: ServerRequestContext[Any], params: CallToolRequestParams) -> CallToolResult:
        known = {*GENERIC, *current_tools()}
        if params.name not in known:
            raise MCPError(INVALID_PARAMS, f"no tool {params.name!r}",
                           {"code": "unknown_tool", "tool": params.name, "tools": sorted(known)})
        try:
            with acting_as(_caller(ctx)):
                result = await call(params.name, dict(params.arguments or {}))
        except ValidationError as exc:
            first = exc.errors()[0]
            argument = ".".join(str(part) for part in first["loc"]) or "arguments"
            return _tool_error(BadRequest(f"argument {argument!r}: {first['msg']}",
                                          {"argument": argument}))
        except (ApiError, StoreError) as exc:
            return _tool_error(_as_api_error(exc))
        return CallToolResult(content=[TextContent(text=orjson.dumps(result).decode())],
                              structured_content=result)

    async def list_resources(ctx: ServerRequestContext[Any],
                             params: PaginatedRequestParams | None) -> ListResourcesResult:
        return ListResourcesResult(resources=[
            Resource(name=name, uri=f"{SCHEME}://{name}", description=text, mime_type=JSON)
            for name, text in RESOURCES.items()])

    async def list_templates(ctx: ServerRequestContext[Any],
                             params: PaginatedRequestParams | None) -> ListResourceTemplatesResult:
        return ListResourceTemplatesResult(resource_templates=[
            ResourceTemplate(name=name.split("/")[0][:-1], uri_template=f"{SCHEME}://{name}",
                             description=text, mime_type=JSON)
            for name, text in TEMPLATES.items()])

    async def read(path: str) -> Any:
        if path == "agents":
            return {"agents": gateway.agents()}
        if path == "topology":
            return await gateway.state.topology() or {}
        if path == "proposals":
            return {"proposals": await gateway.state.proposals()}
        kind, _, ident = path.partition("/")
        if kind == "proposals" and ident:
            found = await gateway.state.proposal(ident)
            if found is not None:
                return found
        if kind == "conversations" and convlog.is_conversation_id(ident):
            await gateway.may_follow(ident)
            entries = await gateway.state.after(ident, "0-0", gateway.state.kept)
            return {"conversation": ident,
                    "events": [{"id": i, "event": e, "data": d} for i, e, d in entries]}
        raise UnknownResource(f"no resource {SCHEME}://{path}", {"uri": f"{SCHEME}://{path}"})

    async def read_resource(ctx: ServerRequestContext[Any],
                            params: ReadResourceRequestParams) -> ReadResourceResult:
        uri = str(params.uri)
        if not uri.startswith(f"{SCHEME}://"):
            raise MCPError(INVALID_PARAMS, f"no resource {uri!r}: resources here are {SCHEME}://...",
                           {"uri": uri})
        try:
            with acting_as(_caller(ctx)):
                value = await read(uri.removeprefix(f"{SCHEME}://"))
        except (ApiError, StoreError) as exc:
            raise _protocol_error(_as_api_error(exc), uri) from exc
        return ReadResourceResult(contents=[TextResourceContents(uri=uri, mime_type=JSON,
                                                                 text=orjson.dumps(value).decode())])

    def input_schema(name: str) -> dict[str, Any] | None:
        if name in GENERIC:
            return GENERIC[name][1]
        found = current_tools().get(name)
        return dict(found[2].input_schema) if found is not None else None

    return Server("agentmesh-gateway", version=__version__,
                  instructions="The agents of an agentmesh mesh: ask them, message them, propose.",
                  get_tool_input_schema=input_schema, on_list_tools=list_tools, on_call_tool=call_tool,
                  on_list_resources=list_resources, on_list_resource_templates=list_templates,
                  on_read_resource=read_resource)


def install_gateway_mcp(app: FastAPI, gateway: Gateway, *, hosts: Iterable[str] = (),
                        origins: Iterable[str] = (), max_body_bytes: int = 131_072) -> McpEndpoint:
    endpoint = McpEndpoint(build_server(gateway), security_settings(hosts, origins), max_body_bytes,
                           stateless=True)
    return mount_mcp(app, endpoint)
