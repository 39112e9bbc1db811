"""`agentmesh chaos` for real, the faults of sleeping readers and of the host's inbox reader
(split from test_chaos.py so that the two files run on both workers)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentmesh_cli.supervisor.control import _alive
from tests.helpers.chaos_mesh import chaos_workdir, mesh_processes, supervisord_pid
from tests.helpers.commands import agentmesh
from tests.helpers.tables import CHAOS_AGENTS


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """The chaos mesh's folder; a supervisord the command left behind is ended by pid."""
    yield from chaos_workdir(tmp_path)


def test_chaos_kills_a_sleeping_agent_and_redis_while_the_agents_sleep(workdir: Path) -> None:
    result = agentmesh("chaos", "--faults", "doze", "--pause", "1", "--drain", "30",
                       "--workdir", str(workdir), "--json", timeout=170)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] and data["agents"] == CHAOS_AGENTS
    assert [(f["kind"], f["target"]) for f in data["faults"]] == [("doze", "agent-Sales"), ("doze", "redis")]
    killed, redis = (f["doze"] for f in data["faults"])
    for fault in data["faults"]:
        # every agent fell asleep first, then every sleeper woke for its probes: none lost, none twice
        assert fault["doze"] is not None, fault["note"]
        assert fault["doze"]["ok"] and fault["doze"]["not_woken"] == [], fault["note"]
        assert fault["doze"]["handled_twice"] == 0 and fault["lost"] == 0
        assert fault["detect_s"] is not None and fault["recover_s"] is not None, fault["note"]
    # Sales killed asleep, back with the probes sent to it meanwhile; the others rung awake
    assert killed["killed"] == "Sales" and set(killed["wake_ms"]) == {"Support", "Inventory", "Fraud"}
    assert data["faults"][0]["recovered_by"] == "new pid ready, probes sent after the kill handled"
    # Redis restarted under sleeping agents: they woke deaf (counted so), slept again once their
    # doorbells listened again, and each woke for its probes
    assert redis["killed"] == "redis" and set(redis["wake_ms"]) == set(CHAOS_AGENTS)
    assert data["doze"]["counters"]["doze_deaf"] >= 1
    probes = data["probes"]
    assert probes["lost"] == 0 and data["duplicates_handled"] == 0 and probes["handled"] == probes["sent"] > 0
    assert not _alive(supervisord_pid(workdir)) and mesh_processes(workdir) == []


def test_chaos_kills_the_hosts_inbox_reader_under_load(workdir: Path) -> None:
    result = agentmesh("chaos", "--faults", "inbox", "--rounds", "1", "--pause", "0", "--rate", "100",
                       "--drain", "20", "--workdir", str(workdir), "--json", timeout=150)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    # --faults inbox ran the embedded mesh with kafka.inbox_reader: host
    assert data["ok"] and data["agents"] == CHAOS_AGENTS and data["settings"]["inbox_reader"] == "host"
    assert [(f["kind"], f["target"]) for f in data["faults"]] == [("inbox", "inbox-reader")]
    fault = data["faults"][0]
    row = fault["inbox"]
    assert row is not None and row["ok"], fault["note"]
    assert fault["detect_s"] is not None and fault["recover_s"] is not None, fault["note"]
    # a new reader ready, every agent subscribed again and served again, timed from the kill
    assert row["back_s"] is not None and row["subscribed"] >= row["local_agents"] == 4
    assert set(row["served_ms"]) == set(CHAOS_AGENTS) and row["not_served"] == []
    assert all(ms > 0 for ms in row["served_ms"].values())
    # the asks in flight and sent while it was away each answered once; no probe lost or handled twice
    asks = row["asks"]
    assert asks["sent"] > 0 and asks["answered"] == asks["sent"] and asks["answered_twice"] == 0
    assert row["handled_twice"] == 0 and fault["lost"] == 0
    # supervisord restarted it once, and no agent went down with it
    assert row["restarts"] == 1 and row["agents_restarted"] == []
    assert data["inbox"]["ok"] and data["inbox"]["kills"] == 1
    probes = data["probes"]
    assert probes["lost"] == 0 and data["duplicates_handled"] == 0 and probes["handled"] == probes["sent"] > 0
    assert data["asks"]["lost"] == 0 and data["asks"]["answered_twice"] == 0
    assert not _alive(supervisord_pid(workdir)) and mesh_processes(workdir) == []
