"""The gateway when what it stands on fails for real: its Valkey stopped (and started again),
its broker stopped. Each test runs its own server (a embedded Valkey or broker on a free
port), never the session's, which other tests share; the other one is the session's.
The agent is only declared in mesh.yaml: these answers come before any agent is involved.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx

from agentmesh_cli.broker import ensure_topics
from agentmesh_cli.embedded import free_port, start_broker, start_valkey, stop
from agentmesh_cli.waiting import wait_until
from tests.helpers.gateway import RunningGateway, error_of, running_gateway, sse_events, write_gateway_mesh

AGENTS = [{"name": "Inventory", "role": "inventory"}]
NOTE = {"type": "note", "payload": {}}


def unhealthy(gateway: RunningGateway, part: str) -> Callable[[], bool]:
    def check() -> bool:
        answer = httpx.get(gateway.url + "/health", timeout=10)
        return answer.status_code == 503 and part in answer.json().get("details", {})
    return check


def test_while_redis_is_down_requests_are_a_503_and_it_recovers(broker: str, tmp_path: Path) -> None:
    port = free_port()
    valkey = start_valkey(port, tmp_path)
    try:
        mesh = write_gateway_mesh(tmp_path, broker, f"redis://127.0.0.1:{port}/0", AGENTS)
        with running_gateway(mesh, tmp_path, start_agents=False) as gateway, gateway.client() as http:
            assert http.post("/agents/Inventory/messages", json=NOTE).status_code == 202
            conversation = http.post("/conversations").json()["conversation"]
            agents = {a["name"]: a["state"] for a in http.get("/agents").json()["agents"]}
            assert agents == {"Inventory": "declared"}  # in mesh.yaml, never joined
            with http.stream("GET", f"/conversations/{conversation}/events") as stream:
                assert stream.status_code == 200
                stop(valkey)
                # the follower may have missed appends: told so, and the stream ends
                events = list(sse_events(stream))
            assert [e.event for e in events] == ["error"], events
            assert events[0].data["code"] == "StoreError"
            wait_until(unhealthy(gateway, "redis"), 30, "the gateway's health says Redis is down")
            health = http.get("/health").json()
            assert health["status"] == "unhealthy"
            answers = [http.post("/agents/Inventory/messages", json=NOTE),
                       http.post("/agents/Inventory/ask", json={**NOTE, "timeout": 1}),
                       http.post("/conversations"),
                       http.get(f"/conversations/{conversation}/events")]
            for answer in answers:
                assert "redis" in error_of(answer, 503, "store_unavailable")["details"]
            valkey = start_valkey(port, tmp_path)  # the same port: the gateway reconnects
            wait_until(lambda: http.get("/health").status_code == 200, 30, "the gateway healthy again")
            assert http.post("/agents/Inventory/messages", json=NOTE).status_code == 202
            assert http.post("/conversations").status_code == 201
    finally:
        stop(valkey)


def test_while_the_broker_is_down_requests_are_a_503_and_it_recovers(valkey: str, tmp_path: Path) -> None:
    port = free_port()
    with (tmp_path / "tansu.log").open("wb") as log:
        broker = start_broker(port, log)
    try:
        mesh = write_gateway_mesh(tmp_path, f"127.0.0.1:{port}", valkey, AGENTS)
        with running_gateway(mesh, tmp_path, start_agents=False) as gateway, gateway.client() as http:
            assert http.post("/agents/Inventory/messages", json=NOTE).status_code == 202
            stop(broker)
            wait_until(unhealthy(gateway, "kafka"), 30, "the gateway's health says the broker is down")
            # known to be down: refused at once, not after the delivery timeout (10 s) nor the
            # ask's own (60 s)
            started = time.monotonic()
            answers = [http.post("/agents/Inventory/messages", json=NOTE),
                       http.post("/agents/Inventory/ask", json={**NOTE, "timeout": 60})]
            for answer in answers:
                assert "kafka" in error_of(answer, 503, "broker_unavailable")["details"]
            assert time.monotonic() - started < 8
            # a broker again (empty, as the embedded one restarts: its topics made anew)
            with (tmp_path / "tansu-2.log").open("wb") as log:
                broker = start_broker(port, log)
            ensure_topics(mesh.config.kafka)
            wait_until(lambda: http.get("/health").status_code == 200, 30, "the gateway healthy again")
            assert http.post("/agents/Inventory/messages", json=NOTE).status_code == 202
    finally:
        stop(broker)
