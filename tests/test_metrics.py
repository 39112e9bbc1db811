"""Prometheus metrics: latency histograms kept as counters, the pure rendering of a fixed
reading, the exporter reading a real Redis, a scrape while Redis is down, and a real mesh
scraped while it works (messages, reinforcements, decisions, service calls, restarts)."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from agentmesh_cli import constants as C
from agentmesh_cli.config import Mesh
from agentmesh_cli.metrics.exporter import MeshCollector, metrics_url
from agentmesh_cli.metrics.families import Reading, families
from agentmesh_cli.metrics.histogram import DECISION_BUCKETS, SERVICE_CALL_BUCKETS, Buckets, observed
from agentmesh_cli.store import Store
from agentmesh_cli.supervisor.control import Supervisor
from tests.conftest import free_port, spawn_role, wait_for
from tests.test_mesh_e2e import running_mesh, write_mesh

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(metrics: list[Metric], family: str | None = None) -> Samples:
    """(sample name, sorted labels) -> value, of every family or of one."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for m in metrics if family is None or m.name == family for s in m.samples}


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


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


# -- the pure rendering ------------------------------------------------------------------

def fixed_reading() -> Reading:
    decision: Counter[str] = Counter()
    for ms in (8, 40, 40_000):
        DECISION_BUCKETS.observe(decision, C.COUNTER_DECISION_MS, ms)
    calls: Counter[str] = Counter({C.service_calls_counter("memory", "ok"): 2,
                                   C.service_calls_counter("memory", "circuit_open"): 1})
    for ms in (0.5, 3, 0.1):
        SERVICE_CALL_BUCKETS.observe(calls, C.service_call_histogram("memory"), ms)
    return Reading(
        ts=1_000.0,
        agents=["Sales", "Fraud"],
        redis_up=True,
        counters={
            "Sales": {"messages_out": 7, "messages_in": 2, "sent_to:Fraud": 7, "dead_letters": 1,
                      **calls},
            "Fraud": {"messages_out": 2, "messages_in": 5, "sent_to:Sales": 2},
            "Late": {"messages_in": 1},  # an agent not in mesh.yaml (added by hand)
            "cli": {"sent_to:Fraud": 1},
            C.PROGRAM_TOPOLOGY: {"reinforcements": 9, "prunes": 4, "joins": 2},
            C.PROGRAM_CONSENSUS: {"book_opened": 4, "decided_accepted": 2, "decided_expired": 1,
                                  "votes_counted": 6, "votes_late": 1, "refused:unsigned": 2, **decision},
        },
        registered={"Sales"},
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


FAMILIES = [
    ("agentmesh_up", "gauge"),
    ("agentmesh_program_up", "gauge"),
    ("agentmesh_program_restarts", "counter"),
    ("agentmesh_messages_sent", "counter"),
    ("agentmesh_messages_received", "counter"),
    ("agentmesh_inbox_backlog", "gauge"),
    ("agentmesh_dead_letters", "counter"),
    ("agentmesh_refused_records", "counter"),
    ("agentmesh_topology_reinforcements", "counter"),
    ("agentmesh_topology_prunes", "counter"),
    ("agentmesh_topology_agents", "gauge"),
    ("agentmesh_topology_edges", "gauge"),
    ("agentmesh_topology_possible_edges", "gauge"),
    ("agentmesh_topology_reduction_ratio", "gauge"),
    ("agentmesh_topology_snapshot_age_seconds", "gauge"),
    ("agentmesh_proposals_opened", "counter"),
    ("agentmesh_proposals_decided", "counter"),
    ("agentmesh_proposals_pending", "gauge"),
    ("agentmesh_votes", "counter"),
    ("agentmesh_proposal_decision_seconds", "histogram"),
    ("agentmesh_service_requests", "counter"),
    ("agentmesh_service_request_duration_seconds", "histogram"),
    ("agentmesh_service_breaker_state", "gauge"),
    ("agentmesh_service_pending_writes", "gauge"),
]


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

def test_collector_reads_the_mesh_from_redis(external_mesh: Any) -> None:
    mesh: Mesh = external_mesh(agents=[{"name": "Sales", "role": "sales"}])
    store = Store(mesh.redis_url, mesh.config.mesh)
    try:
        store.add_counters("Sales", Counter({"messages_out": 3, "sent_to:Sales": 1}))
        store.add_counters(C.PROGRAM_TOPOLOGY, Counter({"reinforcements": 3}))
        store.register_agent("Sales", {"name": "Sales", "last_heartbeat": 0})
        store.set_service_clients("Sales", {"ts": 1, "memory": {"breaker": "open", "pending": 2}})
        store.save_snapshot({"ts": 5, "stats": {"agents": 1, "edges": 0, "possible": 0,
                                                "reduction_percent": 0}})
        store.save_json(mesh.keys.consensus_snapshot, {"proposals": [{"id": "p1"}, {"id": "p2"}]})
    finally:
        store.close()
    collector = MeshCollector(mesh)
    try:
        reading = collector.read()
    finally:
        collector.close()
    assert reading.redis_up and not reading.supervisord_up  # no supervisord in this folder
    assert reading.counters == {"Sales": {"messages_out": 3, "sent_to:Sales": 1},
                                C.PROGRAM_TOPOLOGY: {"reinforcements": 3}}
    assert reading.registered == {"Sales"}
    assert reading.service_clients["Sales"]["memory"] == {"breaker": "open", "pending": 2}
    assert reading.topology == {"ts": 5, "stats": {"agents": 1, "edges": 0, "possible": 0,
                                                   "reduction_percent": 0}}
    assert reading.pending_proposals == 2
    found = samples(families(reading))
    assert value(found, "agentmesh_inbox_backlog", agent="Sales") == 1
    assert value(found, "agentmesh_service_breaker_state", caller="Sales", service="memory",
                 state="open") == 1


def test_a_scrape_without_redis_still_answers_and_sigterm_stops(tmp_path: Path) -> None:
    port = free_port()
    config = write_mesh(tmp_path, ["Sales"], redis={"url": f"redis://127.0.0.1:{free_port()}/0"},
                        metrics={"port": port})
    log = tmp_path / "metrics.log"
    proc = spawn_role("metrics", "--config", str(config), log=log)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for(lambda: "serving on" in log.read_text(), 60, "the exporter to serve")
        response = httpx.get(url, timeout=30)
        assert response.status_code == 200
        parsed = {f.name: f for f in text_string_to_metric_families(response.text)}
        assert list(parsed) == ["agentmesh_up"]
        assert {s.labels["source"]: s.value for s in parsed["agentmesh_up"].samples} == {
            "redis": 0, "supervisord": 0}
        assert httpx.get(f"http://127.0.0.1:{port}/nothing", timeout=30).status_code == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    text = log.read_text()
    assert f"INFO metrics: serving on http://127.0.0.1:{port}/metrics" in text
    assert "redis unavailable, its metrics are left out" in text
    assert "signal SIGTERM: stopping" in text and "Traceback" not in text


# -- a real mesh, scraped while it works -------------------------------------------------

AGENTS = ["Sales", "Support", "Inventory", "Fraud"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    config = write_mesh(tmp_path_factory.mktemp("metrics"), AGENTS,
                        workload={"order_rate": 4, "refund_rate": 1, "seed": 11})
    with running_mesh(config) as running:
        yield running


def scrape(mesh: Mesh) -> dict[str, Any]:
    response = httpx.get(metrics_url(mesh), timeout=30)
    assert response.status_code == 200, response.text
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def total(scraped: dict[str, Any], family: str, sample: str | None = None) -> float:
    name = sample or family
    return sum(s.value for s in scraped[family].samples if s.name == name)


def test_a_running_mesh_scraped(mesh: Mesh) -> None:
    first = scrape(mesh)
    assert {name: first[name].type for name, _ in FAMILIES if name in first} == dict(FAMILIES)
    assert {s.labels["source"]: s.value for s in first["agentmesh_up"].samples} == {
        "redis": 1, "supervisord": 1}
    programs = {s.labels["program"]: s.value for s in first["agentmesh_program_up"].samples}
    assert programs == {p: 1 for p in ["kafka", "redis", "memory", "cognition", "metrics",
                                       "topology-manager", "consensus-manager",
                                       *(f"agent-{a}" for a in AGENTS)]}
    assert {s.labels["agent"] for s in first["agentmesh_messages_sent"].samples} == set(AGENTS)

    # the mesh works: messages and reinforcements rise between two scrapes
    sent = total(first, "agentmesh_messages_sent", "agentmesh_messages_sent_total")
    reinforced = total(first, "agentmesh_topology_reinforcements",
                       "agentmesh_topology_reinforcements_total")
    later = wait_for(lambda: (s := scrape(mesh)) and
                     total(s, "agentmesh_messages_sent", "agentmesh_messages_sent_total") > sent and
                     total(s, "agentmesh_topology_reinforcements",
                           "agentmesh_topology_reinforcements_total") > reinforced and s,
                     120, "messages and reinforcements to rise", interval=1.0)
    assert total(later, "agentmesh_messages_received", "agentmesh_messages_received_total") > 0
    assert total(later, "agentmesh_topology_edges") == 12  # nothing decays in this test mesh

    # proposals decide: the decision latency histogram counts them
    decided = wait_for(lambda: (s := scrape(mesh)) and total(
        s, "agentmesh_proposal_decision_seconds", "agentmesh_proposal_decision_seconds_count") > 0
        and s, 120, "a decision in the latency histogram", interval=1.0)
    count = total(decided, "agentmesh_proposal_decision_seconds", "agentmesh_proposal_decision_seconds_count")
    inf = [s.value for s in decided["agentmesh_proposal_decision_seconds"].samples
           if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"]
    assert inf == [count]
    assert total(decided, "agentmesh_votes", "agentmesh_votes_total") > 0
    # every decision is counted by status and in the histogram (one flush of the manager)
    wait_for(lambda: (s := scrape(mesh)) and total(
        s, "agentmesh_proposals_decided", "agentmesh_proposals_decided_total") == total(
        s, "agentmesh_proposal_decision_seconds", "agentmesh_proposal_decision_seconds_count"),
        60, "decisions by status to match the histogram's count", interval=0.5)

    # the agents' service calls: memory writes succeed, every breaker is closed
    # (each agent's first call comes with its first order or ticket: wait for all four)
    served = wait_for(lambda: (s := scrape(mesh)) and {
        x.labels["caller"] for x in s["agentmesh_service_requests"].samples
        if x.labels["service"] == "memory" and x.labels["outcome"] == "ok" and x.value > 0} == set(AGENTS)
        and s, 120, "every agent's memory calls to be counted", interval=1.0)
    callers = {x.labels["caller"] for x in served["agentmesh_service_request_duration_seconds"].samples
               if x.labels["service"] == "memory"}
    assert callers == set(AGENTS)
    breakers = {(x.labels["caller"], x.labels["service"]): x.labels["state"]
                for x in served["agentmesh_service_breaker_state"].samples if x.value == 1}
    assert breakers == {(a, s): "closed" for a in AGENTS for s in ("memory", "cognition")}


def test_a_killed_agent_is_counted_as_restarted(mesh: Mesh) -> None:
    def restarts(scraped: dict[str, Any]) -> dict[str, float]:
        return {s.labels["program"]: s.value for s in scraped["agentmesh_program_restarts"].samples}

    before = restarts(scrape(mesh))["agent-Inventory"]
    with Supervisor(mesh) as sup:
        pid = {p["name"]: p["pid"] for p in sup.processes()}["agent-Inventory"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: restarts(scrape(mesh))["agent-Inventory"] == before + 1, 60,
             "the restart to be counted", interval=0.5)
    wait_for(lambda: {s.labels["program"]: s.value for s in scrape(mesh)["agentmesh_program_up"]
                      .samples}["agent-Inventory"] == 1, 60, "agent-Inventory up again", interval=0.5)


def test_the_exporter_is_a_supervised_program(mesh: Mesh) -> None:
    log = (mesh.logs_dir / "metrics.log").read_text()
    assert f"serving on http://127.0.0.1:{mesh.config.metrics.port}/metrics" in log
    assert "Traceback" not in log
