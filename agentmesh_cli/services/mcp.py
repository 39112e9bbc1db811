"""A service's Catalogue served over the Model Context Protocol: Streamable HTTP at `/mcp`,
with the official `mcp` SDK (2.x lowlevel Server and its StreamableHTTPSessionManager).

    tools/list, tools/call                 every ToolSpec; an ApiError is a tool error result
                                           (isError, the seed error body as structured content)
    resources/templates/list               `<service>://<template>` for every ResourceSpec
    resources/read                         `<service>://<path>?<query>`: the JSON of one read
    resources/list                         empty (every resource is templated)

Only loopback Origins (and the hosts and origins a caller adds: services.cors_origins) get
in, through the SDK's own DNS-rebinding protection: a foreign Origin answers 403, a foreign
Host 421. The app's bearer-token check (services.auth) runs before, so /mcp without a
token is a 401; each tool call and resource read runs as the caller of its own HTTP
request (`_caller`), so a user token reaches only its user's data, whichever session
carries it.
`install_mcp` mounts it on a FastAPI app, hidden from OpenAPI, and runs the SDK's session
manager inside the app's own lifespan.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson
from fastapi import FastAPI
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    CallToolRequestParams,
    CallToolResult,
    ListResourcesResult,
    ListResourceTemplatesResult,
    ListToolsResult,
    PaginatedRequestParams,
    ReadResourceRequestParams,
    ReadResourceResult,
    ResourceTemplate,
    TextContent,
    TextResourceContents,
    Tool,
)
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from agentmesh_cli import __version__
from agentmesh_cli.errors import ApiError, StoreError, Unavailable
from agentmesh_cli.services.auth import Caller, acting_as, caller_of_scope
from agentmesh_cli.services.http import error_response
from agentmesh_cli.services.protocol import Catalogue

MCP_PATH = "/mcp"
JSON = "application/json"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
WILDCARD_BINDS = ("", "0.0.0.0", "::")


# errors -------------------------------------------------------------------------------
def _as_api_error(exc: ApiError | StoreError) -> ApiError:
    """What the seed protocol answers for `exc` (see http.install_error_handlers)."""
    if isinstance(exc, StoreError):
        return Unavailable(str(exc), {"redis": str(exc.__cause__ or exc)})
    return exc


def _error_body(error: ApiError) -> dict[str, Any]:
    return {"error": {"code": error.code, "message": error.message, "details": error.details}}


def _tool_error(error: ApiError) -> CallToolResult:
    return CallToolResult(content=[TextContent(text=f"{error.code}: {error.message}")],
                          structured_content=_error_body(error), is_error=True)


def _protocol_error(error: ApiError, uri: str) -> MCPError:
    """A resource read that failed: the caller's fault (4xx) is INVALID_PARAMS, as the SDK's
    own MCPServer answers an unknown resource; ours (5xx) is INTERNAL_ERROR."""
    code = INVALID_PARAMS if error.status < 500 else INTERNAL_ERROR
    return MCPError(code, error.message, {"uri": uri, "status": error.status, **_error_body(error)})


# the MCP server -----------------------------------------------------------------------
def _caller(ctx: ServerRequestContext[Any]) -> Caller:
    """Who sent the HTTP request that carried this message. The handlers run in the
    session's task, not the request's, so the middleware's context variable is not theirs;
    the request's ASGI scope is."""
    return caller_of_scope(getattr(ctx.request, "scope", None))


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def resource_uri(catalogue: Catalogue, path: str) -> str:
    return f"{catalogue.service}://{path}"


def resource_path(catalogue: Catalogue, uri: str) -> tuple[str, dict[str, str]]:
    """`<service>://<path>?<query>` -> (decoded path, query parameters), the same values the
    seed endpoint GET /resource/<path>?<query> hands to read_resource."""
    parts = urlsplit(uri)
    if parts.scheme != catalogue.service or not parts.netloc:
        raise MCPError(INVALID_PARAMS, f"no resource {uri!r}: resources here are "
                       f"{resource_uri(catalogue, '...')}", {"uri": uri})
    return unquote(parts.netloc + parts.path), dict(parse_qsl(parts.query, keep_blank_values=True))


def build_server(catalogue: Catalogue) -> Server[Any]:
    """An MCP lowlevel Server whose handlers dispatch through `catalogue`."""
    tools = [Tool(name=spec.name, description=spec.description, input_schema=spec.input_schema)
             for spec in catalogue.tools.values()]
    templates = [ResourceTemplate(name=spec.name, description=spec.description, mime_type=JSON,
                                  uri_template=resource_uri(catalogue, spec.template))
                 for spec in catalogue.resources]

    async def list_tools(ctx: ServerRequestContext[Any],
                         params: PaginatedRequestParams | None) -> ListToolsResult:
        return ListToolsResult(tools=tools)

    async def call_tool(ctx: ServerRequestContext[Any], params: CallToolRequestParams) -> CallToolResult:
        spec = catalogue.tool(params.name)
        if spec is None:
            # a tool that does not exist is a protocol error (the spec's "unknown tool")
            raise MCPError(INVALID_PARAMS, f"no tool {params.name!r}; tools: {', '.join(catalogue.tools)}",
                           {"code": "unknown_tool", "tool": params.name, "tools": list(catalogue.tools)})
        try:
            with acting_as(_caller(ctx)):
                result = await spec.handler(params.arguments or {})
        except (ApiError, StoreError) as exc:
            return _tool_error(_as_api_error(exc))
        # structured content must be an object before protocol 2026-07-28
        structured = result if isinstance(result, dict) else {"result": result}
        return CallToolResult(content=[TextContent(text=_json_text(result))], structured_content=structured)

    async def list_resources(ctx: ServerRequestContext[Any],
                             params: PaginatedRequestParams | None) -> ListResourcesResult:
        return ListResourcesResult(resources=[])

    async def list_templates(ctx: ServerRequestContext[Any],
                             params: PaginatedRequestParams | None) -> ListResourceTemplatesResult:
        return ListResourceTemplatesResult(resource_templates=templates)

    async def read_resource(ctx: ServerRequestContext[Any],
                            params: ReadResourceRequestParams) -> ReadResourceResult:
        path, query = resource_path(catalogue, params.uri)
        try:
            with acting_as(_caller(ctx)):
                value = await catalogue.read_resource(path, query)
        except (ApiError, StoreError) as exc:
            raise _protocol_error(_as_api_error(exc), params.uri) from exc
        return ReadResourceResult(contents=[
            TextResourceContents(uri=params.uri, mime_type=JSON, text=_json_text(value))])

    def input_schema(name: str) -> dict[str, Any] | None:
        spec = catalogue.tool(name)
        return spec.input_schema if spec is not None else None

    return Server(catalogue.service, version=__version__, instructions=catalogue.instructions or None,
                  get_tool_input_schema=input_schema,
                  on_list_tools=list_tools, on_call_tool=call_tool,
                  # a resources/list handler is what makes the SDK announce the capability
                  on_list_resources=list_resources, on_list_resource_templates=list_templates,
                  on_read_resource=read_resource)


