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
from agentmesh_cli.embedded import free_port
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.metrics.exporter import MeshCollector, metrics_url
from agentmesh_cli.metrics.families import families
from agentmesh_cli.store import Store
from agentmesh_cli.supervisor.control import Supervisor
from agentmesh_cli.waiting import wait_until
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
    assert programs == {p: 1 for p in ["kafka", "redis", "memory", "cognition", "metrics",
                                       "topology-manager", "consensus-manager",
                                       *(f"agent-{a}" for a in AGENTS)]}
    assert {s.labels["agent"] for s in first["agentmesh_messages_sent"].samples} == set(AGENTS)

    # the mesh works: messages and reinforcements rise between two scrapes
    sent = total(first, "agentmesh_messages_sent", "agentmesh_messages_sent_total")
    reinforced = total(first, "agentmesh_topology_reinforcements",
                       "agentmesh_topology_reinforcements_total")
    later = wait_until(lambda: (s := scrape(mesh)) and
                     total(s, "agentmesh_messages_sent", "agentmesh_messages_sent_total") > sent and
                     total(s, "agentmesh_topology_reinforcements",
                           "agentmesh_topology_reinforcements_total") > reinforced and s,
                     120, "messages and reinforcements to rise", interval=1.0)
    assert total(later, "agentmesh_messages_received", "agentmesh_messages_received_total") > 0
    assert total(later, "agentmesh_topology_edges") == 12  # nothing decays in this test mesh

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
