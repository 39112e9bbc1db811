"""`agentmesh bench routing`: the bench's side of the mesh. The group and one load generator
per model (each running with a mesh.yaml of its own that differs in `routing` alone), the
jobs sent to a generator and read back from its file, the replicas' counters around a job,
and the kill trial's timeline (kill -9 by pid, spawn again, the sender's published router
state sampled meanwhile)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson

from agentmesh_cli import constants as C
from agentmesh_cli import events
from agentmesh_cli.bench.agents import AgentsMesh, agents_mesh
from agentmesh_cli.bench.routing_figures import OK, AskLog
from agentmesh_cli.bench.routing_roles import JOB_TYPE, SERVICE_MS
from agentmesh_cli.bus import Bus
from agentmesh_cli.dozing import ringing, stop_ringing
from agentmesh_cli.errors import AgentMeshError, BenchError
from agentmesh_cli.replicas import Groups
from agentmesh_cli.signing import mesh_signer

ROLES = "agentmesh_cli.bench.routing_roles"
GROUP = "Pool"
REPLICAS = [f"{GROUP}-{k}" for k in range(1, len(SERVICE_MS) + 1)]
PARTITIONS = 16  # every agent of the bench mesh reads an inbox partition of its own (checked)
START_DELAY_S = 0.5  # a job starts this long after it is sent (it reaches the generator first)
JOB_SLACK_S = 60.0  # beyond the job and its ask timeout, the bench waits this long for the file
POLL_S = 0.05
SAMPLE_S = 0.5  # the sender's published router state is read this often in a kill trial
COUNTED = (C.COUNTER_IN, C.COUNTER_HANDLED_TWICE, C.COUNTER_DUPLICATES, C.COUNTER_EXPIRED)


def generator(model: str) -> str:
    return f"Load-{model}"


@contextmanager
def routing_mesh(routings: dict[str, dict[str, Any]]) -> Iterator[AgentsMesh]:
    """The group (`Pool`: three `Server` replicas at concurrency 1) and a load generator per
    model (routings: model name -> its mesh.yaml `routing`), all ready."""
    agents: list[dict[str, Any]] = [{"name": GROUP, "role": f"{ROLES}:Server", "replicas": len(REPLICAS)}]
    agents += [{"name": generator(m), "role": f"{ROLES}:LoadGenerator"} for m in routings]
    names = REPLICAS + [generator(m) for m in routings]
    inboxes = {C.inbox_partition(name, PARTITIONS) for name in names}
    if len(inboxes) < len(names):  # a shared inbox: each would read the other's traffic too
        raise BenchError(f"bench routing: two of {', '.join(names)} share an inbox partition of {PARTITIONS}")
    variants = {generator(m): {"routing": routing} for m, routing in routings.items()}
    with agents_mesh(agents, variants, kafka={"partitions": PARTITIONS}) as running:
        yield running


@dataclass
class Counters:
    """The replicas' exact counters (written with the group's ledger) and the generator's."""

    replicas: dict[str, dict[str, int]]
    generator: dict[str, int]

    @classmethod
    def read(cls, running: AgentsMesh, model: str) -> Counters:
        return cls({name: running.store.counters(name) for name in REPLICAS},
                   running.store.counters(generator(model)))

    def handled_from(self, sender: str) -> int:
        return sum(c.get(C.COUNTER_HANDLED_FROM_PREFIX + sender, 0) for c in self.replicas.values())

    def since(self, start: Counters, model: str) -> dict[str, int]:
        """What the group and the generator counted between `start` and these."""
        out = {name: sum(c.get(name, 0) - start.replicas[r].get(name, 0) for r, c in self.replicas.items())
               for name in COUNTED}
        out["handled"] = self.handled_from(generator(model)) - start.handled_from(generator(model))
        out["late_replies"] = (self.generator.get(C.COUNTER_LATE_REPLIES, 0)
                               - start.generator.get(C.COUNTER_LATE_REPLIES, 0))
        return out


@dataclass
class Job:
    """One finished job: its asks, when it started (time.monotonic) and what was counted."""

    log: AskLog
    start_at: float
    counted: dict[str, int] = field(default_factory=dict)


