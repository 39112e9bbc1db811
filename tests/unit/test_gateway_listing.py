"""GET /agents and mesh://agents (gateway/listing.py): the registry and mesh.yaml's agents,
a replica group once with its replicas, in exact tables."""

from __future__ import annotations

from typing import Any

from agentmesh_cli.config import parse_config
from agentmesh_cli.gateway.listing import agent_list
from agentmesh_cli.gateway.mcp import agent_tools

NOW = 1_700_000_000_000
CONFIG = parse_config({"mesh": "m", "heartbeat": {"interval": "1s", "missed": 3}, "agents": [
    {"name": "Sales", "role": "sales"},
    {"name": "Support", "role": "support", "replicas": 2, "concurrency": 4, "capabilities": ["tickets"]}]})
TICKET = {"ticket": {"type": "object", "title": "Ticket"}}


def record(role: str, heartbeat_ago_ms: int, **extra: Any) -> dict[str, Any]:
    return {"role": role, "last_heartbeat": NOW - heartbeat_ago_ms, "capabilities": [], **extra}


def test_a_group_is_listed_once_with_its_replicas() -> None:
    registry = {"Sales": record("sales", 100, concurrency=1, in_flight=0),
                "Support-1": record("support", 100, concurrency=4, in_flight=3, group="Support"),
                "Support-3": record("support", 9_000, concurrency=4, in_flight=1, group="Support")}
    listed = agent_list(CONFIG, registry, {"Sales": {}, "Support-1": TICKET, "Support-3": TICKET},
                        {"Support": 3}, NOW)
    assert listed == [
        {"name": "Sales", "role": "sales", "state": "up", "capabilities": [], "concurrency": 1,
         "in_flight": 0, "accepts": {}},
        {"name": "Support", "role": "support", "state": "up", "capabilities": ["tickets"],
         "concurrency": 12, "in_flight": 4, "accepts": TICKET,
         "replicas": [{"name": "Support-1", "state": "up", "concurrency": 4, "in_flight": 3},
                      {"name": "Support-2", "state": "declared", "concurrency": 4, "in_flight": None},
                      {"name": "Support-3", "state": "down", "concurrency": 4, "in_flight": 1}]},
    ]
    # one MCP tool per group and type, none per replica
    assert sorted(agent_tools(listed)) == ["Support__ticket"]


def test_a_group_never_joined_and_one_whose_replicas_are_down() -> None:
    declared = agent_list(CONFIG, {}, {}, {}, NOW)
    assert [(a["name"], a["state"], a["in_flight"]) for a in declared] == [
        ("Sales", "declared", None), ("Support", "declared", None)]
    assert [r["name"] for r in declared[1]["replicas"]] == ["Support-1", "Support-2"]  # as mesh.yaml says
    # scaled down to 1: Support-2, still registered, is listed with it
    down = agent_list(CONFIG, {"Support-2": record("support", 60_000, group="Support")}, {},
                      {"Support": 1}, NOW)
    assert [(r["name"], r["state"]) for r in down[1]["replicas"]] == [
        ("Support-1", "declared"), ("Support-2", "down")]
    assert down[1]["state"] == "down"


def test_a_mesh_without_groups_is_listed_as_before() -> None:
    config = parse_config({"mesh": "m", "agents": [{"name": "Sales", "role": "sales"}]})
    listed = agent_list(config, {"Other": record("x", 0)}, {"Other": TICKET}, {}, NOW)
    assert listed == [
        {"name": "Other", "role": "x", "state": "up", "capabilities": [], "concurrency": None,
         "in_flight": None, "accepts": TICKET},
        {"name": "Sales", "role": "sales", "state": "declared", "capabilities": [], "concurrency": 1,
         "in_flight": None, "accepts": {}}]
