"""mesh.yaml validation: exact error messages with key paths; exit code 2; nothing started."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agentmesh_cli.config import Mesh, load_mesh, parse_config, parse_duration
from agentmesh_cli.errors import ConfigError
from tests.conftest import agentmesh

GOOD = {"mesh": "shop", "agents": [{"name": "Sales", "role": "sales"}]}


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
    mesh = load_mesh(Path(__file__).parent.parent / "mesh.yaml")
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
    assert cfg.kafka.client_settings == {"sasl.password": "k-secret", "linger.ms": 5}
    monkeypatch.delenv("KPW")
    with pytest.raises(ConfigError, match=r"kafka.client.sasl.password refers to \$\{KPW\}"):
        _ = cfg.kafka.client_settings


BAD_CASES = [
    ({**GOOD, "kafak": {}}, "mesh.yaml: kafak: unknown key"),
    ({**GOOD, "topology": {"decay_interval": "5 parsecs"}},
     "mesh.yaml: topology.decay_interval: '5 parsecs' is not a duration"),
    ({**GOOD, "kafka": {"partitions": "many"}},
     "mesh.yaml: kafka.partitions: Input should be a valid integer"),
    ({**GOOD, "agents": [{"name": "A", "role": "sales"}, {"name": "A", "role": "fraud"}]},
     "mesh.yaml: agents[1].name: duplicate agent name 'A' (also agents[0])"),
    ({**GOOD, "agents": [{"name": "A", "role": "wizard"}]},
     "mesh.yaml: agents[0].role: unknown role 'wizard'"),
    ({**GOOD, "agents": [{"name": "A", "role": "sales", "colour": "red"}]},
     "mesh.yaml: agents[0].colour: unknown key"),
    ({"agents": []}, "mesh.yaml: mesh: required key is missing"),
    ({**GOOD, "heartbeat": {"missed": 0}},
     "mesh.yaml: heartbeat.missed: Input should be greater than or equal to 1"),
    ({**GOOD, "redis": {"url": "http://x"}}, "mesh.yaml: redis.url: use 'embedded' or a URL"),
    ({**GOOD, "agents": [{"name": "bad name", "role": "sales"}]},
     "mesh.yaml: agents[0].name: String should match pattern"),
    ({**GOOD, "topology": {"prune_threshold": 0.6}},
     "mesh.yaml: topology: need prune_threshold < initial_weight"),
    ({**GOOD, "services": {"cognition": {"port": 9000}}},
     "mesh.yaml: (top level): services.memory.port and services.cognition.port must differ (both are 9000)"),
    ({**GOOD, "services": {"memory": {"port": 26379}}},
     "mesh.yaml: (top level): services.memory.port and redis.port must differ (both are 26379)"),
    ({**GOOD, "metrics": {"port": 9100}},
     "mesh.yaml: (top level): services.cognition.port and metrics.port must differ (both are 9100)"),
    ({**GOOD, "metrics": {"port": 70000}},
     "mesh.yaml: metrics.port: Input should be less than or equal to 65535"),
]


@pytest.mark.parametrize(("data", "message"), BAD_CASES)
def test_bad_config_messages(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert str(info.value).startswith(message), str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("data", "key"),
    [(BAD_CASES[0][0], "kafak"), (BAD_CASES[1][0], "topology.decay_interval"),
     (BAD_CASES[2][0], "kafka.partitions"), (BAD_CASES[3][0], "agents[1].name"),
     (BAD_CASES[4][0], "agents[0].role")],
)
def test_up_refuses_bad_file_and_starts_nothing(tmp_path: Path, data: dict[str, object], key: str) -> None:
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    result = agentmesh("up", "--config", str(tmp_path / "mesh.yaml"), "--timeout", "5")
    assert result.returncode == 2, result.stderr
    assert f"mesh.yaml: {key}:" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "supervisor.d").exists()
    assert not (tmp_path / ".agentmesh").exists()


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "mesh.yaml"
    bad.write_text("mesh: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line 2"):
        load_mesh(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_mesh(tmp_path / "nope.yaml")
    result = agentmesh("status", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "no such file" in result.stderr


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
    cfg = parse_config({"mesh": "m", "kafka": kafka, "agents": names})
    assert cfg.kafka.fetch_wait == pytest.approx(wait)
