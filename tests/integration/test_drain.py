"""`agentmesh down` drains and loses nothing (drain.py), on one real mesh under supervisord
with the embedded broker: two slow agents (tests/helpers/roles.py SlowRecorder) that share
one inbox partition, jobs queued behind them by the operator `cli` (counted as sent, as
`agentmesh send` counts), then `down` and `up` again. Every job's id must be handled
exactly once over both runs; the agents write the ids they handled to files.

JOBS x SlowRecorder.DELAY_S is about 5 s of work per agent. The delay is small and the
jobs many because today's agent loop hands the role a polled batch (up to 500 records)
before it looks at SIGTERM again: an agent told to stop finishes its batch, up to
500 x 5 ms here, and what is unread is what it had not polled yet.
"""

from __future__ import annotations

import os
import signal
import stat
import time
from collections import Counter
from collections.abc import Iterator
from subprocess import CompletedProcess

import pytest
import yaml

from agentmesh_cli import constants as C
from agentmesh_cli import events
from agentmesh_cli.drain import unread_path
from agentmesh_cli.mesh import Mesh, load_mesh
from agentmesh_cli.store import Store
from agentmesh_cli.supervisor.control import _alive
from agentmesh_cli.unread import load_unread
from agentmesh_cli.waiting import wait_until
from tests.helpers.commands import agentmesh
from tests.helpers.mesh import REPO, mesh_bus, write_mesh

AGENTS = ("Slow1", "Slow2")
JOBS = 2000


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("drain")
    config = write_mesh(root, [], kafka={"partitions": 1})  # one partition: the agents share it
    data = yaml.safe_load(config.read_text())
    data["agents"] = [{"name": name, "role": "tests.helpers.roles:SlowRecorder"} for name in AGENTS]
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", str(REPO))  # so supervisord's agents can import the test role
        try:
            yield load_mesh(config)
        finally:
            agentmesh("down", "--now", "--config", str(config), timeout=60)
            pidfile = root / ".agentmesh" / "supervisord.pid"
            if pidfile.exists() and _alive(pid := int(pidfile.read_text())):
                os.kill(pid, signal.SIGTERM)


def up(mesh: Mesh) -> CompletedProcess[str]:
    result = agentmesh("up", "--config", str(mesh.config_file), "--timeout", "90")
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def down(mesh: Mesh, *options: str) -> tuple[CompletedProcess[str], float]:
    started = time.monotonic()
    result = agentmesh("down", "--config", str(mesh.config_file), *options, timeout=90)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    return result, took


def queue_jobs(mesh: Mesh, n: int = JOBS) -> list[str]:
    """`n` jobs from `cli`, the agents' in turn, counted as sent like `agentmesh send` does."""
    bus = mesh_bus(mesh, "test-drain")
    ids = []
    for i in range(n):
        envelope = events.message(C.CLI_COUNTER_OWNER, AGENTS[i % len(AGENTS)], "job", {"i": i})
        bus.send_message(envelope)
        ids.append(envelope.id)
    assert bus.flush(30) == 0
    store = Store(mesh.redis_url, mesh.config.mesh)
    sent = Counter(C.sent_to_counter(AGENTS[i % len(AGENTS)]) for i in range(n))
    store.add_counters(C.CLI_COUNTER_OWNER, sent)
    store.close()
    return ids


def handled(mesh: Mesh, ids: list[str]) -> Counter[str]:
    """How often each of `ids` was handled, by any agent."""
    wanted = set(ids)
    seen: Counter[str] = Counter()
    for path in (mesh.root / "handled").glob("*.ids"):
        seen.update(i for i in path.read_text().split() if i in wanted)
    return seen


