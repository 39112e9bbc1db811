"""The starter mesh.yaml that `agentmesh init` writes: every key, commented, at its default.

The values come from the mesh.yaml model (`config.py`, the one table of defaults): the
text below only places and explains them. The repository's mesh.yaml is this file as
`agentmesh init` writes it (a test holds the two equal), and it runs as is: the four demo
agents on the embedded broker and Valkey.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, BeforeValidator

from agentmesh_cli.config import KafkaConfig, MeshConfig
from agentmesh_cli.config_values import parse_duration
from agentmesh_cli.errors import AgentMeshError

CONFIG_NAME = "mesh.yaml"
COMMENT_COLUMN = 33
_COMMENTED = re.compile(r"^(\s*[^#\s].*?\S)\s+(# .*)$")

# {section[key]} is the default of that key; {{ and }} are YAML's own braces. Comments
# are aligned when rendered (column 33), so here one space leads them.
TEMPLATE = """\
# A mesh of agents, each its own OS process, coordinated through Kafka and Redis.
# `agentmesh up` starts it, `agentmesh status` shows it, `agentmesh logs -f` follows it,
# `agentmesh down` stops it. Every key is optional except `mesh`; the values below are
# the defaults (`agentmesh init` writes this file). Durations take 250ms, 5s, 2m.
mesh: shop                      # name; prefixes every Redis key (agentmesh:shop:...)

kafka:
  bootstrap_servers: {kafka[bootstrap_servers]} # or "k1:9092,k2:9092" for a real cluster (then nothing embedded starts)
  port: {kafka[port]} # loopback port of the embedded broker
  topic_prefix: {kafka[topic_prefix]} # topics are <topic_prefix>.messages, .topology, ...
  partitions: {kafka[partitions]} # of the messages topic: each agent reads one (its inbox)
  fetch_wait: {kafka[fetch_wait]} # an idle agent's fetch waits this long at the broker (latency vs idle CPU)
  fetch_wait_per_agent: {kafka[fetch_wait_per_agent]} # or this x the agents when more (up to 200ms): broker idle CPU stays flat
  manager_fetch_wait: {kafka[manager_fetch_wait]} # the same for the consensus manager (decision latency)
  topology_fetch_wait: {kafka[topology_fetch_wait]} # the topology manager's: it reads every message, nothing waits on it
  idle_sleep: {kafka[idle_sleep]} # a reader idle for a moment stops fetching until a sender rings it (via Redis)
  idle_probe: {kafka[idle_probe]} # ... and fetches this often anyway (a ring lost with a crashed sender)
  inbox_reader: {kafka[inbox_reader]} # agent: each agent fetches its inbox; host: one reader per host for all; auto: host from 16 agents up
  max_record_bytes: {kafka[max_record_bytes]} # a bigger record goes to the dlq topic, never to a role
  client: {kafka[client]} # passed to librdkafka as is (security.protocol, sasl.*, ssl.*)

redis:
  url: {redis[url]} # or redis://[:password@]host:6379/0 (rediss:// for TLS)
  port: {redis[port]} # loopback port of the embedded Valkey

topology:                       # SlimeMold: traffic reinforces edges, time decays them
  initial_weight: {topology[initial_weight]} # of every edge between agents when one joins
  reinforcement: {topology[reinforcement]} # added to an edge per message over it
  max_weight: {topology[max_weight]}
  decay: {topology[decay]} # taken from every edge each decay_interval
  decay_interval: {topology[decay_interval]}
  prune_threshold: {topology[prune_threshold]} # edges below this are removed
  snapshot_interval: {topology[snapshot_interval]} # the topology manager's recovery point

consensus:                      # Bee consensus on proposals
  quorum: {consensus[quorum]} # share of the electorate whose support accepts a proposal
  proposal_timeout: {consensus[proposal_timeout]} # undecided by then: expired
  min_intensity: {consensus[min_intensity]} # default vote: support when the waggle intensity reaches this
  snapshot_interval: {consensus[snapshot_interval]} # the consensus manager's recovery point

heartbeat: {{interval: {heartbeat[interval]}, missed: {heartbeat[missed]}}} # an agent silent for interval x missed has left

recovery:
  dedup_window: {recovery[dedup_window]} # ids of the newest messages each agent handled: a redelivered copy is skipped

