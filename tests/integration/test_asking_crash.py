"""Exactly once under ask traffic: kill -9 of the answerer, then of the asker, in the middle
of 1,000 asks. Each request is recorded once by the answerer, each asking handler
completes once, with its reply (not a timeout): the re-run asker asks again under the
same id, and the answerer answers from its reply cache or its running handler."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.embedded import stop
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import wait_until
from tests.helpers.agents import ROLES, send
from tests.helpers.commands import spawn_role

ASKS = 1000


def test_kill_9_of_answerer_then_asker_in_the_middle_of_1000_asks(
        external_mesh: Any, tmp_path: Path, monkeypatch: Any) -> None:
    sink = tmp_path / "sink.txt"
    handled = tmp_path / "handled.txt"
    monkeypatch.setenv("AGENTMESH_TEST_SINK", str(sink))
    mesh: Mesh = external_mesh(agents=[
        {"name": "Asker", "role": f"{ROLES}:Asker", "concurrency": 64},
        {"name": "Answerer", "role": f"{ROLES}:Answerer", "concurrency": 64},
        {"name": "Sink", "role": f"{ROLES}:Sink"},
    ])
    store = Store(mesh.config.redis.resolved_url, mesh.config.mesh)
    procs: dict[str, subprocess.Popen[Any]] = {}
    starts = Counter[str]()

    def start(name: str) -> None:
        starts[name] += 1
        procs[name] = proc = spawn_role("agent", "--name", name, "--config", str(mesh.config_file),
                                        log=tmp_path / f"{name}-{starts[name]}.log")
        wait_until(lambda: store.ready_pid(C.agent_program(name)) == proc.pid or proc.poll() is not None,
                   60, f"agent {name} ready")
        assert proc.poll() is None, (tmp_path / f"{name}-{starts[name]}.log").read_text()

    def sunk() -> list[str]:
        return sink.read_text().splitlines() if sink.exists() else []

    def kill(name: str) -> None:
        os.kill(procs[name].pid, signal.SIGKILL)
        procs[name].wait(10)

    try:
        for name in ("Sink", "Answerer", "Asker"):
            start(name)
        send(mesh, "Asker", "ask", [
            {"tag": f"a{i}", "to": "Answerer", "type": "double", "timeout": 45, "sink": "Sink",
             "payload": {"x": i, "n": i, "log": str(handled)}}
            for i in range(ASKS)], conversation=[f"c{i}" for i in range(ASKS)])
        wait_until(lambda: len(sunk()) >= 200, 90, "200 asks completed")
        kill("Answerer")  # at work: requests in its handlers, replies unconfirmed
        start("Answerer")
        wait_until(lambda: len(sunk()) >= 500, 90, "500 asks completed")
        kill("Asker")  # at work: asks waiting for replies, handlers unfinished
        start("Asker")
        wait_until(lambda: len(sunk()) >= ASKS, 120, f"{ASKS} asks completed")
        lines = sunk()
        tags = Counter(line.split(" ", 1)[0] for line in lines)
        assert len(lines) == ASKS and set(tags) == {f"a{i}" for i in range(ASKS)}, \
            [t for t, n in tags.items() if n > 1]
        # every asking handler got its reply, none a timeout
        for line in lines:
            tag, outcome = line.split(" ", 1)
            assert outcome == f'reply doubled {{"n": {tag[1:]}, "x": {2 * int(tag[1:])}}}', line

        def settled(name: str, want: int) -> dict[str, int]:
            return dict(wait_until(lambda: (c := store.counters(name)).get(C.COUNTER_IN, 0) >= want and c,
                                   30, f"{name} counters"))

        answerer, asker = settled("Answerer", ASKS), settled("Asker", ASKS)
        # each request recorded once; a handler run lost in the kill ran again (noted twice)
        assert answerer[C.COUNTER_IN] == ASKS and answerer.get(C.COUNTER_HANDLED_TWICE, 0) == 0
        assert asker[C.COUNTER_IN] == ASKS and asker.get(C.COUNTER_HANDLED_TWICE, 0) == 0
        runs = Counter(re.sub(r"^handled double ", "", line) for line in handled.read_text().splitlines())
        assert set(runs) == {str(i) for i in range(ASKS)}
        print(f"answerer: {sum(runs.values()) - ASKS} handler runs again after its kill, "
              f"{answerer.get(C.COUNTER_CACHED_REPLIES, 0)} requests answered from the reply cache; "
              f"asker: {asker.get(C.COUNTER_DUPLICATES, 0)} redeliveries skipped, "
              f"{asker.get(C.COUNTER_LATE_REPLIES, 0)} late replies dropped")
    finally:
        for proc in procs.values():
            stop(proc)
        store.close()
