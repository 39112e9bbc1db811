"""`up` and `down` as library calls: render, start or update supervisord, gate on readiness.

Ready means a program's own signal, not just a live process: the broker answers a
metadata request, Redis answers PING, and every agentmesh role has written its
readiness key with the pid that supervisord reports for it.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from agentmesh_cli import constants as C
from agentmesh_cli.agent.roles import resolve_role
from agentmesh_cli.bus import broker_reachable
from agentmesh_cli.config import Mesh
from agentmesh_cli.errors import AgentMeshError, NotReadyError, PortInUseError
from agentmesh_cli.store import Store
from agentmesh_cli.supervisor.control import Supervisor
from agentmesh_cli.supervisor.render import ProgramSpec, program_specs, render_all, write_configs

FORMED_ROW = "(topology)"  # the last gate: every agent has joined the graph
FAILED_STATES = frozenset({"FATAL", "EXITED", "STOPPED", "UNKNOWN"})
TIERS = ("agents", "managers", "services", "infra")  # stop order


@dataclass
class ProgramState:
    name: str
    state: str
    pid: int
    ready: bool


Progress = Callable[[list[ProgramState]], None]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def preflight(mesh: Mesh, running: set[str]) -> None:
    """Refuse to start what cannot work: unknown role classes, ports already taken."""
    for agent in mesh.config.agents:
        resolve_role(agent.role)
    cfg = mesh.config
    wanted = []
    if cfg.kafka.embedded:
        wanted.append((C.PROGRAM_KAFKA, cfg.kafka.port, "kafka.port"))
    if cfg.redis.embedded:
        wanted.append((C.PROGRAM_REDIS, cfg.redis.port, "redis.port"))
    for program, port, key in wanted:
        if program not in running and not port_free(port):
            raise PortInUseError(
                f"port {port} on 127.0.0.1 is already in use, so the embedded {program} cannot "
                f"start; stop what holds it or set {key} in {mesh.config_file.name}"
            )


class Readiness:
    """Answers 'is this program ready?' from its own signal."""

    def __init__(self, mesh: Mesh, topology_expected: bool = False) -> None:
        self.mesh = mesh
        self.topology_expected = topology_expected
        self._store: Store | None = None

    def joined(self) -> set[str]:
        """The mesh's agents that the topology manager's latest snapshot holds."""
        try:
            snapshot = self.store().load_snapshot() or {}
        except AgentMeshError:
            return set()
        present = set(snapshot.get("graph", {}).get("agents", []))
        return present & {a.name for a in self.mesh.config.agents}

    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.mesh.config.redis.resolved_url, self.mesh.config.mesh, timeout=1.0)
        return self._store

    def __call__(self, name: str, pid: int) -> bool:
        try:
            if name == C.PROGRAM_KAFKA:
                return broker_reachable(self.mesh.config.kafka, timeout=1.0)
            if name == C.PROGRAM_REDIS:
                return self.store().ping()
            return self.store().ready_pid(name) == pid
        except AgentMeshError:
            return False


def wait_ready(
    sup: Supervisor, mesh: Mesh, specs: list[ProgramSpec], timeout: float, progress: Progress
) -> list[ProgramState]:
    """Wait until every program is RUNNING and ready, then until every agent has joined
    the topology (when this mesh runs a topology manager). Returns the program states."""
    check = Readiness(mesh, topology_expected=any(s.name == C.PROGRAM_TOPOLOGY for s in specs))
    agents = {a.name for a in mesh.config.agents}
    ready: set[str] = set()
    deadline = time.monotonic() + timeout
    while True:
        info = {p["name"]: p for p in sup.processes()}
        states = []
        for spec in specs:
            p = info.get(spec.name, {"statename": "UNKNOWN", "pid": 0})
            if p["statename"] != "RUNNING":
                ready.discard(spec.name)  # restarted or died since it was ready
            elif spec.name not in ready and check(spec.name, p["pid"]):
                ready.add(spec.name)
            states.append(ProgramState(spec.name, p["statename"], p["pid"], spec.name in ready))
        for s in states:
            if s.state in FAILED_STATES:
                progress(states)
                raise NotReadyError(f"{s.name} is {s.state}", s.name, sup.log_tail(s.name))
        shown = states
        formed = True
        if all(s.ready for s in states) and check.topology_expected:
            joined = check.joined()
            formed = joined >= agents
            shown = [*states, ProgramState(FORMED_ROW, f"{len(joined)}/{len(agents)} agents joined",
                                           0, formed)]
        progress(shown)
        if formed and all(s.ready for s in states):
            return states
        if time.monotonic() > deadline:
            late = next((s for s in states if not s.ready), None)
            if late is None:
                missing = ", ".join(sorted(agents - check.joined()))
                raise NotReadyError(f"agents {missing} did not join the topology in {timeout:.0f}s",
                                    C.PROGRAM_TOPOLOGY, sup.log_tail(C.PROGRAM_TOPOLOGY))
            raise NotReadyError(f"{late.name} not ready after {timeout:.0f}s (state {late.state})",
                                late.name, sup.log_tail(late.name))
        time.sleep(0.2)


def up(mesh: Mesh, timeout: float, progress: Progress) -> tuple[list[ProgramState], dict[str, list[str]]]:
    """Render configs, start or update supervisord, wait until every program is ready."""
    sup = Supervisor(mesh)
    running_sup = sup.is_running()
    running = (
        {p["name"] for p in sup.processes() if p["statename"] == "RUNNING"} if running_sup else set()
    )
    preflight(mesh, running)
    specs = program_specs(mesh, sys.executable)
    write_configs(mesh, render_all(mesh, specs))
    if running_sup:
        changes = sup.apply()
    else:
        sup.start()
        changes = {"added": [s.name for s in specs], "changed": [], "removed": []}
    return wait_ready(sup, mesh, specs, timeout, progress), changes


def down(mesh: Mesh, timeout: float, progress: Callable[[str, list[str]], None]) -> bool:
    """Stop agents, then managers, services, infra, then supervisord. False if not running."""
    sup = Supervisor(mesh)
    if not sup.is_running():
        return False
    names = {p["name"] for p in sup.processes()}
    specs = {s.name: s for s in program_specs(mesh, sys.executable, tansu="-", valkey="-")}
    for tier in TIERS:
        members = sorted(n for n in names if _tier(n, specs) == tier)
        if members:
            progress(tier, members)
            sup.stop_programs(members, timeout)
    sup.shutdown(timeout)
    return True


def _tier(name: str, specs: dict[str, ProgramSpec]) -> str:
    if name in specs:
        return specs[name].tier
    if name in (C.PROGRAM_KAFKA, C.PROGRAM_REDIS):
        return "infra"
    return "agents" if name.startswith(C.AGENT_PROGRAM_PREFIX) else "managers"
