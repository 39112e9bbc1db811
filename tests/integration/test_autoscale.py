"""The autoscaler on a real mesh: a group `Pool` of SlowReplica (10 ms a job) with
`replicas: {min: 1, max: 3, target_in_flight: 5}` under a feed above one replica's
capacity grows, and shrinks back to 1 once the feed stops; every job handled once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agentmesh_cli.mesh import Mesh
from agentmesh_cli.scalestate import load_scale
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import wait_until
from tests.helpers.mesh import running_mesh, write_mesh
from tests.helpers.scaling import Feeder, all_handled, programs


@pytest.fixture()
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    config = write_mesh(tmp_path, [])
    data = yaml.safe_load(config.read_text())
    data["agents"] = [{"name": "Pool", "role": "tests.helpers.roles:SlowReplica", "replicas": {
        "min": 1, "max": 3, "target_in_flight": 5, "upscale_delay": "1s", "downscale_delay": "2s"}}]
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    with running_mesh(config, test_roles=True) as running:
        yield running


def test_the_group_grows_under_load_and_shrinks_after(mesh: Mesh) -> None:
    assert "autoscaler" in programs_all(mesh)
    assert sorted(programs(mesh)) == ["agent-Pool-1"]
    feeder = Feeder(mesh, interval=1 / 150)  # 150 jobs a second: one replica serves 100
    feeder.start()
    try:
        wait_until(lambda: load_scale(mesh).get("Pool", 1) >= 2, 60, "the autoscaler to add a replica")
        time.sleep(3)
    finally:
        feeder.halt.set()
        feeder.join(60)
    grown = max(n for n in feeder.to.values())
    # the count is written, then supervisord removes the programs that left
    wait_until(lambda: load_scale(mesh).get("Pool") == 1 and sorted(programs(mesh)) == ["agent-Pool-1"],
               90, "the autoscaler to go back to 1")
    counts = all_handled(mesh, feeder.ids)
    assert set(counts.values()) == {1} and len(counts) == len(feeder.ids)
    assert len(feeder.to) >= 2 and grown > 0
    log = (mesh.logs_dir / "autoscaler.log").read_text()
    assert "Pool: load" in log and "-> 1 replicas" in log
    store = Store(mesh.redis_url, mesh.config.mesh)
    try:  # counted once the change is complete (a scale-down's handover takes a few seconds)
        wait_until(lambda: store.counters("autoscaler").get("scale_downs", 0) >= 1, 30, "the count")
        assert store.counters("autoscaler").get("scale_ups", 0) >= 1
    finally:
        store.close()


def programs_all(mesh: Mesh) -> list[str]:
    from agentmesh_cli.supervisor.control import Supervisor

    with Supervisor(mesh) as sup:
        return [p["name"] for p in sup.processes()]
