"""The Memory service's tools and resources over the Model Context Protocol (Streamable
HTTP at /mcp), spoken to by the official `mcp` SDK's client (streamable_http_client and
ClientSession) against the real service process on the session's real Valkey: tools with
their schemas, tool errors, resource templates and reads, Origin checks over plain httpx,
the absence of /mcp from OpenAPI, and SIGTERM with an MCP session open. No mocks.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest
from jsonschema import Draft202012Validator
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, CallToolResult, ListToolsResult, TextResourceContents

from agentmesh_cli.embedded import free_port, stop
from agentmesh_cli.services.memory import TOOL_SPECS
from agentmesh_cli.waiting import wait_until, wait_until_async
from tests.helpers.services import AUTH, Service, answering, mcp_tool_error, new_id, start_service

T = TypeVar("T")
SCENARIO_TIMEOUT_S = 15.0
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {},
    "clientInfo": {"name": "test", "version": "1"}}}
MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def service(valkey: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service(tmp_path_factory.mktemp("memory-mcp"), valkey)
    try:
        wait_until(lambda: answering(svc), 20, "the memory service")
        yield svc
    finally:
        stop(svc.proc)


@asynccontextmanager
async def mcp_session(url: str, headers: dict[str, str] = AUTH,
                      answers: list[tuple[str, int]] | None = None) -> AsyncIterator[ClientSession]:
    """An initialized session of the SDK's client, sending `headers` (the bearer token);
    `answers` gets (method, status) of every answer as its headers arrive."""
    async with create_mcp_http_client(headers=headers) as http:
        if answers is not None:
            async def note(response: Any) -> None:
                answers.append((response.request.method, response.status_code))

            http.event_hooks["response"].append(note)
        async with (streamable_http_client(url + "/mcp", http_client=http) as (read, write),
                    ClientSession(read, write) as session):
            await session.initialize()
            yield session


def run(url: str, scenario: Callable[[ClientSession], Awaitable[T]],
        headers: dict[str, str] = AUTH) -> T:
    """Run `scenario` in an initialized MCP session with the service at `url`."""

    async def main() -> T:
        with anyio.fail_after(SCENARIO_TIMEOUT_S):
            async with mcp_session(url, headers) as session:
                return await scenario(session)

    return asyncio.run(main())


def json_of(result: CallToolResult) -> Any:
    assert len(result.content) == 1 and result.content[0].type == "text"
    return json.loads(result.content[0].text)


# tools --------------------------------------------------------------------------------
def test_initialize_and_list_tools_with_their_schemas(service: Service) -> None:
    async def scenario(session: ClientSession) -> ListToolsResult:
        return await session.list_tools()

    listed = run(service.url, scenario)
    tools = {tool.name: tool for tool in listed.tools}
    assert set(tools) == {"store_input", "get_message", "update_message", "delete_message"}
    for name, tool in tools.items():
        description, schema = TOOL_SPECS[name]
        assert tool.description == description and tool.input_schema == schema
        Draft202012Validator.check_schema(tool.input_schema)
    store = tools["store_input"].input_schema
    assert store["required"] == ["user_id", "input_data"] and store["additionalProperties"] is False
    assert store["properties"]["user_id"]["pattern"] == "^[A-Za-z0-9_.:@-]{1,128}$"
    assert store["properties"]["input_data"]["required"] == ["content"]
    assert tools["update_message"].input_schema["properties"]["updates"]["minProperties"] == 1


def test_server_identity_and_capabilities(service: Service) -> None:
    async def scenario(session: ClientSession) -> Any:
        return await session.initialize()  # answered from the handshake already made

    init = run(service.url, scenario)
    assert init.server_info.name == "memory"
    assert init.capabilities.tools is not None and init.capabilities.resources is not None


def test_store_then_get_over_mcp_and_the_seed_protocol_agrees(service: Service) -> None:
    user, conversation = new_id("u"), new_id("c")

    async def scenario(session: ClientSession) -> tuple[CallToolResult, CallToolResult]:
        stored = await session.call_tool("store_input", {"user_id": user, "input_data": {
            "content": "hello over mcp", "conversation_id": conversation, "metadata": {"k": 1}}})
        item = stored.structured_content
        assert isinstance(item, dict)
        got = await session.call_tool("get_message", {"user_id": user, "message_id": item["message_id"]})
        return stored, got

    stored, got = run(service.url, scenario)
    assert not stored.is_error and not got.is_error
    item = stored.structured_content
    assert isinstance(item, dict)
    assert item["user_id"] == user and item["conversation_id"] == conversation
    assert item["content"] == "hello over mcp" and item["metadata"] == {"k": 1}
    assert json_of(stored) == item and got.structured_content == item and json_of(got) == item
    seed = httpx.post(f"{service.url}/tool/get_message", timeout=10.0, headers=AUTH,
                      json={"arguments": {"user_id": user, "message_id": item["message_id"]}})
    assert seed.json() == {"result": item}


def test_argument_errors_are_tool_error_results_naming_the_argument(service: Service) -> None:
    async def scenario(session: ClientSession) -> list[CallToolResult]:
        return [
            await session.call_tool("get_message", {"user_id": 42, "message_id": "m"}),
            await session.call_tool("store_input", {"user_id": "u"}),
            await session.call_tool("store_input", {"user_id": "u", "input_data": {"content": ""}}),
            await session.call_tool("update_message", {"user_id": "u", "message_id": "m", "updates": {}}),
            await session.call_tool("get_message", {"user_id": "a/b", "message_id": "m"}),
            await session.call_tool("get_message"),
        ]

    wrong_type, missing, empty, no_change, bad_id, no_arguments = run(service.url, scenario)
    cases = [(wrong_type, "user_id"), (missing, "input_data"), (empty, "input_data.content"),
             (no_change, "updates"), (bad_id, "user_id"), (no_arguments, "user_id")]
    for result, argument in cases:
        error = mcp_tool_error(result, "invalid_argument")
        assert error["details"] == {"argument": argument}
        assert f"argument {argument!r}" in result.content[0].text  # type: ignore[union-attr]


SCHEMA_TABLE: list[tuple[str, dict[str, Any]]] = [
    ("store_input", {"user_id": "u", "input_data": {"content": "x"}}),
    ("store_input", {"user_id": "u", "input_data": {"content": "x", "conversation_id": None,
                                                     "timestamp": None, "metadata": None}}),
    ("store_input", {"user_id": "u", "input_data": {"content": "x", "timestamp": 1.5}}),
    ("store_input", {"user_id": "u", "input_data": {"content": "x", "timestamp": "2024-05-01T10:00:00"}}),
    ("store_input", {"user_id": "u", "input_data": {"content": "x", "timestamp": True}}),
    ("store_input", {"user_id": "u", "input_data": {"content": "x", "metadata": []}}),
    ("store_input", {"user_id": "u", "input_data": {"content": "x", "conversation_id": ""}}),
    ("store_input", {"user_id": "u", "input_data": {"content": "x", "extra": 1}}),
    ("store_input", {"user_id": "u" * 129, "input_data": {"content": "x"}}),
    ("store_input", {"user_id": "u", "input_data": {"content": "x"}, "more": 1}),
    ("store_input", {"user_id": "u", "input_data": "x"}),
    ("update_message", {"user_id": "u", "message_id": "m", "updates": {"metadata": None}}),
    ("update_message", {"user_id": "u", "message_id": "m", "updates": {"content": 3}}),
    ("update_message", {"user_id": "u", "message_id": "m", "updates": {"other": 3}}),
    ("delete_message", {"user_id": "u", "message_id": "a b"}),
    ("delete_message", {"user_id": "u@x.y:z", "message_id": "m-1_2.3"}),
]


def test_schemas_accept_exactly_what_the_tools_accept(service: Service) -> None:
    """A table of arguments: valid by the listed schema <=> not an invalid_argument answer."""

    async def scenario(session: ClientSession) -> tuple[ListToolsResult, list[CallToolResult]]:
        return (await session.list_tools(),
                [await session.call_tool(name, arguments) for name, arguments in SCHEMA_TABLE])

    listed, results = run(service.url, scenario)
    schemas = {tool.name: tool.input_schema for tool in listed.tools}
    for (name, arguments), result in zip(SCHEMA_TABLE, results, strict=True):
        valid = Draft202012Validator(schemas[name]).is_valid(arguments)
        rejected = result.is_error and result.structured_content["error"]["code"] == "invalid_argument"
        assert valid != rejected, (name, arguments, result)


def test_not_found_is_a_tool_error_and_an_unknown_tool_a_protocol_error(service: Service) -> None:
    async def scenario(session: ClientSession) -> tuple[CallToolResult, MCPError]:
        missing = await session.call_tool("delete_message", {"user_id": new_id("u"), "message_id": "nope"})
        with pytest.raises(MCPError) as raised:
            await session.call_tool("forget_everything", {})
        return missing, raised.value

    missing, unknown = run(service.url, scenario)
    assert mcp_tool_error(missing, "message_not_found")["details"]["message_id"] == "nope"
    assert unknown.code == INVALID_PARAMS and "forget_everything" in unknown.message
    assert unknown.data["code"] == "unknown_tool" and "store_input" in unknown.data["tools"]


def test_store_down_is_a_tool_error_503(tmp_path: Path) -> None:
    svc = start_service(tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    try:
        wait_until(lambda: answering(svc), 20, "the memory service without Redis")

        async def scenario(session: ClientSession) -> tuple[CallToolResult, MCPError]:
            result = await session.call_tool("store_input", {"user_id": "u", "input_data": {"content": "x"}})
            with pytest.raises(MCPError) as raised:
                await session.read_resource("memory://history/u")
            return result, raised.value

        result, read_error = run(svc.url, scenario)
        assert "redis" in mcp_tool_error(result, "store_unavailable")["details"]
        assert read_error.code == INTERNAL_ERROR and read_error.data["status"] == 503
        assert read_error.data["error"]["code"] == "store_unavailable"
    finally:
        stop(svc.proc)


# resources ----------------------------------------------------------------------------
def test_resource_templates_and_reads(service: Service) -> None:
    user, other = new_id("u:x@y"), new_id("u")

    async def scenario(session: ClientSession) -> Any:
        templates = await session.list_resource_templates()
        listed = await session.list_resources()
        items = []
        for content in ("first", "second"):
            stored = await session.call_tool("store_input", {"user_id": user, "input_data": {
                "content": content}})
            items.append(stored.structured_content)
        await session.call_tool("store_input", {"user_id": other, "input_data": {"content": "theirs"}})
        quoted = user.replace(":", "%3A").replace("@", "%40")  # as an RFC 6570 expansion writes it
        reads = [await session.read_resource(f"memory://history/{user}"),
                 await session.read_resource(f"memory://history/{quoted}/limit/1")]
        return templates, listed, items, reads

    templates, listed, items, reads = run(service.url, scenario)
    assert {(t.name, t.uri_template, t.mime_type) for t in templates.resource_templates} == {
        ("history", "memory://history/{user_id}", "application/json"),
        ("history_limited", "memory://history/{user_id}/limit/{n}", "application/json"),
        ("conversation", "memory://conversation/{conversation_id}", "application/json"),
        ("conversation_user", "memory://conversation/{conversation_id}/user/{user_id}",
         "application/json"),
    }
    assert all(t.description for t in templates.resource_templates)
    assert listed.resources == []
    full, limited = reads
    assert len(full.contents) == 1 and isinstance(full.contents[0], TextResourceContents)
    assert full.contents[0].mime_type == "application/json"
    assert full.contents[0].uri == f"memory://history/{user}"
    assert json.loads(full.contents[0].text) == {"items": items[::-1]}  # newest first
    assert isinstance(limited.contents[0], TextResourceContents)
    assert json.loads(limited.contents[0].text) == {"items": [items[1]]}
    seed = httpx.get(f"{service.url}/resource/history/{user}", timeout=10.0, headers=AUTH)
    assert seed.json() == json.loads(full.contents[0].text)


@pytest.mark.parametrize(("uri", "code"), [
    ("memory://nothing/here", "unknown_resource"),
    ("memory://history/u/limit/0", "invalid_argument"),
    ("memory://history/bad%20id", "invalid_argument"),
    ("cognition://history/u", None),
    ("not a uri", None),
])
def test_bad_resource_uris_are_protocol_errors(service: Service, uri: str, code: str | None) -> None:
    async def scenario(session: ClientSession) -> MCPError:
        with pytest.raises(MCPError) as raised:
            await session.read_resource(uri)
        return raised.value

    error = run(service.url, scenario)
    assert error.code == INVALID_PARAMS and error.data["uri"] == uri
    if code is not None:
        assert error.data["error"]["code"] == code


# HTTP: Origin, OpenAPI, shutdown ------------------------------------------------------
@pytest.mark.parametrize(("headers", "status"), [
    ({}, 200),
    ({"Origin": "http://localhost:5173"}, 200),
    ({"Origin": "http://127.0.0.1:8080"}, 200),
    ({"Origin": "http://[::1]:3000"}, 200),
    ({"Origin": "https://localhost"}, 200),
    ({"Origin": "http://evil.example"}, 403),
    ({"Origin": "http://localhost.evil.example"}, 403),
    ({"Origin": "null"}, 403),
    ({"Host": "evil.example:80"}, 421),
])
def test_origin_and_host_are_checked(service: Service, headers: dict[str, str], status: int) -> None:
    with httpx.Client(base_url=service.url, timeout=10.0, headers=AUTH) as http:
        response = http.post("/mcp", json=INITIALIZE, headers={**MCP_HEADERS, **headers})
        assert response.status_code == status, response.text
        session_id = response.headers.get("mcp-session-id")
        if status == 200:
            assert session_id and '"serverInfo"' in response.text
            ended = http.delete("/mcp", headers={**headers, "mcp-session-id": session_id})
            assert ended.status_code == 200, ended.text
        else:
            assert session_id is None


def test_mcp_is_not_in_openapi(service: Service) -> None:
    paths = httpx.get(f"{service.url}/openapi.json", timeout=10.0, headers=AUTH).json()["paths"]
    assert set(paths) == {"/tool/{name}", "/resource/{path}", "/health"}


def test_sigterm_with_an_open_mcp_session(valkey: str, tmp_path: Path) -> None:
    """The client holds its session (and its GET stream) open; SIGTERM still ends the
    process promptly and cleanly."""
    svc = start_service(tmp_path, valkey)
    try:
        wait_until(lambda: answering(svc), 20, "the memory service")

        async def main() -> float:
            answers: list[tuple[str, int]] = []
            with anyio.fail_after(SCENARIO_TIMEOUT_S):
                async with mcp_session(svc.url, answers=answers) as session:
                    await session.list_tools()
                    await wait_until_async(lambda: ("GET", 200) in answers, 10,
                                           "the client's GET stream to open", interval=0.01)
                    os.kill(svc.proc.pid, signal.SIGTERM)
                    began = time.monotonic()
                    await anyio.to_thread.run_sync(svc.proc.wait, 8)
                    return time.monotonic() - began

        took = asyncio.run(main())
        assert took < 3.0, f"the service took {took:.1f} s to stop"
        assert svc.proc.returncode in (0, -signal.SIGTERM)
        log = svc.log_text()
        assert "ERROR" not in log and "Traceback" not in log, log
    finally:
        stop(svc.proc)
