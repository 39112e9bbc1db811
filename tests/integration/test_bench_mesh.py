"""`agentmesh bench mesh` for real: one short run (broker, Valkey, topology manager and relay agents
as processes) whose result has every field with consistent values. Nothing here checks a speed."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from agentmesh_cli.bench import mesh, mesh_floor
from agentmesh_cli.config import KafkaConfig
from agentmesh_cli.errors import BenchError


def _percentiles(value: Any) -> None:
    assert 0 < value["p50_ms"] <= value["p99_ms"] <= value["max_ms"]
    assert value["mean_ms"] > 0


def test_a_short_mesh_run_has_every_field() -> None:
    result = mesh.run(agents=2, duration=1.0, window=20)
    json.dumps(result)  # JSON all the way down
    assert result["scenario"] == "mesh"
    assert result["settings"]["agents"] == 2
    f = result["figures"]
    assert f["msgs_per_s"] > 0
    for latency in (f["peak_latency"], f["paced"]["latency"], f["one_hop"]):
        _percentiles(latency)
        assert latency["count"] > 0
    assert f["paced"]["rate"] > 0 and f["paced"]["msgs_per_s"] > 0
    # every message a relay sent was handled by another, and read by the topology manager:
    # one reinforcement each; the injected first hops are the operator's, no edges
    assert f["agent_messages_sent"] == f["agent_messages_handled"] == f["topology_reinforcements"] > 0
    assert f["injected"] == f["topology_operator_messages"] == 2 * 20
    assert len(f["topology_backlog"]) == 3 and all(b >= 0 for b in f["topology_backlog"])
    assert isinstance(f["topology_keeps_up"], bool)
    for share in ("topology_cpu_share", "broker_cpu_share", "valkey_cpu_share", "agents_cpu_share"):
        assert f[share] > 0
    assert 0 < f["agent_rss_mb"]["mean"] <= f["agent_rss_mb"]["max"]

    raw, floor = result["raw"], result["floor"]
    assert raw["throughput"]["records_per_s"] > 0 and raw["throughput"]["records"] > 0
    assert raw["throughput"]["value_bytes"] == result["settings"]["envelope_bytes"]
    _percentiles(raw["one_hop"])
    assert floor["replies_per_s"] > 0 and floor["loops"] == 2
    _percentiles(floor["latency"])
    assert floor["envelope_bytes"] == result["settings"]["envelope_bytes"]
    assert set(result["ratios"]) == {"msgs_per_s_to_floor", "msgs_per_s_to_raw", "one_hop_p50_to_raw"}
    assert all(isinstance(v, float) and v > 0 for v in result["ratios"].values())
    assert set(result["targets"]) == {"msgs_per_s", "topology_keeps_up", "msgs_per_s_to_floor",
                                      "one_hop_p50_to_raw", "paced_p99_ms"}
    for target in result["targets"].values():
        assert isinstance(target["target"], str) and isinstance(target["met"], bool)
    assert all(isinstance(note, str) for note in result["notes"])
    assert not any("did not drain" in note for note in result["notes"])


def test_the_floor_of_the_host_architecture_passes_every_record_through_one_fetcher(broker: str) -> None:
    """`kafka.inbox_reader: host`'s floor: one fetching loop hands each loop its records over a
    unix socket, signatures checked by the loops; its temp folder and processes are gone after."""
    kafka = KafkaConfig(bootstrap_servers=broker)
    before = set(Path(tempfile.gettempdir()).glob("agentmesh-floor-*"))
    result = mesh_floor.floor(kafka, 1.0, loops=3, window=20, sign=True, host=True)
    assert result["fetching"] == "one fetcher for all loops" and result["loops"] == 3 and result["signed"]
    assert result["replies_per_s"] > 0 and result["replies"] > 0
    _percentiles(result["latency"])
    assert set(Path(tempfile.gettempdir()).glob("agentmesh-floor-*")) == before
    assert mesh_floor.floor(kafka, 0.5, loops=2, window=10)["fetching"] == "each loop its own"


def test_the_host_floors_loops_share_partitions_as_the_hosts_agents_do(broker: str) -> None:
    """Fewer partitions than loops (a mesh of more agents than mesh.yaml's 16 partitions):
    the fetcher hands each loop the records keyed to it, and the loops' replies flow; loops
    that fetch for themselves need a partition each."""
    kafka = KafkaConfig(bootstrap_servers=broker)
    result = mesh_floor.floor(kafka, 1.0, loops=4, window=20, sign=True, host=True, partitions=2)
    assert (result["loops"], result["partitions"]) == (4, 2)
    assert result["replies_per_s"] > 0 and result["replies"] > 0
    _percentiles(result["latency"])
    with pytest.raises(BenchError, match="4 loops that fetch for themselves need 4 partitions"):
        mesh_floor.floor(kafka, 0.5, loops=4, window=10, partitions=2)
