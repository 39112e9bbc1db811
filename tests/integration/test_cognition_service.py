"""The Cognition service: its pure text cores by exact tables, then the real thing: a Memory
process and a Cognition process (`python -m agentmesh_cli memory|cognition`) on free ports
over the session's Valkey, spoken to over real HTTP. Tools, resources as JSON and SSE, the
participation refusal, every error status, and memory killed by pid and started again. No
mocks; every process started here is stopped by pid.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml

from agentmesh_cli.embedded import free_port, stop
from agentmesh_cli.services.cognition import create_app
from agentmesh_cli.services.text import (
    sentiment,
    summary,
    topics,
)
from agentmesh_cli.waiting import wait_until
from tests.helpers.services import AUTH, TOKEN, Proc, answering, call, error_of, new_id, result, serving

SSE = {"Accept": "text/event-stream"}
LIMIT = 1_048_576  # create_app's default max_body_bytes, what the CLI serves
SERVICE_ENV = ("MEMORY_SERVICE_URL", "MEMORY_SERVICE_PORT", "COGNITION_SERVICE_URL",
               "COGNITION_SERVICE_PORT")


# real processes ---------------------------------------------------------------------------
def write_mesh(folder: Path, redis_url: str, memory_port: int, cognition_port: int,
               **services: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"mesh": f"cog{uuid.uuid4().hex[:8]}", "redis": {"url": redis_url}, "agents": [],
              "services": {"memory": {"port": memory_port}, "cognition": {"port": cognition_port},
                           **services}}
    path = folder / "mesh.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def spawn(command: str, config: Path, port: int, *args: str, env: dict[str, str] | None = None) -> Proc:
    clean = {key: value for key, value in os.environ.items() if key not in SERVICE_ENV}
    log = config.parent / f"{command}-{uuid.uuid4().hex[:6]}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "agentmesh_cli", command, "--config", str(config),
                                 *args], stdout=out, stderr=subprocess.STDOUT,
                                env={**clean, "AGENTMESH_SERVICE_TOKEN": TOKEN, **(env or {})})
    return Proc(proc, f"http://127.0.0.1:{port}", log)


@dataclass
class Pair:
    memory: Proc
    cognition: Proc
    config: Path
    memory_port: int


@pytest.fixture(scope="module")
def pair(valkey: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """memory by mesh.yaml's port; cognition by $COGNITION_SERVICE_PORT over mesh.yaml's."""
    memory_port, cognition_port = free_port(), free_port()
    config = write_mesh(tmp_path_factory.mktemp("cognition"), valkey, memory_port, free_port())
    memory = spawn("memory", config, memory_port)
    try:
        cognition = spawn("cognition", config, cognition_port,
                          env={"COGNITION_SERVICE_PORT": str(cognition_port)})
        try:
            wait_until(lambda: answering(memory), 30, "the memory service")
            wait_until(lambda: answering(cognition), 30, "the cognition service")
            yield Pair(memory, cognition, config, memory_port)
        finally:
            stop(cognition.proc)
    finally:
        stop(memory.proc)


@pytest.fixture(scope="module")
def mem(pair: Pair) -> Iterator[httpx.Client]:
    with httpx.Client(headers=AUTH, base_url=pair.memory.url, timeout=10.0) as http:
        yield http


@pytest.fixture(scope="module")
def cog(pair: Pair) -> Iterator[httpx.Client]:
    with httpx.Client(headers=AUTH, base_url=pair.cognition.url, timeout=20.0) as http:
        yield http


def read_sse(client: httpx.Client, path: str, params: dict[str, str] | None = None) -> list[tuple[str, Any]]:
    """(event, JSON data) of a finite stream; comments left out."""
    events: list[tuple[str, Any]] = []
    data: list[str]
    event, data = "message", []
    with client.stream("GET", f"/resource/{path}", params=params, headers=SSE) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line == "":
                if data:
                    events.append((event, json.loads("\n".join(data))))
                event, data = "message", []
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
    return events


@pytest.fixture(scope="module")
def world(mem: httpx.Client) -> dict[str, Any]:
    """u's history (one hour apart, newest first) with v in conversation c1; c2 is v's alone."""
    u, v, c1, c2 = new_id("u"), new_id("v"), new_id("c1"), new_id("c2")
    now = time.time()

    def store(user: str, content: str, hours_ago: float, conversation: str | None) -> dict[str, Any]:
        data: dict[str, Any] = {"content": content, "timestamp": now - hours_ago * 3600}
        if conversation:
            data["conversation_id"] = conversation
        stored: dict[str, Any] = result(mem, "store_input", user_id=user, input_data=data)
        return stored

    m = {
        "old_shoes": store(u, "My red shoes arrived broken, I dislike this", 5, c1),
        "v_reply": store(v, "Sorry about the broken shoes, a refund is on its way", 4, c1),
        "hat": store(u, "I ordered a blue hat", 3, None),
        "thanks": store(u, "Thanks, the refund for the shoes was great", 2, c1),
        "weather": store(u, "Sunny weather today", 1, None),
        "v_alone": store(v, "Nobody else is here", 1, c2),
    }
    return {"u": u, "v": v, "c1": c1, "c2": c2, "m": m}


def ids(entries: list[dict[str, Any]]) -> list[str]:
    return [entry["item"]["message_id"] for entry in entries]


def test_health_and_one_info_line(pair: Pair, cog: httpx.Client) -> None:
    response = cog.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "healthy", "clients": {"memory": {"breaker": "closed"}}}
    info = [line for line in pair.cognition.log_text().splitlines() if " INFO " in line]
    assert len(info) == 1, pair.cognition.log_text()
    assert f"serving on {pair.cognition.url}" in info[0] and pair.memory.url in info[0]


def test_get_context(cog: httpx.Client, world: dict[str, Any]) -> None:
    u, m = world["u"], world["m"]
    newest = [m[k]["message_id"] for k in ("weather", "thanks", "hat", "old_shoes")]
    plain = result(cog, "get_context", user_id=u)
    assert plain["query"] is None and plain["terms"] == [] and plain["recency_weight"] == 0.5
    assert ids(plain["items"]) == newest
    assert all(e["relevance"] is None and e["score"] == e["recency"] for e in plain["items"])
    assert plain["items"][1]["item"] == m["thanks"]

    relevant = result(cog, "get_context", user_id=u, query="the broken shoes", recency_weight=0)
    assert relevant["terms"] == ["broken", "shoes"]
    assert ids(relevant["items"]) == [m["old_shoes"]["message_id"], m["thanks"]["message_id"]]
    assert relevant["items"][0]["relevance"] == 1.0 and 0 < relevant["items"][1]["relevance"] < 1

    blended = result(cog, "get_context", user_id=u, query="broken shoes", recency_weight=0.5, limit=3)
    entries = blended["items"]
    assert len(entries) == 3
    for entry in entries:
        assert entry["score"] == pytest.approx(0.5 * entry["relevance"] + 0.5 * entry["recency"], abs=2e-6)
    assert [e["score"] for e in entries] == sorted((e["score"] for e in entries), reverse=True)
    recent_only = result(cog, "get_context", user_id=u, query="broken shoes", recency_weight=1)
    assert ids(recent_only["items"]) == newest
    assert result(cog, "get_context", user_id=new_id("nobody"), query="x")["items"] == []


def test_search_history(cog: httpx.Client, world: dict[str, Any]) -> None:
    u, v, c1, m = world["u"], world["v"], world["c1"], world["m"]
    found = result(cog, "search_history", user_id=u, query="refund shoes")
    assert found["terms"] == ["refund", "shoes"]
    assert ids(found["items"]) == [m["thanks"]["message_id"], m["old_shoes"]["message_id"]]
    assert found["items"][0]["score"] == 1.0
    # the whole conversation, other participants included (u wrote in it), newest first
    assert found["conversations"] == [{
        "conversation_id": c1,
        "matched": [m["thanks"]["message_id"], m["old_shoes"]["message_id"]],
        "items": [m["thanks"], m["v_reply"], m["old_shoes"]],
    }]
    bare = result(cog, "search_history", user_id=u, query="refund shoes", include_conversations=False,
                  limit=1)
    assert ids(bare["items"]) == [m["thanks"]["message_id"]] and bare["conversations"] == []
    hat = result(cog, "search_history", user_id=u, query="hat")
    assert ids(hat["items"]) == [m["hat"]["message_id"]] and hat["conversations"] == []
    # only the asker's own messages are searched
    assert result(cog, "search_history", user_id=v, query="hat")["items"] == []


def test_analyze_conversation(cog: httpx.Client, world: dict[str, Any]) -> None:
    u, v, c1, m = world["u"], world["v"], world["c1"], world["m"]
    conversation = [m["thanks"], m["v_reply"], m["old_shoes"]]
    expected = {"summary": summary(conversation), "topics": topics(conversation),
                "sentiment": sentiment(conversation)}
    for kind, analysis in expected.items():
        answer = result(cog, "analyze_conversation", user_id=u, conversation_id=c1, analysis_type=kind)
        assert answer == {"conversation_id": c1, "analysis_type": kind, **analysis}
    default = result(cog, "analyze_conversation", user_id=v, conversation_id=c1)
    assert default["analysis_type"] == "summary" and default["message_count"] == 3
    assert {p["user_id"] for p in default["participants"]} == {u, v}
    feeling = expected["sentiment"]
    assert (feeling["positive"], feeling["negative"]) == (2, 3)  # thanks, great / broken x2, dislike


def test_participation_is_required_and_does_not_leak(cog: httpx.Client, world: dict[str, Any]) -> None:
    u, c1, c2 = world["u"], world["c1"], world["c2"]
    outsider = new_id("eve")
    refusals = {
        (outsider, c1): call(cog, "analyze_conversation", user_id=outsider, conversation_id=c1),
        (u, c2): call(cog, "analyze_conversation", user_id=u, conversation_id=c2,
                      analysis_type="sentiment"),
        (u, "no-such-conversation"): call(cog, "analyze_conversation", user_id=u,
                                          conversation_id="no-such-conversation"),
    }
    for (user, cid), response in refusals.items():
        error = error_of(response, 404, "conversation_not_found")
        assert error["message"] == f"no conversation {cid} for user {user}"
        assert error["details"] == {"conversation_id": cid, "user_id": user}
    error_of(cog.get(f"/resource/conversation_analysis/{c2}/topics", params={"user_id": u}),
             404, "conversation_not_found")


def test_resources_as_json_and_sse(cog: httpx.Client, world: dict[str, Any]) -> None:
    u, c1 = world["u"], world["c1"]
    context = cog.get(f"/resource/context/{u}", params={"query": "shoes", "limit": "2"})
    assert context.status_code == 200 and context.headers["content-type"].startswith("application/json")
    value = context.json()
    tool = result(cog, "get_context", user_id=u, query="shoes", limit=2)
    assert {k: v for k, v in value.items() if k != "items"} == {k: v for k, v in tool.items() if k != "items"}
    assert ids(value["items"]) == ids(tool["items"]) and len(value["items"]) == 2
    events = read_sse(cog, f"context/{u}", {"query": "shoes", "limit": "2", "recency_weight": "0"})
    assert [kind for kind, _ in events] == ["message", "message", "end"] and events[-1][1] == {"count": 2}
    assert [data["item"]["message_id"] for _, data in events[:2]] == ids(
        result(cog, "get_context", user_id=u, query="shoes", limit=2, recency_weight=0)["items"])
    empty_query = cog.get(f"/resource/context/{u}", params={"query": ""}).json()
    assert empty_query["query"] is None and len(empty_query["items"]) == 4

    for kind in ("summary", "topics", "sentiment"):
        path = f"conversation_analysis/{c1}/{kind}"
        answer = result(cog, "analyze_conversation", user_id=u, conversation_id=c1, analysis_type=kind)
        assert cog.get(f"/resource/{path}", params={"user_id": u}).json() == answer
        assert read_sse(cog, path, {"user_id": u}) == [("message", answer), ("end", {"count": 1})]


BAD_ARGUMENTS = [
    ("get_context", {}, "user_id"),
    ("get_context", {"user_id": "a/b"}, "user_id"),
    ("get_context", {"user_id": 7}, "user_id"),
    ("get_context", {"user_id": "u", "limit": 0}, "limit"),
    ("get_context", {"user_id": "u", "limit": 1001}, "limit"),
    ("get_context", {"user_id": "u", "limit": 2.5}, "limit"),
    ("get_context", {"user_id": "u", "limit": True}, "limit"),
    ("get_context", {"user_id": "u", "recency_weight": 1.5}, "recency_weight"),
    ("get_context", {"user_id": "u", "recency_weight": -0.1}, "recency_weight"),
    ("get_context", {"user_id": "u", "recency_weight": "0.5"}, "recency_weight"),
    ("get_context", {"user_id": "u", "query": 3}, "query"),
    ("get_context", {"user_id": "u", "color": "red"}, "color"),
    ("search_history", {"user_id": "u"}, "query"),
    ("search_history", {"user_id": "u", "query": "?!"}, "query"),
    ("search_history", {"user_id": "u", "query": None}, "query"),
    ("search_history", {"user_id": "u", "query": "x", "include_conversations": "yes"},
     "include_conversations"),
    ("search_history", {"user_id": "u", "query": "x", "limit": "10"}, "limit"),
    ("analyze_conversation", {"user_id": "u"}, "conversation_id"),
    ("analyze_conversation", {"user_id": "u", "conversation_id": "c#1"}, "conversation_id"),
    ("analyze_conversation", {"user_id": "u", "conversation_id": "c", "analysis_type": "mood"},
     "analysis_type"),
]


@pytest.mark.parametrize(("tool", "arguments", "argument"), BAD_ARGUMENTS,
                         ids=[f"{t}-{a}-{i}" for i, (t, _, a) in enumerate(BAD_ARGUMENTS)])
def test_bad_arguments_are_400_naming_the_argument(cog: httpx.Client, tool: str,
                                                   arguments: dict[str, Any], argument: str) -> None:
    error = error_of(call(cog, tool, **arguments), 400, "invalid_argument")
    assert error["details"] == {"argument": argument}
    assert repr(argument) in error["message"]


@pytest.mark.parametrize(("path", "params", "argument"), [
    ("context/a%20b", {}, "user_id"),
    ("context/u", {"limit": "0"}, "limit"),
    ("context/u", {"limit": "ten"}, "limit"),
    ("context/u", {"recency_weight": "2"}, "recency_weight"),
    ("context/u", {"recency_weight": "nan"}, "recency_weight"),
    ("context/u", {"follow": "true"}, "follow"),
    ("conversation_analysis/c/summary", {}, "user_id"),
    ("conversation_analysis/c/mood", {"user_id": "u"}, "analysis_type"),
    ("conversation_analysis/c%21/summary", {"user_id": "u"}, "conversation_id"),
])
def test_bad_resource_requests_are_400(cog: httpx.Client, path: str, params: dict[str, str],
                                       argument: str) -> None:
    for headers in ({}, SSE):
        error = error_of(cog.get(f"/resource/{path}", params=params, headers=headers), 400,
                         "invalid_argument")
        assert error["details"] == {"argument": argument}


def test_unknown_tool_resource_body_and_size(cog: httpx.Client) -> None:
    error = error_of(call(cog, "read_minds", user_id="u"), 404, "unknown_tool")
    assert error["details"] == {"tool": "read_minds", "tools": [
        "get_context", "search_history", "analyze_conversation"]}
    for path in ("context", "context/u/more", "history/u", "conversation_analysis/c"):
        for headers in ({}, SSE):
            error = error_of(cog.get(f"/resource/{path}", headers=headers), 404, "unknown_resource")
            assert error["details"] == {"path": path}
    error_of(cog.post("/tool/get_context", content=b"{nope", headers={"Content-Type": "application/json"}),
             400, "invalid_json")
    error_of(cog.post("/tool/get_context", json={"user_id": "u"}), 400, "invalid_body")
    over = json.dumps({"arguments": {"user_id": "u", "query": "x" * LIMIT}}).encode()
    error = error_of(cog.post("/tool/get_context", content=over,
                              headers={"Content-Type": "application/json"}), 413, "payload_too_large")
    assert error["details"] == {"max_bytes": LIMIT}


def test_openapi_describes_the_protocol(cog: httpx.Client) -> None:
    spec = cog.get("/openapi.json").json()
    paths = spec["paths"]
    assert {"/tool/{name}", "/resource/{path}", "/health"} <= set(paths)
    tool = paths["/tool/{name}"]["post"]
    body = tool["requestBody"]["content"]["application/json"]
    assert body["schema"]["required"] == ["arguments"]
    assert set(body["examples"]) == {"get_context", "search_history", "analyze_conversation"}
    for status in ("400", "404", "413", "415", "502", "503"):
        ref = tool["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/ErrorResponse"
    resource = paths["/resource/{path}"]["get"]
    assert "422" not in tool["responses"] and "422" not in resource["responses"]
    assert "text/event-stream" in resource["responses"]["200"]["content"]
    assert {p["name"] for p in resource["parameters"]} == {"path", "query", "limit", "recency_weight",
                                                          "user_id"}
    health = paths["/health"]["get"]["responses"]
    assert health["503"]["content"]["application/json"]["schema"]["$ref"] == \
        "#/components/schemas/CognitionHealth"


# memory down ------------------------------------------------------------------------------
def test_memory_down_is_503_and_recovers(valkey: str, tmp_path: Path) -> None:
    """Memory killed by pid: every tool and resource is a 503 naming memory (first after the
    client's retries, then from the open breaker), /health is 503 degraded; memory started
    again on the same port: healthy, and calls work once the breaker lets its probe through."""
    memory_port, cognition_port = free_port(), free_port()
    config = write_mesh(tmp_path, valkey, memory_port, free_port(), breaker_failures=2, breaker_reset=1.0)
    memory = spawn("memory", config, memory_port)
    cognition: Proc | None = None
    try:
        cognition = started = spawn("cognition", config, cognition_port, "--port", str(cognition_port))
        wait_until(lambda: answering(memory), 30, "the memory service")
        wait_until(lambda: answering(started), 30, "the cognition service")
        with httpx.Client(headers=AUTH, base_url=cognition.url, timeout=20.0) as cog:
            user = new_id("u")
            with httpx.Client(headers=AUTH, base_url=memory.url, timeout=10.0) as mem:
                result(mem, "store_input", user_id=user, input_data={"content": "hello again"})
            assert len(result(cog, "get_context", user_id=user)["items"]) == 1

            stop(memory.proc)
            for response in (call(cog, "get_context", user_id=user),  # refused, after retries
                             call(cog, "search_history", user_id=user, query="hello"),
                             call(cog, "analyze_conversation", user_id=user, conversation_id="c"),
                             cog.get(f"/resource/context/{user}"),  # the breaker is open now
                             cog.get(f"/resource/context/{user}", headers=SSE)):
                error = error_of(response, 503, "dependency_unavailable")
                assert set(error["details"]) == {"memory"} and error["details"]["memory"]
            assert "circuit breaker open" in error["details"]["memory"]
            # arguments are still checked first
            error_of(call(cog, "get_context", user_id="a b"), 400, "invalid_argument")
            health = cog.get("/health")
            assert health.status_code == 503
            body = health.json()
            assert body["status"] == "degraded" and set(body) == {"status", "details", "clients"}
            assert set(body["details"]) == {"memory"} and body["details"]["memory"]
            assert body["clients"] == {"memory": {"breaker": "open"}}

            memory = spawn("memory", config, memory_port)
            wait_until(lambda: cog.get("/health").status_code == 200, 30, "cognition healthy again")
            assert cog.get("/health").json()["status"] == "healthy"
            wait_until(lambda: call(cog, "get_context", user_id=user).status_code == 200, 10,
                     "the breaker's probe to close it")
            healthy = {"status": "healthy", "clients": {"memory": {"breaker": "closed"}}}
            assert cog.get("/health").json() == healthy
            assert len(result(cog, "get_context", user_id=user)["items"]) == 1

        stop(cognition.proc)
        assert cognition.proc.returncode in (0, -15)
        assert "Traceback" not in cognition.log_text(), cognition.log_text()
    finally:
        if cognition is not None:
            stop(cognition.proc)
        stop(memory.proc)


def test_breaker_and_timeouts_map_to_503_in_process() -> None:
    """create_app's knobs on a real uvicorn in this process, with memory where nothing listens."""
    app = create_app(memory_url=f"http://127.0.0.1:{free_port()}", service_token=TOKEN, max_body_bytes=300,
                     client_options={"retries": 0, "failure_threshold": 1, "reset_timeout": 60.0})
    with serving(app) as port, \
            httpx.Client(headers=AUTH, base_url=f"http://127.0.0.1:{port}", timeout=10.0) as http:
        first = error_of(call(http, "get_context", user_id="u"), 503, "dependency_unavailable")
        assert "circuit breaker" not in first["details"]["memory"]
        second = error_of(call(http, "get_context", user_id="u"), 503, "dependency_unavailable")
        assert "circuit breaker open" in second["details"]["memory"]
        error_of(call(http, "search_history", user_id="u", query="z" * 300), 413, "payload_too_large")
        assert http.get("/health").json()["status"] == "degraded"


# the Model Context Protocol ----------------------------------------------------------------
def test_official_mcp_client_stores_in_memory_then_gets_context_from_cognition(pair: Pair) -> None:
    """The `mcp` SDK's own client, as any MCP host would use it: list cognition's tools,
    store_input on memory's /mcp, get_context and a context resource on cognition's /mcp."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client
    from mcp_types import TextResourceContents

    user = new_id("u")

    async def session_on(url: str, stack: AsyncExitStack) -> ClientSession:
        http = await stack.enter_async_context(create_mcp_http_client(headers=AUTH))
        streams = await stack.enter_async_context(streamable_http_client(url + "/mcp", http_client=http))
        read, write = streams[:2]
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        return session

    async def scenario() -> tuple[set[str], Any, Any, Any]:
        async with AsyncExitStack() as stack:
            memory = await session_on(pair.memory.url, stack)
            cognition = await session_on(pair.cognition.url, stack)
            tools = {tool.name for tool in (await cognition.list_tools()).tools}
            for text in ("the blue kettle leaks", "invoice for the toaster", "kettle replaced, thanks"):
                stored = await memory.call_tool("store_input", {"user_id": user,
                                                                "input_data": {"content": text}})
                assert not stored.is_error, stored
            context = await cognition.call_tool("get_context", {"user_id": user, "query": "kettle",
                                                                "recency_weight": 0})
            refused = await cognition.call_tool("get_context", {"user_id": user, "limit": "ten"})
            read = await cognition.read_resource(f"cognition://context/{user}?query=kettle&limit=1")
            return tools, context, refused, read

    async def main() -> tuple[set[str], Any, Any, Any]:
        with anyio.fail_after(30):
            return await scenario()

    tools, context, refused, read = asyncio.run(main())
    assert tools == {"get_context", "search_history", "analyze_conversation"}
    assert not context.is_error, context
    found = json.loads(context.content[0].text)
    assert sorted(e["item"]["content"] for e in found["items"]) == [
        "kettle replaced, thanks", "the blue kettle leaks"]
    assert refused.is_error and "limit" in refused.content[0].text
    contents = read.contents[0]
    assert isinstance(contents, TextResourceContents) and contents.mime_type == "application/json"
    assert len(json.loads(contents.text)["items"]) == 1
