"""One chaos run, start to end: probes and observers on, each fault in turn (then, with
`duration`, a random program killed every `every` seconds), the backlog drained, and the
figures gathered into one JSON-able result (`RESULT_VERSION`)."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentmesh_cli.chaos.asks import AskStream
from agentmesh_cli.chaos.faults import (
    INBOX,
    KILL,
    Context,
    Fault,
    Outcome,
    inbox_reader_for,
    plan_faults,
    wants_llm,
)
from agentmesh_cli.chaos.figures import summarise
from agentmesh_cli.chaos.llm import CONCIERGE
from agentmesh_cli.chaos.mesh import embedded_mesh
from agentmesh_cli.chaos.observe import ConsensusTally, ProgramStates, StatusTruth, program_states
from agentmesh_cli.chaos.probes import ProbeSender
from agentmesh_cli.chaos.replicas import replica_group, wants_replicas
from agentmesh_cli.chaos.watches import Watch, inject
from agentmesh_cli.envelope import now_ms
from agentmesh_cli.errors import AgentMeshError, ConfigError, FaultSkipped, SupervisorError, WaitTimeout
from agentmesh_cli.mesh import Mesh, load_mesh
from agentmesh_cli.replica_view import groups_of
from agentmesh_cli.replicas import Groups, running_agents
from agentmesh_cli.signing import mesh_signer
from agentmesh_cli.store import Store
from agentmesh_cli.supervisor.control import Supervisor
from agentmesh_cli.waiting import wait_until

POLL_S = 0.2
WARM_UP_S = 60.0  # plus WARM_UP_PER_AGENT_S each: at 64 agents the broker is slow to start with
WARM_UP_PER_AGENT_S = 1.0
FLUSH_S = 30.0

Say = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    rate: float = 200.0  # probes per second, over all agents
    pause: float = 5.0  # after a fault is recovered from, before the next
    faults: str = "all"
    rounds: int = 1  # times the fault sequence is run
    duration: float = 0.0  # then this long: a random program killed every `every` seconds
    every: float = 5.0
    seed: int | None = None
    timeout: float = 60.0  # a fault not recovered from by then is reported as such
    drain: float = 60.0  # at the end, how long to wait for every probe to be handled
    agents: int = 4  # agents of the embedded mesh
    ask_rate: float = 20.0  # asks per second, over the agents whose roles answer (chaos/asks.py)
    # kafka.inbox_reader of the embedded mesh; None: host when `faults` names inbox, else auto
    inbox_reader: str | None = None


def run(settings: Settings, config: Path | None, workdir: Path | None, say: Say) -> dict[str, Any]:
    """Run against the mesh of `config` (already up), or a throwaway embedded mesh."""
    if config is not None:
        mesh = load_mesh(config)
        own = mesh.config.kafka.inbox_reader
        if settings.inbox_reader not in (None, "auto", own):
            raise ConfigError(f"--inbox-reader {settings.inbox_reader}: the mesh of {config} runs "
                              f"kafka.inbox_reader: {own} (--inbox-reader sets the embedded mesh's)")
        with Supervisor(mesh) as sup:
            if not sup.is_running():
                raise SupervisorError(f"the mesh of {config} is not running: run agentmesh up first")
        return ChaosRun(mesh, settings, say, embedded=False).execute()
    inbox_reader = inbox_reader_for(settings.inbox_reader, settings.faults)  # before a mesh starts
    with embedded_mesh(settings.agents, say, workdir, llm=wants_llm(settings.faults),
                       replicas=wants_replicas(settings.faults), inbox_reader=inbox_reader) as mesh:
        return ChaosRun(mesh, settings, say, embedded=True).execute()


class ChaosRun:
    def __init__(self, mesh: Mesh, settings: Settings, say: Say, embedded: bool) -> None:
        self.mesh = mesh
        self.settings = settings
        self.say = say
        self.embedded = embedded
        self.started = time.monotonic()
        self.started_ms = now_ms()
        self.sup = Supervisor(mesh)
        store = Store(mesh.redis_url, mesh.config.mesh)
        # every agent process: a replica group's replicas as many as it runs now, each probed
        agents = running_agents(mesh.config, Groups(store).counts() if mesh.config.groups() else {})
        if not agents:
            raise AgentMeshError(f"{mesh.config_file.name} has no agents to send probes to")
        run_id = uuid.uuid4().hex[:8]
        self.paused = threading.Event()  # set while the mesh restarts (the restart fault)
        self.probes = ProbeSender(mesh.config.kafka, agents, settings.rate, run_id, store,
                                  mesh_signer(mesh), self.paused, groups_of(mesh.config, agents))
        # asked straight to their inbox: only roles that answer (none replicable, so no group)
        roles = {a.name: a.role for a in mesh.config.agents}
        self.asks = AskStream(mesh.config.kafka, roles, settings.ask_rate, run_id,
                              Store(mesh.redis_url, mesh.config.mesh), mesh_signer(mesh),
                              deadline_s=2 * settings.timeout, paused=self.paused)
        self.ctx = Context(mesh, self.probes, self.started, settings.timeout, self.paused,
                           settings.ask_rate, self.asks)
        self.tally = ConsensusTally(mesh, self.started_ms)
        self.truth = StatusTruth(mesh, self.ctx.frozen, self.paused)
        self.outcomes: list[Outcome] = []
        self.active: list[Watch] = []
        self.rng = random.Random(settings.seed)

    def states(self) -> ProgramStates:
        # a retry of the call, not a wait: after an hour its own error is raised
        while True:
            try:
                return program_states(self.sup)
            except SupervisorError as exc:
                if time.monotonic() - self.started > 3600:
                    raise
                self.say(f"supervisord: {exc}")
                time.sleep(POLL_S)

    def execute(self) -> dict[str, Any]:
        roles = {a.name: a.role for a in self.mesh.config.agents}
        llm_agent = CONCIERGE if self.embedded and roles.get(CONCIERGE) == "llm" else None
        plan = plan_faults(self.settings.faults, sorted(self.states()), self.ctx.agents, llm_agent,
                           replica_group(self.mesh) if self.embedded else None)
        baseline = self.ctx.store.all_counters()
        self.probes.start()
        self.asks.start()
        self.tally.start()
        self.truth.start()
        try:
            self._warm_up()
            for _ in range(self.settings.rounds):
                for fault in plan:
                    self._one(fault)
            if self.settings.duration > 0:
                self._random(plan)
            unconfirmed = self.probes.stop(FLUSH_S)
            self.asks.stop(FLUSH_S)
            self._drain(baseline)
        finally:
            for watch in self.active:
                watch.abort()
            self.probes.stop(0)
            self.asks.stop(0)
            self.tally.stop()
            self.truth.stop()
        try:
            return summarise(self, baseline, unconfirmed)
        finally:
            self.asks.close()
            self.ctx.close()
            self.sup.close()

    def _warm_up(self) -> None:
        """Every agent handles probes before the first fault (else the figures mean nothing)."""
        start = {a: -1 for a in self.ctx.agents}
        warm_up = WARM_UP_S + WARM_UP_PER_AGENT_S * len(self.ctx.agents)
        try:
            wait_until(lambda: self.ctx.handled_since(start), warm_up, "the first probes handled",
                       interval=POLL_S)
        except WaitTimeout as exc:
            silent = [a for a in self.ctx.agents if not self.ctx.handled_since(start, [a])]
            raise AgentMeshError(
                f"{len(silent)} of {len(self.ctx.agents)} agents handled no probe within "
                f"{warm_up:.0f} s ({', '.join(silent[:8])}{', ...' if len(silent) > 8 else ''}): do "
                "they record handled ids (the ledger) and accept the operator sender 'chaos'?") from exc
        self.say(f"probes flowing at {self.settings.rate:g}/s to {len(self.ctx.agents)} agents"
                 + (f", asks at {self.settings.ask_rate:g}/s to {', '.join(self.asks.targets)}"
                    if self.asks.targets and self.settings.ask_rate > 0 else ""))

    def _inject(self, fault: Fault, phase: str, states: ProgramStates) -> Watch | None:
        try:
            watch = inject(self.ctx, fault, phase, states)
        except FaultSkipped as exc:
            at = round(time.monotonic() - self.started, 2)
            self.outcomes.append(Outcome(fault.label, fault.kind, fault.target, phase, at,
                                         note=f"skipped: {exc}", started=time.monotonic()))
            return None
        self.active.append(watch)
        return watch

    def _finish(self, watch: Watch) -> None:
        self.active.remove(watch)
        out = watch.outcome
        self.outcomes.append(out)
        detect = "-" if out.detect_s is None else f"{out.detect_s:.2f} s"
        recover = "-" if out.recover_s is None else f"{out.recover_s:.2f} s"
        self.say(f"{out.fault}: detected {detect}, recovered {recover}"
                 + (f" ({out.note})" if out.note else ""))

    def _one(self, fault: Fault) -> None:
        states = self.states()
        watch = self._inject(fault, "sequence", states)
        if watch is None:
            return
        # the watch itself gives up after settings.timeout (Watch.timed_out), and each look
        # takes the states read after the pause
        while not watch.poll(time.monotonic(), states):
            time.sleep(POLL_S)
            # while the mesh restarts supervisord is away: the watch does not need it
            states = {} if getattr(watch, "busy", False) else self.states()
        self._finish(watch)
        time.sleep(self.settings.pause)

    def _random(self, plan: list[Fault]) -> None:
        """Kill a random running program every `every` seconds for `duration` seconds;
        faults overlap, each watched until it is recovered from. The inbox fault's program is
        one of them (a plain kill: chaos/watches.py)."""
        targets = sorted({f.target for f in plan if f.kind in (KILL, INBOX)}) or sorted(self.states())
        self.say(f"random phase: kill -9 of one of {len(targets)} programs every "
                 f"{self.settings.every:g} s for {self.settings.duration:g} s")
        end = time.monotonic() + self.settings.duration
        next_kill = time.monotonic()
        while time.monotonic() < end or self.active:
            states = self.states()
            now = time.monotonic()
            if now < end and now >= next_kill:
                next_kill = now + self.settings.every
                running = [t for t in targets if states.get(t, ("", 0))[0] == "RUNNING"]
                if running:
                    self._inject(Fault(KILL, self.rng.choice(running)), "random", states)
            for watch in list(self.active):
                if watch.poll(now, states):
                    self._finish(watch)
            time.sleep(POLL_S)

    def handled(self, baseline: dict[str, dict[str, int]]) -> dict[str, int]:
        """Probes each agent handled since the run started (its exact counter)."""
        from agentmesh_cli.chaos.probes import HANDLED_FROM

        counters = self.ctx.store.all_counters()
        return {a: counters.get(a, {}).get(HANDLED_FROM, 0) - baseline.get(a, {}).get(HANDLED_FROM, 0)
                for a in self.ctx.agents}

    def _drain(self, baseline: dict[str, dict[str, int]]) -> None:
        """Wait until every confirmed probe is handled, or `drain` seconds."""
        self.say("draining ...")

        def drained() -> bool:
            try:
                handled = self.handled(baseline)
            except AgentMeshError:
                return False
            return (bool(handled) and all(handled[a] >= self.probes.sent[a] for a in self.ctx.agents)
                    and self.asks.unanswered() == 0)

        try:
            wait_until(drained, self.settings.drain, "every probe handled and ask answered", interval=0.5)
        except WaitTimeout:
            pass  # the figures count what was not handled
