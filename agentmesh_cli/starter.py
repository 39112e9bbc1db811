"""The starter mesh.yaml that `agentmesh init` writes: every key, commented, at its default.

It runs as is: the four demo agents on the embedded broker and Valkey. Tests check that
it loads and matches the repository's mesh.yaml, the reference for every key.
"""

from __future__ import annotations

from pathlib import Path

from agentmesh_cli.errors import AgentMeshError

CONFIG_NAME = "mesh.yaml"

STARTER_MESH_YAML = """\
# A mesh of agents, each its own OS process, coordinated through Kafka and Redis.
# `agentmesh up` starts it, `agentmesh status` shows it, `agentmesh logs -f` follows it,
# `agentmesh down` stops it. Every key is optional except `mesh`; the values below are
# the defaults. Durations take 250ms, 5s, 2m.
mesh: shop                      # name; prefixes every Redis key (agentmesh:shop:...)

kafka:
  bootstrap_servers: embedded   # or "k1:9092,k2:9092" for a real cluster (then nothing embedded starts)
  port: 29092                   # loopback port of the embedded broker
  topic_prefix: agentmesh       # topics are <topic_prefix>.messages, .topology, ...
  partitions: 16                # of the messages topic: each agent reads one (its inbox)
  fetch_wait: 10ms              # an idle agent's fetch waits this long at the broker (latency vs idle CPU)
  fetch_wait_per_agent: 1ms     # or this x the agents when more (up to 200ms): broker idle CPU stays flat
  manager_fetch_wait: 2ms       # the same for the consensus manager (decision latency)
  topology_fetch_wait: 100ms    # the topology manager's: it reads every message, nothing waits on it
  client: {}                    # passed to librdkafka as is (security.protocol, sasl.*, ssl.*)

redis:
  url: embedded                 # or redis://[:password@]host:6379/0 (rediss:// for TLS)
  port: 26379                   # loopback port of the embedded Valkey

topology:                       # SlimeMold: traffic reinforces edges, time decays them
  initial_weight: 0.5           # of every edge between agents when one joins
  reinforcement: 0.1            # added to an edge per message over it
  max_weight: 1.0
  decay: 0.05                   # taken from every edge each decay_interval
  decay_interval: 5s
  prune_threshold: 0.1          # edges below this are removed
  snapshot_interval: 5s         # the topology manager's recovery point

consensus:                      # Bee consensus on proposals
  quorum: 0.6                   # share of the electorate whose support accepts a proposal
  proposal_timeout: 30s         # undecided by then: expired
  min_intensity: 0.3            # default vote: support when the waggle intensity reaches this
  snapshot_interval: 1s         # the consensus manager's recovery point

heartbeat: {interval: 30s, missed: 3}   # an agent silent for interval * missed has left

services:                       # HTTP services, supervised programs on loopback
  memory: {host: 127.0.0.1, port: 9000}      # users' messages in Redis (MEMORY_SERVICE_URL / _PORT override)
  cognition: {host: 127.0.0.1, port: 9100}   # context, search, analysis over memory
  breaker_failures: 5           # a client's breaker opens after this many failed calls in a row
  breaker_reset: 30s            # ... and lets one probe through after this
  health_interval: 30s          # each client checks its service's /health this often
  pending_limit: 10000          # memory writes an agent buffers while memory is down

metrics: {host: 127.0.0.1, port: 9464}   # Prometheus: every role's counters at http://host:port/metrics

security:                       # docs/security.md
  sign_envelopes: true          # every record signed with the mesh key; unsigned or forged ones go to dlq

workload:                       # the built-in demo roles (0 switches a flow off)
  order_rate: 1.0               # orders per second Sales opens (-> Inventory, Fraud and back)
  lead_rate: 0.15               # upsell leads per second Support passes to Sales (one way)
  discount_threshold: 1000      # Sales proposes a discount for orders from this amount
  refund_rate: 0.1              # refunds per second Support proposes
  # seed: 7                     # a fixed seed for a repeatable demo

logging:                        # every role process logs one line per event to logs/<program>.log
  json: false                   # true: one JSON object per line (ts, level, logger, message, program)
  level: INFO                   # DEBUG, INFO, WARNING or ERROR

# One process per agent. role: sales, support, inventory, fraud, or your own class as
# package.module:Class (a subclass of agentmesh_cli.agent.base.Role).
agents:
  - {name: Sales, role: sales, capabilities: [order_processing, upselling]}
  - {name: Support, role: support, capabilities: [handle_ticket, refund_approval]}
  - {name: Inventory, role: inventory, capabilities: [check_stock, reserve_items]}
  - {name: Fraud, role: fraud, capabilities: [risk_assessment, verify_user]}
"""


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
        target.write_text(STARTER_MESH_YAML, encoding="utf-8")
    except OSError as exc:
        raise AgentMeshError(f"cannot write {target}: {exc.strerror}") from exc
    return target
