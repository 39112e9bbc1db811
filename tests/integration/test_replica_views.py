"""The views of a running replica group: a group `Pool` (replicas: 3, routed by physarum)
and an asker as agent processes on the session broker and Valkey. `agentmesh status`
shows the group as one logical agent with its replicas nested and the senders' routing
state; the metrics exporter labels the replicas' series with their group; both say when
the group runs another count than mesh.yaml declares."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from agentmesh_cli.mesh import Mesh
from agentmesh_cli.metrics.exporter import MeshCollector
from agentmesh_cli.metrics.families import families
from agentmesh_cli.replicas import Groups
from agentmesh_cli.waiting import wait_until
from tests.helpers.agents import ROLES, agents, send
from tests.helpers.commands import agentmesh
from tests.helpers.tables import samples, value

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "status.schema.json").read_text())
N = 30  # asks, each its own conversation


def status_json(mesh: Mesh) -> dict[str, Any]:
    result = agentmesh("status", "--json", "--config", str(mesh.config_file))
    assert result.returncode == 1, result.stderr  # no supervisord here: no program RUNNING
    data: dict[str, Any] = json.loads(result.stdout)
    jsonschema.Draft202012Validator(SCHEMA).validate(data)
    return data


def pool_of(data: dict[str, Any]) -> dict[str, Any]:
    return next(a for a in data["agents"] if a["name"] == "Pool")


def test_status_and_metrics_of_a_running_group(external_mesh: Any, tmp_path: Path) -> None:
    mesh: Mesh = external_mesh(heartbeat={"interval": 0.5}, routing={"model": "physarum"}, agents=[
        {"name": "Pool", "role": f"{ROLES}:Replica", "replicas": 3, "concurrency": 4},
        {"name": "Asker", "role": f"{ROLES}:Asker", "concurrency": 16}])
    log = tmp_path / "notes.txt"
    asks = [{"to": "Pool", "type": "who", "payload": {"n": i}, "tag": str(i), "log": str(log),
             "timeout": 20} for i in range(N)]
    with agents(mesh, tmp_path) as store:
        send(mesh, "Asker", "ask", asks, conversation=[f"c{i}" for i in range(N)])
        # every ask answered and recorded, the Asker's routing state published
        data = wait_until(lambda: (d := status_json(mesh)) and pool_of(d)["messages_in"] == N
                          and pool_of(d)["routing"] is not None and d, 60, "the asks handled", interval=0.5)
        groups = Groups(store)
        groups.set_counts({"Pool": 2})  # as `agentmesh scale Pool 2` would
        groups.retire(["Pool-3"])
        scaled = status_json(mesh)
        text = agentmesh("status", "--once", "--config", str(mesh.config_file)).stdout  # 160 columns
        collector = MeshCollector(mesh)
        try:
            found = samples(families(collector.read()))
        finally:
            collector.close()

    assert [a["name"] for a in data["agents"]] == ["Asker", "Pool"]  # no replica at the top
    pool = pool_of(data)
    assert [(m["name"], m["replica"], m["group"], m["state"], m["retiring"])
            for m in pool["members"]] == [
        ("Pool-1", 1, "Pool", "alive", False), ("Pool-2", 2, "Pool", "alive", False),
        ("Pool-3", 3, "Pool", "alive", False)]
    assert (pool["state"], pool["alive"], pool["concurrency"]) == ("alive", True, 12)
    assert pool["replicas"] == {"declared": 3, "running": 3, "retiring": 0, "max": 3, "autoscaled": False}
    assert sum(m["messages_in"] for m in pool["members"]) == N
    assert abs(sum(m["share"] for m in pool["members"]) - 1) < 1e-3
    routing = pool["routing"]
    assert routing["model"] == "physarum" and [s["sender"] for s in routing["senders"]] == ["Asker"]
    assert routing["senders"][0]["sent"] == N  # its sent_to counts to the replicas
    assert set(routing["replicas"]) == {"Pool-1", "Pool-2", "Pool-3"}
    assert abs(sum(r["probability"] for r in routing["replicas"].values()) - 1) < 1e-3
    # (outstanding: as of the Asker's last publish, which follows a routing, not a reply)
    assert all(0 <= r["outstanding"] <= N and r["conductance"] > 0 and r["ewma_ms"] > 0
               for r in routing["replicas"].values())

    # scaled down to 2, Pool-3 retiring (still registered: it is listed, and says so)
    pool = pool_of(scaled)
    assert pool["replicas"] == {"declared": 3, "running": 2, "retiring": 1, "max": 3, "autoscaled": False}
    assert [(m["name"], m["retiring"]) for m in pool["members"]] == [
        ("Pool-1", False), ("Pool-2", False), ("Pool-3", True)]
    assert "Pool  2 replicas (mesh.yaml: 3; scaled), 1 retiring" in text
    assert "└ Pool-3" in text and "routing (physarum)" in text

    # metrics: each replica's series keep agent = the replica and carry group = Pool
    handled = [value(found, "agentmesh_messages_received_total", agent=f"Pool-{k}", group="Pool")
               for k in (1, 2, 3)]
    assert sum(handled) == N
    assert value(found, "agentmesh_messages_received_total", agent="Asker") == N  # the replies
    assert value(found, "agentmesh_replicas", group="Pool", state="declared") == 3
    assert value(found, "agentmesh_replicas", group="Pool", state="running") == 2
    chances = [value(found, "agentmesh_routing_probability", sender="Asker", group="Pool",
                     replica=f"Pool-{k}") for k in (1, 2, 3)]
    assert abs(sum(chances) - 1) < 1e-3
