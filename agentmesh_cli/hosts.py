"""Several hosts: which programs of a mesh run on which host (mesh.yaml `hosts`).

Pure functions: the program names of a mesh, and the check of the `hosts` section (every
program on exactly one host; Kafka and Redis external, since the embedded ones listen on
loopback only). Which host a command acts for is `mesh.choose_host`.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from agentmesh_cli import constants as C

if TYPE_CHECKING:
    from agentmesh_cli.config import MeshConfig

HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # also a folder name
EXTERNAL_NEEDED = ("several hosts need an external Kafka and Redis: set kafka.bootstrap_servers "
                   "and redis.url")


# programs that may run on any number of hosts, none included: the gateway keeps nothing of
# its own (several processes serve one mesh), so a host that names it runs one
ANY_HOSTS = frozenset({C.PROGRAM_GATEWAY})
# programs that run on every host that runs an agent, without being named there: the
# inbox reader reads for its host's agents (kafka.inbox_reader: host)
WITH_AGENTS = frozenset({C.PROGRAM_INBOX})


def program_names(config: MeshConfig, scale: dict[str, int] | None = None) -> list[str]:
    """Every supervised program of the mesh, in start order (render.program_specs
    builds their commands in the same order); a replica group's as `scale` says, else as
    declared."""
    names = []
    if config.kafka.embedded:
        names.append(C.PROGRAM_KAFKA)
    if config.redis.embedded:
        names.append(C.PROGRAM_REDIS)
    names += [*C.SERVICE_PROGRAMS, C.PROGRAM_METRICS]
    if config.gateway.enabled:
        names.append(C.PROGRAM_GATEWAY)
    names += list(C.MANAGER_PROGRAMS)
    if config.kafka.inbox_reader == "host":
        names.append(C.PROGRAM_INBOX)
    if any(not isinstance(a.replicas, int | None) for a in config.agents):
        names.append(C.PROGRAM_AUTOSCALER)
    return names + [C.agent_program(name) for name, _ in config.concrete_agents(scale)]


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def programs_on(config: MeshConfig, host: str, scale: dict[str, int] | None = None) -> list[str]:
    """The programs that `hosts.<host>` names (exactly or by an fnmatch glob like agent-*)."""
    patterns = config.hosts.get(host, [])
    names = program_names(config, scale)
    mine = [name for name in names if any(fnmatchcase(name, p) for p in patterns)]
    if any(name.startswith(C.AGENT_PROGRAM_PREFIX) for name in mine):
        mine += [name for name in names if name in WITH_AGENTS and name not in mine]
    return [name for name in names if name in mine]


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
        if name in ANY_HOSTS or name in WITH_AGENTS:
            continue
        hosts = owner.get(name, [])
        if len(hosts) > 1:
            problems.append(f"hosts: {name} is on hosts {' and '.join(hosts)}; a program runs on one host")
        elif not hosts:
            problems.append(f"hosts: {name} is on no host; put every program on exactly one host")
    return problems
