"""Every topic name, Redis key, program name and default in one place.

No other module spells a topic or a key as a string literal.
"""

from __future__ import annotations

import zlib
from typing import Final

ENVELOPE_VERSION = 1

# Topic short names; the full name is "<topic_prefix>.<name>".
TOPIC_TOPOLOGY = "topology"  # join, leave, heartbeat; key = agent id
TOPIC_MESSAGES = "messages"  # agent -> agent; partition = crc32(recipient) % partitions
TOPIC_PROPOSALS = "proposals"
TOPIC_VOTES = "votes"  # key = proposal id
TOPIC_CONSENSUS = "consensus"  # opened and decided proposals, broadcast
TOPIC_DLQ = "dlq"  # dead letters
# replies to askers that are not agents (the CLI, the gateway): partition =
# crc32(reply address) % partitions, key = the address; the topology ignores it
TOPIC_REPLIES = "replies"
ALL_TOPICS = (
    TOPIC_TOPOLOGY,
    TOPIC_MESSAGES,
    TOPIC_PROPOSALS,
    TOPIC_VOTES,
    TOPIC_CONSENSUS,
    TOPIC_DLQ,
    TOPIC_REPLIES,
)
# Only `messages` is partitioned (one inbox partition per agent). The others have one
# reader each (a manager) or are broadcasts: one partition keeps one order, and every
# partition costs the embedded broker work on every fetch (measured: 4 -> 1 partitions
# for proposals and votes took the consensus manager from 9,000 to 15,000 votes/s).
SINGLE_PARTITION_TOPICS = frozenset(
    {TOPIC_TOPOLOGY, TOPIC_PROPOSALS, TOPIC_VOTES, TOPIC_CONSENSUS, TOPIC_DLQ}
)

# Envelope types on the topology topic.
EVENT_JOINED: Final = "agent_joined"
EVENT_LEFT: Final = "agent_left"
EVENT_HEARTBEAT: Final = "heartbeat"
EVENT_DEAD_LETTER = "dead_letter"

# Envelope types of Bee consensus.
EVENT_PROPOSAL = "proposal"  # proposals topic: an agent (or the CLI) proposes
EVENT_VOTE = "vote"  # votes topic
EVENT_OPENED: Final = "proposal_opened"  # consensus topic: the manager opened it (waggle, electorate)
EVENT_DECIDED: Final = "proposal_decided"  # consensus topic: accepted | rejected | expired, exactly once
EVENT_MANAGER_MARK = "manager_mark"  # consensus topic: a restarted manager's reconcile marker

# Program names (supervisord) and their start priorities: infra -> services -> managers -> agents.
PROGRAM_KAFKA = "kafka"
PROGRAM_REDIS = "redis"
PROGRAM_TOPOLOGY = "topology-manager"
PROGRAM_CONSENSUS = "consensus-manager"
PROGRAM_INBOX = "inbox-reader"  # with kafka.inbox_reader: host, one per host that runs agents
PROGRAM_AUTOSCALER = "autoscaler"  # only when a group autoscales (replicas: {min, max, ...})
PROGRAM_MEMORY = "memory"
PROGRAM_COGNITION = "cognition"
SERVICE_PROGRAMS = (PROGRAM_MEMORY, PROGRAM_COGNITION)  # service name == program name
PROGRAM_METRICS = "metrics"  # the Prometheus exporter (services tier)
PROGRAM_GATEWAY = "gateway"  # the front door: HTTP, SSE and MCP (services tier)
MANAGER_PROGRAMS = (PROGRAM_TOPOLOGY, PROGRAM_CONSENSUS)
AGENT_PROGRAM_PREFIX = "agent-"
PRIORITY_INFRA = 10
PRIORITY_SERVICES = 20
PRIORITY_MANAGERS = 30
PRIORITY_AGENTS = 40

# Default loopback ports of the embedded infra: far from Kafka's 9092 and Redis's 6379.
DEFAULT_EMBEDDED_KAFKA_PORT = 29092
DEFAULT_EMBEDDED_REDIS_PORT = 26379
DEFAULT_GATEWAY_PORT = 9200  # the front door (gateway/)
DEFAULT_METRICS_PORT = 9464  # the Prometheus exporter (the port OpenTelemetry's exporter uses)

# The variable that tells a command (and every supervised program of a host) which host of
# mesh.yaml's `hosts` it acts for; read by environment.host(), written by render.py.
HOST_VARIABLE = "AGENTMESH_HOST"

