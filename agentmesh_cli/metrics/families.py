"""What one scrape read (`Reading`) -> Prometheus metric families (pure: no I/O, no clock).

Every family is listed in docs/metrics.md. Counters come from the roles' `counters:<owner>`
hashes, so they count since the mesh's Redis was new (a role's restart loses at most its
last second). Families that come from Redis are left out when Redis did not answer, and
those from supervisord when it did not: Prometheus then marks them stale instead of
recording zeros; `agentmesh_up{source}` says which source answered.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from agentmesh_cli import constants as C
from agentmesh_cli.agent_load import load
from agentmesh_cli.backlog import backlog, sent_totals
from agentmesh_cli.metrics.groups import group_families, label_groups
from agentmesh_cli.metrics.histogram import (
    ASK_BUCKETS,
    DECISION_BUCKETS,
    LLM_BUCKETS,
    LOOP_LAG_BUCKETS,
    SERVICE_CALL_BUCKETS,
    Buckets,
    observed,
)
from agentmesh_cli.signing import REFUSED_KINDS, REFUSED_PREFIX

PREFIX = "agentmesh_"
SERVICES = (C.PROGRAM_MEMORY, C.PROGRAM_COGNITION)
CALL_OUTCOMES = ("ok", "error", "circuit_open")
DECIDED = ("accepted", "rejected", "expired")
# the consensus manager's votes_<result> counters (consensus.core.VoteResult, plus the
# votes it held before their proposal opened)
VOTE_RESULTS = ("counted", "replaced", "not_member", "unknown", "late", "early")
BREAKER_STATES = ("closed", "open", "half_open")
NOT_AGENTS = frozenset({*C.MANAGER_PROGRAMS, C.PROGRAM_AUTOSCALER, C.PROGRAM_INBOX, C.CLI_COUNTER_OWNER,
                        C.GATEWAY_SENDER})
# gauges of an agent's registry record: (family, field, help)
LOAD_GAUGES = (
    ("agent_in_flight", "in_flight", "Messages the agent read and has not finished (queued or "
     "running), as of its last heartbeat"),
    ("agent_running", "running", "Handlers of the agent running, as of its last heartbeat"),
    ("agent_asks_pending", "asks_pending", "Asks of the agent waiting for a reply, as of its last "
     "heartbeat"),
)
# counters of an agent's asks, as asker and as answerer: (family, counter, help)
ASK_COUNTERS = (
    ("agent_asks", C.COUNTER_ASKS, "Asks (requests that wait for a reply) the agent sent"),
    ("agent_ask_timeouts", C.COUNTER_ASK_TIMEOUTS, "Asks of the agent that got no reply in time"),
    ("agent_error_replies", C.COUNTER_ERROR_REPLIES, "Error replies the agent's asks received (the "
     "answering handler raised)"),
    ("agent_late_replies", C.COUNTER_LATE_REPLIES, "Replies the agent received after their ask had "
     "given up (dropped)"),
    ("agent_expired_requests", C.COUNTER_EXPIRED, "Requests to the agent read after their deadline "
     "(skipped, never handled)"),
    ("agent_cached_replies", C.COUNTER_CACHED_REPLIES, "Repeated requests the agent answered again "
     "from its reply cache"),
)


@dataclass
class Reading:
    """One scrape's view of the mesh; a source that did not answer leaves its part empty."""

    ts: float  # epoch seconds of the reading
    agents: list[str]  # mesh.yaml's agents, a group's replicas as it runs now (listed before they count)
    redis_up: bool = False
    counters: dict[str, dict[str, int]] = field(default_factory=dict)  # owner -> counters
    registry: dict[str, dict[str, Any]] = field(default_factory=dict)  # agent -> its record now
    service_clients: dict[str, dict[str, Any]] = field(default_factory=dict)  # the hash
    topology: dict[str, Any] | None = None  # {ts (ms), stats} of the topology snapshot
    pending_proposals: int | None = None  # in the consensus manager's snapshot
    supervisord_up: bool = False
    programs: dict[str, str] = field(default_factory=dict)  # program -> supervisord state
    restarts: dict[str, int] = field(default_factory=dict)  # program -> restarts
    group_of: dict[str, str] = field(default_factory=dict)  # replica -> its group (metrics/groups.py)
    replicas: dict[str, tuple[int, int]] = field(default_factory=dict)  # group -> (declared, running)
    routing: dict[str, dict[str, Any]] = field(default_factory=dict)  # sender -> its routers' state

    @property
    def registered(self) -> set[str]:
        """Agents in the registry now."""
        return set(self.registry)


