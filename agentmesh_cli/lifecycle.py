"""`up` and `down` as library calls: render, start or update supervisord, gate on readiness.

Programs are rendered with autostart off: `up` starts them tier by tier (infra,
services, managers, agents) and waits for each tier to be ready before the next, and
between infra and the rest it creates the topics (and a new broker epoch when the
broker was empty, see broker.prepare_topics).

Ready means a program's own signal, not just a live process: the broker answers a
metadata request, Redis answers PING, a service's /health answers 200 (memory: Redis
answers; cognition: memory answers), the metrics exporter answers GET /metrics with 200,
and every other agentmesh role has written its readiness key with the pid that
supervisord reports for it. A ready program may still be STARTING (supervisord calls it
RUNNING only once it stayed up `supervisor.startsecs`): the tiers go on at readiness,
and the last gate also waits until every program is RUNNING.

On a mesh spread over `hosts`, `up` and `down` act on one host's share (`mesh.host`):
its own supervisord, its programs only; infra is external there.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from agentmesh_cli import constants as C
from agentmesh_cli import drain
from agentmesh_cli.agent.resolve import check_replicable, resolve_role
from agentmesh_cli.broker import broker_reachable, prepare_topics
from agentmesh_cli.credentials import private_dir
from agentmesh_cli.embedded import write_valkey_secret
from agentmesh_cli.errors import AgentMeshError, NotReadyError, PortInUseError, WaitTimeout
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.quiet import counted
from agentmesh_cli.scalestate import clear_scale, load_scale, publish_counts
from agentmesh_cli.services.probe import Prober, gateway_url, tls_verify
from agentmesh_cli.store import Store
from agentmesh_cli.supervisor.control import Supervisor
from agentmesh_cli.supervisor.render import (
    AGENT_STOPWAITSECS,
    ProgramSpec,
    program_specs,
    render_all,
    valkey_secret_file,
)
from agentmesh_cli.waiting import Clock, Deadline, wait_until

FORMED_ROW = "(topology)"  # the last gate: every agent has joined the graph
FAILED_STATES = frozenset({"FATAL", "EXITED", "STOPPED", "UNKNOWN"})
LIVE_STATES = frozenset({"STARTING", "RUNNING"})
TIERS = ("agents", "managers", "services", "infra")  # stop order


@dataclass
class ProgramState:
    name: str
    state: str
    pid: int
    ready: bool


Progress = Callable[[list[ProgramState]], None]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Can a server listen on host:port? Bound the way servers bind (SO_REUSEADDR), so the
    TIME_WAIT connections a just-stopped mesh leaves behind do not count as taken; a
    listening socket does."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def preflight(mesh: Mesh, running: set[str], specs: list[ProgramSpec]) -> None:
    """Refuse to start what cannot work: unknown role classes, ports already taken (of
    the programs in `specs`: on a mesh spread over hosts, this host's)."""
    mine = {spec.name for spec in specs} - running  # ours, and not already listening
    for index, agent in enumerate(mesh.config.agents):
        if any(C.agent_program(name) in mine for name in agent.replica_names()):
            check_replicable(resolve_role(agent.role), agent, index)
    cfg, file = mesh.config, mesh.config_file.name
    wanted = [  # program, host, port, what cannot start, the key to change
        (C.PROGRAM_KAFKA, "127.0.0.1", cfg.kafka.port, "the embedded kafka", "kafka.port"),
        (C.PROGRAM_REDIS, "127.0.0.1", cfg.redis.port, "the embedded redis", "redis.port"),
        *((service, getattr(cfg.services, service).host, getattr(cfg.services, service).port,
           f"the {service} service", f"services.{service}.port") for service in C.SERVICE_PROGRAMS),
        (C.PROGRAM_METRICS, cfg.metrics.host, cfg.metrics.port, "the metrics exporter", "metrics.port"),
        (C.PROGRAM_GATEWAY, cfg.gateway.host, cfg.gateway.port, "the gateway", "gateway.port"),
    ]
    for program, host, port, what, key in wanted:
        if program in mine and not port_free(port, host):
            raise PortInUseError(f"port {port} on {host} is already in use, so {what} cannot "
                                 f"start; stop what holds it or set {key} in {file}")


def metrics_answers(mesh: Mesh, prober: Prober) -> bool:
    """The exporter answers GET /metrics with 200 (it does so even while Redis is down)."""
    from agentmesh_cli.metrics.exporter import metrics_url

    return prober.get(metrics_url(mesh))[0] == 200


class Readiness:
    """Answers 'is this program ready?' from its own signal."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self._store: Store | None = None
        self._prober: Prober | None = None

    def prober(self) -> Prober:
        if self._prober is None:
            self._prober = Prober(timeout=1.0, verify=tls_verify(self.mesh))  # services.tls_ca
        return self._prober

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.mesh.redis_url, self.mesh.config.mesh, timeout=1.0)
        return self._store

    def joined(self) -> set[str]:
        """The mesh's agents that the topology manager's latest snapshot holds."""
        try:
            snapshot = self.store().load_snapshot() or {}
        except AgentMeshError:
            return set()
        present = set(snapshot.get("graph", {}).get("agents", []))
        return present & {name for name, _ in self.mesh.config.concrete_agents(load_scale(self.mesh))}

    def __call__(self, name: str, pid: int) -> bool:
        try:
            if name == C.PROGRAM_KAFKA:
                return broker_reachable(self.mesh.config.kafka, timeout=1.0)
            if name == C.PROGRAM_REDIS:
                return self.store().ping()
            if name in C.SERVICE_PROGRAMS:
                return self.prober().health(self.mesh, name)[0] == 200
            if name == C.PROGRAM_METRICS:
                return metrics_answers(self.mesh, self.prober())
            if name == C.PROGRAM_GATEWAY:
                return self.prober().get(gateway_url(self.mesh) + "/health")[0] == 200
            return self.store().ready_pid(name) == pid
        except AgentMeshError:
            return False


class Gate:
    """Starts programs tier by tier and waits for each tier to be ready before the next."""

    def __init__(self, sup: Supervisor, mesh: Mesh, specs: list[ProgramSpec], timeout: float,
                 progress: Progress, clock: Clock = time.monotonic) -> None:
        self.sup, self.mesh, self.specs, self.progress = sup, mesh, specs, progress
        self.timeout = timeout
        self.deadline = Deadline(timeout, clock)  # one for all the gates of an `up`
        self.check = Readiness(mesh)
        self.ready: dict[str, int] = {}  # program -> the pid that was ready
        self.started: set[str] = set()

    def states(self) -> list[ProgramState]:
        info = {p["name"]: p for p in self.sup.processes()}
        states = []
        for spec in self.specs:
            p = info.get(spec.name, {"statename": "UNKNOWN", "pid": 0})
            live = p["statename"] in LIVE_STATES
            if not live or self.ready.get(spec.name, p["pid"]) != p["pid"]:
                self.ready.pop(spec.name, None)  # restarted or died since it was ready
            if live and spec.name not in self.ready and self.check(spec.name, p["pid"]):
                self.ready[spec.name] = p["pid"]
            states.append(ProgramState(spec.name, p["statename"], p["pid"], spec.name in self.ready))
        return states

    def _fail_if_failed(self, states: list[ProgramState]) -> None:
        for s in states:
            if s.name in self.started and s.state in FAILED_STATES:
                raise NotReadyError(f"{s.name} is {s.state}", s.name, self.sup.log_tail(s.name))

    def start_tier(self, tier: str) -> None:
        members = [s.name for s in self.specs if s.tier == tier]
        if not members:
            return
        self.sup.start_programs(members)
        self.started.update(members)
        waiting: list[ProgramState] = []

        def ready() -> bool:
            nonlocal waiting
            states = self.states()
            self.progress(states)
            self._fail_if_failed(states)
            waiting = [s for s in states if s.name in members and not s.ready]
            return not waiting

        try:
            wait_until(ready, self.deadline, f"the {tier} tier")
        except WaitTimeout as exc:
            late = waiting[0]
            raise NotReadyError(
                f"{tier} gate: {late.name} not ready after {self.timeout:.0f}s (state {late.state})",
                late.name, self.sup.log_tail(late.name)) from exc

    def wait_settled(self) -> list[ProgramState]:
        """The last gate: every program RUNNING and, when the topology manager is one of
        ours, its snapshot holds every agent we started (on a mesh spread over hosts,
        this host's agents: the others may come up later, in any order)."""
        names = {s.name for s in self.specs}
        agents = ({name.removeprefix(C.AGENT_PROGRAM_PREFIX) for name in names
                   if name.startswith(C.AGENT_PROGRAM_PREFIX)} if C.PROGRAM_TOPOLOGY in names else set())
        states: list[ProgramState] = []
        joined: set[str] = set()
        late: list[ProgramState] = []

        def settled() -> bool:
            nonlocal states, joined, late
            states = self.states()
            joined = self.check.joined() if agents else set()
            formed = joined >= agents
            rows = [ProgramState(FORMED_ROW, f"{len(joined & agents)}/{len(agents)} agents joined",
                                 0, formed)] if agents else []
            self.progress([*states, *rows])
            self._fail_if_failed(states)
            late = [s for s in states if s.state != "RUNNING"]
            return formed and not late

        try:
            wait_until(settled, self.deadline, "the programs to run and the agents to join")
        except WaitTimeout as exc:
            if not joined >= agents:
                missing = ", ".join(sorted(agents - joined))
                raise NotReadyError(
                    f"topology gate: agents {missing} did not join in {self.timeout:.0f}s",
                    C.PROGRAM_TOPOLOGY, self.sup.log_tail(C.PROGRAM_TOPOLOGY)) from exc
            raise NotReadyError(
                f"running gate: {late[0].name} is {late[0].state} after {self.timeout:.0f}s",
                late[0].name, self.sup.log_tail(late[0].name)) from exc
        return states


def up(mesh: Mesh, timeout: float, progress: Progress, say: Callable[[str], None] = lambda _line: None,
       ) -> tuple[list[ProgramState], dict[str, list[str]]]:
    """Render configs, start or update supervisord, then start the tiers in order, each
    gated on the readiness of the one before: infra, (topics, the draining mark cleared,
    what the last `down` saved unread replayed), services, managers, agents.
    With `mesh.host`, that host's programs only (its infra tier is empty: external)."""
    sup = Supervisor(mesh)
    running_sup = sup.is_running()
    running = (
        {p["name"] for p in sup.processes() if p["statename"] in LIVE_STATES} if running_sup else set()
    )
    scale = load_scale(mesh)  # a group scaled since the last `up` keeps its count (agentmesh scale)
    specs = program_specs(mesh, sys.executable, scale=scale)
    preflight(mesh, running, specs)
    write_configs(mesh, render_all(mesh, specs))
    if running_sup:
        changes = sup.apply()
    else:
        sup.start()
        changes = {"added": [s.name for s in specs], "changed": [], "removed": []}
    gate = Gate(sup, mesh, specs, timeout, progress)
    try:
        gate.start_tier("infra")
        prepare_topics(mesh.config.kafka, gate.check.store())
        gate.check.store().set_draining(False)  # a `down` drained the mesh: intake again
        publish_counts(mesh, gate.check.store(), scale)
        if replayed := drain.replay_unread(mesh, scale):
            say(f"replayed {counted(replayed, 'unread message')} that `down` saved")
        for tier in ("services", "managers", "agents"):
            gate.start_tier(tier)
        return gate.wait_settled(), changes
    finally:
        gate.check.close()


def down(mesh: Mesh, timeout: float, progress: Callable[[str, list[str]], None],
         drain_timeout: float | None = None, say: Callable[[str], None] = lambda _line: None) -> bool:
    """Stop agents, then managers, services, infra, then supervisord (with `mesh.host`:
    that host's). False if not running.

    With `drain_timeout` (`agentmesh down`; None is `--now`) the mesh drains first (drain.py):
    intake stops, and the agents are stopped once the mesh is quiet or the timeout passed;
    then, with the embedded broker, what the agents left unread is saved for the next
    `up`, before the broker stops and forgets it. `say` gets the drain's lines."""
    sup = Supervisor(mesh)
    if not sup.is_running():
        return False
    names = {p["name"] for p in sup.processes()}
    specs = {s.name: s for s in program_specs(mesh, sys.executable, tansu="-", valkey="-",
                                              scale=load_scale(mesh))}
    # a host of `hosts` stops its share while the others go on (and Kafka is external)
    draining = drain_timeout is not None and mesh.host is None
    if draining:
        drain.drain_mesh(mesh, drain_timeout or 0.0, say)
    save = draining and mesh.config.kafka.embedded and C.PROGRAM_KAFKA in names
    for tier in TIERS:
        if tier == "infra" and save:
            drain.keep_unread(mesh, say)
        members = sorted(n for n in names if _tier(n, specs) == tier)
        if members:
            progress(tier, members)
            # the save reads the offsets the agents commit as they leave: wait for all of
            # them, up to when supervisord kills a slow one
            wait = max(timeout, AGENT_STOPWAITSECS + 5) if tier == "agents" and save else timeout
            sup.stop_programs(members, wait)
    sup.shutdown(timeout)
    if mesh.host is None:
        clear_scale(mesh)  # the next `up` starts every group at mesh.yaml's count
    return True


def _tier(name: str, specs: dict[str, ProgramSpec]) -> str:
    if name in specs:
        return specs[name].tier
    if name in (C.PROGRAM_KAFKA, C.PROGRAM_REDIS):
        return "infra"
    return "agents" if name.startswith(C.AGENT_PROGRAM_PREFIX) else "managers"


def write_configs(mesh: Mesh, files: dict[str, str]) -> list[str]:
    """Write the rendered files, remove stale program files; return the names changed."""
    out = mesh.supervisor_dir
    out.mkdir(parents=True, exist_ok=True)
    mesh.logs_dir.mkdir(parents=True, exist_ok=True)
    # the state folder holds the secrets, supervisord's socket and Valkey's data: its owner's only
    private_dir(mesh.state_dir)
    if mesh.config.redis.embedded:
        private_dir(mesh.state_dir / "valkey")
        write_valkey_secret(valkey_secret_file(mesh), mesh.credentials.redis_password)
    changed = []
    for name, text in files.items():
        path = out / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(name)
    for stale in out.glob("*.ini"):
        if stale.name not in files:
            stale.unlink()
            changed.append(stale.name)
    return changed
