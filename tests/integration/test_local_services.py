"""CORTEX_DISTRIBUTED_MODE=false: an agent's service clients run memory and cognition in
process, on the real Redis, with the same interface and the same errors as over HTTP."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from agentmesh_cli.agent.services import AgentServices, make_clients
from agentmesh_cli.errors import ServiceBadRequestError, ServiceNotFoundError
from agentmesh_cli.services.local import LocalClient
from agentmesh_cli.waiting import wait_until


def test_in_process_services_behave_like_the_http_ones(monkeypatch: pytest.MonkeyPatch,
                                                      external_mesh: Any) -> None:
    monkeypatch.setenv("CORTEX_DISTRIBUTED_MODE", "false")
    mesh = external_mesh()  # its service ports have nothing listening: no HTTP is used
    memory, cognition = make_clients(mesh)
    try:
        check_clients(memory, cognition)
    finally:
        memory.close()
        cognition.close()


def check_clients(memory: Any, cognition: Any) -> None:
    assert isinstance(memory, LocalClient) and isinstance(cognition, LocalClient)
    assert memory.health() == {"status": "healthy"} and cognition.health() == {"status": "healthy"}

    stored = memory.call_tool("store_input", {"user_id": "u1", "input_data": {
        "content": "my laptop screen flickers", "conversation_id": "t-1", "timestamp": 1000.0}})
    memory.call_tool("store_input", {"user_id": "u1", "input_data": {
        "content": "thanks for the quick delivery", "timestamp": 2000.0}})
    assert memory.call_tool("get_message", {"user_id": "u1", "message_id": stored["message_id"]}) == stored
    with pytest.raises(ServiceNotFoundError):  # another user's message is not theirs to read
        memory.call_tool("get_message", {"user_id": "u2", "message_id": stored["message_id"]})
    with pytest.raises(ServiceBadRequestError) as bad:
        memory.call_tool("store_input", {"user_id": "u1"})
    assert bad.value.status == 400 and bad.value.details["argument"] == "input_data"
    assert [i["content"] for i in memory.stream_resource("history/u1")] == [
        "thanks for the quick delivery", "my laptop screen flickers"]

    context = cognition.call_tool("get_context", {"user_id": "u1", "query": "laptop", "recency_weight": 0})
    assert [e["item"]["message_id"] for e in context["items"]] == [stored["message_id"]]
    with pytest.raises(ServiceBadRequestError) as bad:
        cognition.call_tool("get_context", {"user_id": "u1", "limit": 0})
    assert bad.value.details["argument"] == "limit"


def test_agent_services_remember_and_context_in_process(monkeypatch: pytest.MonkeyPatch,
                                                        external_mesh: Any) -> None:
    monkeypatch.setenv("CORTEX_DISTRIBUTED_MODE", "false")
    services = AgentServices(external_mesh(), "Support", logging.getLogger("test"))
    try:
        services.remember("c-7", "order o-1: 2 monitor for 360", "o-1", {"kind": "order"})
        services.remember("c-7", "question: does the chair come in other sizes", "T-1")
        wait_until(lambda: services.state()["memory"]["pending"] == 0, 10, "the writes to be stored")
        items = services.context("c-7", query="monitor", limit=5)
        assert items is not None and items[0]["item"]["content"] == "order o-1: 2 monitor for 360"
        assert items[0]["item"]["metadata"] == {"agent": "Support", "kind": "order"}
        assert services.state()["memory"]["breaker"] == "closed"
    finally:
        assert services.stop() == 0
    counts = services.take_counts()
    assert counts["memory_queued"] == counts["memory_stored"] == 2 and counts["context_calls"] == 1
