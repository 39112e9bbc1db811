"""Metrics of replica groups, pure: a replica's series labelled with its group, the groups'
counts and the senders' routing state, rendered from a fixed reading."""

from __future__ import annotations

from agentmesh_cli.metrics.families import Reading, families
from tests.helpers.tables import FAMILIES, samples, value
from tests.unit.test_metrics import fixed_reading


def group_reading() -> Reading:
    """Support runs 3 replicas (mesh.yaml: 2); Sales and the gateway route to them (physarum);
    a sender silent for over a minute."""
    reading = fixed_reading()
    reading.agents += ["Support-1", "Support-2", "Support-3"]
    reading.counters.update({"Support-1": {"messages_in": 4, "messages_out": 1, "dead_letters": 1},
                             "Support-2": {"messages_in": 2},
                             "autoscaler": {"scale_ups": 1}})  # no agent
    reading.registry["Support-1"] = {"name": "Support-1", "group": "Support", "replica": 1, "in_flight": 2}
    reading.service_clients["Support-1"] = {"memory": {"breaker": "closed", "pending": 0}}
    reading.group_of = {"Support-1": "Support", "Support-2": "Support", "Support-3": "Support"}
    reading.replicas = {"Support": (2, 3)}
    reading.routing = {
        "Sales": {"ts": 999_500, "model": "physarum", "groups": {"Support": {
            "Support-2": {"outstanding": 1, "ewma_ms": 40.0, "conductance": 0.4, "length": 80.0,
                          "probability": 0.25},
            "Support-1": {"outstanding": 2, "ewma_ms": 12.5, "conductance": 0.8, "length": 37.5,
                          "probability": 0.75}}}},
        "gateway": {"ts": 998_000, "model": "physarum", "groups": {"Support": {
            "Support-1": {"outstanding": 0, "ewma_ms": 30.0, "conductance": 0.5, "length": 30.0,
                          "probability": 1.0}}}},
        "Gone": {"ts": 900_000, "model": "physarum", "groups": {"Support": {
            "Support-3": {"outstanding": 7, "ewma_ms": 1.0}}}},
    }
    return reading


def test_a_replicas_series_carry_its_group() -> None:
    rendered = families(group_reading())
    # the families of a mesh with groups: every one of FAMILIES, then the groups' own
    assert [(m.name, m.type) for m in rendered][len(FAMILIES):] == [
        ("agentmesh_replicas", "gauge"), ("agentmesh_routing_state_age_seconds", "gauge"),
        ("agentmesh_routing_outstanding", "gauge"), ("agentmesh_routing_ewma_seconds", "gauge"),
        ("agentmesh_routing_probability", "gauge"), ("agentmesh_routing_conductance", "gauge")]
    assert samples(rendered, "agentmesh_messages_received") == {
        ("agentmesh_messages_received_total", (("agent", "Fraud"),)): 5,
        ("agentmesh_messages_received_total", (("agent", "Late"),)): 1,
        ("agentmesh_messages_received_total", (("agent", "Sales"),)): 2,
        ("agentmesh_messages_received_total", (("agent", "Support-1"), ("group", "Support"))): 4,
        ("agentmesh_messages_received_total", (("agent", "Support-2"), ("group", "Support"))): 2,
        ("agentmesh_messages_received_total", (("agent", "Support-3"), ("group", "Support"))): 0}
    found = samples(rendered)
    assert value(found, "agentmesh_dead_letters_total", owner="Support-1", group="Support") == 1
    assert value(found, "agentmesh_agent_in_flight", agent="Support-1", group="Support") == 2
    assert value(found, "agentmesh_service_breaker_state", caller="Support-1", service="memory",
                 state="closed", group="Support") == 1
    # histograms: every sample of the replica, buckets too
    asks = samples(rendered, "agentmesh_agent_ask_seconds")
    assert all(dict(labels).get("group") == ("Support" if dict(labels)["agent"].startswith("Support")
                                             else None) for _, labels in asks)
    assert not any(s.labels.get("agent") == "autoscaler" for m in rendered for s in m.samples)
    # no series of an agent that is no replica gained a label
    assert value(found, "agentmesh_messages_sent_total", agent="Sales") == 7
    assert samples(rendered, "agentmesh_replicas") == {
        ("agentmesh_replicas", (("group", "Support"), ("state", "declared"))): 2,
        ("agentmesh_replicas", (("group", "Support"), ("state", "running"))): 3}


def test_the_senders_routing_state_one_series_each() -> None:
    rendered = families(group_reading())
    assert samples(rendered, "agentmesh_routing_state_age_seconds") == {
        ("agentmesh_routing_state_age_seconds", (("sender", s),)): age
        for s, age in (("Gone", 100.0), ("Sales", 0.5), ("gateway", 2.0))}

    def series(family: str) -> dict[tuple[str, str], float]:
        return {(dict(labels)["sender"], dict(labels)["replica"]): v
                for (_, labels), v in samples(rendered, family).items()}
    # the state of a sender silent for over a minute is left out
    assert series("agentmesh_routing_outstanding") == {
        ("Sales", "Support-1"): 2, ("Sales", "Support-2"): 1, ("gateway", "Support-1"): 0}
    assert series("agentmesh_routing_ewma_seconds") == {
        ("Sales", "Support-1"): 0.0125, ("Sales", "Support-2"): 0.04, ("gateway", "Support-1"): 0.03}
    assert series("agentmesh_routing_probability") == {
        ("Sales", "Support-1"): 0.75, ("Sales", "Support-2"): 0.25, ("gateway", "Support-1"): 1.0}
    assert series("agentmesh_routing_conductance") == {
        ("Sales", "Support-1"): 0.8, ("Sales", "Support-2"): 0.4, ("gateway", "Support-1"): 0.5}
    assert {dict(labels)["group"] for (_, labels) in samples(rendered, "agentmesh_routing_outstanding")} == {
        "Support"}


def test_p2c_routing_has_no_physarum_families_and_no_groups_none_at_all() -> None:
    reading = group_reading()
    reading.routing = {"Sales": {"ts": 999_500, "model": "p2c_ewma", "groups": {"Support": {
        "Support-1": {"outstanding": 1, "ewma_ms": 5.0}}}}}
    names = [m.name for m in families(reading)][len(FAMILIES):]
    assert names == ["agentmesh_replicas", "agentmesh_routing_state_age_seconds",
                     "agentmesh_routing_outstanding", "agentmesh_routing_ewma_seconds"]
    reading.routing = {}
    assert [m.name for m in families(reading)][len(FAMILIES):] == ["agentmesh_replicas"]
    # a mesh without groups: no series has a group label
    assert not any("group" in s.labels for m in families(fixed_reading()) for s in m.samples)