# Files, relative to the folder that holds mesh.yaml.
SUPERVISOR_DIR = "supervisor.d"
LOGS_DIR = "logs"
STATE_DIR = ".agentmesh"
SUPERVISORD_CONF = "supervisord.conf"
SUPERVISOR_SOCKET = "supervisor.sock"
INBOX_SOCKET = "inbox.sock"  # the host's inbox reader listens here (kafka.inbox_reader: host)
SUPERVISORD_PID = "supervisord.pid"
SUPERVISORD = "supervisord"  # its own log's name for `agentmesh logs`
SUPERVISORD_LOG = SUPERVISORD + ".log"  # supervisord's own log, in the logs folder
STATUS_SAMPLES = "status-cpu.json"  # the last one-shot status's CPU samples (status.py)
STATUS_LOG = "status-log.json"  # where the last one-shot status stopped reading supervisord's log
VALKEY_SECRET_CONF = "valkey.conf"  # the embedded Valkey's password, in the state folder
# what `agentmesh down` found unread in the embedded broker at its drain's timeout, replayed
# by the next `up` (drain.py): JSON lines in the state folder, mode 0600
UNREAD_FILE = "unread.jsonl"

# `agentmesh down` waits this long by default for the mesh to be quiet (--drain-timeout)
DEFAULT_DRAIN_TIMEOUT_S = 30.0

# Agent and mesh names (mesh.yaml checks them; a record naming anything else names nobody).
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$"

# Counter fields (per role, in one Redis hash each).
COUNTER_IN = "messages_in"
COUNTER_OUT = "messages_out"
COUNTER_DEAD = "dead_letters"
COUNTER_SKIPPED = "skipped"
# Every sender counts what it sends per recipient, "sent_to:<name>": status computes an
# inbox backlog from these (the embedded broker's watermarks are wrong, DESIGN section 8).
COUNTER_SENT_TO_PREFIX = "sent_to:"
CLI_COUNTER_OWNER = "cli"  # `agentmesh send` counts under this owner
# What an agent handled, exactly: written in one Redis transaction with its ledger of ids.
COUNTER_HANDLED_FROM_PREFIX = "handled_from:"
COUNTER_DUPLICATES = "duplicates"  # redelivered records recognised by id and not handled again
COUNTER_HANDLED_TWICE = "handled_twice"  # ids the ledger already held when recorded: must stay 0
# ask and reply (an inbox record that is a reply, or an expired request, is not a handled
# message: these count them, so that sent_to:X = messages_in + duplicates + these, once quiet)
COUNTER_REPLIES_IN = "replies_in"  # replies handed to a waiting ask
COUNTER_LATE_REPLIES = "late_replies"  # replies nobody waited for any more: dropped
COUNTER_EXPIRED = "expired_requests"  # requests read after their deadline: skipped, never handled
# messages counted as sent to an agent that the broker no longer held when `down` saved what
# was unread (an embedded broker forgot them: `down --now`, a crash): written by `down` into
# the agent's counters, so that the next drain does not wait for them (drain.py)
COUNTER_LOST = "lost"
COUNTER_ASK_TIMEOUTS = "ask_timeouts"
COUNTER_ERROR_REPLIES = "error_replies"  # error replies this agent received
COUNTER_CACHED_REPLIES = "cached_replies"  # repeated requests answered from the reply cache
COUNTER_ASKS = "asks"  # asks sent
COUNTER_ASK_MS = "ask_ms"  # the histogram of ask round trips (metrics.histogram.ASK_BUCKETS)
COUNTER_LOOP_LAG_MS = "loop_lag_ms"  # the histogram of the event loop's lag (sampled every 10 ms)
# the llm role's (llm/role.py): model calls, their tokens and latency, tool asks, failed turns
COUNTER_ONCE_REPLAYED = "once_replayed"  # ctx.once results a re-run handler got from Redis
COUNTER_LLM_CALLS = "llm_calls"  # model calls (one per round of a turn)
COUNTER_LLM_TOKENS_IN = "llm_tokens_in"  # prompt tokens, as the model server counts them
COUNTER_LLM_TOKENS_OUT = "llm_tokens_out"  # completion tokens
COUNTER_LLM_MS = "llm_ms"  # the histogram of model calls' durations (metrics.histogram.LLM_BUCKETS)
COUNTER_LLM_TOOL_CALLS = "llm_tool_calls"  # tool calls sent as asks
COUNTER_LLM_ERRORS = "llm_errors"  # turns ended by an error reply (and llm_errors:<kind>)
TYPE_ERROR_REPLY = "error"  # the type of an error reply (payload: error, message)
COUNTER_HANDLER_ERRORS = "handler_errors"  # messages whose role handler raised (handled, and dead letters)
# Senders that may message agents without having joined: the CLI (`agentmesh send`) and
# the fault-injection suite's probes. Any other sender must have joined once.
GATEWAY_SENDER = "gateway"  # what enters through the front door is sent (and counted) as this
# the gateway's counters (owner `gateway`): asks by outcome, messages sent, streams opened;
# its asks' round trips go into the `ask_ms` histogram like an agent's
GATEWAY_ASK_OUTCOMES = ("ok", "error_reply", "timeout")
COUNTER_GATEWAY_MESSAGES = "gateway_messages"
COUNTER_GATEWAY_STREAMS = "gateway_streams"