class Jobs:
    """Sends a generator its job, waits for its file, fills in where failed asks went."""

    def __init__(self, running: AgentsMesh, ask_timeout_s: float) -> None:
        self.running = running
        mesh = running.bench.mesh
        self.keys = C.Keys(mesh.config.mesh)
        self.ask_timeout_s = ask_timeout_s
        # the operator sender; it signs when the bench mesh does
        self.bus = Bus(mesh.config.kafka, "bench-routing-jobs", signer=mesh_signer(mesh))
        ringing(self.bus, running.store)  # a sleeping agent is rung (dozing.py)

    def run(self, model: str, rate: float, seconds: float, seed: str, service: str,
            trial: KillTrial | None = None, to: str = GROUP) -> Job:
        """One job of `generator(model)` asking `to` (the group, or one replica by its name);
        a kill `trial` is stepped every POLL_S while it runs."""
        run = f"r{uuid.uuid4().hex[:10]}"
        out = self.running.bench.root / f"{run}.json"
        start_at = time.monotonic() + START_DELAY_S
        before = Counters.read(self.running, model)
        self.bus.send_message(events.message(C.CLI_COUNTER_OWNER, generator(model), JOB_TYPE, {
            "run": run, "to": to, "rate": rate, "seconds": seconds, "start_at": start_at, "seed": seed,
            "timeout": self.ask_timeout_s, "service": service, "out": str(out)}))
        if self.bus.flush(10):
            raise BenchError(f"the bench could not send {generator(model)} its job")
        until = start_at + seconds + self.ask_timeout_s + JOB_SLACK_S
        while not out.exists():
            if trial is not None:
                trial.step(start_at)
            self.running.check_alive(ignore=trial.down if trial is not None else None)
            if time.monotonic() > until:
                raise BenchError(f"{generator(model)} did not report job {run}; see "
                                 f"{self.running.log(generator(model))}")
            time.sleep(POLL_S)
        data = orjson.loads(out.read_bytes())
        if "error" in data:
            raise BenchError(f"{generator(model)}'s job failed: {data['error']}; see "
                             f"{self.running.log(generator(model))}")
        log = AskLog.of(data)
        if to == GROUP:
            self._routed_failures(log, run)
        return Job(log, start_at, self._settled(before, model, len(log)))

    def _routed_failures(self, log: AskLog, run: str) -> None:
        """A failed ask has no reply to name its replica: the conversation table does."""
        for n, outcome in enumerate(log.outcome):
            if outcome != OK:
                routed = self.running.store.redis.get(self.keys.route(GROUP, f"{run}-{n}"))
                log.replica[n] = None if routed is None else str(routed)

    def _settled(self, before: Counters, model: str, asks: int) -> dict[str, int]:
        """The counters once the group's ledger holds every request of the job (a few
        settle intervals after the last reply), or after 10 s."""
        until = time.monotonic() + 10.0
        while True:
            counted = Counters.read(self.running, model).since(before, model)
            if counted["handled"] >= asks or time.monotonic() > until:
                return counted
            time.sleep(0.2)

    def close(self) -> None:
        self.bus.flush(5)
        stop_ringing(self.bus)
        del self.bus  # its producer goes before the broker does (no "connection refused" lines)


class KillTrial:
    """The timeline of one kill trial, stepped while its job runs: kill -9 `replica` at
    `kill_s` from the job's start, spawn it again at `restart_s`, note when it is ready, and
    sample the sender's published router state (Groups.routing) every SAMPLE_S."""

    def __init__(self, running: AgentsMesh, replica: str, model: str, kill_s: float,
                 restart_s: float) -> None:
        self.running, self.replica, self.sender = running, replica, generator(model)
        self.kill_s, self.restart_s = kill_s, restart_s
        self.groups = Groups(running.store)
        self.killed: float | None = None  # seconds from the job's start, as done
        self.restarted: float | None = None
        self.ready: float | None = None
        self.snapshots: list[dict[str, Any]] = []
        self._sampled = -1.0
        self._seen: set[int] = set()

    @property
    def down(self) -> str | None:
        """The replica while it is dead (its exit is the trial's, not an error)."""
        return self.replica if self.killed is not None and self.restarted is None else None

    def step(self, start_at: float) -> None:
        at = time.monotonic() - start_at
        if self.killed is None and at >= self.kill_s:
            self.running.kill(self.replica)
            self.killed = time.monotonic() - start_at
        elif self.killed is not None and self.restarted is None and at >= self.restart_s:
            self.running.spawn(self.replica)
            self.restarted = time.monotonic() - start_at
        elif self.restarted is not None and self.ready is None:
            pid = self.running.procs[self.replica].pid
            if self.running.store.ready_pid(C.agent_program(self.replica)) == pid:
                self.ready = round(time.monotonic() - start_at - self.restarted, 3)
        if at - self._sampled >= SAMPLE_S:
            self._sampled = at
            self._sample(start_at)

    def _sample(self, start_at: float) -> None:
        try:
            state = self.groups.routing().get(self.sender)
        except AgentMeshError:
            return
        if not state or state.get("ts") in self._seen:
            return
        self._seen.add(state["ts"])
        wall_start = start_at + (time.time() - time.monotonic())  # the job's start on the wall clock
        rows = state.get("groups", {}).get(GROUP, {})
        self.snapshots.append({"t": round(state["ts"] / 1000 - wall_start, 3),
                               "replicas": {name: {k: round(float(v), 5) for k, v in row.items()}
                                            for name, row in rows.items()}})
