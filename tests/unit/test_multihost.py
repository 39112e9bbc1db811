"""mesh.yaml `hosts`: the checks of the section, and each host's folders and programs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agentmesh_cli.config import parse_config
from agentmesh_cli.errors import ConfigError
from agentmesh_cli.hosts import program_names
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.supervisor.render import program_specs
from tests.helpers.tables import AGENTS, ALPHA, BETA, external


@pytest.mark.parametrize(("hosts", "message"), [
    ({"a": ALPHA, "b": ["agent-Inventory", "agent-Frod"]},
     "hosts.b[1]: 'agent-Frod' is not a program of this mesh"),
    ({"a": ALPHA, "b": ["agent-Inventory", "agent-X*"]}, "hosts.b[1]: 'agent-X*' matches no program"),
    ({"a": ALPHA, "b": ["agent-Inventory"]}, "hosts: agent-Fraud is on no host"),
    ({"a": ALPHA, "b": ["agent-*"]}, "hosts: agent-Sales is on hosts a and b"),
    ({"a": [*ALPHA, *BETA], "b b": []}, "hosts.b b: a host name is letters"),
])
def test_bad_hosts_are_refused_with_the_key_path(hosts: dict[str, list[str]], message: str) -> None:
    data = external("k:9092", "redis://r:6379/0", hosts=hosts,
                    agents=[{"name": n, "role": r} for n, r in AGENTS.items()])
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(data)


def test_hosts_need_external_kafka_and_redis() -> None:
    data = {"mesh": "m", "redis": {"url": "redis://r:6379/0"}, "hosts": {"a": ["*"]}}
    with pytest.raises(ConfigError, match=re.escape(
            "mesh.yaml: hosts: several hosts need an external Kafka and Redis: set "
            "kafka.bootstrap_servers and redis.url")):
        parse_config(data)


def test_host_paths_and_programs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTMESH_HOST", raising=False)
    data = external("k:9092", "redis://r:6379/0", hosts={"a": ALPHA, "b": BETA},
                    agents=[{"name": n, "role": r} for n, r in AGENTS.items()])
    mesh = Mesh(parse_config(data), tmp_path / "mesh.yaml")
    # the names hosts.py checks against are the programs render.py makes, in order
    assert [s.name for s in program_specs(mesh, "/py")] == program_names(mesh.config)
    assert program_names(plain_embedded := parse_config({"mesh": "m"}))[:2] == ["kafka", "redis"]
    assert [s.name for s in program_specs(Mesh(plain_embedded, tmp_path / "m.yaml"), "/py", "-", "-")] \
        == program_names(plain_embedded)
    with pytest.raises(ConfigError, match="over hosts a, b: pass --host NAME"):
        mesh.for_host(None)
    assert mesh.for_host(None, required=False)[0].host is None
    monkeypatch.setenv("AGENTMESH_HOST", "b")
    b, why = mesh.for_host(None)
    assert (b.host, why) == ("b", "from $AGENTMESH_HOST")
    assert b.supervisord_conf == tmp_path / "supervisor.d" / "b" / "supervisord.conf"
    assert b.logs_dir == tmp_path / "logs" / "b"
    assert b.socket == tmp_path / ".agentmesh" / "b" / "supervisor.sock"
    specs = program_specs(b, "/py")
    assert [s.name for s in specs] == BETA
    assert all(s.environment["AGENTMESH_HOST"] == "b" for s in specs)
    with pytest.raises(ConfigError, match=r"--host c: not a host of mesh.yaml \(hosts: a, b\)"):
        mesh.for_host("c")
    plain = Mesh(parse_config({"mesh": "m"}), tmp_path / "mesh.yaml")
    assert plain.for_host(None)[0] == plain  # $AGENTMESH_HOST means nothing without hosts
    assert plain.supervisord_conf == tmp_path / "supervisor.d" / "supervisord.conf"
    with pytest.raises(ConfigError, match="no hosts section"):
        plain.for_host("a")


