"""Prometheus metrics, pure parts: latency histograms kept as counters, the rendering of a fixed reading."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from agentmesh_cli import constants as C
from agentmesh_cli.metrics.families import Reading, families
from agentmesh_cli.metrics.histogram import (
    ASK_BUCKETS,
    DECISION_BUCKETS,
    LLM_BUCKETS,
    LOOP_LAG_BUCKETS,
    SERVICE_CALL_BUCKETS,
    Buckets,
    observed,
    quantile,
)
from tests.helpers.tables import FAMILIES, samples, value

# -- histograms kept as counters ---------------------------------------------------------

@pytest.mark.parametrize(("ms", "bucket"), [
    (0, "bucket:5"), (5, "bucket:5"), (5.01, "bucket:10"), (2499, "bucket:2500"),
    (30000, "bucket:30000"), (30001, "bucket:inf"),
])
def test_an_observation_counts_in_its_own_bucket(ms: float, bucket: str) -> None:
    counts: Counter[str] = Counter()
    DECISION_BUCKETS.observe(counts, "d", ms)
    assert counts == {f"d:{bucket}": 1, "d:sum_us": round(ms * 1000), "d:count": 1}


def test_read_back_cumulates_in_seconds() -> None:
    counts: Counter[str] = Counter()
    buckets = Buckets((1, 2.5, 10))
    for ms in (0.4, 2, 2.5, 7, 11, 400):
        buckets.observe(counts, "s", ms)
    assert buckets.read(counts, "s") == ([(0.001, 1), (0.0025, 3), (0.01, 4), (float("inf"), 6)],
                                         0.4229)
    assert observed(counts, "s") and not observed(counts, "other")
    assert buckets.read({}, "other") == ([(0.001, 0), (0.0025, 0), (0.01, 0), (float("inf"), 0)], 0.0)


INF = float("inf")
SPREAD = [(1.0, 2), (2.5, 6), (5.0, 6), (10.0, 9), (INF, 10)]  # 2 in (0,1], 4 in (1,2.5], ...


@pytest.mark.parametrize(("cumulative", "q", "expected"), [
    (SPREAD, 0.1, 0.5),  # rank 1 of the 2 in (0, 1]
    (SPREAD, 0.5, 2.125),  # rank 5: the 3rd of the 4 in (1, 2.5]
    (SPREAD, 0.6, 2.5),  # rank 6: the last of (1, 2.5]
    (SPREAD, 0.9, 10.0),  # rank 9, past the empty (2.5, 5]: the last of (5, 10]
    (SPREAD, 0.99, 10.0),  # rank 9.9 is in +Inf: the largest finite bound
    (SPREAD, 1.0, 10.0),
    ([(1.0, 4), (INF, 4)], 0.5, 0.5),
    ([(1.0, 0), (2.0, 0), (4.0, 2), (INF, 2)], 0.5, 3.0),  # empty buckets below are skipped
    ([(1.0, 0), (2.0, 0), (4.0, 2), (INF, 2)], 0.0, 2.0),  # q 0: the lowest non-empty bucket's start
    ([(1.0, 0), (INF, 0)], 0.5, None),  # no observation
    ([], 0.5, None),
])
def test_quantile_from_cumulative_buckets(cumulative: list[tuple[float, int]], q: float,
                                          expected: float | None) -> None:
    assert quantile(cumulative, q) == expected


def test_quantile_of_a_histogram_read_back() -> None:
    counts: Counter[str] = Counter()
    for ms in (0.4, 2, 2, 3, 7, 40_000):
        ASK_BUCKETS.observe(counts, "a", ms)
    buckets, _ = ASK_BUCKETS.read(counts, "a")
    # rank 3 of 6: the last of the 2 in (1, 2.5] ms; rank 5.94 is in +Inf: 30 s
    assert quantile(buckets, 0.5) == pytest.approx(0.0025)
    assert quantile(buckets, 0.99) == 30.0


# -- the pure rendering ------------------------------------------------------------------

def fixed_reading() -> Reading:
    decision: Counter[str] = Counter()
    for ms in (8, 40, 40_000):
        DECISION_BUCKETS.observe(decision, C.COUNTER_DECISION_MS, ms)
    calls: Counter[str] = Counter({C.service_calls_counter("memory", "ok"): 2,
                                   C.service_calls_counter("memory", "circuit_open"): 1})
    for ms in (0.5, 3, 0.1):
        SERVICE_CALL_BUCKETS.observe(calls, C.service_call_histogram("memory"), ms)
    asks: Counter[str] = Counter({C.COUNTER_ASKS: 5, C.COUNTER_ASK_TIMEOUTS: 1,
                                  C.COUNTER_ERROR_REPLIES: 1, C.COUNTER_LATE_REPLIES: 1})
    for ms in (0.8, 3, 40, 2000):
        ASK_BUCKETS.observe(asks, C.COUNTER_ASK_MS, ms)
    for ms in (0.3, 0.3, 1.5, 12):
        LOOP_LAG_BUCKETS.observe(asks, C.COUNTER_LOOP_LAG_MS, ms)
    return Reading(
        ts=1_000.0,
        agents=["Sales", "Fraud"],
        redis_up=True,
        counters={
            "Sales": {"messages_out": 7, "messages_in": 2, "sent_to:Fraud": 7, "dead_letters": 1,
                      **calls, **asks},
            "Fraud": {"messages_out": 2, "messages_in": 5, "sent_to:Sales": 2,
                      C.COUNTER_EXPIRED: 2, C.COUNTER_CACHED_REPLIES: 1},
            "Late": {"messages_in": 1},  # an agent not in mesh.yaml (added by hand)
            "cli": {"sent_to:Fraud": 1},
            C.PROGRAM_TOPOLOGY: {"reinforcements": 9, "prunes": 4, "joins": 2},
            C.PROGRAM_CONSENSUS: {"book_opened": 4, "decided_accepted": 2, "decided_expired": 1,
                                  "votes_counted": 6, "votes_late": 1, "refused:unsigned": 2, **decision},
        },
        registry={"Sales": {"name": "Sales", "concurrency": 4, "in_flight": 5, "running": 4,
                            "asks_pending": 2, "loop_lag_ms": {"p50": 0.2, "p99": 12.5, "max": 31.0}},
                  "Fraud": {"name": "Fraud", "last_heartbeat": 1}},  # an older runtime's record
        service_clients={"Sales": {"ts": 1, "memory": {"breaker": "half_open", "health": "healthy",
                                                       "pending": 3},
                                   "cognition": {"breaker": "closed", "health": "healthy"}},
                         "Gone": {"ts": 1, "memory": {"breaker": "open", "pending": 9}}},
        topology={"ts": 997_500, "stats": {"agents": 2, "edges": 1, "possible": 2,
                                           "reduction_percent": 50.0}},
        pending_proposals=1,
        supervisord_up=True,
        programs={"agent-Sales": "RUNNING", "agent-Fraud": "BACKOFF", "metrics": "RUNNING"},
        restarts={"agent-Fraud": 3},
    )


def test_every_family_of_a_full_reading() -> None:
    rendered = families(fixed_reading())
    assert [(m.name, m.type) for m in rendered] == FAMILIES
    assert all(m.documentation for m in rendered)


def test_values_of_a_fixed_reading() -> None:
    rendered = families(fixed_reading())
    assert samples(rendered, "agentmesh_up") == {
        ("agentmesh_up", (("source", "redis"),)): 1, ("agentmesh_up", (("source", "supervisord"),)): 1}
    assert samples(rendered, "agentmesh_program_up") == {
        ("agentmesh_program_up", (("program", "agent-Fraud"),)): 0,
        ("agentmesh_program_up", (("program", "agent-Sales"),)): 1,
        ("agentmesh_program_up", (("program", "metrics"),)): 1}
    assert samples(rendered, "agentmesh_program_restarts") == {
        ("agentmesh_program_restarts_total", (("program", "agent-Fraud"),)): 3,
        ("agentmesh_program_restarts_total", (("program", "agent-Sales"),)): 0,
        ("agentmesh_program_restarts_total", (("program", "metrics"),)): 0}
    # mesh.yaml's agents and any other agent that counts; not the CLI, not the managers
    assert samples(rendered, "agentmesh_messages_sent") == {
        ("agentmesh_messages_sent_total", (("agent", "Fraud"),)): 2,
        ("agentmesh_messages_sent_total", (("agent", "Late"),)): 0,
        ("agentmesh_messages_sent_total", (("agent", "Sales"),)): 7}
    assert samples(rendered, "agentmesh_messages_received") == {
        ("agentmesh_messages_received_total", (("agent", "Fraud"),)): 5,
        ("agentmesh_messages_received_total", (("agent", "Late"),)): 1,
        ("agentmesh_messages_received_total", (("agent", "Sales"),)): 2}
    # Fraud: 7 from Sales + 1 from the CLI - 5 handled; Sales: 2 - 2
    assert samples(rendered, "agentmesh_inbox_backlog") == {
        ("agentmesh_inbox_backlog", (("agent", "Fraud"),)): 3,
        ("agentmesh_inbox_backlog", (("agent", "Late"),)): 0,
        ("agentmesh_inbox_backlog", (("agent", "Sales"),)): 0}
    assert samples(rendered, "agentmesh_dead_letters") == {
        ("agentmesh_dead_letters_total", (("owner", owner),)): n
        for owner, n in (("Fraud", 0), ("Late", 0), ("Sales", 1), ("consensus-manager", 0),
                         ("topology-manager", 0))}
    # only owners that refused a record (security.sign_envelopes, or a vote naming another voter)
    assert samples(rendered, "agentmesh_refused_records") == {
        ("agentmesh_refused_records_total", (("owner", "consensus-manager"), ("reason", reason))): n
        for reason, n in (("bad_signature", 0), ("unsigned", 2), ("wrong_sender", 0))}
    found = samples(rendered)
    assert value(found, "agentmesh_topology_reinforcements_total") == 9
    assert value(found, "agentmesh_topology_prunes_total") == 4
    assert [value(found, f"agentmesh_topology_{k}") for k in ("agents", "edges", "possible_edges")] == [
        2, 1, 2]
    assert value(found, "agentmesh_topology_reduction_ratio") == 0.5
    assert value(found, "agentmesh_topology_snapshot_age_seconds") == 2.5
    assert value(found, "agentmesh_proposals_opened_total") == 4
    assert {s: value(found, "agentmesh_proposals_decided_total", status=s)
            for s in ("accepted", "rejected", "expired")} == {"accepted": 2, "rejected": 0, "expired": 1}
    assert value(found, "agentmesh_proposals_pending") == 1
    assert samples(rendered, "agentmesh_votes") == {
        ("agentmesh_votes_total", (("result", r),)): n
        for r, n in (("counted", 6), ("replaced", 0), ("not_member", 0), ("unknown", 0), ("late", 1),
                     ("early", 0))}


def test_histograms_of_a_fixed_reading() -> None:
    rendered = families(fixed_reading())
    decision = samples(rendered, "agentmesh_proposal_decision_seconds")
    name = "agentmesh_proposal_decision_seconds"
    bounds = ("0.005", "0.01", "0.05", "30.0", "+Inf")
    assert {le: value(decision, f"{name}_bucket", le=le) for le in bounds} == {
        "0.005": 0, "0.01": 1, "0.05": 2, "30.0": 2, "+Inf": 3}
    assert value(decision, f"{name}_count") == 3
    assert value(decision, f"{name}_sum") == pytest.approx(40.048)
    assert len(decision) == 13 + 2  # 12 bounds and +Inf, count, sum

    calls = samples(rendered, "agentmesh_service_requests")
    assert calls == {("agentmesh_service_requests_total",
                      (("caller", "Sales"), ("outcome", o), ("service", "memory"))): n
                     for o, n in (("ok", 2), ("error", 0), ("circuit_open", 1))}
    latency = samples(rendered, "agentmesh_service_request_duration_seconds")
    name = "agentmesh_service_request_duration_seconds"
    assert value(latency, f"{name}_bucket", caller="Sales", service="memory", le="0.001") == 2
    assert value(latency, f"{name}_bucket", caller="Sales", service="memory", le="0.005") == 3
    assert value(latency, f"{name}_count", caller="Sales", service="memory") == 3
    assert value(latency, f"{name}_sum", caller="Sales", service="memory") == pytest.approx(0.0036)
    assert {labels for _, labels in latency} >= {(("caller", "Sales"), ("service", "memory"))}

    # only agents in the registry: "Gone" left, its last report is stale
    breaker = samples(rendered, "agentmesh_service_breaker_state")
    assert breaker == {("agentmesh_service_breaker_state", (("caller", "Sales"), ("service", svc),
                                                            ("state", state))): n
                       for svc, on in (("memory", "half_open"), ("cognition", "closed"))
                       for state, n in (("closed", int(on == "closed")), ("open", 0),
                                        ("half_open", int(on == "half_open")))}
    assert samples(rendered, "agentmesh_service_pending_writes") == {
        ("agentmesh_service_pending_writes", (("caller", "Sales"), ("service", "memory"))): 3}


class FixedCollector(Collector):
    def __init__(self, reading: Reading) -> None:
        self.reading = reading

    def collect(self) -> Iterable[Metric]:
        return families(self.reading)


def exposition(reading: Reading) -> list[str]:
    """The lines of a scrape of `reading`, in the text format as prometheus-client writes it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FixedCollector(reading))
    return generate_latest(registry).decode().splitlines()


