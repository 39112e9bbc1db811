"""The mesh.yaml model: typed, validated before anything starts, errors name the key path.

Pure: `parse_config(data)` turns parsed YAML into a `MeshConfig` or raises one
ConfigError listing every problem. Reading the file, the folders and the secrets are
`agentmesh_cli.mesh` (`load_mesh` returns a `Mesh`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agentmesh_cli import constants as C
from agentmesh_cli.config_llm import Llm, LlmSettings, tool_ref
from agentmesh_cli.config_values import Duration, Fraction, Port, describe_error, key_path, redact_url
from agentmesh_cli.errors import ConfigError
from agentmesh_cli.hosts import check_hosts

EMBEDDED = "embedded"
_NAME = C.NAME_PATTERN


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


class GatewayConfig(_Section):
    """The front door (gateway/, docs/gateway.md): HTTP, Server-Sent Events and MCP for
    clients outside the mesh, with the services' tokens."""

    enabled: bool = True
    host: str = "127.0.0.1"  # loopback: expose it wider on purpose, e.g. 0.0.0.0
    port: Port = C.DEFAULT_GATEWAY_PORT
    # a bigger request body is a 413; below kafka.max_record_bytes by at least
    # ENVELOPE_ROOM, the room the envelope around a payload takes
    max_body_bytes: int = Field(131_072, ge=1024)
    ask_timeout: Duration = 30.0  # an ask through the gateway that names no timeout waits this long
    max_ask_timeout: Duration = 300.0  # the longest timeout a client may ask for
    events_kept: int = Field(1000, ge=10)  # newest events kept per conversation (older: `gone`)
    events_ttl: Duration = 86_400.0  # a conversation idle this long is forgotten (its events too)
    delta_interval: Duration = 0.05  # streamed partial output is coalesced this often


ENVELOPE_ROOM = 4096  # bytes an envelope adds around a gateway payload (ids, meta, names)
MIN_GATEWAY_BODY = 256  # the gateway's body limit when a tiny kafka.max_record_bytes leaves less


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


MAX_REPLICAS = 64  # replicas of one agent, at most (each is an OS process)
ROUTING_MODELS = ("physarum", "p2c_ewma", "round_robin")


class AutoReplicas(_Section):
    """`replicas: {min, max, target_in_flight}`: autoscaled on in-flight work and backlog
    (docs/routing.md, Scaling)."""

    min: int = Field(1, ge=1, le=MAX_REPLICAS)
    max: int = Field(8, ge=1, le=MAX_REPLICAS)
    # messages in flight or waiting per replica the scaler aims at (Ray Serve's
    # target_ongoing_requests)
    target_in_flight: float = Field(4.0, gt=0.0)
    # hysteresis: more replicas only after the load asked for them this long without a
    # break, fewer only after it asked for fewer this long (Ray Serve's upscale_delay_s,
    # downscale_delay_s; shorter here: one machine, replicas start in a second or two)
    upscale_delay: Duration = 5.0
    downscale_delay: Duration = 60.0

    @model_validator(mode="after")
    def _bounds(self) -> AutoReplicas:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class RoutingConfig(_Section):
    """How a sender chooses the replica of a new conversation (docs/routing.md)."""

    model: Literal["physarum", "p2c_ewma", "round_robin"] = "p2c_ewma"
    # a conversation idle this long forgets its replica (the next message is routed anew)
    sticky_idle: Duration = 600.0
    # round_robin only: each replica's weight, its declared capacity (e.g. {Support-1: 4})
    weights: dict[str, float] = {}
    # the model's own knobs (docs/routing.md), e.g. {exploration: 0.02} for physarum
    options: dict[str, float] = {}