def gateway_asks_counter(outcome: str) -> str:
    return "gateway_asks:" + outcome

OPERATOR_SENDERS = frozenset({"cli", "chaos", GATEWAY_SENDER})
# The managers count every record they read, "records:<topic>", and every dead letter they
# write, "dead_letters:<topic>" (besides the total "dead_letters"), so that each topic's
# records add up to its outcomes (docs/architecture.md, Dead letters).
COUNTER_RECORDS_PREFIX = "records:"
COUNTER_DEAD_FROM_PREFIX = "dead_letters:"
# Latency histograms kept as counters (metrics/histogram.py): "<name>:bucket:<bound ms>",
# "<name>:sum_us", "<name>:count". The consensus manager's decisions (created -> decided):
COUNTER_DECISION_MS = "decision_ms"
# Agents' calls of a service, "service_calls:<service>:<ok|error|circuit_open>", and their
# latency histogram "service_call_ms:<service>".
COUNTER_SERVICE_CALLS_PREFIX = "service_calls:"
COUNTER_SERVICE_CALL_MS_PREFIX = "service_call_ms:"

# topology:history, for the trend in `status`: a point at most this often, this many kept
TOPOLOGY_HISTORY_EVERY_S = 10.0
TOPOLOGY_HISTORY_KEPT = 90  # 15 minutes


def sent_to_counter(recipient: str) -> str:
    return COUNTER_SENT_TO_PREFIX + recipient


def records_counter(topic: str) -> str:
    return COUNTER_RECORDS_PREFIX + topic


def dead_letters_counter(topic: str) -> str:
    return COUNTER_DEAD_FROM_PREFIX + topic


def service_calls_counter(service: str, outcome: str) -> str:
    return f"{COUNTER_SERVICE_CALLS_PREFIX}{service}:{outcome}"


def service_call_histogram(service: str) -> str:
    return COUNTER_SERVICE_CALL_MS_PREFIX + service


def inbox_partition(agent_id: str, partitions: int) -> int:
    """The messages partition agent `agent_id` reads: crc32(UTF-8 id) mod partitions."""
    return zlib.crc32(agent_id.encode("utf-8")) % partitions


def reply_partition(address: str, partitions: int) -> int:
    """The `replies` partition of a reply address (an asker that is not an agent)."""
    return zlib.crc32(address.encode("utf-8")) % partitions


def agent_group(topic_prefix: str, name: str) -> str:
    """The consumer group agent `name` commits its offsets under (agent/runtime.py; it
    reads by manual assignment, so the group only keeps offsets)."""
    return f"{topic_prefix}.agent.{name}"


def agent_program(name: str) -> str:
    return f"{AGENT_PROGRAM_PREFIX}{name}"