supervisor:                     # supervisord's restart policy for every program
  startsecs: {supervisor[startsecs]} # a program that exits sooner after its start is a failed start
  startretries: {supervisor[startretries]} # failed starts in a row retried (after 1, 2, 3 ... s), then FATAL

services:                       # HTTP services, supervised programs on loopback
  memory: {{host: {memory[host]}, port: {memory[port]}}} # users' messages in Redis (MEMORY_SERVICE_URL / _PORT override)
  cognition: {{host: {cognition[host]}, port: {cognition[port]}}} # context, search, analysis over memory
  max_body_bytes: {services[max_body_bytes]} # a bigger request body is a 413
  breaker_failures: {services[breaker_failures]} # a client's breaker opens after this many failed calls in a row
  breaker_reset: {services[breaker_reset]} # ... and lets one probe through after this
  health_interval: {services[health_interval]} # each client checks its service's /health this often
  pending_limit: {services[pending_limit]} # memory writes an agent buffers while memory is down
  cors_origins: {services[cors_origins]} # browser origins allowed to call the services (none: CORS off)
  # tls_cert: cert.pem          # HTTPS for both services (with tls_key); clients verify with tls_ca
  # tls_key: key.pem
  # tls_ca: ca.pem

gateway:                        # the front door for clients outside the mesh (docs/gateway.md)
  enabled: {gateway[enabled]} # a supervised program, port below: HTTP, Server-Sent Events and MCP at /mcp
  host: {gateway[host]} # loopback; the services' tokens get in (agentmesh token)
  port: {gateway[port]}
  max_body_bytes: {gateway[max_body_bytes]} # a bigger request is a 413 (stays below kafka.max_record_bytes)
  ask_timeout: {gateway[ask_timeout]} # an ask that names no timeout waits this long (then 504)
  max_ask_timeout: {gateway[max_ask_timeout]} # the longest timeout a client may ask for
  events_kept: {gateway[events_kept]} # newest events kept per conversation (an older Last-Event-ID: gone)
  events_ttl: {gateway[events_ttl]} # a conversation idle this long is forgotten
  delta_interval: {gateway[delta_interval]} # streamed partial output (delta events) is coalesced this often

routing:                        # how a sender picks the replica of a new conversation (agents[].replicas; docs/routing.md)
  model: {routing[model]} # p2c_ewma, physarum or round_robin
  sticky_idle: {routing[sticky_idle]} # a conversation idle this long forgets its replica
  # weights: {{Support-1: 4, Support-2: 2}}  # round_robin: each replica's declared capacity
  # options: {{exploration: 0.02}}         # the model's own knobs (docs/routing.md)

# llm:                          # defaults of every agent of role llm (docs/llm.md); an agent's own llm: wins
#   base_url: http://127.0.0.1:11434/v1   # any OpenAI-compatible server (Ollama, llama.cpp, vLLM); default: api.openai.com
#   model: llama3.2             # required (here or in the agent's llm:)
#   api_key: ${{OPENAI_API_KEY}}  # from the agent's environment, never logged; local servers need none
#   system: "You are {{name}}, ..."  # default: answer briefly, ask the tools for facts ({{name}}, {{mesh}} replaced)
#   temperature: 0.2            # default: the server's
#   max_tokens: 1024            # default: the server's
#   max_tool_rounds: 4          # rounds of tool calls in one turn; more is a ToolRoundLimit error reply
#   tools: []                   # the allowlist the model may ask: agent names (all they accept) or agent:type
#   timeout: 60s                # one model call, per attempt (the SDK's)
#   max_retries: 2              # the SDK's retries: 429 (with Retry-After), 5xx, connection errors
#   tool_timeout: 30s           # one tool call (an ask of an agent)
#   context_items: 5            # items of what Cognition knows of the user, read before the first call

metrics: {{host: {metrics[host]}, port: {metrics[port]}}} # Prometheus: every role's counters at http://host:port/metrics

security:                       # docs/security.md
  sign_envelopes: {security[sign_envelopes]} # every record signed with the mesh key; unsigned or forged ones go to dlq

workload:                       # the built-in demo roles (0 switches a flow off)
  order_rate: {workload[order_rate]} # orders per second Sales opens (-> Inventory, Fraud and back)
  lead_rate: {workload[lead_rate]} # upsell leads per second Support passes to Sales (one way)
  discount_threshold: {workload[discount_threshold]} # Sales proposes a discount for orders from this amount
  refund_rate: {workload[refund_rate]} # refunds per second Support proposes
  # seed: 7                     # a fixed seed for a repeatable demo

