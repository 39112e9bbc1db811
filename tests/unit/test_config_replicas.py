"""mesh.yaml `replicas:` and `routing:`: the names a group runs, and the errors that name the key."""

from __future__ import annotations

from typing import Any

import pytest

from agentmesh_cli.agent.resolve import check_replicable
from agentmesh_cli.agent.roles import SalesRole, SupportRole
from agentmesh_cli.config import group_of, parse_config, replica_name
from agentmesh_cli.errors import ConfigError


def mesh(*agents: dict[str, Any], **sections: Any) -> dict[str, Any]:
    return {"mesh": "m", "agents": list(agents), **sections}


def test_a_group_runs_its_replicas_by_name() -> None:
    config = parse_config(mesh({"name": "Support", "role": "support", "replicas": 3},
                               {"name": "Sales", "role": "sales"}))
    assert [name for name, _ in config.concrete_agents()] == ["Support-1", "Support-2", "Support-3", "Sales"]
    assert [name for name, _ in config.concrete_agents({"Support": 5})][:5] == [
        "Support-1", "Support-2", "Support-3", "Support-4", "Support-5"]
    assert config.groups().keys() == {"Support"}
    assert config.group_name("Support-2") == "Support"
    assert config.group_name("Sales") is None
    assert config.spec_of("Support-9") is not None  # a scaled replica runs the group's spec
    assert config.spec_of("Sales-1") is None
    spec = config.agent_spec("Support-2", None, None)
    assert (spec.name, spec.role, spec.replicas) == ("Support-2", "support", None)
    with pytest.raises(ConfigError, match="is a replica group"):
        config.agent_spec("Support", None, None)


def test_an_autoscaled_group_starts_at_its_min() -> None:
    config = parse_config(mesh({"name": "S", "role": "support",
                                "replicas": {"min": 2, "max": 6, "target_in_flight": 3}}))
    agent = config.agents[0]
    assert (agent.declared_replicas, agent.max_replicas) == (2, 6)
    assert agent.replica_names() == ["S-1", "S-2"]


@pytest.mark.parametrize(("replicas", "message"), [
    (0, "agents[0].replicas: replicas must be between 1 and 64 (got 0)"),
    (65, "agents[0].replicas: replicas must be between 1 and 64 (got 65)"),
    (2.5, "agents[0].replicas: use a whole number of replicas"),
    (True, "agents[0].replicas: use a whole number of replicas"),
    ("three", "agents[0].replicas: use a whole number of replicas"),
    ({"min": 3, "max": 2}, "agents[0].replicas: min (3) must not exceed max (2)"),
    ({"min": 0}, "agents[0].replicas: min: Input should be greater than or equal to 1"),
    ({"max": 2, "target_in_flight": 0},
     "agents[0].replicas: target_in_flight: Input should be greater than 0"),
    ({"most": 2}, "agents[0].replicas: most: unknown key"),
])
def test_replica_errors_name_the_key(replicas: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(mesh({"name": "Support", "role": "support", "replicas": replicas}))
    assert message in str(caught.value)


def test_a_builtin_role_that_is_not_replicable_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"agents.0.replicas: role 'sales' is not replicable"):
        parse_config(mesh({"name": "Sales", "role": "sales", "replicas": 2}))
    with pytest.raises(ConfigError, match=r"agents.0.replicas: role 'fraud' is not replicable"):
        parse_config(mesh({"name": "F", "role": "fraud", "replicas": {"max": 2}}))
    parse_config(mesh({"name": "Sales", "role": "sales", "replicas": 1}))  # one is no group of many


def test_a_role_class_must_declare_itself_replicable() -> None:
    config = parse_config(mesh({"name": "T", "role": "tests.roles:Whatever", "replicas": 2}))
    refused = r"agents\[0\].replicas: role tests.roles:Whatever is not replicable"
    with pytest.raises(ConfigError, match=refused):
        check_replicable(SalesRole, config.agents[0], 0)
    check_replicable(SupportRole, config.agents[0], 0)


def test_a_replica_name_may_not_clash_with_an_agent() -> None:
    with pytest.raises(ConfigError, match="replica S-2 of S clashes with the agent of that name"):
        parse_config(mesh({"name": "S", "role": "support", "replicas": 2}, {"name": "S-2", "role": "sales"}))


@pytest.mark.parametrize(("name", "group"), [
    ("Support-2", ("Support", 2)), ("a-b-10", ("a-b", 10)), ("Support", None),
    ("Support-", None), ("Support-02", None), ("-3", None),
])
def test_replica_names_parse(name: str, group: tuple[str, int] | None) -> None:
    assert group_of(name) == group
    if group is not None:
        assert replica_name(*group) == name


def test_routing_defaults_and_errors() -> None:
    assert parse_config(mesh()).routing.model == "p2c_ewma"
    assert parse_config(mesh(routing={"model": "physarum", "sticky_idle": "30s"})).routing.sticky_idle == 30.0
    with pytest.raises(ConfigError, match="routing.model"):
        parse_config(mesh(routing={"model": "random"}))
