"""mesh.yaml refused by the real command: exit code 2 and nothing started."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agentmesh_cli.errors import ConfigError
from agentmesh_cli.mesh import load_mesh
from tests.helpers.commands import agentmesh
from tests.helpers.tables import BAD_CASES


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




@pytest.mark.parametrize(("agent", "message"), [
    ({"name": "S", "role": "support", "replicas": 0},
     "mesh.yaml: agents[0].replicas: replicas must be between 1 and 64 (got 0)"),
    ({"name": "S", "role": "support", "replicas": {"min": 4, "max": 2}},
     "mesh.yaml: agents[0].replicas: min (4) must not exceed max (2)"),
    ({"name": "S", "role": "sales", "replicas": 2},
     "agents.0.replicas: role 'sales' is not replicable"),
    ({"name": "S", "role": "tests.helpers.roles:SlowRecorder", "replicas": 2},
     "agents[0].replicas: role tests.helpers.roles:SlowRecorder is not replicable"),
])
def test_up_refuses_bad_replicas(tmp_path: Path, agent: dict[str, object], message: str,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.helpers.mesh import REPO

    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the role class is imported by `up`'s checks
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump({"mesh": "m", "agents": [agent]}), encoding="utf-8")
    result = agentmesh("up", "--config", str(tmp_path / "mesh.yaml"), "--timeout", "5")
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "supervisor.d").exists()