# Sales: a record with its load, asks and both histograms. Fraud: an older runtime's record
# (no gauges), asks as an answerer only (expired, cached). Late: not in the registry. Neither
# observed a histogram: they have no series of it.
AGENT_LINES = """\
# HELP agentmesh_agent_in_flight Messages the agent read and has not finished (queued or running), as of its last heartbeat
# TYPE agentmesh_agent_in_flight gauge
agentmesh_agent_in_flight{agent="Sales"} 5.0
# HELP agentmesh_agent_running Handlers of the agent running, as of its last heartbeat
# TYPE agentmesh_agent_running gauge
agentmesh_agent_running{agent="Sales"} 4.0
# HELP agentmesh_agent_asks_pending Asks of the agent waiting for a reply, as of its last heartbeat
# TYPE agentmesh_agent_asks_pending gauge
agentmesh_agent_asks_pending{agent="Sales"} 2.0
# HELP agentmesh_agent_loop_lag_p99_seconds 99th percentile of the lag of the agent's event loop over its newest 1000 samples (10 s), as of its last heartbeat
# TYPE agentmesh_agent_loop_lag_p99_seconds gauge
agentmesh_agent_loop_lag_p99_seconds{agent="Sales"} 0.0125
# HELP agentmesh_agent_asks_total Asks (requests that wait for a reply) the agent sent
# TYPE agentmesh_agent_asks_total counter
agentmesh_agent_asks_total{agent="Fraud"} 0.0
agentmesh_agent_asks_total{agent="Late"} 0.0
agentmesh_agent_asks_total{agent="Sales"} 5.0
# HELP agentmesh_agent_ask_timeouts_total Asks of the agent that got no reply in time
# TYPE agentmesh_agent_ask_timeouts_total counter
agentmesh_agent_ask_timeouts_total{agent="Fraud"} 0.0
agentmesh_agent_ask_timeouts_total{agent="Late"} 0.0
agentmesh_agent_ask_timeouts_total{agent="Sales"} 1.0
# HELP agentmesh_agent_error_replies_total Error replies the agent's asks received (the answering handler raised)
# TYPE agentmesh_agent_error_replies_total counter
agentmesh_agent_error_replies_total{agent="Fraud"} 0.0
agentmesh_agent_error_replies_total{agent="Late"} 0.0
agentmesh_agent_error_replies_total{agent="Sales"} 1.0
# HELP agentmesh_agent_late_replies_total Replies the agent received after their ask had given up (dropped)
# TYPE agentmesh_agent_late_replies_total counter
agentmesh_agent_late_replies_total{agent="Fraud"} 0.0
agentmesh_agent_late_replies_total{agent="Late"} 0.0
agentmesh_agent_late_replies_total{agent="Sales"} 1.0
# HELP agentmesh_agent_expired_requests_total Requests to the agent read after their deadline (skipped, never handled)
# TYPE agentmesh_agent_expired_requests_total counter
agentmesh_agent_expired_requests_total{agent="Fraud"} 2.0
agentmesh_agent_expired_requests_total{agent="Late"} 0.0
agentmesh_agent_expired_requests_total{agent="Sales"} 0.0
# HELP agentmesh_agent_cached_replies_total Repeated requests the agent answered again from its reply cache
# TYPE agentmesh_agent_cached_replies_total counter
agentmesh_agent_cached_replies_total{agent="Fraud"} 1.0
agentmesh_agent_cached_replies_total{agent="Late"} 0.0
agentmesh_agent_cached_replies_total{agent="Sales"} 0.0
# HELP agentmesh_agent_ask_seconds Round trip of the agent's asks that got a reply (an error reply too; not those that timed out)
# TYPE agentmesh_agent_ask_seconds histogram
agentmesh_agent_ask_seconds_bucket{agent="Sales",le="0.001"} 1.0
agentmesh_agent_ask_seconds_bucket{agent="Sales",le="0.0025"} 1.0
agentmesh_agent_ask_seconds_bucket{agent="Sales",le="0.005"} 2.0
agentmesh_agent_ask_seconds_bucket{agent="Sales",le="0.01"} 2.0
agentmesh_agent_ask_seconds_bucket{agent="Sales",le="0.025"} 2.0
agentmesh_agent_ask_seconds_bucket{agent="Sales",le="0.05"} 3.0
agentmesh_agent_ask_seconds_bucket{agent="Sales",le="0.1"} 3.0
agentmesh_agent_ask_seconds_bucket{agent="Sales",le="0.25"} 3.0
agentmesh_agent_ask_seconds_bucket{agent="Sales",le="0.5"} 3.0
agentmesh_agent_ask_seconds_bucket{agent="Sales",le="1.0"} 3.0
agentmesh_agent_ask_seconds_bucket{agent="Sales",le="2.5"} 4.0
agentmesh_agent_ask_seconds_bucket{agent="Sales",le="5.0"} 4.0
agentmesh_agent_ask_seconds_bucket{agent="Sales",le="10.0"} 4.0
agentmesh_agent_ask_seconds_bucket{agent="Sales",le="30.0"} 4.0
agentmesh_agent_ask_seconds_bucket{agent="Sales",le="+Inf"} 4.0
agentmesh_agent_ask_seconds_count{agent="Sales"} 4.0
agentmesh_agent_ask_seconds_sum{agent="Sales"} 2.0438
# HELP agentmesh_agent_loop_lag_seconds How late the agent's event loop woke from its 10 ms sleeps
# TYPE agentmesh_agent_loop_lag_seconds histogram
agentmesh_agent_loop_lag_seconds_bucket{agent="Sales",le="0.0005"} 2.0
agentmesh_agent_loop_lag_seconds_bucket{agent="Sales",le="0.001"} 2.0
agentmesh_agent_loop_lag_seconds_bucket{agent="Sales",le="0.002"} 3.0
agentmesh_agent_loop_lag_seconds_bucket{agent="Sales",le="0.005"} 3.0
agentmesh_agent_loop_lag_seconds_bucket{agent="Sales",le="0.01"} 3.0
agentmesh_agent_loop_lag_seconds_bucket{agent="Sales",le="0.02"} 4.0
agentmesh_agent_loop_lag_seconds_bucket{agent="Sales",le="0.05"} 4.0
agentmesh_agent_loop_lag_seconds_bucket{agent="Sales",le="0.1"} 4.0
agentmesh_agent_loop_lag_seconds_bucket{agent="Sales",le="0.25"} 4.0
agentmesh_agent_loop_lag_seconds_bucket{agent="Sales",le="1.0"} 4.0
agentmesh_agent_loop_lag_seconds_bucket{agent="Sales",le="+Inf"} 4.0
agentmesh_agent_loop_lag_seconds_count{agent="Sales"} 4.0
agentmesh_agent_loop_lag_seconds_sum{agent="Sales"} 0.0141
"""  # noqa: E501 (the help lines as prometheus-client writes them)


