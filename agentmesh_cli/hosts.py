"""Several hosts: which programs of a mesh run on which host (mesh.yaml `hosts`).

Pure functions: the program names of a mesh, the check of the `hosts` section (every
program on exactly one host; Kafka and Redis external, since the embedded ones listen on
loopback only), and which host a command acts for.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from agentmesh_cli import constants as C
from agentmesh_cli.errors import ConfigError

if TYPE_CHECKING:
    from agentmesh_cli.config import MeshConfig

HOST_ENV = "AGENTMESH_HOST"  # the host a command acts for when --host is not given
HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # also a folder name
EXTERNAL_NEEDED = ("several hosts need an external Kafka and Redis: set kafka.bootstrap_servers "
                   "and redis.url")


def program_names(config: MeshConfig) -> list[str]:
    """Every supervised program of the mesh, in start order (render.program_specs
    builds their commands in the same order)."""
    names = []
    if config.kafka.embedded:
        names.append(C.PROGRAM_KAFKA)
    if config.redis.embedded:
        names.append(C.PROGRAM_REDIS)
    names += [*C.SERVICE_PROGRAMS, C.PROGRAM_METRICS, *C.MANAGER_PROGRAMS]
    return names + [C.agent_program(agent.name) for agent in config.agents]


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def programs_on(config: MeshConfig, host: str) -> list[str]:
    """The programs that `hosts.<host>` names (exactly or by an fnmatch glob like agent-*)."""
    patterns = config.hosts.get(host, [])
    return [name for name in program_names(config) if any(fnmatchcase(name, p) for p in patterns)]


def check_hosts(config: MeshConfig) -> list[str]:
    """Problems of the `hosts` section, each as 'key.path: what is wrong' (none without it)."""
    if not config.hosts:
        return []
    if config.kafka.embedded or config.redis.embedded:
        return [f"hosts: {EXTERNAL_NEEDED}"]
    problems = []
    known = program_names(config)
    owner: dict[str, list[str]] = {}
    for host, patterns in config.hosts.items():
        if not HOST_NAME.match(host):
            problems.append(f"hosts.{host}: a host name is letters, digits, '_', '.', '-' "
                            "(at most 63, starting with a letter or digit)")
        if not patterns:
            problems.append(f"hosts.{host}: list at least one program")
        for index, pattern in enumerate(patterns):
            matched = [name for name in known if fnmatchcase(name, pattern)]
            if not matched:
                what = "matches no program" if _is_glob(pattern) else "is not a program of this mesh"
                problems.append(f"hosts.{host}[{index}]: {pattern!r} {what} "
                                f"(programs: {', '.join(known)})")
            for name in matched:
                if host not in owner.setdefault(name, []):
                    owner[name].append(host)
    for name in known:
        hosts = owner.get(name, [])
        if len(hosts) > 1:
            problems.append(f"hosts: {name} is on hosts {' and '.join(hosts)}; a program runs on one host")
        elif not hosts:
            problems.append(f"hosts: {name} is on no host; put every program on exactly one host")
    return problems


def choose_host(hosts: Iterable[str], asked: str | None, required: bool) -> tuple[str | None, str]:
    """(the host a command acts for, why it was chosen). `asked` is --host; without it
    $AGENTMESH_HOST, else the host named like this machine. A mesh without hosts has none;
    `required` (up, down, status) refuses to guess between several."""
    names = list(hosts)
    listed = ", ".join(names)
    if not names:
        if asked:
            raise ConfigError(f"--host {asked}: mesh.yaml has no hosts section, so every program "
                              "runs on this host; leave --host out")
        return None, ""
    if asked:
        if asked not in names:
            raise ConfigError(f"--host {asked}: not a host of mesh.yaml (hosts: {listed})")
        return asked, ""
    env = os.environ.get(HOST_ENV)
    if env:
        if env not in names:
            raise ConfigError(f"{HOST_ENV}={env}: not a host of mesh.yaml (hosts: {listed})")
        return env, f"from ${HOST_ENV}"
    machine = socket.gethostname()
    for candidate in (machine, machine.split(".")[0]):
        if candidate in names:
            return candidate, "named like this machine"
    if required:
        raise ConfigError(f"mesh.yaml spreads its programs over hosts {listed}: pass --host NAME "
                          f"(or set {HOST_ENV})")
    return None, ""