def test_down_handles_every_queued_job_before_it_returns(mesh: Mesh) -> None:
    up(mesh)
    ids = queue_jobs(mesh)
    result, took = down(mesh)
    assert "draining: " in result.stderr  # the progress lines
    assert "drained: the mesh is quiet after" in result.stderr
    assert "nothing unread to save" in result.stderr
    counts = handled(mesh, ids)
    assert len(counts) == JOBS and set(counts.values()) == {1}
    assert not unread_path(mesh).exists()
    print(f"down with {JOBS} jobs queued: {took:.1f} s")

    again = up(mesh)
    assert "replayed" not in again.stderr
    time.sleep(2)  # time passes on purpose: a job handled again would be written by now
    assert handled(mesh, ids) == counts


def test_drain_timeout_saves_what_is_unread_and_up_replays_it(mesh: Mesh) -> None:
    up(mesh)
    ids = queue_jobs(mesh)
    result, took = down(mesh, "--drain-timeout", "1")
    assert "drain timeout after 1." in result.stderr
    first = handled(mesh, ids)
    assert set(first.values()) <= {1}
    path = unread_path(mesh)
    saved = load_unread(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # exactly what the agents had not handled, each once, in their (shared) inbox partition
    assert sorted(item["id"] for item in saved) == sorted(set(ids) - set(first))
    assert {(item["topic"], item["partition"]) for item in saved} == {(C.TOPIC_MESSAGES, 0)}
    assert f"saved {len(saved)} unread messages" in result.stderr
    print(f"down --drain-timeout 1 with {JOBS} jobs queued: {took:.1f} s, {len(first)} handled, "
          f"{len(saved)} saved")
    assert 0 < len(saved) < JOBS

    again = up(mesh)
    assert f"replayed {len(saved)} unread messages" in again.stderr
    assert not path.exists()
    wait_until(lambda: len(handled(mesh, ids)) == JOBS, 60, "every job handled")
    time.sleep(1.5)  # time passes on purpose: a job handled twice would be written by now
    assert set(handled(mesh, ids).values()) == {1}


def test_down_now_stops_at_once_and_keeps_nothing(mesh: Mesh) -> None:
    up(mesh)
    ids = queue_jobs(mesh)
    result, took = down(mesh, "--now")
    assert "--now: no drain, nothing saved" in result.stderr
    assert "draining" not in result.stderr
    assert not unread_path(mesh).exists()
    first = handled(mesh, ids)
    assert len(first) < JOBS  # what was unread is gone with the embedded broker, as before
    print(f"down --now with {JOBS} jobs queued: {took:.1f} s, {len(first)} handled")

    up(mesh)
    time.sleep(2)  # time passes on purpose: nothing comes back
    assert handled(mesh, ids) == first
    # They still count as sent: one drain waits for them to its timeout, finds them in no
    # inbox and counts them lost, so that the drains after it do not wait for them again
    result, took = down(mesh, "--drain-timeout", "2")
    assert "drain timeout after 2." in result.stderr
    assert "counted as sent but no longer in the broker" in result.stderr
    up(mesh)
    store = Store(mesh.redis_url, mesh.config.mesh)
    assert sum(store.counters(a).get(C.COUNTER_LOST, 0) for a in AGENTS) == JOBS - len(first)
    store.close()
    result, took = down(mesh)
    assert "drained: the mesh is quiet after" in result.stderr


def test_send_and_propose_refuse_while_draining(mesh: Mesh) -> None:
    up(mesh)
    store = Store(mesh.redis_url, mesh.config.mesh)
    store.set_draining(True)
    try:
        config = str(mesh.config_file)
        for command in (["send", "cli", "Slow1", "{}"], ["propose", "--content", "{}"]):
            result = agentmesh(*command, "--config", config)
            assert result.returncode == 1, result.stdout + result.stderr
            assert "the mesh is draining for `down`" in result.stderr
            assert result.stdout == ""
    finally:
        store.set_draining(False)
    sent = agentmesh("send", "cli", "Slow1", "{}", "--config", config)
    assert sent.returncode == 0, sent.stderr
    # `up` clears a mark that a `down` left (interrupted after the drain began)
    store.set_draining(True)
    up(mesh)
    assert not store.draining()
    store.close()
