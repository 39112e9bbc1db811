"""supervisord rendering: pure specs -> text, exact keys, %-escaping, start order."""

from __future__ import annotations

import configparser
from pathlib import Path

from agentmesh_cli.config import parse_config
from agentmesh_cli.constants import DEFAULT_DRAIN_TIMEOUT_S
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.supervisor.render import (
    ProgramSpec,
    percent_escape,
    program_specs,
    render_all,
    render_program,
)


def make_mesh(root: Path, **extra: object) -> Mesh:
    data = {
        "mesh": "shop",
        "agents": [{"name": "Sales", "role": "sales", "capabilities": ["a", "b"]},
                   {"name": "Fraud", "role": "fraud"}],
        **extra,
    }
    return Mesh(parse_config(data), root / "mesh.yaml")


def test_percent_escape() -> None:
    assert percent_escape("100% sure %(here)s") == "100%% sure %%(here)s"
    assert percent_escape("plain") == "plain"


def test_embedded_mesh_programs_in_start_order(tmp_path: Path) -> None:
    specs = program_specs(make_mesh(tmp_path), "/py", tansu="/bin/tansu", valkey="/bin/valkey")
    assert [(s.name, s.priority, s.tier) for s in specs] == [
        ("kafka", 10, "infra"),
        ("redis", 10, "infra"),
        ("memory", 20, "services"),
        ("cognition", 20, "services"),
        ("metrics", 20, "services"),
        ("gateway", 20, "services"),
        ("topology-manager", 30, "managers"),
        ("consensus-manager", 30, "managers"),
        ("agent-Sales", 40, "agents"),
        ("agent-Fraud", 40, "agents"),
    ]
    kafka, redis, memory, cognition, metrics, gateway, topo, consensus, sales, fraud = specs
    config = str(tmp_path / "mesh.yaml")
    assert gateway.command == ["/py", "-m", "agentmesh_cli", "gateway", "--config", config]
    assert memory.command == ["/py", "-m", "agentmesh_cli", "memory", "--config", str(tmp_path / "mesh.yaml")]
    assert cognition.command[3:5] == ["cognition", "--config"]
    assert metrics.command == ["/py", "-m", "agentmesh_cli", "metrics", "--config",
                               str(tmp_path / "mesh.yaml")]
    assert kafka.command == ["/bin/tansu", "broker", "--listener-url", "tcp://127.0.0.1:29092",
                             "--advertised-listener-url", "tcp://127.0.0.1:29092",
                             "--storage-engine", "memory://tansu/"]
    # the password comes from a private config file, never the command line (`ps` shows it)
    assert redis.command[:6] == ["/bin/valkey", str(tmp_path / ".agentmesh" / "valkey.conf"),
                                 "--bind", "127.0.0.1", "--port", "26379"]
    assert str(tmp_path / ".agentmesh" / "valkey") in redis.command
    assert topo.command == ["/py", "-m", "agentmesh_cli", "topology", "--config", str(tmp_path / "mesh.yaml")]
    assert consensus.command[3:5] == ["consensus", "--config"]
    # agents run the lean entry (agent/__main__.py), not the whole Typer CLI
    assert sales.command == ["/py", "-m", "agentmesh_cli.agent", "--name", "Sales", "--role", "sales",
                             "--capabilities", "a,b", "--config", str(tmp_path / "mesh.yaml")]
    assert "--capabilities" not in fraud.command


def test_external_infra_starts_nothing_embedded(tmp_path: Path) -> None:
    mesh = make_mesh(tmp_path, kafka={"bootstrap_servers": "k1:9092"}, redis={"url": "redis://r:6379/0"})
    names = [s.name for s in program_specs(mesh, "/py")]
    assert names == ["memory", "cognition", "metrics", "gateway", "topology-manager", "consensus-manager",
                     "agent-Sales", "agent-Fraud"]


def test_agents_stop_wait_covers_the_drain(tmp_path: Path) -> None:
    """An agent asked to stop may finish its handlers for as long as `down` drains by
    default; supervisord kills it only after that and a margin. The rest keep 10 s (5 s infra)."""
    waits = {s.name: s.stopwaitsecs for s in program_specs(make_mesh(tmp_path), "/py", "/t", "/v")}
    assert waits == {"kafka": 5, "redis": 5, "memory": 10, "cognition": 10, "metrics": 10,
                     "gateway": 10,
                     "topology-manager": 10, "consensus-manager": 10, "agent-Sales": 40,
                     "agent-Fraud": 40}
    assert waits["agent-Sales"] > DEFAULT_DRAIN_TIMEOUT_S


def test_program_section_parses_back(tmp_path: Path) -> None:
    spec = ProgramSpec("agent-X", ["/py", "-m", "agentmesh_cli.agent", "--name", "X", "--role", "a 50%"],
                       40, {"K": "v%1"})
    text = render_program(spec, tmp_path, tmp_path / "logs")
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    section = parser["program:agent-X"]
    assert section["command"] == "/py -m agentmesh_cli.agent --name X --role 'a 50%%'"
    assert section["priority"] == "40"
    assert section["autorestart"] == "true"
    assert section["stopasgroup"] == "true" and section["killasgroup"] == "true"
    assert section["stopwaitsecs"] == "10"
    assert section["redirect_stderr"] == "true"
    assert section["stdout_logfile"] == str(tmp_path / "logs" / "agent-X.log")
    assert section["environment"] == 'K="v%%1"'


def test_render_all_files(tmp_path: Path) -> None:
    mesh = make_mesh(tmp_path)
    files = render_all(mesh, program_specs(mesh, "/py", tansu="/t", valkey="/v"))
    assert sorted(files) == ["agent-Fraud.ini", "agent-Sales.ini", "cognition.ini", "consensus-manager.ini",
                             "gateway.ini", "kafka.ini", "memory.ini", "metrics.ini", "redis.ini",
                             "supervisord.conf", "topology-manager.ini"]
    conf = configparser.RawConfigParser()
    conf.read_string(files["supervisord.conf"])
    assert conf["unix_http_server"]["file"] == str(tmp_path / ".agentmesh" / "supervisor.sock")
    assert conf["unix_http_server"]["chmod"] == "0700"
    assert conf["supervisorctl"]["serverurl"] == f"unix://{tmp_path / '.agentmesh' / 'supervisor.sock'}"
    assert conf["include"]["files"] == "*.ini"
    assert conf["supervisord"]["logfile"] == str(tmp_path / "logs" / "supervisord.log")
