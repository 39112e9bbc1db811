"""A throwaway mesh for a chaos run: embedded broker and Valkey, every program under a
supervisord of its own in a temporary folder, on free loopback ports, with heartbeats
short enough that a dead agent is noticed in about 3 s. Torn down by pid, also on Ctrl+C.
For the llm fault it also runs the Concierge (role llm) and its scripted model server; for
the replicas fault its Support runs as a replica group; with `inbox_reader: host` (the
inbox fault, or --inbox-reader host) one inbox reader fetches for every agent."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from agentmesh_cli import lifecycle
from agentmesh_cli.bench.infra import free_port
from agentmesh_cli.chaos.llm import SCRIPT, concierge_agent
from agentmesh_cli.chaos.replicas import GROUP, group_agent
from agentmesh_cli.errors import AgentMeshError, WaitTimeout
from agentmesh_cli.llm.process import start_scripted
from agentmesh_cli.mesh import Mesh, load_mesh
from agentmesh_cli.supervisor.control import Supervisor, _alive
from agentmesh_cli.waiting import wait_until

DEMO_AGENTS = (("Sales", "sales"), ("Support", "support"), ("Inventory", "inventory"),
               ("Fraud", "fraud"))
UP_TIMEOUT_S = 120.0  # plus UP_PER_AGENT_S for each agent
UP_PER_AGENT_S = 2.0  # 128 agents took 1-3 minutes to be ready on 2 cores
DOWN_TIMEOUT_S = 30.0


def agent_list(count: int) -> list[dict[str, str]]:
    """`count` agents with the demo roles: Sales, Support, Inventory, Fraud, Sales2, ..."""
    agents = []
    for i in range(count):
        name, role = DEMO_AGENTS[i % len(DEMO_AGENTS)]
        agents.append({"name": name if i < len(DEMO_AGENTS) else f"{name}{i // len(DEMO_AGENTS) + 1}",
                       "role": role})
    return agents


def mesh_data(agents: int, llm_url: str | None = None, replicas: bool = False,
              inbox_reader: str = "auto") -> dict[str, Any]:
    """mesh.yaml of a chaos mesh: free ports, heartbeat 1 s x 3, proposals time out in 10 s;
    with `llm_url` (the scripted model server) the Concierge first (the last agent stays
    the one a plain `stall` stops); with `replicas`, Support as a replica group;
    `inbox_reader`: kafka.inbox_reader."""
    concierge = [concierge_agent(llm_url)] if llm_url is not None else []
    demo = [group_agent() if replicas and a["name"] == GROUP else a for a in agent_list(agents)]
    return {
        "mesh": "chaos",
        "kafka": {"port": free_port(), "topic_prefix": "chaos", "partitions": 8,
                  "inbox_reader": inbox_reader},
        "redis": {"port": free_port()},
        "services": {"memory": {"port": free_port()}, "cognition": {"port": free_port()}},
        "metrics": {"port": free_port()},
        "gateway": {"port": free_port()},
        "heartbeat": {"interval": "1s", "missed": 3},
        "consensus": {"proposal_timeout": "10s"},
        "agents": concierge + demo,
    }


@contextmanager
def embedded_mesh(agents: int, say: Callable[[str], None], workdir: Path | None = None,
                  llm: bool = False, replicas: bool = False, inbox_reader: str = "auto") -> Iterator[Mesh]:
    """`up` a chaos mesh in `workdir` (kept afterwards) or a temporary folder; `down` it at
    the end, and end supervisord by its pid if `down` could not. With `llm`, the scripted
    model server runs first (its script and log in the same folder) and is stopped last.
    With `replicas`, Support runs as a replica group (the replicas fault). `inbox_reader`:
    kafka.inbox_reader (host: the program inbox-reader fetches for every agent)."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        with _mesh_in(workdir, agents, say, llm, replicas, inbox_reader) as mesh:
            yield mesh
        return
    with (tempfile.TemporaryDirectory(prefix="agentmesh-chaos-") as tmp,
          _mesh_in(Path(tmp), agents, say, llm, replicas, inbox_reader) as mesh):
        yield mesh


@contextmanager
def _mesh_in(root: Path, agents: int, say: Callable[[str], None], llm: bool,
             replicas: bool, inbox_reader: str) -> Iterator[Mesh]:
    if not llm:
        with _mesh_up(root, mesh_data(agents, replicas=replicas, inbox_reader=inbox_reader), say) as mesh:
            yield mesh
        return
    server = start_scripted(SCRIPT, root)
    try:
        say(f"scripted model server at {server.base_url} (pid {server.pid})")
        with _mesh_up(root, mesh_data(agents, server.base_url, replicas, inbox_reader), say) as mesh:
            yield mesh
    finally:
        server.stop()


@contextmanager
def _mesh_up(root: Path, data: dict[str, Any], say: Callable[[str], None]) -> Iterator[Mesh]:
    path = root / "mesh.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    agents = len(data["agents"])
    mesh = load_mesh(path)
    reader = " (one inbox reader for them all)" if data["kafka"].get("inbox_reader") == "host" else ""
    say(f"starting a mesh of {agents} agents{reader} in {root} ...")
    started = time.monotonic()
    try:
        lifecycle.up(mesh, UP_TIMEOUT_S + UP_PER_AGENT_S * agents, lambda _states: None)
        say(f"mesh up in {time.monotonic() - started:.1f} s")
        yield mesh
    finally:
        teardown(mesh, say)


def teardown(mesh: Mesh, say: Callable[[str], None]) -> None:
    """`down`; whatever is left (supervisord, then its programs) is ended by pid."""
    say("stopping the mesh ...")
    pids: list[int] = []
    try:
        with Supervisor(mesh) as sup:
            if sup.is_running():
                pids = [p["pid"] for p in sup.processes() if p["pid"]]
        lifecycle.down(mesh, DOWN_TIMEOUT_S, lambda _tier, _members: None)
    except AgentMeshError as exc:
        say(f"down failed: {exc}")
    pidfile = mesh.state_dir / "supervisord.pid"
    sup_pid = int(pidfile.read_text().strip() or 0) if pidfile.exists() else 0
    if sup_pid and _alive(sup_pid):
        _end(sup_pid)
    for pid in pids:
        if _alive(pid):
            _end(pid)


def _end(pid: int, grace: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGCONT)  # a stalled program cannot act on TERM
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        wait_until(lambda: not _alive(pid), grace, f"pid {pid} to end")
    except WaitTimeout:
        pass  # it did not take its TERM: killed below
    if _alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
