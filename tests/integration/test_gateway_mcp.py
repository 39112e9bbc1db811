"""The mesh as MCP tools and resources at the gateway's /mcp, spoken to by the official
`mcp` SDK's client (Streamable HTTP, bearer token) against a real `agentmesh gateway` and
a real Inventory agent on the session broker and Valkey: the generic tools (ask, send,
propose) and their errors, the resources, who may read a conversation, and the Origin
and token checks over plain httpx. No mocks.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import httpx
import pytest
from jsonschema import Draft202012Validator
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult, TextResourceContents

from agentmesh_cli.waiting import wait_until
from tests.helpers.gateway import RunningGateway, running_gateway, write_gateway_mesh
from tests.helpers.services import mcp_tool_error

T = TypeVar("T")
SCENARIO_TIMEOUT_S = 30.0
REPLY_FIELDS = {"id", "type", "from", "payload", "conversation", "in_reply_to", "round_trip_ms"}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}}
MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def gateway(broker: str, valkey: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("gateway-mcp")
    mesh = write_gateway_mesh(folder, broker, valkey, [{"name": "Inventory", "role": "inventory"}])
    with running_gateway(mesh, folder) as running:
        yield running


@asynccontextmanager
async def mcp_session(url: str, headers: dict[str, str]) -> AsyncIterator[ClientSession]:
    async with (create_mcp_http_client(headers=headers) as http,
                streamable_http_client(url + "/mcp", http_client=http) as (read, write),
                ClientSession(read, write) as session):
        await session.initialize()
        yield session


def run(gateway: RunningGateway, scenario: Callable[[ClientSession], Awaitable[T]],
        who: str | None = None) -> T:
    """Run `scenario` in an initialized MCP session with the gateway, as `who` (None: the mesh)."""
    async def main() -> T:
        with anyio.fail_after(SCENARIO_TIMEOUT_S):
            async with mcp_session(gateway.url, gateway.headers(who)) as session:
                return await scenario(session)

    return asyncio.run(main())


def read_json(contents: Any) -> Any:
    assert len(contents.contents) == 1 and isinstance(contents.contents[0], TextResourceContents)
    assert contents.contents[0].mime_type == "application/json"
    return json.loads(contents.contents[0].text)


# tools --------------------------------------------------------------------------------
def test_the_generic_tools_are_listed_with_valid_schemas(gateway: RunningGateway) -> None:
    async def scenario(session: ClientSession) -> Any:
        return await session.list_tools()

    tools = {tool.name: tool for tool in run(gateway, scenario).tools}
    assert {"ask", "send", "propose"} <= set(tools)
    for tool in tools.values():
        Draft202012Validator.check_schema(tool.input_schema)
        assert tool.description
    assert tools["ask"].input_schema["required"] == ["agent", "type"]
    agents = httpx.get(gateway.url + "/agents", headers=gateway.headers(), timeout=10).json()["agents"]
    declared = sum(len(agent["accepts"]) for agent in agents)  # one tool per declared (agent, type)
    assert len(tools) == 3 + declared


def test_ask_answers_with_the_reply_as_structured_content(gateway: RunningGateway) -> None:
    async def scenario(session: ClientSession) -> CallToolResult:
        return await session.call_tool("ask", {"agent": "Inventory", "type": "check_stock",
                                               "payload": {"order_id": "o-mcp", "items": {}}})

    result = run(gateway, scenario)
    assert not result.is_error, result
    reply = result.structured_content
    assert isinstance(reply, dict) and set(reply) == REPLY_FIELDS
    assert reply["type"] == "stock_result" and reply["from"] == "Inventory"
    assert reply["payload"] == {"order_id": "o-mcp", "approved": True}
    assert result.content[0].type == "text" and json.loads(result.content[0].text) == reply


def test_ask_errors_are_tool_errors_in_the_services_shape(gateway: RunningGateway) -> None:
    async def scenario(session: ClientSession) -> list[CallToolResult]:
        return [await session.call_tool("ask", {"agent": "Nobody", "type": "t"}),
                await session.call_tool("ask", {"agent": "Inventory", "type": "never_answered",
                                                "timeout": 0.5}),
                await session.call_tool("ask", {"agent": "Inventory", "type": "bad type!"})]

    unknown, timeout, bad = run(gateway, scenario)
    assert mcp_tool_error(unknown, "unknown_agent")["details"]["agent"] == "Nobody"
    assert mcp_tool_error(timeout, "ask_timeout")["details"]["timeout"] == 0.5
    assert mcp_tool_error(bad, "invalid_argument")["details"]["argument"] == "type"


def test_an_unknown_tool_is_a_protocol_error(gateway: RunningGateway) -> None:
    async def scenario(session: ClientSession) -> MCPError:
        with pytest.raises(MCPError) as raised:
            await session.call_tool("forget_everything", {})
        return raised.value

    error = run(gateway, scenario)
    assert error.code == INVALID_PARAMS and error.data["code"] == "unknown_tool"
    assert {"ask", "send", "propose"} <= set(error.data["tools"])


def test_send_and_propose(gateway: RunningGateway) -> None:
    async def scenario(session: ClientSession) -> list[CallToolResult]:
        return [await session.call_tool("send", {"agent": "Inventory", "type": "note", "payload": {"n": 1}}),
                await session.call_tool("propose", {"type": "decision", "content": {"what": "restock"}})]

    sent, proposed = run(gateway, scenario)
    assert not sent.is_error and not proposed.is_error, (sent, proposed)
    assert isinstance(sent.structured_content, dict)
    assert set(sent.structured_content) == {"id", "conversation"}
    assert isinstance(proposed.structured_content, dict)
    assert set(proposed.structured_content) == {"proposal_id"}
    assert isinstance(proposed.structured_content["proposal_id"], str)


def test_a_declared_type_is_a_tool_with_its_schema(gateway: RunningGateway) -> None:
    """InventoryRole.accepts declares check_stock (a pydantic model): the tool
    Inventory__check_stock has its JSON schema, asks Inventory, and refuses what the schema
    does not allow before anything is sent."""
    agents = httpx.get(gateway.url + "/agents", headers=gateway.headers(), timeout=10).json()["agents"]
    schema = next(a for a in agents if a["name"] == "Inventory")["accepts"]["check_stock"]

    async def scenario(session: ClientSession) -> tuple[Any, CallToolResult, CallToolResult]:
        return (await session.list_tools(),
                await session.call_tool("Inventory__check_stock", {"order_id": "o-tool", "items": {}}),
                await session.call_tool("Inventory__check_stock", {"items": {"cable": "many"}}))

    listed, asked, refused = run(gateway, scenario)
    tool = next(t for t in listed.tools if t.name == "Inventory__check_stock")
    assert tool.input_schema == schema and "Inventory" in (tool.description or "")
    assert not asked.is_error, asked
    assert isinstance(asked.structured_content, dict)
    assert asked.structured_content["type"] == "stock_result"
    assert asked.structured_content["payload"] == {"order_id": "o-tool", "approved": True}
    assert mcp_tool_error(refused, "invalid_argument")["details"]["argument"] == "payload.items.cable"


# resources ----------------------------------------------------------------------------
def test_agents_and_topology_resources(gateway: RunningGateway) -> None:
    snapshot = {"ts": 1, "nodes": ["Inventory"], "edges": [], "marker": uuid.uuid4().hex}
    gateway.store.save_snapshot(snapshot)

    async def scenario(session: ClientSession) -> Any:
        listed = await session.list_resources()
        templates = await session.list_resource_templates()
        return (listed, templates, await session.read_resource("mesh://agents"),
                await session.read_resource("mesh://topology"))

    listed, templates, agents, topology = run(gateway, scenario)
    assert {str(r.uri) for r in listed.resources} == {"mesh://agents", "mesh://topology", "mesh://proposals"}
    assert {t.uri_template for t in templates.resource_templates} == {
        "mesh://proposals/{id}", "mesh://conversations/{id}"}
    over_http = httpx.get(gateway.url + "/agents", headers=gateway.headers(), timeout=10).json()
    assert [a["name"] for a in read_json(agents)["agents"]] == [a["name"] for a in over_http["agents"]]
    assert read_json(topology) == snapshot


def test_a_conversation_resource_is_its_owners_only(gateway: RunningGateway) -> None:
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"

    async def asks(session: ClientSession) -> CallToolResult:
        return await session.call_tool("ask", {"agent": "Inventory", "type": "check_stock", "payload": {}})

    asked = run(gateway, asks, alice)
    assert isinstance(asked.structured_content, dict), asked
    conversation = asked.structured_content["conversation"]
    uri = f"mesh://conversations/{conversation}"

    async def reads(session: ClientSession) -> Any:
        return await session.read_resource(uri)

    async def refused(session: ClientSession) -> MCPError:
        with pytest.raises(MCPError) as raised:
            await session.read_resource(uri)
        return raised.value

    events = read_json(run(gateway, reads, alice))
    assert events["conversation"] == conversation
    first = events["events"][0]
    assert first["event"] == "message" and first["data"]["from"] == "gateway"
    assert first["data"]["user"] == alice  # the user comes from the token
    error = run(gateway, refused, bob)
    assert error.code == INVALID_PARAMS and error.data["status"] == 404
    assert error.data["error"]["code"] == "conversation_not_found"


# HTTP: tokens and Origin --------------------------------------------------------------
@pytest.mark.parametrize(("headers", "status"), [
    ({}, 200),
    ({"Origin": "http://localhost:5173"}, 200),
    ({"Origin": "http://127.0.0.1:8080"}, 200),
    ({"Origin": "http://evil.example"}, 403),
    ({"Origin": "null"}, 403),
])
def test_origin_is_checked(gateway: RunningGateway, headers: dict[str, str], status: int) -> None:
    answer = httpx.post(gateway.url + "/mcp", json=INITIALIZE, timeout=10,
                        headers={**gateway.headers(), **MCP_HEADERS, **headers})
    assert answer.status_code == status, answer.text
    if status == 200:
        assert '"serverInfo"' in answer.text


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token-wrong-token"])
def test_mcp_without_a_valid_token_is_a_401(gateway: RunningGateway, authorization: str | None) -> None:
    headers = {**MCP_HEADERS, **({"Authorization": authorization} if authorization else {})}
    answer = httpx.post(gateway.url + "/mcp", json=INITIALIZE, headers=headers, timeout=10)
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"]["code"] == "unauthorized"


def test_mcp_is_not_in_openapi(gateway: RunningGateway) -> None:
    paths = httpx.get(gateway.url + "/openapi.json", timeout=10).json()["paths"]
    assert not any(path.startswith("/mcp") for path in paths)


def test_a_replica_group_is_one_agent_and_one_tool_per_type(
        broker: str, valkey: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """GET /agents lists Support (replicas: 2) once, with its replicas and the accepts they
    publish; MCP has Support__ticket, and no tool per replica."""
    folder = tmp_path_factory.mktemp("gateway-group")
    mesh = write_gateway_mesh(folder, broker, valkey, [{"name": "Support", "role": "support", "replicas": 2}])
    with running_gateway(mesh, folder) as gateway:
        def listed() -> list[dict[str, Any]] | None:
            agents: list[dict[str, Any]] = httpx.get(gateway.url + "/agents", headers=gateway.headers(),
                                                     timeout=10).json()["agents"]
            # the gateway reads the registry again every second
            return agents if agents and agents[0].get("accepts") and all(
                r["state"] == "up" for r in agents[0]["replicas"]) else None
        agents = wait_until(listed, 30, "both replicas up in GET /agents")

        async def scenario(session: ClientSession) -> tuple[list[str], Any]:
            tools = await session.list_tools()
            return [t.name for t in tools.tools], read_json(await session.read_resource("mesh://agents"))
        tools, resource = run(gateway, scenario)
    assert [a["name"] for a in agents] == ["Support"]
    assert [(r["name"], r["concurrency"]) for r in agents[0]["replicas"]] == [
        ("Support-1", 1), ("Support-2", 1)]
    assert set(agents[0]["accepts"]) == {"ticket"} and agents[0]["concurrency"] == 2
    assert sorted(tools) == ["Support__ticket", "ask", "propose", "send"]
    assert [a["name"] for a in resource["agents"]] == ["Support"]