def families(reading: Reading) -> list[Metric]:
    """Every metric family of one scrape, in a fixed order."""
    out = list(_sources(reading))
    if reading.supervisord_up:
        out += _programs(reading)
    if reading.redis_up:
        out += [*_agents(reading), *_agent_load(reading), *_asks(reading), *_topology(reading),
                *_consensus(reading), *_services(reading), *_gateway(reading), *_llm(reading),
                *group_families(reading.replicas, reading.routing, reading.ts)]
    return label_groups(out, reading.group_of)  # a replica's series: its group too


def _gateway(r: Reading) -> Iterator[Metric]:
    """The front door's own counters (owner `gateway`), when it ever counted."""
    own = r.counters.get(C.GATEWAY_SENDER)
    if not own:
        return
    asks = CounterMetricFamily(_name("gateway_asks"), "Asks through the gateway by outcome (ok, "
                               "error_reply, timeout); refused requests are not counted",
                               labels=["outcome"])
    for outcome in C.GATEWAY_ASK_OUTCOMES:
        asks.add_metric([outcome], own.get(C.gateway_asks_counter(outcome), 0))
    yield asks
    yield CounterMetricFamily(_name("gateway_messages"), "Messages sent through the gateway "
                              "(POST /agents/NAME/messages)", value=own.get(C.COUNTER_GATEWAY_MESSAGES, 0))
    yield CounterMetricFamily(_name("gateway_streams"), "Conversation event streams opened",
                              value=own.get(C.COUNTER_GATEWAY_STREAMS, 0))
    if observed(own, C.COUNTER_ASK_MS):
        latency = HistogramMetricFamily(_name("gateway_ask_seconds"), "Round trip of the gateway's "
                                        "asks that got a reply (an error reply too)")
        cumulative, total = ASK_BUCKETS.read(own, C.COUNTER_ASK_MS)
        latency.add_metric([], _le(cumulative), total)
        yield latency


def _llm(r: Reading) -> Iterator[Metric]:
    """The llm agents' model use (llm/role.py), for the agents that ever called a model."""
    users = {agent: own for agent, own in sorted(r.counters.items()) if own.get(C.COUNTER_LLM_CALLS)}
    if not users:
        return
    calls = CounterMetricFamily(_name("llm_calls"), "Model calls of the llm agent (one per round of "
                                "a turn)", labels=["agent"])
    tokens = CounterMetricFamily(_name("llm_tokens"), "Tokens of the llm agent's model calls, as the "
                                 "model server counted them (direction: in = prompt, out = completion)",
                                 labels=["agent", "direction"])
    tools = CounterMetricFamily(_name("llm_tool_calls"), "Tool calls of the llm agent's model, sent "
                                "as asks", labels=["agent"])
    errors = CounterMetricFamily(_name("llm_errors"), "Turns of the llm agent that ended in an error "
                                 "reply, by kind (ModelTimeout, ToolNotAllowed, ...)",
                                 labels=["agent", "kind"])
    seconds = HistogramMetricFamily(_name("llm_call_seconds"), "Duration of the llm agent's model "
                                    "calls, streamed to the end", labels=["agent"])
    prefix = C.COUNTER_LLM_ERRORS + ":"
    for agent, own in users.items():
        calls.add_metric([agent], own.get(C.COUNTER_LLM_CALLS, 0))
        tokens.add_metric([agent, "in"], own.get(C.COUNTER_LLM_TOKENS_IN, 0))
        tokens.add_metric([agent, "out"], own.get(C.COUNTER_LLM_TOKENS_OUT, 0))
        tools.add_metric([agent], own.get(C.COUNTER_LLM_TOOL_CALLS, 0))
        for name, n in sorted(own.items()):
            if name.startswith(prefix):
                errors.add_metric([agent, name[len(prefix):]], n)
        if observed(own, C.COUNTER_LLM_MS):
            cumulative, total = LLM_BUCKETS.read(own, C.COUNTER_LLM_MS)
            seconds.add_metric([agent], _le(cumulative), total)
    yield from (calls, tokens, tools, errors, seconds)


def _name(short: str) -> str:
    return PREFIX + short


def _sources(r: Reading) -> Iterator[Metric]:
    up = GaugeMetricFamily(_name("up"), "1 if this scrape could read the source (redis, "
                           "supervisord), else 0", labels=["source"])
    up.add_metric(["redis"], int(r.redis_up))
    up.add_metric(["supervisord"], int(r.supervisord_up))
    yield up