def test_exposition_of_the_agents_load_and_asks() -> None:
    lines = [line for line in exposition(fixed_reading()) if "agentmesh_agent_" in line]
    assert lines == AGENT_LINES.splitlines()


def test_sources_that_do_not_answer_leave_their_families_out() -> None:
    nothing = families(Reading(ts=0.0, agents=["Sales"]))
    assert [(m.name, m.type) for m in nothing] == [("agentmesh_up", "gauge")]
    assert samples(nothing) == {("agentmesh_up", (("source", "redis"),)): 0,
                                ("agentmesh_up", (("source", "supervisord"),)): 0}
    only_redis = families(Reading(ts=0.0, agents=["Sales"], redis_up=True))
    names = [m.name for m in only_redis]
    assert "agentmesh_program_up" not in names and "agentmesh_topology_edges" not in names
    assert "agentmesh_messages_sent" in names and "agentmesh_proposals_pending" not in names


# -- the exporter against a real Redis ---------------------------------------------------


# -- a real mesh, scraped while it works -------------------------------------------------




def test_the_gateways_families_once_it_counted() -> None:
    gateway: Counter[str] = Counter({C.gateway_asks_counter("ok"): 3, C.gateway_asks_counter("timeout"): 1,
                                     C.COUNTER_GATEWAY_MESSAGES: 2, C.COUNTER_GATEWAY_STREAMS: 4,
                                     C.sent_to_counter("Fraud"): 6})
    for ms in (2, 4, 9):
        ASK_BUCKETS.observe(gateway, C.COUNTER_ASK_MS, ms)
    reading = fixed_reading()
    reading.counters[C.GATEWAY_SENDER] = dict(gateway)
    rendered = {m.name: m for m in families(reading)}
    assert [(m.name, m.type) for m in families(reading)][len(FAMILIES):] == [
        ("agentmesh_gateway_asks", "counter"), ("agentmesh_gateway_messages", "counter"),
        ("agentmesh_gateway_streams", "counter"), ("agentmesh_gateway_ask_seconds", "histogram")]
    asks = rendered["agentmesh_gateway_asks"].samples
    assert [(s.labels, s.value) for s in asks if s.name.endswith("_total")] == \
        [({"outcome": "ok"}, 3), ({"outcome": "error_reply"}, 0), ({"outcome": "timeout"}, 1)]
    assert rendered["agentmesh_gateway_messages"].samples[0].value == 2
    count = [s.value for s in rendered["agentmesh_gateway_ask_seconds"].samples if s.name.endswith("_count")]
    assert count == [3]
    # the gateway is no agent: no agent series name it
    assert all(s.labels.get("agent") != C.GATEWAY_SENDER for m in families(reading) for s in m.samples)
    assert "agentmesh_gateway_asks" not in {m.name for m in families(fixed_reading())}


