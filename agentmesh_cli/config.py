"""The mesh.yaml model: typed, validated before anything starts, errors name the key path.

`load_mesh(path)` returns a `Mesh`: the validated `MeshConfig` plus the folders that
`up` uses (supervisor.d/, logs/, the state folder), all relative to mesh.yaml's folder.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agentmesh_cli import constants as C
from agentmesh_cli.credentials import Credentials, load_credentials
from agentmesh_cli.errors import ConfigError
from agentmesh_cli.hosts import check_hosts, choose_host

EMBEDDED = "embedded"
MAX_SOCKET_PATH = 100
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_NAME = C.NAME_PATTERN


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: str, key: str) -> str:
    """`value` with every ${NAME} replaced by environment variable NAME (unset: ConfigError
    naming `key`, the mesh.yaml key that refers to it)."""
    def variable(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(f"{key} refers to ${{{name}}}, but the environment has no {name}")
        return os.environ[name]

    return _ENV_REFERENCE.sub(variable, value)


def redact_url(url: str) -> str:
    """A URL as safe to show: its password (if any) replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def parse_duration(value: Any) -> float:
    """`5s`, `250ms`, `2m`, `1h` or a bare number of seconds -> seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 5s, 250ms or 2m")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration (use e.g. 5s, 250ms, 2m)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be greater than 0")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
Port = Annotated[int, Field(ge=1, le=65535)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


MAX_SCALED_FETCH_WAIT_S = 0.2  # (MeshConfig) the fetch wait the agent count raises it to, at most


class KafkaConfig(_Section):
    bootstrap_servers: str = EMBEDDED
    topic_prefix: str = Field("agentmesh", pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(16, ge=1, le=1024)
    port: Port = C.DEFAULT_EMBEDDED_KAFKA_PORT  # used only by the embedded broker
    # how long an idle reader's fetch waits at the broker: lower is faster, costs idle CPU
    # (the embedded broker does not answer a waiting fetch when data arrives). The mesh
    # raises it to fetch_wait_per_agent x agents (up to MAX_SCALED_FETCH_WAIT_S) when that
    # is more: every idle agent costs the embedded broker a fetch per wait, about 0.27 ms
    # of its CPU each, so at 10 ms 64 idle agents took 1.3 cores and starved the mesh
    fetch_wait: Duration = 0.01
    fetch_wait_per_agent: Duration = 0.001
    manager_fetch_wait: Duration = 0.002  # the same for the consensus manager (decisions wait on it)
    # the topology manager reads every message, and nothing waits on it: a long wait makes
    # few, big fetches (at 2 ms its fetches alone took a fifth of a core of the embedded
    # broker under load)
    topology_fetch_wait: Duration = 0.1
    # a record bigger than this is a dead letter, never handed to a role
    max_record_bytes: int = Field(262_144, ge=1024)
    client: dict[str, str | int | float | bool] = {}  # passed to librdkafka as is

    @property
    def embedded(self) -> bool:
        return self.bootstrap_servers == EMBEDDED

    @property
    def client_settings(self) -> dict[str, str | int | float | bool]:
        """`client` with ${VAR} in its strings replaced from the environment, so a password
        (sasl.password, ssl.key.password) need not be written into mesh.yaml."""
        return {key: expand_env(value, f"kafka.client.{key}") if isinstance(value, str) else value
                for key, value in self.client.items()}

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}" if self.embedded else self.bootstrap_servers


class RedisConfig(_Section):
    url: str = EMBEDDED
    port: Port = C.DEFAULT_EMBEDDED_REDIS_PORT  # used only by the embedded Valkey

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str) -> str:
        if url != EMBEDDED and urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("use 'embedded' or a URL redis://[:password@]host:port/db (or rediss://)")
        return url

    @property
    def embedded(self) -> bool:
        return self.url == EMBEDDED

    @property
    def resolved_url(self) -> str:
        """The address, as safe to show: an external URL's password is replaced by ***
        (`Mesh.redis_url` is the one to connect with)."""
        return f"redis://127.0.0.1:{self.port}/0" if self.embedded else redact_url(self.url)


class TopologyConfig(_Section):
    initial_weight: Fraction = 0.5
    reinforcement: Fraction = 0.1
    max_weight: float = Field(1.0, gt=0.0)
    decay: Fraction = 0.05
    decay_interval: Duration = 5.0
    prune_threshold: Fraction = 0.1
    snapshot_interval: Duration = 5.0

    @model_validator(mode="after")
    def _weights(self) -> TopologyConfig:
        if not self.prune_threshold < self.initial_weight <= self.max_weight:
            raise ValueError("need prune_threshold < initial_weight <= max_weight")
        return self


class ConsensusConfig(_Section):
    quorum: float = Field(0.6, gt=0.0, le=1.0)
    proposal_timeout: Duration = 30.0
    min_intensity: Fraction = 0.3
    snapshot_interval: Duration = 1.0


class HeartbeatConfig(_Section):
    interval: Duration = 30.0
    missed: int = Field(3, ge=1)


class RecoveryConfig(_Section):
    # ids of the newest messages each agent handled, kept in its Redis ledger and in its
    # memory: a redelivered or repeated message within this window is not handled again
    dedup_window: int = Field(20_000, ge=100, le=1_000_000)


class SupervisorConfig(_Section):
    """supervisord's restart policy for every program (see docs/architecture.md)."""

    # a program that exits sooner than this after its start is a failed start
    startsecs: int = Field(3, ge=1, le=60)
    # failed starts in a row retried (after 1, 2, 3 ... s) before the program is FATAL
    startretries: int = Field(5, ge=0, le=100)