def _programs(r: Reading) -> Iterator[Metric]:
    up = GaugeMetricFamily(_name("program_up"), "1 if supervisord reports the program "
                           "RUNNING, else 0", labels=["program"])
    restarts = CounterMetricFamily(_name("program_restarts"), "Starts of the program less the "
                                   "first, since supervisord started", labels=["program"])
    for program, state in sorted(r.programs.items()):
        up.add_metric([program], int(state == "RUNNING"))
        restarts.add_metric([program], r.restarts.get(program, 0))
    yield up
    yield restarts


def agent_names(r: Reading) -> list[str]:
    """mesh.yaml's agents plus every other owner of counters that is an agent."""
    return sorted(set(r.agents) | {owner for owner in r.counters if owner not in NOT_AGENTS})


def _agents(r: Reading) -> Iterator[Metric]:
    sent = CounterMetricFamily(_name("messages_sent"), "Messages the agent sent to other "
                               "agents", labels=["agent"])
    received = CounterMetricFamily(_name("messages_received"), "Messages the agent read from "
                                   "its inbox and handled", labels=["agent"])
    backlogs = GaugeMetricFamily(_name("inbox_backlog"), "Messages sent to the agent and not "
                                "yet handled (every sender's count less the agent's)",
                                labels=["agent"])
    sent_to = sent_totals(r.counters)
    for agent in agent_names(r):
        own = r.counters.get(agent, {})
        sent.add_metric([agent], own.get(C.COUNTER_OUT, 0))
        received.add_metric([agent], own.get(C.COUNTER_IN, 0))
        backlogs.add_metric([agent], backlog(sent_to, r.counters, agent))
    dead = CounterMetricFamily(_name("dead_letters"), "Records the owner sent to the dead "
                               "letter topic", labels=["owner"])
    # only owners that refused something: a mesh that does not sign has none, and 3 series
    # per agent for nothing would be most of a big mesh's scrape
    refused = CounterMetricFamily(_name("refused_records"), "Records the owner refused and "
                                  "dead-lettered for their signature (unsigned, bad_signature: "
                                  "security.sign_envelopes) or for naming another voter or "
                                  "proposer than their sender (wrong_sender)", labels=["owner", "reason"])
    for owner, own in sorted(r.counters.items()):
        if owner != C.CLI_COUNTER_OWNER:
            dead.add_metric([owner], own.get(C.COUNTER_DEAD, 0))
            if any(key.startswith(REFUSED_PREFIX) for key in own):
                for kind in sorted(set(REFUSED_KINDS.values())):
                    refused.add_metric([owner, kind], own.get(REFUSED_PREFIX + kind, 0))
    yield from (sent, received, backlogs, dead, refused)


def _agent_load(r: Reading) -> Iterator[Metric]:
    """From the registry records: agents that left have none, an older runtime's record
    none of these fields."""
    gauges = [GaugeMetricFamily(_name(short), text, labels=["agent"]) for short, _, text in LOAD_GAUGES]
    lag = GaugeMetricFamily(_name("agent_loop_lag_p99_seconds"), "99th percentile of the lag of "
                            "the agent's event loop over its newest 1000 samples (10 s), as of its "
                            "last heartbeat", labels=["agent"])
    for agent, record in sorted(r.registry.items()):
        now = load(record)
        for family, (_, key, _) in zip(gauges, LOAD_GAUGES, strict=True):
            if now[key] is not None:
                family.add_metric([agent], now[key])
        if now["loop_lag_ms"] is not None:
            lag.add_metric([agent], now["loop_lag_ms"]["p99"] / 1000)
    yield from gauges
    yield lag


def _asks(r: Reading) -> Iterator[Metric]:
    counters = [CounterMetricFamily(_name(short), text, labels=["agent"]) for short, _, text in ASK_COUNTERS]
    ask = HistogramMetricFamily(_name("agent_ask_seconds"), "Round trip of the agent's asks that got "
                                "a reply (an error reply too; not those that timed out)", labels=["agent"])
    lag = HistogramMetricFamily(_name("agent_loop_lag_seconds"), "How late the agent's event loop "
                                "woke from its 10 ms sleeps", labels=["agent"])
    histograms: tuple[tuple[HistogramMetricFamily, Buckets, str], ...] = (
        (ask, ASK_BUCKETS, C.COUNTER_ASK_MS), (lag, LOOP_LAG_BUCKETS, C.COUNTER_LOOP_LAG_MS))
    for agent in agent_names(r):
        own = r.counters.get(agent, {})
        for family, (_, counter, _) in zip(counters, ASK_COUNTERS, strict=True):
            family.add_metric([agent], own.get(counter, 0))
        for histogram, buckets, name in histograms:
            if observed(own, name):  # an agent that never asked, or of an older runtime
                cumulative, total = buckets.read(own, name)
                histogram.add_metric([agent], _le(cumulative), total)
    yield from counters
    yield ask
    yield lag