class Keys:
    """Redis keys of one mesh; every key starts `agentmesh:<mesh>:`."""

    def __init__(self, mesh: str) -> None:
        self.prefix = f"agentmesh:{mesh}:"

    @property
    def agents(self) -> str:
        """Hash: agent id -> JSON registry record (role, capabilities, pid, host, heartbeat)."""
        return self.prefix + "agents"

    @property
    def consensus_snapshot(self) -> str:
        """String: JSON of the pending proposals plus the Kafka offsets they cover."""
        return self.prefix + "consensus:snapshot"

    def proposal(self, proposal_id: str) -> str:
        """String: JSON of one proposal (content, waggle, electorate, votes, status, tally)."""
        return self.prefix + "proposal:" + proposal_id

    @property
    def proposals(self) -> str:
        """Sorted set: proposal id scored by created_at (ms), the time index."""
        return self.prefix + "proposals"

    def conversation(self, conversation_id: str) -> str:
        """Hash: a conversation's owner (the user it belongs to; "" for the mesh) and when it
        began (ms). Expires with its events (convlog.py)."""
        return self.prefix + "conv:" + conversation_id

    def conversation_events(self, conversation_id: str) -> str:
        """Stream: the conversation's events for its user (convlog.py); the stream id is the
        SSE event id. Trimmed to gateway.events_kept entries, expires after events_ttl."""
        return self.prefix + "conv-events:" + conversation_id

    def conversation_seen(self, conversation_id: str) -> str:
        """Set: the envelope ids already in the conversation's events (an envelope sent again
        after a crash is not appended twice)."""
        return self.prefix + "conv-seen:" + conversation_id

    @property
    def conversation_channel(self) -> str:
        """Pub/sub channel: `<conversation> <stream id>` when an event is appended, and the
        ephemeral `delta` events (JSON), for the gateway's followers (convlog.py)."""
        return self.prefix + "conv-feed"

    @property
    def accepts(self) -> str:
        """Hash: agent -> JSON {message type: JSON schema} of what its role declares it
        accepts (`Role.accepts`), written at join; the gateway and MCP publish it."""
        return self.prefix + "accepts"

    @property
    def members(self) -> str:
        """Set: every agent that ever joined (a message from anybody else is a dead letter)."""
        return self.prefix + "members"

    def handled(self, agent: str) -> str:
        """Sorted set: ids of the messages an agent handled, the newest `recovery.dedup_window`,
        scored by the order of handling (its dedup ledger)."""
        return self.prefix + "handled:" + agent

    def once(self, agent: str, message_id: str) -> str:
        """Hash: key -> JSON of what `ctx.once(key, ...)` computed while agent handled the
        message, until the message is recorded as handled (then deleted; ONCE_TTL_S at most)."""
        return self.prefix + "once:" + agent + ":" + message_id

    def replies(self, agent: str) -> str:
        """Hash: request id -> JSON of the reply an agent sent to it (its reply cache, the
        newest `recovery.dedup_window`, with `replies_order:` as the order of writing)."""
        return self.prefix + "replies:" + agent

    def replies_order(self, agent: str) -> str:
        """Sorted set: the request ids of `replies(agent)`, scored by time of writing."""
        return self.prefix + "replies_order:" + agent

    @property
    def asleep(self) -> str:
        """Hash: reader -> the topics it reads (comma-separated), for every reader that
        stopped fetching until rung (doorbell.py: an agent, a manager, the gateway)."""
        return self.prefix + "asleep"

    @property
    def asleep_channel(self) -> str:
        """Pub/sub channel: `<reader> <topics>` when a reader goes to sleep, `-<reader>`
        when it wakes (the senders' view of `asleep`)."""
        return self.prefix + "asleep-feed"

    @property
    def mesh_channel(self) -> str:
        """Pub/sub channel: `epoch <id>` when a new broker epoch is written, `draining 1` /
        `draining 0` when the draining mark is set or cleared (doorbells follow it, so that
        an idle role need not read them from Redis every second)."""
        return self.prefix + "mesh-feed"

    def wake(self, reader: str) -> str:
        """Pub/sub channel: a sender wrote to a reader that sleeps (its doorbell)."""
        return self.prefix + "wake:" + reader

    @property
    def draining(self) -> str:
        """String: set while `agentmesh down` drains the mesh (roles see `ctx.draining`,
        operator input is refused)."""
        return self.prefix + "draining"

    @property
    def replicas(self) -> str:
        """Hash: replica group -> how many replicas it runs now (`up`: mesh.yaml's count;
        `agentmesh scale` and the autoscaler change it)."""
        return self.prefix + "replicas"

    @property
    def retiring(self) -> str:
        """Set: replicas being scaled down: no new conversation goes to them, they drain."""
        return self.prefix + "retiring"

    def route(self, group: str, conversation: str) -> str:
        """String: the replica of `group` that conversation `conversation` sticks to
        (expires after routing.sticky_idle without use)."""
        return f"{self.prefix}route:{group}:{conversation}"

    @property
    def routing(self) -> str:
        """Hash: sender -> JSON of its routers' state per group (docs/routing.md), for views."""
        return self.prefix + "routing"

    @property
    def kafka_epoch(self) -> str:
        """String: id of the broker incarnation the mesh's Kafka offsets belong to."""
        return self.prefix + "kafka:epoch"

    @property
    def topology_snapshot(self) -> str:
        """String: JSON of the graph plus the Kafka offsets it covers."""
        return self.prefix + "topology:snapshot"

    @property
    def topology_history(self) -> str:
        """List: JSON stats points {ts, agents, edges, possible, reduction_percent}, newest
        first, capped at TOPOLOGY_HISTORY_KEPT (the trend in `status`)."""
        return self.prefix + "topology:history"

    def ready(self, program: str) -> str:
        """String: JSON {pid, ts} written by a program once it is ready."""
        return self.prefix + "ready:" + program

    def counters(self, owner: str) -> str:
        """Hash: counter name -> integer, for one role or agent."""
        return self.prefix + "counters:" + owner

    def bench_result(self, run: str) -> str:
        """String: JSON of what a bench role measured in run `run` (`agentmesh bench ask`),
        kept a day."""
        return self.prefix + "bench:result:" + run

    @property
    def counter_owners(self) -> str:
        """Set: every owner that has a counters hash."""
        return self.prefix + "counters"

    @property
    def service_clients(self) -> str:
        """Hash: owner (agent) -> JSON {ts, memory: {breaker, health, pending}, cognition: {...}},
        the state of that owner's service clients, for `status`."""
        return self.prefix + "service-clients"

    # Memory service: ids are checked by the service (1..128 of [A-Za-z0-9_.:@-]) before
    # they reach a key; "/" is not in that set, so the pair key below is unambiguous.
    def memory_message(self, message_id: str) -> str:
        """String: JSON of one stored message (item fields plus its insertion seq)."""
        return self.prefix + "memory:message:" + message_id

    def memory_user(self, user_id: str) -> str:
        """Sorted set: one user's messages ("<seq>:<message id>") scored by timestamp."""
        return self.prefix + "memory:user:" + user_id

    def memory_conversation(self, conversation_id: str) -> str:
        """Sorted set: one conversation's messages ("<seq>:<message id>") scored by timestamp."""
        return self.prefix + "memory:conversation:" + conversation_id

    def memory_conversation_user(self, conversation_id: str, user_id: str) -> str:
        """Sorted set: one user's messages in one conversation, scored by timestamp."""
        return self.prefix + "memory:conversation-user:" + conversation_id + "/" + user_id

    @property
    def memory_seq(self) -> str:
        """String: counter that orders messages stored with the same timestamp."""
        return self.prefix + "memory:seq"

    @property
    def memory_events(self) -> str:
        """Pub/sub channel: JSON {event: stored|updated|deleted, item} of every change."""
        return self.prefix + "memory:events"

