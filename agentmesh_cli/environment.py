"""Every environment variable agentmesh reads, in one place.

The seed's variables (`MEMORY_SERVICE_URL`, `COGNITION_SERVICE_URL`, `MEMORY_SERVICE_PORT`,
`COGNITION_SERVICE_PORT`, `CORTEX_DISTRIBUTED_MODE`) and ours (`AGENTMESH_*`). No other
module reads `os.environ`; each function takes the mapping to read as an argument
(default: this process's environment), so callers and tests can hand in their own.

- `AGENTMESH_CONFIG`: mesh.yaml of every command without `--config` (default ./mesh.yaml);
- `AGENTMESH_HOST`: the host of mesh.yaml's `hosts` a command acts for without `--host`;
- `AGENTMESH_REDIS_PASSWORD`, `AGENTMESH_SERVICE_TOKEN`, `AGENTMESH_MESH_KEY`: the mesh's
  secrets, over `.agentmesh/secrets.json`;
- `MEMORY_SERVICE_URL`, `COGNITION_SERVICE_URL`: where agents find a service (over mesh.yaml);
- `MEMORY_SERVICE_PORT`, `COGNITION_SERVICE_PORT`: a service's port (over mesh.yaml);
- `CORTEX_DISTRIBUTED_MODE`: `false` (or 0, no, off) runs the services inside each agent;
- `AGENTMESH_PORT_LANE`: `N/COUNT`, `free_port` hands out only ports of lane N of COUNT,
  so that runs side by side (test workers) never pick the same one;
- `${NAME}` in mesh.yaml's `kafka.client` strings and `redis.url`: any variable (`expand`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from agentmesh_cli import constants as C
from agentmesh_cli.errors import ConfigError

CONFIG = "AGENTMESH_CONFIG"
HOST = C.HOST_VARIABLE
PORT_LANE = "AGENTMESH_PORT_LANE"
DISTRIBUTED_MODE = "CORTEX_DISTRIBUTED_MODE"
# secret name (credentials.Credentials field) -> the variable that overrides the file
SECRETS = {
    "redis_password": "AGENTMESH_REDIS_PASSWORD",
    "service_token": "AGENTMESH_SERVICE_TOKEN",
    "mesh_key": "AGENTMESH_MESH_KEY",
}
DEFAULT_CONFIG = "mesh.yaml"
_FALSE = ("false", "0", "no", "off")
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def current() -> dict[str, str]:
    """A copy of this process's environment, to start a child process with."""
    return dict(os.environ)


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    """mesh.yaml of a command without --config: $AGENTMESH_CONFIG, else ./mesh.yaml."""
    return Path(_env(environ).get(CONFIG) or DEFAULT_CONFIG)


def host(environ: Mapping[str, str] | None = None) -> str:
    """$AGENTMESH_HOST, or "" when unset."""
    return _env(environ).get(HOST, "")


def distributed_mode(environ: Mapping[str, str] | None = None) -> bool:
    """False when CORTEX_DISTRIBUTED_MODE says so (false/0/no/off): in-process services."""
    return _env(environ).get(DISTRIBUTED_MODE, "true").strip().lower() not in _FALSE


def service_url_variable(service: str) -> str:
    return f"{service.upper()}_SERVICE_URL"


def service_port_variable(service: str) -> str:
    return f"{service.upper()}_SERVICE_PORT"


def service_url(service: str, environ: Mapping[str, str] | None = None) -> str:
    """$<SERVICE>_SERVICE_URL, stripped ("" when unset)."""
    return _env(environ).get(service_url_variable(service), "").strip()


def service_port(service: str, environ: Mapping[str, str] | None = None) -> int | None:
    """$<SERVICE>_SERVICE_PORT as a port, None when unset; ConfigError when not a port."""
    variable = service_port_variable(service)
    raw = _env(environ).get(variable, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ConfigError(f"{variable}={raw!r} is not a port (1-65535)")
    return int(raw)


def secret_overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Secret name -> value of its variable ("" when unset)."""
    env = _env(environ)
    return {name: env.get(variable, "") for name, variable in SECRETS.items()}


def port_lane(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(lane, lanes) from $AGENTMESH_PORT_LANE "N/COUNT"; (0, 1) when unset."""
    raw = _env(environ).get(PORT_LANE, "").strip()
    if not raw:
        return 0, 1
    lane, _, lanes = raw.partition("/")
    if not (lane.isdigit() and lanes.isdigit() and int(lanes) >= 1):
        raise ConfigError(f"{PORT_LANE}={raw!r}: use N/COUNT, e.g. 0/2")
    return int(lane) % int(lanes), int(lanes)


def expand(value: str, key: str, environ: Mapping[str, str] | None = None) -> str:
    """`value` with every ${NAME} replaced by environment variable NAME (unset: ConfigError
    naming `key`, the mesh.yaml key that refers to it)."""
    env = _env(environ)

    def variable(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ConfigError(f"{key} refers to ${{{name}}}, but the environment has no {name}")
        return env[name]

    return _REFERENCE.sub(variable, value)


def expand_all(settings: Mapping[str, str | int | float | bool], key: str,
               environ: Mapping[str, str] | None = None) -> dict[str, str | int | float | bool]:
    """`settings` with ${NAME} expanded in every string value (`key` names the section)."""
    return {name: expand(value, f"{key}.{name}", environ) if isinstance(value, str) else value
            for name, value in settings.items()}
