"""Prometheus metrics for real: the exporter reading a real Redis, a scrape while Redis is down, and a
real mesh scraped while it works (messages, reinforcements, decisions, service calls, restarts)."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentmesh_cli import constants as C
from agentmesh_cli.embedded import free_port, stop
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.metrics.exporter import MeshCollector, metrics_url
from agentmesh_cli.metrics.families import families
from agentmesh_cli.store import Store
from agentmesh_cli.supervisor.control import Supervisor
from agentmesh_cli.waiting import wait_until
from tests.helpers.agents import ROLES, agents, send
from tests.helpers.commands import spawn_role
from tests.helpers.mesh import running_mesh, write_mesh
from tests.helpers.tables import FAMILIES, samples, value

# -- histograms kept as counters ---------------------------------------------------------


# -- the pure rendering ------------------------------------------------------------------


# -- the exporter against a real Redis ---------------------------------------------------

def test_collector_reads_the_mesh_from_redis(external_mesh: Any) -> None:
    mesh: Mesh = external_mesh(agents=[{"name": "Sales", "role": "sales"}])
    store = Store(mesh.redis_url, mesh.config.mesh)
    try:
        store.add_counters("Sales", Counter({"messages_out": 3, "sent_to:Sales": 1}))
        store.add_counters(C.PROGRAM_TOPOLOGY, Counter({"reinforcements": 3}))
        store.register_agent("Sales", {"name": "Sales", "last_heartbeat": 0, "concurrency": 4,
                                       "in_flight": 3, "running": 2, "asks_pending": 1,
                                       "loop_lag_ms": {"p50": 0.1, "p99": 4.0, "max": 9.5}})
        store.add_counters("Sales", Counter({C.COUNTER_ASKS: 2, f"{C.COUNTER_ASK_MS}:bucket:5": 1,
                                             f"{C.COUNTER_ASK_MS}:sum_us": 4200,
                                             f"{C.COUNTER_ASK_MS}:count": 1}))
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
    assert reading.counters == {"Sales": {"messages_out": 3, "sent_to:Sales": 1, "asks": 2,
                                          "ask_ms:bucket:5": 1, "ask_ms:sum_us": 4200, "ask_ms:count": 1},
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
    assert [value(found, f"agentmesh_agent_{name}", agent="Sales")
            for name in ("in_flight", "running", "asks_pending", "loop_lag_p99_seconds")] == [3, 2, 1, 0.004]
    assert value(found, "agentmesh_agent_asks_total", agent="Sales") == 2
    assert value(found, "agentmesh_agent_ask_seconds_bucket", agent="Sales", le="0.0025") == 0
    assert value(found, "agentmesh_agent_ask_seconds_bucket", agent="Sales", le="0.005") == 1
    assert value(found, "agentmesh_agent_ask_seconds_sum", agent="Sales") == 0.0042


def test_a_scrape_without_redis_still_answers_and_sigterm_stops(tmp_path: Path) -> None:
    port = free_port()
    config = write_mesh(tmp_path, ["Sales"], redis={"url": f"redis://127.0.0.1:{free_port()}/0"},
                        metrics={"port": port})
    log = tmp_path / "metrics.log"
    proc = spawn_role("metrics", "--config", str(config), log=log)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_until(lambda: "serving on" in log.read_text(), 60, "the exporter to serve")
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
    assert programs == {p: 1 for p in ["kafka", "redis", "memory", "cognition", "metrics", "gateway",
                                       "topology-manager", "consensus-manager",
                                       *(f"agent-{a}" for a in AGENTS)]}
    assert {s.labels["agent"] for s in first["agentmesh_messages_sent"].samples} == set(AGENTS)

    # the mesh works: messages and reinforcements rise between two scrapes
    sent = total(first, "agentmesh_messages_sent", "agentmesh_messages_sent_total")
    reinforced = total(first, "agentmesh_topology_reinforcements",
                       "agentmesh_topology_reinforcements_total")
    def lags_of(s: dict[str, Any]) -> dict[str, float]:
        family = s.get("agentmesh_agent_loop_lag_seconds")
        return {x.labels["agent"]: x.value for x in (family.samples if family else [])
                if x.name == "agentmesh_agent_loop_lag_seconds_count"}

    # (every agent's loop lag counted once: an agent flushes its counters about every second)
    later = wait_until(lambda: (s := scrape(mesh)) and
                     total(s, "agentmesh_messages_sent", "agentmesh_messages_sent_total") > sent and
                     total(s, "agentmesh_topology_reinforcements",
                           "agentmesh_topology_reinforcements_total") > reinforced and
                     set(lags_of(s)) == set(AGENTS) and s,
                     120, "messages and reinforcements to rise", interval=1.0)
    assert total(later, "agentmesh_messages_received", "agentmesh_messages_received_total") > 0
    assert total(later, "agentmesh_topology_edges") == 12  # nothing decays in this test mesh
    # every agent's load (its registry record) and the lag of its event loop (its counters)
    for family in ("agentmesh_agent_in_flight", "agentmesh_agent_running", "agentmesh_agent_asks_pending",
                   "agentmesh_agent_loop_lag_p99_seconds"):
        assert {x.labels["agent"] for x in later[family].samples} == set(AGENTS), family
    lags = lags_of(later)
    assert set(lags) == set(AGENTS) and min(lags.values()) > 0
    # of the demo roles only Support asks (Sales, for a customer's recent orders)
    asks = {x.labels["agent"]: x.value for x in later["agentmesh_agent_asks"].samples
            if x.name == "agentmesh_agent_asks_total"}
    assert {a for a, n in asks.items() if n > 0} <= {"Support"}

    # proposals decide: the decision latency histogram counts them
    decided = wait_until(lambda: (s := scrape(mesh)) and total(
        s, "agentmesh_proposal_decision_seconds", "agentmesh_proposal_decision_seconds_count") > 0
        and s, 120, "a decision in the latency histogram", interval=1.0)
    count = total(decided, "agentmesh_proposal_decision_seconds", "agentmesh_proposal_decision_seconds_count")
    inf = [s.value for s in decided["agentmesh_proposal_decision_seconds"].samples
           if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"]
    assert inf == [count]
    assert total(decided, "agentmesh_votes", "agentmesh_votes_total") > 0
    # every decision is counted by status and in the histogram (one flush of the manager)
    wait_until(lambda: (s := scrape(mesh)) and total(
        s, "agentmesh_proposals_decided", "agentmesh_proposals_decided_total") == total(
        s, "agentmesh_proposal_decision_seconds", "agentmesh_proposal_decision_seconds_count"),
        60, "decisions by status to match the histogram's count", interval=0.5)

    # the agents' service calls: memory writes succeed, every breaker is closed
    # (each agent's first call comes with its first order or ticket: wait for all four)
    served = wait_until(lambda: (s := scrape(mesh)) and {
        x.labels["caller"] for x in s["agentmesh_service_requests"].samples
        if x.labels["service"] == "memory" and x.labels["outcome"] == "ok" and x.value > 0} == set(AGENTS)
        and s, 120, "every agent's memory calls to be counted", interval=1.0)
    callers = {x.labels["caller"] for x in served["agentmesh_service_request_duration_seconds"].samples
               if x.labels["service"] == "memory"}
    assert callers == set(AGENTS)
    breakers = {(x.labels["caller"], x.labels["service"]): x.labels["state"]
                for x in served["agentmesh_service_breaker_state"].samples if x.value == 1}
    assert breakers == {(a, s): "closed" for a in AGENTS for s in ("memory", "cognition")}


def test_asking_agents_scraped(external_mesh: Any, tmp_path: Path) -> None:
    """An Asker and an Answerer (tests/helpers/waiting_roles.py) as processes and the real
    exporter: the asks and their outcomes, the round trips, and each agent's load and lag."""
    mesh: Mesh = external_mesh(agents=[{"name": "Asker", "role": f"{ROLES}:Asker", "concurrency": 8},
                                       {"name": "Answerer", "role": f"{ROLES}:Answerer", "concurrency": 8}])
    asks = [*({"to": "Answerer", "type": "double", "payload": {"x": x}} for x in range(3)),
            {"to": "Answerer", "type": "fail", "payload": {"x": 0}},
            {"to": "Answerer", "type": "slow", "payload": {"sleep": 1.0}, "timeout": 0.3}]
    log = tmp_path / "metrics.log"
    exporter = spawn_role("metrics", "--config", str(mesh.config_file), log=log)
    try:
        with agents(mesh, tmp_path):
            send(mesh, "Asker", "ask", asks, conversation=[f"c{i}" for i in range(len(asks))])
            wait_until(lambda: "serving on" in log.read_text(), 60, "the exporter to serve")
            # the slow reply comes after its ask gave up: the last count to reach Redis
            scraped = wait_until(lambda: (s := scrape(mesh)) and total(
                s, "agentmesh_agent_late_replies", "agentmesh_agent_late_replies_total") == 1 and s,
                30, "the late reply to be counted", interval=0.5)
    finally:
        stop(exporter)
    found = samples(list(scraped.values()))
    asker = [value(found, f"agentmesh_agent_{name}_total", agent="Asker")
             for name in ("asks", "ask_timeouts", "error_replies", "late_replies")]
    assert asker == [5, 1, 1, 1]
    answerer = [value(found, f"agentmesh_agent_{name}_total", agent="Answerer")
                for name in ("asks", "expired_requests", "cached_replies")]
    assert answerer == [0, 0, 0]
    # three replies and an error reply; the ask that timed out is in no bucket
    rounds = [(x.labels["agent"], x.value) for x in scraped["agentmesh_agent_ask_seconds"].samples
              if x.name.endswith("_count")]
    assert rounds == [("Asker", 4)]
    assert value(found, "agentmesh_agent_ask_seconds_bucket", agent="Asker", le="+Inf") == 4
    for family in ("agentmesh_agent_in_flight", "agentmesh_agent_loop_lag_p99_seconds"):
        assert {x.labels["agent"] for x in scraped[family].samples} == {"Asker", "Answerer"}, family
    lags = [value(found, "agentmesh_agent_loop_lag_seconds_count", agent=a) for a in ("Asker", "Answerer")]
    assert min(lags) > 0


def test_a_killed_agent_is_counted_as_restarted(mesh: Mesh) -> None:
    def restarts(scraped: dict[str, Any]) -> dict[str, float]:
        return {s.labels["program"]: s.value for s in scraped["agentmesh_program_restarts"].samples}

    before = restarts(scrape(mesh))["agent-Inventory"]
    with Supervisor(mesh) as sup:
        pid = {p["name"]: p["pid"] for p in sup.processes()}["agent-Inventory"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: restarts(scrape(mesh))["agent-Inventory"] == before + 1, 60,
             "the restart to be counted", interval=0.5)
    wait_until(lambda: {s.labels["program"]: s.value for s in scrape(mesh)["agentmesh_program_up"]
                      .samples}["agent-Inventory"] == 1, 60, "agent-Inventory up again", interval=0.5)


def test_the_exporter_is_a_supervised_program(mesh: Mesh) -> None:
    log = (mesh.logs_dir / "metrics.log").read_text()
    assert f"serving on http://127.0.0.1:{mesh.config.metrics.port}/metrics" in log
    assert "Traceback" not in log