class ServiceConfig(_Section):
    host: str = "127.0.0.1"
    port: Port


class ServicesConfig(_Section):
    memory: ServiceConfig = ServiceConfig(port=9000)
    cognition: ServiceConfig = ServiceConfig(port=9100)
    # HTTPS: both services serve TLS with this PEM certificate and key (files), and their
    # clients verify it against tls_ca (a PEM CA bundle; empty: the system's store)
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    # browsers from these origins may call the services (CORS); none: CORS is off. The MCP
    # endpoint also accepts requests with these Origin headers (and loopback ones)
    cors_origins: list[str] = []
    max_body_bytes: int = Field(1_048_576, ge=1024)  # a bigger request body is a 413
    health_interval: Duration = 30.0  # each client checks its service's /health this often
    breaker_failures: int = Field(5, ge=1)  # consecutive failed calls that open a client's breaker
    breaker_reset: Duration = 30.0  # an open breaker lets one probe through after this
    pending_limit: int = Field(10_000, ge=1)  # memory writes an agent buffers while memory is down


    @model_validator(mode="after")
    def _tls_pair(self) -> ServicesConfig:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        return self

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"


class SecurityConfig(_Section):
    """Message-level integrity (docs/security.md). Transport and service secrets are in
    the sections they secure (kafka.client, redis.url, services.tls_*)."""

    # every record is signed with the mesh key (HMAC-SHA256, a Kafka header); an unsigned
    # or forged record is a dead letter, so a process that reaches the broker without
    # the key cannot speak for an agent or vote. On by default: the embedded broker takes
    # any local client. Off only for a broker that authenticates every producer and
    # writers outside agentmesh that cannot sign.
    sign_envelopes: bool = True


class MetricsConfig(_Section):
    """The Prometheus exporter (`agentmesh metrics`): one scrape URL for the whole mesh."""

    host: str = "127.0.0.1"  # loopback: expose it wider on purpose, e.g. 0.0.0.0
    port: Port = C.DEFAULT_METRICS_PORT


class WorkloadConfig(_Section):
    """Rates of the built-in e-commerce demo roles (0 switches a flow off)."""

    order_rate: float = Field(1.0, ge=0.0)  # orders per second that a sales agent opens
    lead_rate: float = Field(0.15, ge=0.0)  # upsell leads per second that support passes to sales
    discount_threshold: float = Field(1000.0, ge=0.0)  # sales proposes a discount from this amount
    refund_rate: float = Field(0.1, ge=0.0)  # refunds per second that support proposes
    seed: int | None = None  # fixed seed for a repeatable demo


class LoggingConfig(_Section):
    """How every role process logs: one line per event, as text or as JSON objects."""

    json_lines: bool = Field(False, alias="json")  # one JSON object per line instead of text
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, level: Any) -> Any:
        return level.upper() if isinstance(level, str) else level


class AgentSpec(_Section):
    name: str = Field(pattern=_NAME)
    role: str
    capabilities: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]] = []

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role in C.BUILTIN_ROLES or re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", role):
            return role
        raise ValueError(
            f"unknown role {role!r}: use one of {', '.join(C.BUILTIN_ROLES)} "
            "or a class as 'package.module:Class'"
        )


