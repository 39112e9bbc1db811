"""The services in a running mesh: supervised memory and cognition, agents that keep the
customers' history and ask for context, status showing health and breakers, and agents
that go on, losing nothing, while memory is killed or stopped."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from agentmesh_cli.constants import Keys
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.services.client import service_url
from agentmesh_cli.supervisor.control import Supervisor
from agentmesh_cli.waiting import wait_until
from tests.helpers.commands import agentmesh
from tests.helpers.mesh import running_mesh, write_mesh

AGENTS = ["Sales", "Support", "Inventory", "Fraud"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("services")
    config = write_mesh(
        root, AGENTS,
        heartbeat={"interval": "1s", "missed": 5},
        workload={"order_rate": 4, "lead_rate": 2, "refund_rate": 1, "seed": 7},
        services={"breaker_reset": "1500ms", "health_interval": "1s"},
    )
    with running_mesh(config) as running:
        yield running


def status(mesh: Mesh) -> dict[str, Any]:
    result = agentmesh("status", "--json", "--config", str(mesh.config_file))
    return dict(json.loads(result.stdout))


def service(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in data["services"] if s["name"] == name)


def breakers(data: dict[str, Any], name: str) -> dict[str, str]:
    return {c["owner"]: c["breaker"] for c in service(data, name)["clients"]}


def totals(data: dict[str, Any], counter: str) -> int:
    return sum(a["counters"].get(counter, 0) for a in data["agents"])


def status_when(mesh: Mesh, ok: Callable[[dict[str, Any]], bool], timeout: float,
                what: str) -> dict[str, Any]:
    """The first status (--json) for which `ok` holds."""
    def check() -> dict[str, Any] | None:
        data = status(mesh)
        return data if ok(data) else None

    return dict(wait_until(check, timeout, what))


def pid_of(mesh: Mesh, program: str) -> int:
    with Supervisor(mesh) as sup:
        info = {p["name"]: p for p in sup.processes()}[program]
    return int(info["pid"]) if info["statename"] == "RUNNING" else 0


def stored_in_redis(mesh: Mesh) -> int:
    client = redis.Redis.from_url(mesh.redis_url)
    try:
        return sum(1 for _ in client.scan_iter(Keys(mesh.config.mesh).memory_message("*"), count=1000))
    finally:
        client.close()


def test_agents_keep_history_and_support_asks_for_context(mesh: Mesh) -> None:
    data = status_when(mesh, lambda d: all(
        service(d, s)["health"] == "healthy" and set(breakers(d, s)) >= set(AGENTS)
        for s in ("memory", "cognition")) and totals(d, "memory_stored") > 20
        and totals(d, "context_calls") > 0, 60, "agents to use both services")
    assert set(breakers(data, "memory").values()) == {"closed"}
    assert set(breakers(data, "memory")) == {*AGENTS, "cognition"}  # cognition's own client too
    assert all(s["latency_ms"] is not None for s in data["services"])
    # every agent stores what it handles
    data = status_when(mesh, lambda d: all(a["counters"].get("memory_stored", 0) > 0 for a in d["agents"]),
                       30, "every agent to store history")
    by_agent = {a["name"]: a["counters"] for a in data["agents"]}
    assert by_agent["Support"].get("context_calls", 0) > 0

    memory, cognition = service_url(mesh, "memory"), service_url(mesh, "cognition")
    auth = {"Authorization": f"Bearer {mesh.credentials.service_token}"}
    with httpx.Client(timeout=5, headers=auth) as http:
        # an order is one conversation written by Sales, Inventory and Fraud, under the customer
        items = []
        for n in range(1, 41):
            items += http.get(f"{memory}/resource/history/customer-{n}").json()["items"]
        writers = {i["metadata"]["agent"] for i in items}
        assert writers == set(AGENTS)
        order = next(i for i in items if i["metadata"].get("kind") == "order")
        conversation = http.get(f"{memory}/resource/conversation/{order['conversation_id']}").json()["items"]
        assert {i["user_id"] for i in conversation} == {order["user_id"]}
        # cognition answers the seed protocol over the same history
        answer = http.post(f"{cognition}/tool/get_context",
                           json={"arguments": {"user_id": order["user_id"], "query": "order", "limit": 3}})
        assert answer.status_code == 200, answer.text
        assert 1 <= len(answer.json()["result"]["items"]) <= 3
        assert http.get(f"{cognition}/openapi.json").json()["paths"]


def test_memory_down_agents_go_on_breakers_open_and_close_nothing_lost(mesh: Mesh) -> None:
    with Supervisor(mesh) as sup:
        memory_outage(mesh, sup)


def memory_outage(mesh: Mesh, sup: Supervisor) -> None:
    before = status(mesh)
    # a kill -9: supervisord starts memory again; the agents' retries ride it out
    old = pid_of(mesh, "memory")
    os.kill(old, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: pid_of(mesh, "memory") not in (0, old), 30, "supervisord to restart memory")
    wait_until(lambda: service(status(mesh), "memory")["health"] == "healthy", 30, "memory to be healthy")
    print(f"memory back {time.monotonic() - killed_at:.1f}s after kill -9")

    # a longer outage: the breakers open, the agents keep handling messages
    sup.stop_programs(["memory"], 10)
    try:
        down = status_when(mesh, lambda d: "open" in breakers(d, "memory").values(), 60,
                           "a memory breaker to open")
        assert service(down, "memory")["health"] == "unreachable"
        wait_until(lambda: service(status(mesh), "cognition")["health"] == "degraded", 10,
                 "cognition to report memory down")
        handled = totals(down, "messages_in")
        wait_until(lambda: totals(status(mesh), "messages_in") > handled + 10, 30,
                 "agents to go on handling messages")
        assert all(p["state"] == "RUNNING" for p in status(mesh)["programs"] if p["name"] != "memory")
    finally:
        sup.start_programs(["memory"])

    # memory back: one probe closes each breaker, the buffered writes drain
    after = status_when(mesh, lambda d: set(breakers(d, "memory").values()) == {"closed"}
                        and all(c.get("pending", 0) == 0 for c in service(d, "memory")["clients"]),
                        60, "breakers to close and the buffers to drain")
    queued, stored = totals(after, "memory_queued"), totals(after, "memory_stored")
    assert totals(after, "memory_dropped") == 0 and totals(after, "memory_rejected") == 0
    assert stored > totals(before, "memory_stored")
    # every queued write was stored (counters flush each second: allow for writes in flight)
    status_when(mesh, lambda d: totals(d, "memory_queued") - totals(d, "memory_stored") <= 5,
                30, "stored to catch up with queued")
    assert queued >= stored
    # nothing lost: Redis holds at least what the agents were told was stored (a write cut
    # by the kill -9 after Redis took it can be stored twice, never less); status first,
    # as the agents keep writing
    told = totals(status(mesh), "memory_stored")
    assert stored_in_redis(mesh) >= told