class AgentSpec(_Section):
    name: str = Field(pattern=_NAME)
    role: str
    capabilities: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]] = []
    # messages handled at once, each conversation in order (1: one at a time, in order)
    concurrency: int = Field(default=1, ge=1, le=10_000)
    llm: Llm | None = None  # the llm role's settings, over the `llm:` section (config_llm.py)
    # a group of replicas Name-1..Name-N (a replicable role only): a count, or autoscaled
    replicas: Annotated[int, Field(ge=1, le=MAX_REPLICAS)] | AutoReplicas | None = None

    @field_validator("replicas", mode="before")
    @classmethod
    def _replicas(cls, value: Any) -> Any:
        if isinstance(value, bool) or isinstance(value, int | float) and not isinstance(value, int):
            raise ValueError("use a whole number of replicas, or {min, max, target_in_flight}")
        if isinstance(value, int) and not 1 <= value <= MAX_REPLICAS:
            raise ValueError(f"replicas must be between 1 and {MAX_REPLICAS} (got {value})")
        if isinstance(value, dict):  # checked here: a union's errors would name both shapes
            try:
                return AutoReplicas.model_validate(value)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = key_path(first["loc"])
                raise ValueError(f"{where + ': ' if where and first['loc'] else ''}"
                                 f"{describe_error(first)}") from None
        if value is not None and not isinstance(value, int | AutoReplicas):
            raise ValueError("use a whole number of replicas, or {min, max, target_in_flight}")
        return value

    @property
    def grouped(self) -> bool:
        """A replica group: its programs are Name-1..Name-N, `Name` addresses the group."""
        return self.replicas is not None

    @property
    def declared_replicas(self) -> int:
        """How many replicas mesh.yaml declares (autoscaled: its min)."""
        if self.replicas is None:
            return 1
        return self.replicas if isinstance(self.replicas, int) else self.replicas.min

    @property
    def max_replicas(self) -> int:
        """The most replicas this agent may run (autoscaled: its max)."""
        if self.replicas is None:
            return 1
        return self.replicas if isinstance(self.replicas, int) else self.replicas.max

    def replica_names(self, count: int | None = None) -> list[str]:
        """The concrete agents: [Name] alone, or Name-1..Name-count for a group."""
        if not self.grouped:
            return [self.name]
        return [replica_name(self.name, k) for k in range(1, (count or self.declared_replicas) + 1)]

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
    gateway: GatewayConfig = GatewayConfig()
    llm: Llm = Llm()  # defaults of every agent of the llm role (docs/llm.md)
    routing: RoutingConfig = RoutingConfig()
    agents: list[AgentSpec] = []
    # host name -> the programs it runs (names or fnmatch globs like agent-*); see hosts.py
    hosts: dict[str, list[str]] = {}

    @model_validator(mode="after")
    def _scaled_fetch_wait(self) -> MeshConfig:
        kafka = self.kafka
        # every agent process fetches: a replica group's replicas as mesh.yaml declares
        processes = sum(agent.declared_replicas for agent in self.agents)
        scaled = min(MAX_SCALED_FETCH_WAIT_S, kafka.fetch_wait_per_agent * processes)
        if scaled > kafka.fetch_wait:
            # frozen model: the validated section is replaced, as pydantic itself would
            object.__setattr__(self, "kafka", kafka.model_copy(update={"fetch_wait": scaled}))
        return self

    @model_validator(mode="after")
    def _distinct_ports(self) -> MeshConfig:
        ports = {"services.memory.port": self.services.memory.port,
                 "services.cognition.port": self.services.cognition.port,
                 "metrics.port": self.metrics.port}
        if self.gateway.enabled:
            ports["gateway.port"] = self.gateway.port
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

    @model_validator(mode="after")
    def _gateway_body_fits(self) -> MeshConfig:
        """A request the gateway takes fits in a record: set by hand, gateway.max_body_bytes
        must stay ENVELOPE_ROOM below kafka.max_record_bytes; left at its default, it is
        lowered to fit a smaller record limit."""
        room = self.kafka.max_record_bytes - ENVELOPE_ROOM
        gateway = self.gateway
        if gateway.max_body_bytes <= room:
            return self
        if "max_body_bytes" in gateway.model_fields_set:
            raise ValueError(f"gateway.max_body_bytes ({gateway.max_body_bytes}) must stay "
                             f"{ENVELOPE_ROOM} bytes below kafka.max_record_bytes "
                             f"({self.kafka.max_record_bytes}): at most {room}")
        # frozen models: the validated section is replaced, as pydantic itself would
        fitted = gateway.model_copy(update={"max_body_bytes": max(room, MIN_GATEWAY_BODY)})
        object.__setattr__(self, "gateway", fitted)
        return self

    @model_validator(mode="after")
    def _llm_agents(self) -> MeshConfig:
        """An llm agent has a model; its tools name agents of mesh.yaml, never itself."""
        names = {a.name for a in self.agents}
        for index, agent in enumerate(self.agents):
            if agent.role != C.ROLE_LLM and agent.llm is None:
                continue  # the section's defaults are for llm agents (and roles built on them)
            where = f"agents.{index}.llm"
            if agent.role == C.ROLE_LLM and not self.llm_settings(agent).model:
                raise ValueError(f"agent {agent.name!r} (role llm) needs a model: set {where}.model "
                                 "or llm.model")
            for ref in self.llm_settings(agent).tools:
                target, _ = tool_ref(ref)
                if target == agent.name:
                    raise ValueError(f"{where}.tools: {agent.name} cannot be its own tool")
                if target not in names:
                    raise ValueError(f"{where}.tools: {ref!r} names no agent of mesh.yaml "
                                     f"(agents: {', '.join(sorted(names))})")
        return self

    @model_validator(mode="after")
    def _replica_groups(self) -> MeshConfig:
        """Only a replicable built-in role may have replicas > 1 (a role class is checked at
        `up`, agent/resolve.py); a replica's name never clashes with another agent's."""
        names = {a.name for a in self.agents}
        for index, agent in enumerate(self.agents):
            if agent.replicas is None:
                continue
            most = agent.max_replicas
            if most > 1 and agent.role in C.BUILTIN_ROLES and agent.role not in C.REPLICABLE_ROLES:
                raise ValueError(
                    f"agents.{index}.replicas: role {agent.role!r} is not replicable (its state "
                    f"lives in its process); replicable built-in roles: {', '.join(C.REPLICABLE_ROLES)}")
            for name in agent.replica_names(most):
                if name in names:
                    raise ValueError(f"agents.{index}.replicas: replica {name} of {agent.name} "
                                     "clashes with the agent of that name")
        return self

    def groups(self) -> dict[str, AgentSpec]:
        """The replica groups of mesh.yaml by their logical name."""
        return {a.name: a for a in self.agents if a.grouped}

    def concrete_agents(self, scale: dict[str, int] | None = None) -> list[tuple[str, AgentSpec]]:
        """(name, spec) of every agent process: a group's replicas as declared, or as many
        as `scale` says (`agentmesh scale`)."""
        out: list[tuple[str, AgentSpec]] = []
        for agent in self.agents:
            count = (scale or {}).get(agent.name) if agent.grouped else None
            out += [(name, agent) for name in agent.replica_names(count)]
        return out

    def spec_of(self, name: str) -> AgentSpec | None:
        """The spec a concrete agent runs: an agent's own, or its group's for `Name-k`."""
        for agent in self.agents:
            if agent.name == name and not agent.grouped:
                return agent
        group = group_of(name)
        if group is not None:
            spec = next((a for a in self.agents if a.name == group[0] and a.grouped), None)
            if spec is not None:
                return spec
        return None

    def group_name(self, name: str) -> str | None:
        """The group concrete agent `name` is a replica of, or None."""
        spec = self.spec_of(name)
        return spec.name if spec is not None and spec.grouped else None

    def llm_settings(self, agent: AgentSpec) -> LlmSettings:
        """Agent `agent`'s llm settings: its `llm:` over the `llm:` section's defaults."""
        return self.llm.resolve(agent.llm, agent.name, self.mesh)

    def agent_spec(self, name: str, role: str | None, capabilities: list[str] | None) -> AgentSpec:
        """The spec of agent `name`: mesh.yaml's entry, with command-line overrides."""
        base = self.spec_of(name)
        if base is None and any(a.name == name and a.grouped for a in self.agents):
            raise ConfigError(f"agent {name!r} is a replica group: run its replicas, "
                              f"{replica_name(name, 1)} and on")
        if base is None and not role:
            raise ConfigError(f"agent {name!r} is not in mesh.yaml: pass --role")
        data = {
            "name": name,
            "role": role or (base.role if base else ""),
            "capabilities": capabilities if capabilities is not None else (base.capabilities if base else []),
            "concurrency": base.concurrency if base else 1,
            "llm": base.llm if base else None,
        }
        try:
            return AgentSpec.model_validate(data)
        except ValidationError as exc:
            lines = [f"agent {name!r}: {key_path(e['loc'])}: {describe_error(e)}" for e in exc.errors()]
            raise ConfigError("\n".join(lines)) from exc