def test_the_llm_families_for_the_agents_that_called_a_model() -> None:
    concierge: Counter[str] = Counter({C.COUNTER_LLM_CALLS: 3, C.COUNTER_LLM_TOKENS_IN: 120,
                                       C.COUNTER_LLM_TOKENS_OUT: 45, C.COUNTER_LLM_TOOL_CALLS: 2,
                                       C.COUNTER_LLM_ERRORS: 1, f"{C.COUNTER_LLM_ERRORS}:ModelTimeout": 1})
    for ms in (40, 900, 2000):
        LLM_BUCKETS.observe(concierge, C.COUNTER_LLM_MS, ms)
    reading = fixed_reading()
    reading.counters["Concierge"] = dict(concierge)
    rendered = {m.name: m for m in families(reading)}
    assert [(m.name, m.type) for m in families(reading)][len(FAMILIES):] == [
        ("agentmesh_llm_calls", "counter"), ("agentmesh_llm_tokens", "counter"),
        ("agentmesh_llm_tool_calls", "counter"), ("agentmesh_llm_errors", "counter"),
        ("agentmesh_llm_call_seconds", "histogram")]

    def totals(name: str) -> list[tuple[dict[str, str], float]]:
        return [(s.labels, s.value) for s in rendered[name].samples if s.name.endswith("_total")]

    assert totals("agentmesh_llm_calls") == [({"agent": "Concierge"}, 3)]
    assert totals("agentmesh_llm_tokens") == [({"agent": "Concierge", "direction": "in"}, 120),
                                              ({"agent": "Concierge", "direction": "out"}, 45)]
    assert totals("agentmesh_llm_errors") == [({"agent": "Concierge", "kind": "ModelTimeout"}, 1)]
    histogram = {s.name: s.value for s in rendered["agentmesh_llm_call_seconds"].samples
                 if not s.name.endswith("_bucket")}
    assert histogram == {"agentmesh_llm_call_seconds_count": 3, "agentmesh_llm_call_seconds_sum": 2.94}
    assert "agentmesh_llm_calls" not in {m.name for m in families(fixed_reading())}