# Roles that ship with agentmesh (the e-commerce demo); any other role is "package.module:Class".
ROLE_LLM = "llm"  # the built-in role that thinks with a language model (llm/, docs/llm.md)
BUILTIN_ROLES = ("sales", "support", "inventory", "fraud", ROLE_LLM)
# built-in roles whose state lives outside their process (or that have none): they may run
# as several replicas (`replicas:`); a role class says so with `Role.replicable = True`
REPLICABLE_ROLES = ("support", ROLE_LLM)

# What a role sends waits up to this long in the producer to leave with others in one
# request. A loop turn's sends are held back and produced together at its end (Bus.hold,
# Bus.release), in a burst far shorter than this, so a turn is one request per partition
# however long its handlers ran; the linger only gathers the sends of tasks and threads.
# Without it every send is a request of its own and the broker, not Python, limits the
# mesh (about 4x fewer messages/s on two cores, see docs/performance.md). Kept short: a
# lone message pays it on every hop, on a broker that answers at once (noida, Kafka) too.
AGENT_LINGER_MS = 1.0
# The consensus manager's broadcasts (an opening, a decision) wait up to this long to leave
# together: at a millisecond's cost to a lone decision, a loop turn's broadcasts are one
# request, not one each (paced at 4 voters, the broker's CPU went from 84% to 40%).
CONSENSUS_LINGER_MS = 1.0
AGENT_QUEUED_KBYTES = 16_384  # what an agent's consumer fetches ahead, at most (librdkafka: 64 MB)
