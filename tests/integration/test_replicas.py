"""Replica groups for real: agent processes of a group `Pool` (replicas: 3) and askers on
the session broker and Valkey. Routing spreads new conversations; a conversation sticks to
one replica across senders; a request retried to another replica is handled once."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from agentmesh_cli.envelope import Envelope
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.replicas import Groups
from agentmesh_cli.waiting import wait_until
from tests.helpers.agents import ROLES, agents, send
from tests.helpers.commands import agentmesh
from tests.helpers.mesh import mesh_bus


def lines(path: Path, n: int, timeout: float = 30) -> list[str]:
    wait_until(lambda: path.exists() and len(path.read_text().splitlines()) >= n, timeout,
               f"{n} lines in {path.name}")
    return path.read_text().splitlines()


def pool_mesh(external_mesh: Any, *askers: str, model: str = "p2c_ewma", replicas: int = 3) -> Mesh:
    mesh: Mesh = external_mesh(
        routing={"model": model},
        agents=[{"name": "Pool", "role": f"{ROLES}:Replica", "replicas": replicas, "concurrency": 4},
                *({"name": a, "role": f"{ROLES}:Asker", "concurrency": 16} for a in askers)])
    return mesh


def asks(n: int, log: Path, conversations: list[str | None], to: str = "Pool") -> list[dict[str, Any]]:
    return [{"to": to, "type": "who", "payload": {"n": i, "log": str(log)}, "tag": str(i),
             "log": str(log), "timeout": 20} for i in range(n)]


def outcomes(log: Path, n: int) -> dict[str, str]:
    """tag -> the replica that answered, from the asker's notes (`<tag> reply me {...}`)."""
    got = {}
    for line in lines(log, 2 * n):
        tag, _, rest = line.partition(" ")
        if rest.startswith("reply me "):
            got[tag] = json.loads(rest.removeprefix("reply me "))["name"]
    return got


def test_new_conversations_spread_over_the_replicas_each_handled_once(
        external_mesh: Any, tmp_path: Path) -> None:
    mesh = pool_mesh(external_mesh, "Asker")
    log = tmp_path / "notes.txt"
    n = 60
    with agents(mesh, tmp_path) as store:
        send(mesh, "Asker", "ask", asks(n, log, []), conversation=[f"c{i}" for i in range(n)])
        answered = outcomes(log, n)
        handled = [line.split() for line in lines(log, 2 * n) if line.startswith("handled")]
        groups = Groups(store)
        routing = wait_until(lambda: groups.routing().get("Asker"), 10, "the Asker's routing state")
    assert sorted(answered) == sorted(str(i) for i in range(n))
    assert set(answered.values()) == {"Pool-1", "Pool-2", "Pool-3"}
    assert Counter(n_ for _, n_, _ in handled) == Counter({str(i): 1 for i in range(n)})
    assert {(n_, who) for _, n_, who in handled} == set(answered.items())
    assert routing["model"] == "p2c_ewma"
    assert set(routing["groups"]["Pool"]) == {"Pool-1", "Pool-2", "Pool-3"}


def test_a_conversation_sticks_to_one_replica_across_senders(external_mesh: Any, tmp_path: Path) -> None:
    mesh = pool_mesh(external_mesh, "Asker1", "Asker2", model="round_robin")
    log1, log2 = tmp_path / "one.txt", tmp_path / "two.txt"
    n = 12
    with agents(mesh, tmp_path):
        # round robin would spread them; the one conversation keeps them on one replica
        send(mesh, "Asker1", "ask", asks(n, log1, []), conversation=["shared"] * n)
        first = outcomes(log1, n)
        send(mesh, "Asker2", "ask", asks(n, log2, []), conversation=["shared"] * n)
        second = outcomes(log2, n)
        cli = agentmesh("ask", "Pool", "who", '{"n": 99}', "--conversation", "shared",
                        "--config", str(mesh.config_file), timeout=60)
    assert len(set(first.values())) == 1, first
    assert set(second.values()) == set(first.values())
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert json.loads(cli.stdout)["payload"]["name"] in set(first.values())


def test_a_request_retried_to_another_replica_is_handled_once(external_mesh: Any, tmp_path: Path) -> None:
    mesh = pool_mesh(external_mesh)
    log = tmp_path / "notes.txt"
    request_id = str(uuid.uuid4())
    with agents(mesh, tmp_path) as store:
        bus = mesh_bus(mesh)
        for replica in ("Pool-1", "Pool-2", "Pool-3"):  # a retry lands on each replica in turn
            bus.send_message(Envelope(type="who", from_agent_id="cli", to_agent_id=replica,
                                      payload={"n": 1, "log": str(log)}, id=request_id))
            assert bus.flush(10) == 0
            if replica == "Pool-1":
                wait_until(lambda: store.counters("Pool-1").get("messages_in", 0) == 1, 20,
                           "Pool-1 recorded the request")
        wait_until(lambda: store.counters("Pool-2").get("duplicates", 0) == 1
                   and store.counters("Pool-3").get("duplicates", 0) == 1, 20, "both copies skipped")
    assert lines(log, 1) == ["handled 1 Pool-1"]
    assert store.counters("Pool-2").get("messages_in", 0) == 0
