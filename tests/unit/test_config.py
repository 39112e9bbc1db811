"""mesh.yaml validation by tables: exact error messages with key paths, exit code 2,
every problem in one run."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentmesh_cli import environment
from agentmesh_cli.config import parse_config
from agentmesh_cli.config_values import parse_duration
from agentmesh_cli.errors import ConfigError
from agentmesh_cli.hosts import program_names
from agentmesh_cli.mesh import Mesh, load_mesh
from tests.helpers.tables import BAD_CASES, GOOD


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5.0), ("250ms", 0.25), ("2m", 120.0), ("1h", 3600.0), ("1.5s", 1.5), (3, 3.0),
     ("7", 7.0), (0.5, 0.5)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 parsecs", "-1s", "0s", "", "s", True, "5ss"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_repo_default_mesh_is_valid() -> None:
    mesh = load_mesh(Path(__file__).resolve().parents[2] / "mesh.yaml")
    cfg = mesh.config
    assert [a.name for a in cfg.agents] == ["Sales", "Support", "Inventory", "Fraud"]
    assert cfg.topology.decay_interval == 5.0
    assert cfg.consensus.quorum == 0.6
    assert cfg.heartbeat.interval == 30.0
    assert cfg.kafka.embedded and cfg.redis.embedded
    assert cfg.kafka.port not in (9092,) and cfg.redis.port != 6379


def test_defaults_fill_in() -> None:
    cfg = parse_config(GOOD)
    assert cfg.topology.initial_weight == 0.5
    assert cfg.topology.prune_threshold == 0.1
    assert cfg.kafka.partitions == 16
    assert cfg.kafka.bootstrap == "127.0.0.1:29092"
    assert cfg.redis.resolved_url == "redis://127.0.0.1:26379/0"
    assert cfg.agents[0].capabilities == []
    assert (cfg.metrics.host, cfg.metrics.port) == ("127.0.0.1", 9464)  # loopback by default


def test_external_infra() -> None:
    cfg = parse_config({**GOOD, "kafka": {"bootstrap_servers": "k1:9092,k2:9092"},
                        "redis": {"url": "redis://:secret@r1:6379/2"}})
    assert not cfg.kafka.embedded and cfg.kafka.bootstrap == "k1:9092,k2:9092"
    # shown masked; connected to as written
    assert not cfg.redis.embedded and cfg.redis.resolved_url == "redis://:***@r1:6379/2"
    assert Mesh(cfg, Path("/m/mesh.yaml")).redis_url == "redis://:secret@r1:6379/2"


def test_env_references_in_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse_config({**GOOD, "redis": {"url": "redis://:${RPW}@r1:6379/0"},
                        "kafka": {"client": {"sasl.password": "${KPW}", "linger.ms": 5}}})
    monkeypatch.setenv("RPW", "r-secret")
    monkeypatch.setenv("KPW", "k-secret")
    assert Mesh(cfg, Path("/m/mesh.yaml")).redis_url == "redis://:r-secret@r1:6379/0"
    assert cfg.redis.resolved_url == "redis://:***@r1:6379/0"
    assert environment.expand_all(cfg.kafka.client, "kafka.client") == {
        "sasl.password": "k-secret", "linger.ms": 5}
    monkeypatch.delenv("KPW")
    with pytest.raises(ConfigError, match=r"kafka.client.sasl.password refers to \$\{KPW\}"):
        environment.expand_all(cfg.kafka.client, "kafka.client")


@pytest.mark.parametrize(("data", "message"), BAD_CASES)
def test_bad_config_messages(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert str(info.value).startswith(message), str(info.value)
    assert info.value.exit_code == 2


def test_every_problem_is_reported_in_one_run() -> None:
    data = {**GOOD, "heartbeat": {"missed": 0}, "kafka": {"partitions": "many"},
            "agents": [{"name": "A", "role": "sales"}, {"name": "A", "role": "wizard"},
                       {"name": "B", "role": "fraud", "colour": "red"}]}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert str(info.value).splitlines() == [
        "mesh.yaml: kafka.partitions: Input should be a valid integer, unable to parse string as an integer",
        "mesh.yaml: heartbeat.missed: Input should be greater than or equal to 1",
        "mesh.yaml: agents[1].role: unknown role 'wizard': use one of sales, support, inventory, fraud, llm "
        "or a class as 'package.module:Class'",
        "mesh.yaml: agents[2].colour: unknown key",
        "mesh.yaml: agents[1].name: duplicate agent name 'A' (also agents[0])",
    ]


@pytest.mark.parametrize(("agents", "kafka", "wait"), [
    (4, {}, 0.01),  # the least wait
    (16, {}, 0.016),  # 1 ms per agent once that is more
    (64, {}, 0.064),
    (500, {}, 0.2),  # at most 200 ms
    (500, {"fetch_wait": "500ms"}, 0.5),  # a longer wait set by hand stays
    (64, {"fetch_wait_per_agent": "0.1ms"}, 0.01),  # less per agent: the least wait holds
])
def test_the_fetch_wait_grows_with_the_agents(agents: int, kafka: dict[str, object], wait: float) -> None:
    # each idle agent costs the embedded broker a fetch per wait: the total stays bounded
    names = [{"name": f"a{i}", "role": "sales"} for i in range(agents)]
    cfg = parse_config({"mesh": "m", "kafka": {"inbox_reader": "agent", **kafka}, "agents": names})
    assert cfg.kafka.fetch_wait == pytest.approx(wait)


@pytest.mark.parametrize(("replicas", "wait"), [(4, 0.01), (30, 0.032), ({"min": 20, "max": 64}, 0.022)])
def test_a_groups_replicas_count_in_the_fetch_wait(replicas: object, wait: float) -> None:
    # each replica is an agent process of its own (autoscaled: as many as it starts with)
    agents = [{"name": "Sales", "role": "sales"}, {"name": "Help", "role": "support", "replicas": replicas}]
    cfg = parse_config({"mesh": "m", "kafka": {"inbox_reader": "agent"},
                        "agents": [*agents, {"name": "Fraud", "role": "fraud"}]})
    assert cfg.kafka.fetch_wait == pytest.approx(wait)


@pytest.mark.parametrize(("agents", "replicas", "reader", "resolved", "wait"), [
    (4, None, None, "agent", 0.01),  # the default is auto: a small mesh's agents fetch their own
    (15, None, None, "agent", 0.015),
    (16, None, None, "host", 0.01),  # from AUTO_HOST_AGENTS processes up: one reader per host
    (128, None, "auto", "host", 0.01),  # (no agent fetches: the wait is not raised)
    (2, 15, None, "host", 0.01),  # a group's replicas are processes too: 1 + 15
    (2, 14, None, "agent", 0.015),
    (2, {"min": 2, "max": 64}, None, "agent", 0.01),  # autoscaled: as many as it starts with
    (64, None, "agent", "agent", 0.064),  # said in mesh.yaml: kept
    (2, None, "host", "host", 0.01),
])
def test_auto_picks_the_inbox_reader_by_the_agent_processes(agents: int, replicas: object, reader: str | None,
                                                            resolved: str, wait: float) -> None:
    names: list[dict[str, object]] = [{"name": f"a{i}", "role": "sales"} for i in range(agents - 1)]
    names.append({"name": "Help", "role": "support", **({} if replicas is None else {"replicas": replicas})})
    kafka = {} if reader is None else {"inbox_reader": reader}
    cfg = parse_config({"mesh": "m", "kafka": kafka, "agents": names})
    assert (cfg.kafka.inbox_reader, cfg.kafka.fetch_wait) == (resolved, pytest.approx(wait))
    assert ("inbox-reader" in program_names(cfg)) is (resolved == "host")
