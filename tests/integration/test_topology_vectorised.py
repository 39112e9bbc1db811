"""`agentmesh bench topology` returns every field (a short real run)."""

from __future__ import annotations

import json

# -- apply_batch against apply ------------------------------------------------------


# -- the bench scenario: every field, consistent (no speed thresholds) -----------------

def test_the_topology_bench_returns_every_field() -> None:
    from agentmesh_cli.bench import topology

    result = topology.run(events=2000, agents=4, full_mesh_agents=30)
    assert {"scenario", "settings", "figures", "raw", "floor", "ratios", "targets", "notes"} <= set(result)
    figures = result["figures"]
    assert figures["manager_reinforcements_counted"] == 2000
    assert figures["full_mesh_edges_before"] == 30 * 29 > figures["full_mesh_edges_after"] > 0
    assert figures["bulk_reinforcements_per_s"] > 0 and figures["manager_reinforcements_per_s"] > 0
    for name in ("decay_prune_ms", "decay_ms", "join_full_mesh_ms", "core_mb", "rss_mb",
                 "manager_cpu_share"):
        assert isinstance(figures[name], float | int) and figures[name] >= 0, name
    assert result["raw"]["records"] == 2000 and result["floor"]["records_per_s"] > 0
    assert set(result["targets"]) == {"bulk_reinforcements_per_s", "decay_prune_ms"}
    assert all(isinstance(t["met"], bool) for t in result["targets"].values())
    json.dumps(result)


