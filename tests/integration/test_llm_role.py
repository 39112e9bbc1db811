"""The llm role for real, without a network: a Concierge agent process whose model is the
scripted OpenAI-compatible server (a real HTTP process on loopback, agentmesh_cli.llm.scripted),
called through the real `openai` SDK over a real socket, asked through the real gateway,
with real Inventory, Fraud and Refunds agents as its possible tools.

The script's scenarios are chosen by a word of the user's text: the tool round trip (one
tool, then two at once and another round), streaming to the conversation's events, the
allowlist refusing a tool, and each failure ending in an error reply.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentmesh_cli import constants as C
from agentmesh_cli import convlog
from agentmesh_cli.embedded import free_port
from agentmesh_cli.waiting import wait_until
from tests.helpers.gateway import RunningGateway, error_of, running_gateway, sse_events, write_gateway_mesh
from tests.helpers.llm import ScriptedLlm

SECRET = "sk-test-never-in-a-log-7f3a"
STOCK = {"name": "Inventory__check_stock", "arguments": {"items": {"laptop": 1}}}
SCRIPT: dict[str, Any] = {"model": "scripted", "scenarios": [
    {"name": "laptop", "when": "laptop", "steps": [
        {"text": "Let me check. ", "tool_calls": [STOCK]},
        {"text": "Your laptop: {tool_results}", "chunks": 6, "chunk_delay": 0.06}]},
    {"name": "plan", "when": "plan", "steps": [
        {"tool_calls": [{"name": "Inventory__check_stock", "arguments": {"items": {"cable": 2}}},
                        {"name": "Fraud__risk_assessment", "arguments": {"customer": "c", "amount": 50}}]},
        {"tool_calls": [{"name": "Inventory__check_stock", "arguments": {"items": {"cable": 1}}}]},
        {"text": "Planned: {tool_results}"}]},
    {"name": "schema", "when": "schema", "steps": [
        {"tool_calls": [{"name": "Inventory__check_stock", "arguments": {"items": {"laptop": "one"}}}]},
        {"text": "Told: {tool_results}"}]},
    {"name": "refund", "when": "refund", "steps": [
        {"tool_calls": [{"name": "Refunds__check_stock", "arguments": {"items": {"x": 1}}}]}]},
    {"name": "invent", "when": "invent", "steps": [
        {"tool_calls": [{"name": "Wizard__magic", "arguments": {}}]}]},
    {"name": "malformed", "when": "malformed", "steps": [
        {"tool_calls": [{"name": "Inventory__check_stock", "arguments": "{\"items\": {"}]}]},
    {"name": "loop", "when": "loop", "steps": [{"tool_calls": [STOCK]}]},
    {"name": "empty", "when": "empty", "steps": [{"text": ""}]},
    {"name": "slow", "when": "slow", "steps": [{"delay": 4, "text": "too late"}]},
    {"name": "busy", "when": "busy", "steps": [{"error": {"status": 429, "retry_after": 1}}]},
    {"name": "once", "when": "once", "steps": [{"error": {"status": 429, "retry_after": 1, "times": 1},
                                               "text": "fine after a retry"}]},
    {"name": "locked", "when": "locked", "steps": [{"error": {"status": 401, "message": "bad key"}}]},
    {"name": "broken", "when": "broken", "steps": [{"error": {"status": 500, "message": "boom"}}]},
]}


KEY_VARIABLE = "AGENTMESH_LLM_TEST_KEY"  # set for the agents' processes: api_key names it


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedLlm]:
    with ScriptedLlm(SCRIPT, api_key=SECRET) as llm:  # a request without the key is a 401
        yield llm


@pytest.fixture(scope="module")
def gateway(broker: str, valkey: str, scripted: ScriptedLlm,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("llm-role")
    common = {"timeout": "1500ms", "max_retries": 1, "context_items": 0, "model": "scripted"}
    agents = [
        {"name": "Concierge", "role": "llm", "concurrency": 8,
         "llm": {"base_url": scripted.base_url, "api_key": f"${{{KEY_VARIABLE}}}", "max_tool_rounds": 2,
                 "tools": ["Inventory", "Fraud:risk_assessment"], **common}},
        {"name": "Orphan", "role": "llm",  # its model server is down
         "llm": {"base_url": f"http://127.0.0.1:{free_port()}/v1", **common}},
        {"name": "Unkeyed", "role": "llm",  # its key's variable is not set
         "llm": {"base_url": scripted.base_url, "api_key": "${AGENTMESH_LLM_TEST_UNSET}", **common}},
        {"name": "Inventory", "role": "inventory"},
        {"name": "Fraud", "role": "fraud"},
        {"name": "Refunds", "role": "inventory"},  # declares check_stock, but no tool of the Concierge
    ]
    mesh = write_gateway_mesh(folder, broker, valkey, agents)
    os.environ[KEY_VARIABLE] = SECRET  # the agent processes inherit it
    try:
        with running_gateway(mesh, folder) as running:
            yield running
    finally:
        os.environ.pop(KEY_VARIABLE, None)


def ask(gateway: RunningGateway, text: str, agent: str = "Concierge", who: str = "alice",
        conversation: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"type": "chat", "payload": {"text": text}, "timeout": 20}
    if conversation is not None:
        body["conversation"] = conversation
    with gateway.client(who) as client:
        return client.post(f"/agents/{agent}/ask", json=body)


def requests_of(scripted: ScriptedLlm, scenario: str) -> list[dict[str, Any]]:
    return [r for r in scripted.requests() if r["scenario"] == scenario]


def counters(gateway: RunningGateway, agent: str) -> dict[str, int]:
    return gateway.store.counters(agent)


def test_a_tool_round_trip_streams_to_the_conversation(gateway: RunningGateway,
                                                       scripted: ScriptedLlm) -> None:
    conversation = f"c-{uuid.uuid4().hex[:24]}"
    seen = []
    with (gateway.client("alice") as client,
          client.stream("GET", f"/conversations/{conversation}/events") as stream):
        assert stream.status_code == 200
        answer = ask(gateway, "where is my laptop?", conversation=conversation)
        assert answer.status_code == 200, answer.text
        for event in sse_events(stream):
            seen.append(event)
            if event.event == "message" and event.data.get("type") == "answer":
                break
    payload = answer.json()["payload"]
    assert payload["text"] == 'Your laptop: {"order_id":null,"approved":true}'  # Inventory's reply
    assert (payload["model"], payload["rounds"]) == ("scripted", 2)
    assert payload["tools"] == ["Inventory__check_stock"]
    assert payload["usage"]["prompt_tokens"] > 0 and payload["usage"]["completion_tokens"] > 0
    # the model was offered the allowlist only, with the schemas the agents publish
    first, second = requests_of(scripted, "laptop")[-2:]
    offered = {t["function"]["name"]: t["function"]["parameters"] for t in first["body"]["tools"]}
    assert sorted(offered) == ["Fraud__risk_assessment", "Inventory__check_stock"]
    assert offered["Inventory__check_stock"]["title"] == "CheckStock"
    assert first["body"]["stream"] is True and first["authorization"] is True
    # the tool's reply went back to the model as the tool message of its call
    tool_messages = [m for m in second["body"]["messages"] if m["role"] == "tool"]
    assert [m["content"] for m in tool_messages] == ['{"order_id":null,"approved":true}']
    assert tool_messages[0]["tool_call_id"] == second["body"]["messages"][2]["tool_calls"][0]["id"]
    # the user saw the ask, the tool call and its reply, the streamed words, then the answer
    messages = [(e.data["from"], e.data["to"], e.data["type"]) for e in seen if e.event == "message"]
    assert messages == [("gateway", "Concierge", "chat"), ("Concierge", "Inventory", "check_stock"),
                        ("Inventory", "Concierge", "stock_result"), ("Concierge", "gateway", "answer")]
    deltas = [i for i, e in enumerate(seen) if e.event == "delta"]
    streamed = "".join(seen[i].data["text"] for i in deltas)
    assert streamed == "Let me check. " + payload["text"]
    final = next(i for i, e in enumerate(seen) if e.event == "message" and e.data["type"] == "answer")
    assert len(deltas) >= 2 and max(deltas) < final  # each round's text flushed before what follows it
    assert all(e.data["user"] == "alice" for e in seen if e.event == "message")


def test_a_two_tool_plan_asks_at_once_then_again(gateway: RunningGateway, scripted: ScriptedLlm) -> None:
    answer = ask(gateway, "make a plan")
    assert answer.status_code == 200, answer.text
    payload = answer.json()["payload"]
    assert payload["rounds"] == 3
    assert payload["tools"] == ["Inventory__check_stock", "Fraud__risk_assessment", "Inventory__check_stock"]
    results = [json.loads(r) for r in payload["text"].removeprefix("Planned: ").split("; ")]
    assert results == [{"order_id": None, "approved": True},
                       {"order_id": None, "risk": 0.342, "approved": True},
                       {"order_id": None, "approved": True}]
    last = requests_of(scripted, "plan")[-1]["body"]["messages"]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "tool", "tool", "assistant", "tool"]
    calls = last[2]["tool_calls"]
    assert [last[3]["tool_call_id"], last[4]["tool_call_id"]] == [calls[0]["id"], calls[1]["id"]]


def test_arguments_that_miss_the_schema_go_back_to_the_model(gateway: RunningGateway) -> None:
    conversation = f"c-{uuid.uuid4().hex[:24]}"
    answer = ask(gateway, "test the schema", conversation=conversation)
    assert answer.status_code == 200, answer.text
    assert answer.json()["payload"]["text"] == (
        "Told: error: invalid arguments for Inventory__check_stock: items.laptop: 'one' is not of "
        "type 'integer'")
    # Inventory was never asked: the conversation shows every ask the Concierge made in it
    log = convlog.ConversationLog(gateway.store.redis, gateway.store.keys, 1000, 60)
    assert [d["type"] for _, _, d in log.after(conversation, "0-0")] == ["chat", "answer"]


@pytest.mark.parametrize(("text", "kind", "says"), [
    ("please refund me", "ToolNotAllowed", "'Refunds__check_stock', which it was not offered"),
    ("invent a tool", "ToolNotAllowed", "'Wizard__magic', which it was not offered"),
    ("malformed call", "ToolCallInvalid", "arguments that are not JSON"),
    ("loop forever", "ToolRoundLimit", "still called tools after 2 rounds"),
    ("empty answer", "EmptyAnswer", "without text or a tool call"),
    ("slow answer", "ModelTimeout", "did not answer in time"),
    ("busy model", "ModelRateLimited", "rate limiting (429"),
    ("locked out", "ModelAuthFailed", "refused the api key (401): bad key"),
    ("broken model", "ModelRefused", "answered 500: boom"),
], ids=["allowlist", "invented", "malformed", "round-limit", "empty", "timeout", "429", "401", "500"])
def test_each_failure_ends_in_an_error_reply(gateway: RunningGateway, text: str, kind: str,
                                             says: str) -> None:
    answer = ask(gateway, text)
    error = error_of(answer, 502, "error_reply")
    assert error["details"]["remote_type"] == kind, error
    assert says in error["details"]["remote_message"], error


def test_the_allowlist_keeps_the_model_from_an_agent(gateway: RunningGateway, scripted: ScriptedLlm) -> None:
    conversation = f"c-{uuid.uuid4().hex[:24]}"
    error_of(ask(gateway, "refund it now", conversation=conversation), 502, "error_reply")
    offered = {t["function"]["name"] for r in requests_of(scripted, "refund") for t in r["body"]["tools"]}
    assert "Refunds__check_stock" not in offered
    # nothing was sent: the conversation holds the chat and the error reply only
    log = convlog.ConversationLog(gateway.store.redis, gateway.store.keys, 1000, 60)
    assert [d["type"] for _, _, d in log.after(conversation, "0-0")] == ["chat", C.TYPE_ERROR_REPLY]
    assert counters(gateway, "Refunds").get(C.COUNTER_IN, 0) == 0  # nor ever before


def test_the_sdk_retries_a_429_after_its_retry_after(gateway: RunningGateway, scripted: ScriptedLlm) -> None:
    answer = ask(gateway, "once more")
    assert answer.status_code == 200, answer.text
    assert answer.json()["payload"]["text"] == "fine after a retry"
    assert [r["status"] for r in requests_of(scripted, "once")] == [429, 200]


def test_an_unreachable_model_server_is_an_error_reply(gateway: RunningGateway) -> None:
    error = error_of(ask(gateway, "hello", agent="Orphan"), 502, "error_reply")
    assert error["details"]["remote_type"] == "ModelUnavailable", error


def test_the_api_key_comes_from_the_agent_s_environment(gateway: RunningGateway,
                                                       scripted: ScriptedLlm) -> None:
    """The server answers 401 without the key: the Concierge's answers above carried it, read
    from ${AGENTMESH_LLM_TEST_KEY}; an agent whose variable is unset says so and asks nothing."""
    before = len(scripted.requests())
    error = error_of(ask(gateway, "where is my laptop?", agent="Unkeyed"), 502, "error_reply")
    assert error["details"]["remote_type"] == "ModelAuthFailed", error
    assert "AGENTMESH_LLM_TEST_UNSET" in error["details"]["remote_message"]
    assert len(scripted.requests()) == before  # refused before any call
    assert all(r["authorization"] for r in scripted.requests())


def test_the_agent_counts_its_model_use_and_never_logs_its_key(gateway: RunningGateway,
                                                               tmp_path: Path) -> None:
    ask(gateway, "where is my laptop?")
    own = wait_until(lambda: (c := counters(gateway, "Concierge")).get(C.COUNTER_LLM_CALLS, 0) >= 2 and c,
                     20, "the model calls counted")
    assert own[C.COUNTER_LLM_TOKENS_IN] > 0 and own[C.COUNTER_LLM_TOKENS_OUT] > 0
    assert own.get(C.COUNTER_LLM_TOOL_CALLS, 0) >= 1 and own.get(f"{C.COUNTER_LLM_MS}:count", 0) >= 2
    assert gateway.proc.poll() is None and gateway.agents["Concierge"].poll() is None  # nothing crashed
    # each round was kept (ctx.once) only until its message was recorded as handled
    kept = gateway.store.keys.once("Concierge", "*")
    wait_until(lambda: not gateway.store.redis.keys(kept), 20, "no kept round left")
    log = (gateway.log.parent / "Concierge.log").read_text(encoding="utf-8", errors="replace")
    assert SECRET not in log
