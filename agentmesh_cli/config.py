"""The mesh.yaml model: typed, validated before anything starts, errors name the key path.

Pure: `parse_config(data)` turns parsed YAML into a `MeshConfig` or raises one
ConfigError listing every problem. Reading the file, the folders and the secrets are
`agentmesh_cli.mesh` (`load_mesh` returns a `Mesh`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agentmesh_cli import constants as C
from agentmesh_cli.config_llm import Llm, LlmSettings, tool_ref
from agentmesh_cli.config_sections import (  # noqa: F401  (re-exported: the sections' one home is config_sections)
    AUTO_HOST_AGENTS,
    EMBEDDED,
    ENVELOPE_ROOM,
    MAX_REPLICAS,
    MAX_SCALED_FETCH_WAIT_S,
    MIN_GATEWAY_BODY,
    ROUTING_MODELS,
    AutoReplicas,
    ConsensusConfig,
    GatewayConfig,
    HeartbeatConfig,
    KafkaConfig,
    LoggingConfig,
    MetricsConfig,
    RecoveryConfig,
    RedisConfig,
    RoutingConfig,
    Section,
    SecurityConfig,
    ServiceConfig,
    ServicesConfig,
    SupervisorConfig,
    TopologyConfig,
    WorkloadConfig,
)
from agentmesh_cli.config_values import describe_error, key_path
from agentmesh_cli.errors import ConfigError
from agentmesh_cli.hosts import check_hosts

_NAME = C.NAME_PATTERN


class AgentSpec(Section):
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


class MeshConfig(Section):
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
    def _resolved_inbox_reader(self) -> MeshConfig:
        """kafka.inbox_reader: auto, made agent or host by the agent processes declared."""
        kafka = self.kafka
        if kafka.inbox_reader == "auto":
            processes = sum(agent.declared_replicas for agent in self.agents)
            chosen = "host" if processes >= AUTO_HOST_AGENTS else "agent"
            object.__setattr__(self, "kafka", kafka.model_copy(update={"inbox_reader": chosen}))
        return self

    @model_validator(mode="after")
    def _scaled_fetch_wait(self) -> MeshConfig:
        kafka = self.kafka
        # every agent process fetches: a replica group's replicas as mesh.yaml declares
        # (with kafka.inbox_reader: host, none does: the host's reader fetches for them)
        fetching = kafka.inbox_reader == "agent"
        processes = sum(agent.declared_replicas for agent in self.agents) if fetching else 0
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