# transport security -------------------------------------------------------------------
def served_hosts(bind_host: str) -> list[str]:
    """The Host names, besides loopback, that clients use for a service bound to `bind_host`:
    the address itself, or for a wildcard bind this machine's names."""
    if bind_host in WILDCARD_BINDS:
        return sorted({socket.gethostname(), socket.getfqdn()})
    if bind_host in ("127.0.0.1", "localhost", "::1"):
        return []
    return [f"[{bind_host}]" if ":" in bind_host else bind_host]


def security_settings(hosts: Iterable[str] = (), origins: Iterable[str] = ()) -> TransportSecuritySettings:
    """The SDK's DNS-rebinding protection: loopback Hosts and Origins (any port) plus `hosts`
    (names, any port) and `origins` (exact, or ending in `:*` for any port). A request
    without Origin passes, as the MCP spec allows."""
    names = [*LOOPBACK_HOSTS, *hosts]
    allowed_origins = [f"{scheme}://{name}{port}" for name in LOOPBACK_HOSTS
                       for scheme in ("http", "https") for port in ("", ":*")]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[host for name in names for host in (name, f"{name}:*")],
        allowed_origins=[*allowed_origins, *origins])


# mounting -----------------------------------------------------------------------------
class McpEndpoint:
    """The ASGI app at /mcp. Each run of the app's lifespan gets a fresh session manager
    (the SDK's can run only once); outside one, requests answer 503."""

    def __init__(self, server: Server[Any], security: TransportSecuritySettings,
                 max_body_bytes: int, stateless: bool = False) -> None:
        """`stateless`: no session outlives its request (the gateway: any of several
        processes may take the next request)."""
        self.server = server
        self.security = security
        self.max_body_bytes = max_body_bytes
        self.stateless = stateless
        self.manager: StreamableHTTPSessionManager | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        manager = StreamableHTTPSessionManager(app=self.server, security_settings=self.security,
                                               max_request_body_size=self.max_body_bytes,
                                               stateless=self.stateless, json_response=self.stateless)
        async with manager.run():
            self.manager = manager
            try:
                yield
            finally:
                self.manager = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        manager = self.manager
        if manager is None:
            response = error_response(503, "mcp_not_running", "the MCP endpoint is not running")
            await response(scope, receive, send)
            return
        started = finished = False

        async def tracking_send(message: Message) -> None:
            nonlocal started, finished
            started = started or message["type"] == "http.response.start"
            finished = finished or (message["type"] == "http.response.body"
                                    and not message.get("more_body", False))
            await send(message)

        await manager.handle_request(scope, receive, tracking_send)
        if started and not finished:
            # at server shutdown sse-starlette cuts the SDK's SSE streams (they have no
            # shutdown event) without their last chunk; end the answer properly
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def install_mcp(app: FastAPI, catalogue: Catalogue, *, hosts: Iterable[str] = (),
                origins: Iterable[str] = (), max_body_bytes: int = 1_048_576,
                path: str = MCP_PATH) -> McpEndpoint:
    """Serve `catalogue` over MCP at `path` of `app`: a route left out of OpenAPI, and the
    SDK's session manager started and stopped inside the app's existing lifespan (after its
    startup, and stopped before its shutdown, so no tool call outlives what it uses)."""
    endpoint = McpEndpoint(build_server(catalogue), security_settings(hosts, origins), max_body_bytes)
    return mount_mcp(app, endpoint, path)


def mount_mcp(app: FastAPI, endpoint: McpEndpoint, path: str = MCP_PATH) -> McpEndpoint:
    """Mount `endpoint` at `path`, run inside the app's lifespan (see install_mcp)."""
    sdk_log = logging.getLogger("mcp")
    if sdk_log.level == logging.NOTSET:
        # the SDK logs INFO per session and at start; like uvicorn's, the service's log skips them
        sdk_log.setLevel(logging.WARNING)
    # a plain Starlette route to an ASGI app: every method, and no OpenAPI entry
    app.router.routes.append(Route(path, endpoint=endpoint, include_in_schema=False))
    outer = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(instance: Any) -> AsyncIterator[Any]:
        async with outer(instance) as state, endpoint.running():
            yield state

    app.router.lifespan_context = lifespan
    return endpoint
