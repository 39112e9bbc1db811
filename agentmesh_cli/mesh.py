"""A mesh on disk: its validated mesh.yaml, the folders `up` uses and its secrets.

`load_mesh(path)` reads and validates mesh.yaml (`config.parse_config`) and returns a
`Mesh`: the `MeshConfig` plus supervisor.d/, logs/ and the state folder, all relative to
mesh.yaml's folder, and the mesh's generated secrets (`credentials`), made on first use.
"""

from __future__ import annotations

import functools
import hashlib
import socket
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from agentmesh_cli import constants as C
from agentmesh_cli import environment
from agentmesh_cli.config import MeshConfig, parse_config
from agentmesh_cli.config_sections import RedisConfig
from agentmesh_cli.credentials import Credentials, load_credentials
from agentmesh_cli.errors import ConfigError

MAX_SOCKET_PATH = 100
# libyaml's safe loader when PyYAML was built with it (the same values: the resolver is the
# same): a mesh.yaml of 128 agents took 19 ms of CPU to parse in Python, 2 ms in C, and
# every command and every agent's start reads it
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Mesh:
    """A validated config plus where its files live.

    `host` is set when mesh.yaml spreads its programs over `hosts`: the mesh as that host
    runs its share, with its own supervisord (configs, socket, pid file and logs in
    sub-folders named after the host, so several hosts can share one folder)."""

    config: MeshConfig
    config_file: Path
    host: str | None = None

    def for_host(self, name: str | None, required: bool = True) -> tuple[Mesh, str]:
        """(this mesh as host `name` runs it, why that host). None: $AGENTMESH_HOST, else
        the host named like this machine (`choose_host`); no hosts: the mesh as is."""
        host, why = choose_host(self.config.hosts, name, required)
        return replace(self, host=host), why

    def _per_host(self, folder: str) -> Path:
        return self.root / folder / self.host if self.host else self.root / folder

    @property
    def root(self) -> Path:
        return self.config_file.parent

    @property
    def supervisor_dir(self) -> Path:
        return self._per_host(C.SUPERVISOR_DIR)

    @property
    def logs_dir(self) -> Path:
        return self._per_host(C.LOGS_DIR)

    @property
    def state_dir(self) -> Path:
        return self._per_host(C.STATE_DIR)

    @property
    def supervisord_conf(self) -> Path:
        return self.supervisor_dir / C.SUPERVISORD_CONF

    @property
    def socket(self) -> Path:
        return self._socket(C.SUPERVISOR_SOCKET, "")

    @property
    def inbox_socket(self) -> Path:
        """Where the host's inbox reader listens (kafka.inbox_reader: host)."""
        return self._socket(C.INBOX_SOCKET, "-inbox")

    def _socket(self, name: str, suffix: str) -> Path:
        path = self.state_dir / name
        if len(str(path)) <= MAX_SOCKET_PATH:
            return path
        # unix socket paths are limited to ~107 bytes: use a short one, unique per mesh folder
        where = str(self.root) + (f"/{self.host}" if self.host else "")
        digest = hashlib.sha256(where.encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"agentmesh-{digest}{suffix}.sock"

    @property
    def keys(self) -> C.Keys:
        return C.Keys(self.config.mesh)

    @functools.cached_property
    def credentials(self) -> Credentials:
        """The mesh's generated secrets (agentmesh_cli.credentials), made on first use."""
        return load_credentials(self.root)

    @property
    def redis_url(self) -> str:
        """The URL to connect to Redis with (it may hold a password: never show it; show
        `config.redis.resolved_url`). The embedded Valkey's password is the generated one."""
        redis = self.config.redis
        return redis_url(redis, self.credentials.redis_password if redis.embedded else "")

    def topic(self, short: str) -> str:
        return f"{self.config.kafka.topic_prefix}.{short}"


def redis_url(redis: RedisConfig, password: str) -> str:
    """The URL to connect to mesh.yaml's `redis` with: the embedded Valkey's with `password`
    (the mesh's generated one), else the URL with its ${VARIABLES} expanded."""
    if redis.embedded:
        return f"redis://:{password}@127.0.0.1:{redis.port}/0"
    return environment.expand(redis.url, "redis.url")


def load_mesh(path: Path | str | None = None) -> Mesh:
    """Read and validate mesh.yaml."""
    file = Path(path) if path is not None else environment.config_path()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{file}: no such file (pass --config or run where mesh.yaml is)") from exc
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from exc
    try:
        data = yaml.load(text, Loader=SAFE_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{file}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    return Mesh(parse_config(data, source=file.name), file.resolve())


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
    variable = environment.HOST
    env = environment.host()
    if env:
        if env not in names:
            raise ConfigError(f"{variable}={env}: not a host of mesh.yaml (hosts: {listed})")
        return env, f"from ${variable}"
    machine = socket.gethostname()
    for candidate in (machine, machine.split(".")[0]):
        if candidate in names:
            return candidate, "named like this machine"
    if required:
        raise ConfigError(f"mesh.yaml spreads its programs over hosts {listed}: pass --host NAME "
                          f"(or set {variable})")
    return None, ""