def _topology(r: Reading) -> Iterator[Metric]:
    manager = r.counters.get(C.PROGRAM_TOPOLOGY, {})
    yield CounterMetricFamily(_name("topology_reinforcements"), "Messages that reinforced an "
                              "edge", value=manager.get("reinforcements", 0))
    yield CounterMetricFamily(_name("topology_prunes"), "Edges pruned after decaying below the "
                              "prune threshold", value=manager.get("prunes", 0))
    if r.topology is None:
        return
    stats = r.topology.get("stats", {})
    for short, key, text in (
        ("topology_agents", "agents", "Agents in the graph"),
        ("topology_edges", "edges", "Edges in the graph"),
        ("topology_possible_edges", "possible", "Edges of a full mesh of these agents, n(n-1)"),
    ):
        yield GaugeMetricFamily(_name(short), text, value=stats.get(key, 0))
    yield GaugeMetricFamily(_name("topology_reduction_ratio"), "1 - edges / possible edges "
                            "(0 when there are none)", value=stats.get("reduction_percent", 0) / 100)
    age = max(0.0, r.ts - r.topology.get("ts", 0) / 1000)
    yield GaugeMetricFamily(_name("topology_snapshot_age_seconds"), "Age of the topology "
                            "manager's latest snapshot, where the gauges above come from", value=age)


def _consensus(r: Reading) -> Iterator[Metric]:
    manager = r.counters.get(C.PROGRAM_CONSENSUS, {})
    yield CounterMetricFamily(_name("proposals_opened"), "Proposals the consensus manager "
                              "opened", value=manager.get("book_opened", 0))
    decided = CounterMetricFamily(_name("proposals_decided"), "Proposals decided, by outcome",
                                  labels=["status"])
    for status in DECIDED:
        decided.add_metric([status], manager.get(f"decided_{status}", 0))
    yield decided
    if r.pending_proposals is not None:
        yield GaugeMetricFamily(_name("proposals_pending"), "Proposals open and not yet decided "
                                "(as of the manager's latest snapshot)", value=r.pending_proposals)
    votes = CounterMetricFamily(_name("votes"), "Votes the consensus manager read, by what it "
                                "did with them", labels=["result"])
    for result in VOTE_RESULTS:
        votes.add_metric([result], manager.get(f"votes_{result}", 0))
    yield votes
    latency = HistogramMetricFamily(_name("proposal_decision_seconds"), "Time from a proposal's "
                                    "opening to its decision", labels=[])
    buckets, total = DECISION_BUCKETS.read(manager, C.COUNTER_DECISION_MS)
    latency.add_metric([], _le(buckets), total)
    yield latency


def _le(buckets: list[tuple[float, int]]) -> list[tuple[str, float]]:
    return [(floatToGoString(bound), count) for bound, count in buckets]


def _services(r: Reading) -> Iterator[Metric]:
    calls = CounterMetricFamily(_name("service_requests"), "Tool calls of a service by an "
                                "agent, by outcome", labels=["caller", "service", "outcome"])
    latency = HistogramMetricFamily(_name("service_request_duration_seconds"), "How long an "
                                    "agent waited for a tool call, retries included",
                                    labels=["caller", "service"])
    for caller in agent_names(r):
        own = r.counters.get(caller, {})
        for service in SERVICES:
            histogram = C.service_call_histogram(service)
            if not observed(own, histogram):  # this agent never called this service
                continue
            for outcome in CALL_OUTCOMES:
                calls.add_metric([caller, service, outcome],
                                 own.get(C.service_calls_counter(service, outcome), 0))
            buckets, total = SERVICE_CALL_BUCKETS.read(own, histogram)
            latency.add_metric([caller, service], _le(buckets), total)
    yield calls
    yield latency
    breaker = GaugeMetricFamily(_name("service_breaker_state"), "1 for the state the caller's "
                                "circuit breaker of the service is in, 0 for the others",
                                labels=["caller", "service", "state"])
    pending = GaugeMetricFamily(_name("service_pending_writes"), "Memory writes the agent "
                                "holds until the memory service takes them",
                                labels=["caller", "service"])
    for caller, state in sorted(r.service_clients.items()):
        if caller not in r.registered:  # it left: its last report is stale
            continue
        for service in SERVICES:
            client = state.get(service)
            if not isinstance(client, dict):
                continue
            for name in BREAKER_STATES:
                breaker.add_metric([caller, service, name], int(client.get("breaker") == name))
            if "pending" in client:
                pending.add_metric([caller, service], client["pending"])
    yield breaker
    yield pending