def replica_name(group: str, index: int) -> str:
    """Replica `index` (from 1) of group `group`: `Support-2`."""
    return f"{group}-{index}"


def group_of(name: str) -> tuple[str, int] | None:
    """(group, index) when `name` looks like a replica name `Group-k`, else None."""
    head, sep, tail = name.rpartition("-")
    if sep and head and tail.isdigit() and not tail.startswith("0"):
        return head, int(tail)
    return None


def parse_config(data: Any, source: str = "mesh.yaml") -> MeshConfig:
    """Validate already-parsed YAML; raise one ConfigError naming the key path of every
    problem (schema, duplicate agent names, hosts), not only the first one met."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the file must be a mapping of keys (mesh, kafka, agents, ...)")
    problems: list[str] = []
    config: MeshConfig | None = None
    try:
        config = MeshConfig.model_validate(data)
    except ValidationError as exc:
        problems += [f"{key_path(e['loc'])}: {describe_error(e)}" for e in exc.errors()]
    problems += _duplicate_agents(data.get("agents"))
    if config is not None and not problems:
        problems += check_hosts(config)
    if problems or config is None:
        raise ConfigError("\n".join(f"{source}: {problem}" for problem in problems))
    return config


def _duplicate_agents(agents: Any) -> list[str]:
    """Agent names given twice, read from the raw list (so they are found even when other
    keys of the file do not validate)."""
    if not isinstance(agents, list):
        return []
    problems = []
    first_index: dict[str, int] = {}
    for index, agent in enumerate(agents):
        name = agent.get("name") if isinstance(agent, dict) else None
        if not isinstance(name, str):
            continue
        if name in first_index:
            problems.append(f"agents[{index}].name: duplicate agent name {name!r} "
                            f"(also agents[{first_index[name]}])")
        else:
            first_index[name] = index
    return problems