class MeshConfig(_Section):
    mesh: str = Field(pattern=_NAME)
    kafka: KafkaConfig = KafkaConfig()
    redis: RedisConfig = RedisConfig()
    topology: TopologyConfig = TopologyConfig()
    consensus: ConsensusConfig = ConsensusConfig()
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    recovery: RecoveryConfig = RecoveryConfig()
    services: ServicesConfig = ServicesConfig()
    metrics: MetricsConfig = MetricsConfig()
    workload: WorkloadConfig = WorkloadConfig()
    logging: LoggingConfig = LoggingConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    security: SecurityConfig = SecurityConfig()
    agents: list[AgentSpec] = []
    # host name -> the programs it runs (names or fnmatch globs like agent-*); see hosts.py
    hosts: dict[str, list[str]] = {}

    @model_validator(mode="after")
    def _scaled_fetch_wait(self) -> MeshConfig:
        kafka = self.kafka
        scaled = min(MAX_SCALED_FETCH_WAIT_S, kafka.fetch_wait_per_agent * len(self.agents))
        if scaled > kafka.fetch_wait:
            # frozen model: the validated section is replaced, as pydantic itself would
            object.__setattr__(self, "kafka", kafka.model_copy(update={"fetch_wait": scaled}))
        return self

    @model_validator(mode="after")
    def _distinct_ports(self) -> MeshConfig:
        ports = {"services.memory.port": self.services.memory.port,
                 "services.cognition.port": self.services.cognition.port,
                 "metrics.port": self.metrics.port}
        if self.kafka.embedded:
            ports["kafka.port"] = self.kafka.port
        if self.redis.embedded:
            ports["redis.port"] = self.redis.port
        seen: dict[int, str] = {}
        for key, port in ports.items():
            if port in seen:
                raise ValueError(f"{seen[port]} and {key} must differ (both are {port})")
            seen[port] = key
        return self

    def agent_spec(self, name: str, role: str | None, capabilities: list[str] | None) -> AgentSpec:
        """The spec of agent `name`: mesh.yaml's entry, with command-line overrides."""
        base = next((a for a in self.agents if a.name == name), None)
        if base is None and not role:
            raise ConfigError(f"agent {name!r} is not in mesh.yaml: pass --role")
        data = {
            "name": name,
            "role": role or (base.role if base else ""),
            "capabilities": capabilities if capabilities is not None else (base.capabilities if base else []),
        }
        try:
            return AgentSpec.model_validate(data)
        except ValidationError as exc:
            lines = [f"agent {name!r}: {_key_path(e['loc'])}: {_describe(e)}" for e in exc.errors()]
            raise ConfigError("\n".join(lines)) from exc


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
        the host named like this machine (hosts.choose_host); no hosts: the mesh as is."""
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
        path = self.state_dir / C.SUPERVISOR_SOCKET
        if len(str(path)) <= MAX_SOCKET_PATH:
            return path
        # unix socket paths are limited to ~107 bytes: use a short one, unique per mesh folder
        where = str(self.root) + (f"/{self.host}" if self.host else "")
        digest = hashlib.sha256(where.encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"agentmesh-{digest}.sock"

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
        if redis.embedded:
            return f"redis://:{self.credentials.redis_password}@127.0.0.1:{redis.port}/0"
        return expand_env(redis.url, "redis.url")

    def topic(self, short: str) -> str:
        return f"{self.config.kafka.topic_prefix}.{short}"


def default_config_path() -> Path:
    return Path(os.environ.get("AGENTMESH_CONFIG", "mesh.yaml"))


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not part.startswith(("function-", "function_")):  # validator names are not keys
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def _describe(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def parse_config(data: Any, source: str = "mesh.yaml") -> MeshConfig:
    """Validate already-parsed YAML; raise ConfigError naming the key path of each problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the file must be a mapping of keys (mesh, kafka, agents, ...)")
    try:
        config = MeshConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: {_key_path(e['loc'])}: {_describe(e)}" for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from exc
    first_index: dict[str, int] = {}
    for index, agent in enumerate(config.agents):
        if agent.name in first_index:
            raise ConfigError(
                f"{source}: agents[{index}].name: duplicate agent name {agent.name!r} "
                f"(also agents[{first_index[agent.name]}])"
            )
        first_index[agent.name] = index
    problems = check_hosts(config)
    if problems:
        raise ConfigError("\n".join(f"{source}: {problem}" for problem in problems))
    return config


def load_mesh(path: Path | str | None = None) -> Mesh:
    """Read and validate mesh.yaml."""
    file = Path(path) if path is not None else default_config_path()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{file}: no such file (pass --config or run where mesh.yaml is)") from exc
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{file}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    return Mesh(parse_config(data, source=file.name), file.resolve())
