"""Role processes without supervisord (topology manager, consensus manager, agent Sales) on
the session broker, and the dead letters they write: for the poison and signing tests.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.broker import prepare_topics
from agentmesh_cli.embedded import stop
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.reader import Reader, beginning
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import wait_until
from tests.helpers.commands import spawn_role

AGENT = "Sales"  # the one real agent; its role (the base Role) handles messages by doing nothing


TOPOLOGY, CONSENSUS, AGENT_PROGRAM = C.PROGRAM_TOPOLOGY, C.PROGRAM_CONSENSUS, C.agent_program(AGENT)


@contextmanager
def running_roles(mesh: Mesh, tmp_path: Path) -> Iterator[dict[str, subprocess.Popen[Any]]]:
    """The topology manager, the consensus manager and agent Sales, each its own process."""
    cfg = mesh.config
    store = Store(cfg.redis.resolved_url, cfg.mesh)
    prepare_topics(cfg.kafka, store)
    config = ("--config", str(mesh.config_file))
    procs: dict[str, subprocess.Popen[Any]] = {}
    try:
        procs[TOPOLOGY] = spawn_role("topology", *config, log=tmp_path / "topology.log")
        procs[CONSENSUS] = spawn_role("consensus", *config, log=tmp_path / "consensus.log")
        procs[AGENT_PROGRAM] = spawn_role("agent", "--name", AGENT, *config, log=tmp_path / "agent.log")
        for program, proc in procs.items():
            wait_until(lambda p=program, pid=proc.pid: store.ready_pid(p) == pid, 40, f"{program} ready")
        # Sales is in the graph and the electorate before anything hostile arrives
        wait_until(lambda: AGENT in (store.load_snapshot() or {}).get("graph", {}).get("agents", []), 20,
                 "Sales in the topology")
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()  # all at once: each takes a moment to leave
        for proc in procs.values():
            stop(proc)
        store.close()


def dead_letters(mesh: Mesh, at_least: int = 0) -> list[dict[str, Any]]:
    """The dead letters, with the program that wrote each as `owner`: read until there are
    `at_least` and nothing more comes for 0.5 s (or 15 s in all)."""
    reader = Reader(mesh.config.kafka, f"t-{uuid.uuid4().hex}", [(C.TOPIC_DLQ, 0, beginning())])
    letters: list[dict[str, Any]] = []
    started = quiet_since = time.monotonic()
    try:
        # not a wait_until: it reads (and keeps) every letter until it is quiet
        while (len(letters) < at_least or time.monotonic() - quiet_since < 0.5) \
                and time.monotonic() - started < 15:
            batch = reader.poll_batch(max_records=10_000, timeout=0.1)
            if batch:
                quiet_since = time.monotonic()
            for record in batch:
                letter = Envelope.decode(record.value)
                letters.append({"owner": letter.from_agent_id, **letter.payload})
    finally:
        reader.close()
    return letters