logging:                        # every role process logs one line per event to logs/<program>.log
  json: {logging[json_lines]} # true: one JSON object per line (ts, level, logger, message, program)
  level: {logging[level]} # DEBUG, INFO, WARNING or ERROR

# Several hosts (with an external Kafka and Redis): which programs each host runs.
# hosts:
#   alpha: [memory, cognition, metrics, "*-manager", agent-Sales, agent-Support]
#   beta: ["agent-[IF]*"]

# One process per agent. role: sales, support, inventory, fraud, or your own class as
# package.module:Class (a subclass of agentmesh.Role). concurrency: messages handled at
# once, each conversation in order (default 1: one at a time). replicas: N runs a
# replicable role (support, llm, or a class with replicable = True) as N processes
# Name-1..Name-N behind the one name (or {{min: 1, max: 8, target_in_flight: 4}}: autoscaled).
agents:
  - {{name: Sales, role: sales, capabilities: [order_processing, upselling]}}
  - {{name: Support, role: support, capabilities: [handle_ticket, refund_approval], concurrency: 8}}
  #   (three Supports behind one name: add `replicas: 3`; `agentmesh scale Support 5` then resizes it)
  - {{name: Inventory, role: inventory, capabilities: [check_stock, reserve_items]}}
  - {{name: Fraud, role: fraud, capabilities: [risk_assessment, verify_user]}}
  # A language-model agent, off by default (the default mesh needs no model; docs/llm.md).
  # It answers `chat` in its own words and may ask only the agents of its tools:
  # - {{name: Concierge, role: llm, concurrency: 16, llm: {{model: llama3.2, base_url: "http://127.0.0.1:11434/v1", tools: [Sales, Support]}}}}
"""


def format_duration(seconds: float) -> str:
    """Seconds as mesh.yaml writes a duration: 10ms, 5s, 2m."""
    if seconds < 1:
        return f"{round(seconds * 1000, 3):g}ms"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


def _scalar(value: Any, duration: bool) -> str:
    if duration:
        return format_duration(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) and value >= 1000 else str(value)


def _is_duration(metadata: list[Any]) -> bool:
    return any(isinstance(m, BeforeValidator) and m.func is parse_duration for m in metadata)


def _defaults(section: BaseModel) -> dict[str, str]:
    """Every field of a section at its default, as mesh.yaml writes it."""
    return {name: _scalar(getattr(section, name), _is_duration(info.metadata))
            for name, info in type(section).model_fields.items()}


def _aligned(line: str) -> str:
    """A `key: value   # comment` line with its comment at column 33, as far as it fits."""
    match = _COMMENTED.match(line)
    if not match:
        return line
    value, comment = match.groups()
    return f"{value.ljust(COMMENT_COLUMN - 2)} {comment}" if len(value) < COMMENT_COLUMN - 2 \
        else f"{value}   {comment}"


def render_starter() -> str:
    """The starter mesh.yaml with every default taken from the model."""
    config = MeshConfig(mesh="shop")
    # the kafka section as written, not as the mesh resolves it (inbox_reader: auto)
    sections = {"kafka": _defaults(KafkaConfig())} | {name: _defaults(getattr(config, name)) for name in (
        "redis", "topology", "consensus", "heartbeat", "recovery", "supervisor",
        "services", "metrics", "security", "workload", "logging", "gateway", "routing")}
    sections["memory"] = _defaults(config.services.memory)
    sections["cognition"] = _defaults(config.services.cognition)
    text = TEMPLATE.format(**sections)
    return "".join(_aligned(line) + "\n" for line in text.splitlines())


def write_starter(directory: Path, force: bool = False) -> Path:
    """Write the starter mesh.yaml into `directory` (created if missing); an existing
    file is kept unless `force`."""
    target = directory / CONFIG_NAME
    if directory.exists() and not directory.is_dir():
        raise AgentMeshError(f"{directory} is not a folder")
    if target.exists() and not force:
        raise AgentMeshError(f"{target} already exists: pass --force to overwrite it")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        target.write_text(render_starter(), encoding="utf-8")
    except OSError as exc:
        raise AgentMeshError(f"cannot write {target}: {exc.strerror}") from exc
    return target
