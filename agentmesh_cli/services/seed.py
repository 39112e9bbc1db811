"""The seed protocol's skeleton, shared by memory and cognition: the app with its error
handling, bearer-token check (services.auth), optional CORS and body limit,
`POST /tool/{name}` dispatching through the service's Catalogue, argument errors that name
the argument, and the OpenAPI without FastAPI's 422s.

Each service adds its own `GET /resource/{path}` and `GET /health` to the app this makes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, Field
from starlette.middleware.cors import CORSMiddleware

from agentmesh_cli.errors import BadRequest, InvalidBody, UnknownTool
from agentmesh_cli.services.auth import OPEN_PATHS, BearerAuthMiddleware, check_service_token
from agentmesh_cli.services.http import (
    BodyLimitMiddleware,
    ErrorBoundaryMiddleware,
    OrjsonResponse,
    error_responses,
    install_error_handlers,
    read_json,
)
from agentmesh_cli.services.protocol import Catalogue


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def bad_argument(argument: str, problem: str) -> BadRequest:
    """A 400 naming the argument: `argument 'limit' must be ...`, details {argument}."""
    return BadRequest(f"argument {argument!r} {problem}", {"argument": argument})


def tool_arguments(body: Any) -> dict[str, Any]:
    """The `arguments` object of a tool call body `{"arguments": {...}}`."""
    if not isinstance(body, dict) or set(body) != {"arguments"}:
        raise InvalidBody('the body must be a JSON object {"arguments": {...}}',
                          {"argument": "arguments"})
    arguments = body["arguments"]
    if not isinstance(arguments, dict):
        raise bad_argument("arguments", f"must be an object, not {json_type(arguments)}")
    return arguments


class ToolCall(BaseModel):
    arguments: dict[str, Any] = Field(description="The tool's arguments by name.")


def tool_call_body(examples: dict[str, Any] | None = None) -> dict[str, Any]:
    """OpenAPI `requestBody` of POST /tool/{name}, with named examples if given."""
    content: dict[str, Any] = {"schema": ToolCall.model_json_schema()}
    if examples:
        content["examples"] = examples
    return {"requestBody": {"required": True, "content": {"application/json": content}}}


def without_422(app: FastAPI) -> None:
    """FastAPI documents a 422 for every endpoint with parameters; ours answer 400. Also
    documents the bearer token that every endpoint but GET /health needs."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                if isinstance(operation, dict):
                    operation.get("responses", {}).pop("422", None)
                    if path in OPEN_PATHS:
                        operation["security"] = []
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "The mesh's service token, or a user token "
                                      "(agentmesh token --user NAME)."}}
        schema["security"] = [{"bearer": []}]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def http_url(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


# what a browser page from an allowed origin may send and read (the MCP transport's headers too)
CORS_HEADERS = ["Authorization", "Content-Type", "Accept", "Last-Event-ID",
                "Mcp-Session-Id", "Mcp-Protocol-Version"]
CORS_EXPOSED = ["Mcp-Session-Id", "WWW-Authenticate"]


def service_app(catalogue: Catalogue, *, title: str, description: str,
                close: Callable[[], Awaitable[None]], max_body_bytes: int,
                tool_body: dict[str, Any], tool_result: type[BaseModel],
                tool_errors: tuple[int, ...], service_token: str,
                cors_origins: Sequence[str] = ()) -> FastAPI:
    """The app of a service: `close` runs at shutdown, `app.state.catalogue` is set, errors
    answer in the services' JSON shape, every request but GET /health needs a bearer
    token (services.auth; 401), bodies over `max_body_bytes` get 413, and
    POST /tool/{name} runs the catalogue's tool (404 for an unknown one).

    CORS is off unless `cors_origins` lists origins: then those exactly (no wildcard, no
    credentials mode: the token travels in a header, not a cookie). The token check comes
    after CORS, so a browser's preflight (which never carries a token) is answered."""
    check_service_token(service_token, catalogue.service)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await close()

    app = FastAPI(title=title, version="1", lifespan=lifespan, description=description)
    app.state.catalogue = catalogue
    install_error_handlers(app)
    # each add_middleware wraps the ones before: the order of a request is the reverse
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(BearerAuthMiddleware, token=service_token)  # 401 before a body is read
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                           allow_headers=CORS_HEADERS, expose_headers=CORS_EXPOSED)
    app.add_middleware(ErrorBoundaryMiddleware)  # added last: outermost

    @app.post("/tool/{name}", summary="Call a tool", openapi_extra=tool_body,
              description="Tools: " + ", ".join(catalogue.tools) + ".",
              responses={200: {"model": tool_result, "description": "The tool's result."},
                         **error_responses(*tool_errors)})
    async def call_tool(name: str, request: Request) -> Response:
        tool = catalogue.tool(name)
        if tool is None:
            raise UnknownTool(f"no tool {name!r}; tools: {', '.join(catalogue.tools)}",
                              {"tool": name, "tools": list(catalogue.tools)})
        arguments = tool_arguments(await read_json(request))
        return OrjsonResponse({"result": await tool.handler(arguments)})

    return app
