"""Replica groups in status (replica_view.py): a group folded into one logical agent with
its replicas nested, its totals and counts, and the senders' routing state combined, in
exact tables; the frame it makes fits docs/status.schema.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agentmesh_cli.config import parse_config
from agentmesh_cli.replica_view import combine_routing, groups_of, nest_groups, replica_order
from tests.helpers.tables import agent_entry

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "status.schema.json").read_text())
NOW = 1_700_000_100.0
MS = int(NOW * 1000)
CONFIG = parse_config({"mesh": "demo", "agents": [
    {"name": "Sales", "role": "sales"},
    {"name": "Support", "role": "support", "replicas": 2, "capabilities": ["tickets"]},
    {"name": "Chat", "role": "llm", "replicas": {"min": 1, "max": 4}, "llm": {"model": "m"}},
]})


def support(*states: str, mi: tuple[int, ...] = (), retiring: tuple[bool, ...] = ()) -> dict[str, Any]:
    """The Support group of replicas in `states` (Support-1 first)."""
    flat = [agent_entry(f"Support-{k}", state, mi=mi[k - 1] if mi else 0, role="support")
            for k, state in enumerate(states, 1)]
    gone = {f"Support-{k}" for k, r in enumerate(retiring, 1) if r}
    return next(a for a in nest_groups(flat, CONFIG, {}, gone, {}, {}, NOW) if a["name"] == "Support")


def test_a_group_is_one_logical_agent_with_its_replicas_nested() -> None:
    flat = [agent_entry("Sales", "alive", mi=7, role="sales"),
            agent_entry("Support-10", "alive", mi=5, concurrency=2, in_flight=1,
                        counters={"messages_in": 5, "asks": 2}, lag=(0.5, 30.0, 40.0)),
            agent_entry("Support-2", "alive", mi=15, concurrency=4, in_flight=3,
                        counters={"messages_in": 15, "asks": 1}, lag=(1.0, 3.0, 90.0)),
            agent_entry("Support-1", "not running", mi=0, concurrency=None, in_flight=None)]
    agents = nest_groups(flat, CONFIG, {"Support": 3, "Chat": 2}, {"Support-10"}, {}, {}, NOW)
    assert [a["name"] for a in agents] == ["Chat", "Sales", "Support"]
    assert agents[1] == flat[0]  # an agent that is no replica: as it was
    group = agents[2]
    assert [(m["name"], m["replica"], m["retiring"], m["share"]) for m in group["members"]] == [
        ("Support-1", 1, False, 0.0), ("Support-2", 2, False, 0.75), ("Support-10", 10, True, 0.25)]
    assert {k: group[k] for k in ("name", "role", "capabilities", "state", "alive", "messages_in",
                                  "concurrency", "in_flight", "loop_lag_ms", "replicas", "routing")} == {
        "name": "Support", "role": "support", "capabilities": ["tickets"], "state": "degraded",
        "alive": True, "messages_in": 20, "concurrency": 6, "in_flight": 4,
        "loop_lag_ms": {"p50": 1.0, "p99": 30.0, "max": 90.0},  # the worst replica's
        "replicas": {"declared": 2, "running": 3, "retiring": 1, "max": 2, "autoscaled": False},
        "routing": None}
    assert group["asks"]["sent"] == 3  # over the replicas' counters summed
    # a group none of whose replicas is listed yet; autoscaled: declared is its min
    assert agents[0]["members"] == [] and agents[0]["state"] == "not running"
    assert agents[0]["replicas"] == {"declared": 1, "running": 2, "retiring": 0, "max": 4, "autoscaled": True}
    listed = {"$ref": "#/properties/agents", **{k: SCHEMA[k] for k in ("$schema", "$defs", "properties")}}
    jsonschema.Draft202012Validator(listed).validate(agents)


def test_a_mesh_without_groups_is_left_as_it_is() -> None:
    config = parse_config({"mesh": "demo", "agents": [{"name": "Sales", "role": "sales"}]})
    flat = [agent_entry("Sales", "alive"), agent_entry("Support-2", "alive")]
    assert nest_groups(flat, config, {"Sales": 3}, set(), {}, {}, NOW) is flat


# replicas' states (retiring ones marked) -> the group's state, alive
GROUP_STATES = [
    (("alive", "alive"), (), "alive", True),
    (("alive", "stale"), (), "degraded", True),
    (("alive", "not running"), (), "degraded", True),
    (("stale", "not running"), (), "stale", False),
    (("not running", "not running"), (), "not running", False),
    (("alive", "not running"), (False, True), "alive", True),  # a retiring replica left already
    (("not running", "alive"), (False, True), "degraded", True),
    ((), (), "not running", False),
]


@pytest.mark.parametrize(("states", "retiring", "state", "alive"), GROUP_STATES)
def test_the_groups_state(states: tuple[str, ...], retiring: tuple[bool, ...], state: str,
                          alive: bool) -> None:
    group = support(*states, retiring=retiring)
    assert (group["state"], group["alive"]) == (state, alive)


def routing_state(age_s: float, **replicas: dict[str, float]) -> dict[str, Any]:
    return {"ts": MS - int(age_s * 1000), "model": "physarum",
            "groups": {"Support": {name.replace("_", "-"): row for name, row in replicas.items()}}}


ROW_1 = {"outstanding": 2, "ewma_ms": 10.0, "conductance": 0.8, "probability": 0.6}
ROW_2 = {"outstanding": 1, "ewma_ms": 40.0, "conductance": 0.4, "probability": 0.4}
P2C = {"outstanding": 3, "ewma_ms": 20.0}

# the senders' states, their sent_to counters -> per replica (outstanding, ewma_ms, probability,
# conductance), and the senders with their weights
COMBINED = [
    # one sender: its own numbers
    ({"Sales": routing_state(1, Support_1=ROW_1, Support_2=ROW_2)}, {},
     {"Support-1": (2, 10.0, 0.6, 0.8), "Support-2": (1, 40.0, 0.4, 0.4)}, [("Sales", 1.0, 0)]),
    # two senders weighted 3:1 by what they sent to the group; outstanding summed
    ({"Sales": routing_state(1, Support_1=ROW_1, Support_2=ROW_2),
      "gateway": routing_state(2, Support_1={**ROW_1, "probability": 0.2, "ewma_ms": 30.0},
                               Support_2={**ROW_2, "probability": 0.8})},
     {"Sales": {"sent_to:Support-1": 20, "sent_to:Support-2": 10, "sent_to:Fraud": 99},
      "gateway": {"sent_to:Support-2": 10}},
     {"Support-1": (4, 15.0, 0.5, 0.8), "Support-2": (2, 40.0, 0.5, 0.4)},
     [("Sales", 1.0, 30), ("gateway", 2.0, 10)]),
    # nothing counted yet: equal weights; a replica one sender does not know yet gets 0 from it
    ({"Sales": routing_state(1, Support_1={**ROW_1, "probability": 1.0}),
      "gateway": routing_state(1, Support_1=ROW_1, Support_2=ROW_2)}, {},
     {"Support-1": (4, 10.0, 0.8, 0.8), "Support-2": (1, 40.0, 0.2, 0.4)},
     [("Sales", 1.0, 0), ("gateway", 1.0, 0)]),
    # a sender that stopped routing a minute ago is left out; p2c has no probability
    ({"Sales": routing_state(61, Support_1=ROW_1), "cli": routing_state(0.5, Support_1=P2C)}, {},
     {"Support-1": (3, 20.0, None, None)}, [("cli", 0.5, 0)]),
]


@pytest.mark.parametrize(("routing", "counters", "replicas", "senders"), COMBINED)
def test_the_senders_routing_state_combined(routing: dict[str, Any], counters: dict[str, dict[str, int]],
                                            replicas: dict[str, tuple[Any, ...]],
                                            senders: list[tuple[str, float, int]]) -> None:
    combined = combine_routing(routing, "Support", counters, NOW)
    assert combined is not None and combined["model"] == "physarum"
    assert {name: (r["outstanding"], r["ewma_ms"], r["probability"], r["conductance"])
            for name, r in combined["replicas"].items()} == replicas
    assert [(s["sender"], s["age_s"], s["sent"]) for s in combined["senders"]] == senders


def test_no_fresh_state_no_routing() -> None:
    assert combine_routing({}, "Support", {}, NOW) is None
    stale = {"Sales": routing_state(60.5, Support_1=ROW_1), "Fraud": {"ts": MS, "groups": {"Other": {}}}}
    assert combine_routing(stale, "Support", {}, NOW) is None


@pytest.mark.parametrize(("name", "order"), [
    ("Support-2", ("Support", 2)), ("Support-10", ("Support", 10)), ("Sales", ("Sales", 0)),
    ("Support-02", ("Support-02", 0)),
])
def test_replica_order(name: str, order: tuple[str, int]) -> None:
    assert replica_order(name) == order


def test_groups_of_names_only_the_replicas_of_mesh_yaml_groups() -> None:
    names = ["Sales", "Sales-2", "Support-1", "Support-7", "Chat-3", "Support"]
    assert groups_of(CONFIG, names) == {"Support-1": "Support", "Support-7": "Support", "Chat-3": "Chat"}
