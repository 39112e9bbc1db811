"""The sections of mesh.yaml (pure): each a frozen pydantic model whose unknown keys are
errors, with its defaults. config.py puts them together (MeshConfig) with the agents."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agentmesh_cli import constants as C
from agentmesh_cli.config_values import Duration, Fraction, Port, redact_url

EMBEDDED = "embedded"
class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


MAX_SCALED_FETCH_WAIT_S = 0.2  # (MeshConfig) the fetch wait the agent count raises it to, at most
# (MeshConfig) kafka.inbox_reader: auto is `host` from this many agent processes up: each
# agent fetching its own inbox costs the machine a consumer's fixed CPU, and at 128 agents
# under load those took both cores and stalled the broker (docs/performance.md)
AUTO_HOST_AGENTS = 16


class KafkaConfig(Section):
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
    # a reader with nothing to read for a moment stops fetching until a sender rings it
    # (through Redis, doorbell.py): an idle mesh costs the broker nothing; idle_probe: how
    # often a sleeping reader fetches anyway (a ring lost with its sender's crash)
    idle_sleep: bool = True
    idle_probe: Duration = Field(5.0, gt=0, le=60)
    # who fetches the agents' inboxes: `agent`, each agent its own (one fetching consumer
    # per agent); `host`, one reader per host (program `inbox-reader`) that fetches them
    # once and hands each agent its records over a local socket (inbox_wire.py); `auto`,
    # host when the mesh declares AUTO_HOST_AGENTS agent processes or more (MeshConfig
    # resolves it: a mesh's config never says auto once loaded)
    inbox_reader: Literal["agent", "host", "auto"] = "auto"
    # a record bigger than this is a dead letter, never handed to a role
    max_record_bytes: int = Field(262_144, ge=1024)
    client: dict[str, str | int | float | bool] = {}  # passed to librdkafka as is

    @property
    def embedded(self) -> bool:
        return self.bootstrap_servers == EMBEDDED

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}" if self.embedded else self.bootstrap_servers


class RedisConfig(Section):
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


class TopologyConfig(Section):
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


class ConsensusConfig(Section):
    quorum: float = Field(0.6, gt=0.0, le=1.0)
    proposal_timeout: Duration = 30.0
    min_intensity: Fraction = 0.3
    snapshot_interval: Duration = 1.0


class HeartbeatConfig(Section):
    interval: Duration = 30.0
    missed: int = Field(3, ge=1)


class RecoveryConfig(Section):
    # ids of the newest messages each agent handled, kept in its Redis ledger and in its
    # memory: a redelivered or repeated message within this window is not handled again
    dedup_window: int = Field(20_000, ge=100, le=1_000_000)


class SupervisorConfig(Section):
    """supervisord's restart policy for every program (see docs/architecture.md)."""

    # a program that exits sooner than this after its start is a failed start
    startsecs: int = Field(3, ge=1, le=60)
    # failed starts in a row retried (after 1, 2, 3 ... s) before the program is FATAL
    startretries: int = Field(5, ge=0, le=100)


class ServiceConfig(Section):
    host: str = "127.0.0.1"
    port: Port


class ServicesConfig(Section):
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


class GatewayConfig(Section):
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


class SecurityConfig(Section):
    """Message-level integrity (docs/security.md). Transport and service secrets are in
    the sections they secure (kafka.client, redis.url, services.tls_*)."""

    # every record is signed with the mesh key (HMAC-SHA256, a Kafka header); an unsigned
    # or forged record is a dead letter, so a process that reaches the broker without
    # the key cannot speak for an agent or vote. On by default: the embedded broker takes
    # any local client. Off only for a broker that authenticates every producer and
    # writers outside agentmesh that cannot sign.
    sign_envelopes: bool = True


class MetricsConfig(Section):
    """The Prometheus exporter (`agentmesh metrics`): one scrape URL for the whole mesh."""

    host: str = "127.0.0.1"  # loopback: expose it wider on purpose, e.g. 0.0.0.0
    port: Port = C.DEFAULT_METRICS_PORT


class WorkloadConfig(Section):
    """Rates of the built-in e-commerce demo roles (0 switches a flow off)."""

    order_rate: float = Field(1.0, ge=0.0)  # orders per second that a sales agent opens
    lead_rate: float = Field(0.15, ge=0.0)  # upsell leads per second that support passes to sales
    discount_threshold: float = Field(1000.0, ge=0.0)  # sales proposes a discount from this amount
    refund_rate: float = Field(0.1, ge=0.0)  # refunds per second that support proposes
    seed: int | None = None  # fixed seed for a repeatable demo


class LoggingConfig(Section):
    """How every role process logs: one line per event, as text or as JSON objects."""

    json_lines: bool = Field(False, alias="json")  # one JSON object per line instead of text
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, level: Any) -> Any:
        return level.upper() if isinstance(level, str) else level


MAX_REPLICAS = 64  # replicas of one agent, at most (each is an OS process)
ROUTING_MODELS = ("physarum", "p2c_ewma", "round_robin")


class AutoReplicas(Section):
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


class RoutingConfig(Section):
    """How a sender chooses the replica of a new conversation (docs/routing.md)."""

    model: Literal["physarum", "p2c_ewma", "round_robin"] = "p2c_ewma"
    # a conversation idle this long forgets its replica (the next message is routed anew)
    sticky_idle: Duration = 600.0
    # round_robin only: each replica's weight, its declared capacity (e.g. {Support-1: 4})
    weights: dict[str, float] = {}
    # the model's own knobs (docs/routing.md), e.g. {exploration: 0.02} for physarum
    options: dict[str, float] = {}
