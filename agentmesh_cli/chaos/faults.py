"""The faults of a chaos run: which there are, the plan `--faults` asks for, what one fault's
outcome records, and what every fault may look at while it waits (`Context`).

Kinds: `kill` (SIGKILL on the pid supervisord reports for a program; supervisord restarts
it: for `redis` that is a Redis restart, its append-only file keeps the data; for `kafka`
a broker restart, which comes back empty), `stall` (SIGSTOP an agent until the topology
removes it, then SIGCONT: the time to detect a dead agent), `garbage` (records that are
not envelopes, too big, or from a sender that never joined, written to every topic),
`restart` (`down` with its drain, then `up`, while probes and asks pause as operator
input does: nothing sent before may be lost; what the drain left unread is saved and
replayed), `gateway` (kill -9 of the gateway while asks go through it over HTTP, each
retried with its `Idempotency-Key`: chaos/gateway.py), `llm` (kill -9 of the embedded
mesh's llm agent mid-answer while it answers chats over HTTP: chaos/llm.py), `replicas`
(kill -9 of a replica group's replicas mid-work, and the group scaled down and up, under
asks to the group over HTTP: chaos/replicas.py), `doze` (on a quiet mesh whose agents all
sleep: kill -9 of a sleeping agent as the probes resume to every agent, and kill -9 of
Redis, the probes resuming once the agents sleep again: chaos/sleepers.py), `inbox` (with
`kafka.inbox_reader: host`: kill -9 of the host's inbox reader under the probes and asks,
every agent timed until it is served again: chaos/inbox.py).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from agentmesh_cli import constants as C
from agentmesh_cli.chaos.probes import ProbeSender, handled_after
from agentmesh_cli.errors import AgentMeshError, ConfigError
from agentmesh_cli.lifecycle import Readiness
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.store import Store

if TYPE_CHECKING:
    from agentmesh_cli.chaos.asks import AskStream

KILL, STALL, GARBAGE, RESTART, GATEWAY, LLM = "kill", "stall", "garbage", "restart", "gateway", "llm"
REPLICAS, DOZE, INBOX = "replicas", "doze", "inbox"
INBOX_READERS = ("agent", "host", "auto")  # kafka.inbox_reader
RESTART_DRAIN_S = 10.0  # the drain timeout of the restart fault's `down`
SERVICES = (C.PROGRAM_MEMORY, C.PROGRAM_COGNITION, C.PROGRAM_METRICS)
INFRA = (C.PROGRAM_REDIS, C.PROGRAM_KAFKA)
GROUPS = ("all, agents, managers, services, inbox, gateway, llm, replicas, infra, doze[:Agent], "
          "stall[:Agent], garbage, restart, or program names")


@dataclass(frozen=True)
class Fault:
    kind: str
    target: str = ""  # the program (kill), the agent (stall)

    @property
    def label(self) -> str:
        if self.kind == STALL:
            return f"stall agent {self.target} (SIGSTOP)"
        if self.kind == GARBAGE:
            return "garbage to every topic"
        if self.kind == RESTART:
            return "down (drain) and up"
        if self.kind == GATEWAY:
            return "kill -9 gateway (asks over HTTP)"
        if self.kind == LLM:
            return f"kill -9 {self.target} mid-answer (chats over HTTP)"
        if self.kind == REPLICAS:
            return f"kill -9 {self.target} replicas mid-work, scale down and up (asks over HTTP)"
        if self.kind == DOZE and self.target == C.PROGRAM_REDIS:
            return "restart redis while the agents sleep (kill -9)"
        if self.kind == DOZE:
            return f"kill -9 {self.target} asleep, probes to every agent"
        if self.kind == INBOX:
            return f"kill -9 {self.target} (every agent's inbox) under load"
        if self.target == C.PROGRAM_REDIS:
            return "restart redis (kill -9)"
        if self.target == C.PROGRAM_KAFKA:
            return "restart broker (kill -9)"
        return f"kill -9 {self.target}"


def wants_llm(spec: str) -> bool:
    """Does `--faults` name the llm fault (the embedded mesh then runs its llm agent)?"""
    return bool({w.strip() for w in spec.split(",")} & {"all", LLM})


def wants_inbox(spec: str) -> bool:
    """Does `--faults` name the inbox fault (the embedded mesh then runs kafka.inbox_reader: host)?"""
    return INBOX in {w.strip() for w in spec.split(",")}


def inbox_reader_for(choice: str | None, spec: str) -> str:
    """kafka.inbox_reader of the embedded mesh: `--inbox-reader` as given, else `host` when
    `--faults` names the inbox fault (it needs one), else `auto` (mesh.yaml's default: host
    from AUTO_HOST_AGENTS agents up)."""
    if choice is not None and choice not in INBOX_READERS:
        raise ConfigError(f"--inbox-reader: {choice!r}: use agent, host or auto")
    if choice == "agent" and wants_inbox(spec):
        raise ConfigError("--faults: inbox: kills the host's inbox reader, and --inbox-reader agent "
                          "runs none: leave out --inbox-reader, or give host")
    return choice or ("host" if wants_inbox(spec) else "auto")


def plan_faults(spec: str, programs: list[str], agents: list[str],
                llm_agent: str | None = None, replica_group: str | None = None) -> list[Fault]:
    """The faults named by `--faults` (comma-separated, in order), against the programs
    supervisord runs. `all` is every program in turn (agents, managers, services, the gateway
    with asks over HTTP, the llm agent mid-answer, Redis, the broker), then the doze fault,
    a stalled agent, garbage, and a restart of the whole mesh; when the mesh runs the host's
    inbox reader (kafka.inbox_reader: host), the inbox fault after the services. `gateway` is
    the gateway fault (a kill under asks), not a bare kill; `llm` the llm fault against
    `llm_agent` (the embedded mesh's, whose model the run scripts), which `all` kills in no
    other way; `inbox` the inbox fault against the program inbox-reader (a bare
    `inbox-reader` is a plain kill); `replicas` the replicas fault against `replica_group`
    (the embedded mesh's, after the llm fault);
    `doze[:Agent]` the doze fault against that agent (by default the first but the llm agent)
    and, when the mesh runs its own, Redis."""
    llm = [Fault(LLM, C.agent_program(llm_agent))] if llm_agent is not None else []
    replicas = [Fault(REPLICAS, replica_group)] if replica_group is not None else []
    order = ([C.agent_program(a) for a in agents if a != llm_agent] + list(C.MANAGER_PROGRAMS)
             + list(SERVICES))
    groups = {
        "agents": [C.agent_program(a) for a in agents],
        "managers": list(C.MANAGER_PROGRAMS),
        "services": list(SERVICES),
        "infra": list(INFRA),
    }
    sleeper = next((a for a in agents if a != llm_agent), agents[0])  # the doze fault's, by default
    faults: list[Fault] = []
    for word in (w.strip() for w in spec.split(",")):
        if not word:
            continue
        if word == "all":
            faults += [Fault(KILL, p) for p in order if p in programs]
            faults += [Fault(INBOX, C.PROGRAM_INBOX)] if C.PROGRAM_INBOX in programs else []
            faults += [Fault(GATEWAY, C.PROGRAM_GATEWAY)] if C.PROGRAM_GATEWAY in programs else []
            faults += llm if C.PROGRAM_GATEWAY in programs else []
            faults += replicas if C.PROGRAM_GATEWAY in programs else []
            faults += [Fault(KILL, p) for p in INFRA if p in programs]
            faults += doze_faults(sleeper, programs)
            faults += [Fault(STALL, agents[-1]), Fault(GARBAGE), Fault(RESTART)]
        elif word == GATEWAY:
            if C.PROGRAM_GATEWAY not in programs:
                raise ConfigError("--faults: gateway: the mesh runs no gateway (gateway.enabled)")
            faults.append(Fault(GATEWAY, C.PROGRAM_GATEWAY))
        elif word == INBOX:
            if C.PROGRAM_INBOX not in programs:
                raise ConfigError("--faults: inbox: the mesh runs no inbox reader (kafka.inbox_reader: "
                                  "host; the embedded mesh runs one with --inbox-reader host)")
            faults.append(Fault(INBOX, C.PROGRAM_INBOX))
        elif word == LLM:
            if not llm:
                raise ConfigError("--faults: llm: runs on the embedded mesh only (its model is the "
                                  "run's scripted server): leave out --config")
            if C.PROGRAM_GATEWAY not in programs:
                raise ConfigError("--faults: llm: the chats go through the gateway, and the mesh runs "
                                  "none (gateway.enabled)")
            faults += llm
        elif word == REPLICAS:
            if not replicas:
                raise ConfigError("--faults: replicas: runs on the embedded mesh only (its Support "
                                  "runs as a replica group for it): leave out --config")
            if C.PROGRAM_GATEWAY not in programs:
                raise ConfigError("--faults: replicas: the asks go through the gateway, and the mesh "
                                  "runs none (gateway.enabled)")
            faults += replicas
        elif word in groups:
            faults += [Fault(KILL, p) for p in groups[word] if p in programs]
        elif word == GARBAGE:
            faults.append(Fault(GARBAGE))
        elif word == RESTART:
            faults.append(Fault(RESTART))
        elif word == DOZE or word.startswith(DOZE + ":"):
            agent = word.partition(":")[2] or sleeper
            if agent not in agents:
                raise ConfigError(f"--faults: {word}: no agent {agent!r} (agents: {', '.join(agents)})")
            faults += doze_faults(agent, programs)
        elif word == STALL or word.startswith(STALL + ":"):
            agent = word.partition(":")[2] or agents[-1]
            if agent not in agents:
                raise ConfigError(f"--faults: {word}: no agent {agent!r} (agents: {', '.join(agents)})")
            faults.append(Fault(STALL, agent))
        elif word in programs:
            faults.append(Fault(KILL, word))
        else:
            known = ", ".join(sorted(programs))
            raise ConfigError(f"--faults: unknown fault {word!r}: use {GROUPS} ({known})")
    if not faults:
        raise ConfigError(f"--faults: no fault named: use {GROUPS}")
    return faults


def doze_faults(agent: str, programs: list[str]) -> list[Fault]:
    """The doze fault: the agent killed asleep, then Redis killed while the agents sleep
    (when the mesh runs its own)."""
    return [Fault(DOZE, C.agent_program(agent))] + (
        [Fault(DOZE, C.PROGRAM_REDIS)] if C.PROGRAM_REDIS in programs else [])


@dataclass
class Outcome:
    """What became of one fault. Times in seconds: `at_s` since the run started, the
    others since the fault (for a stall, `recover_s` since the SIGCONT)."""

    fault: str
    kind: str
    target: str
    phase: str  # "sequence" (each fault in turn) or "random"
    at_s: float
    detect_s: float | None = None
    recover_s: float | None = None
    detected_by: str = ""
    recovered_by: str = ""
    note: str = ""
    lost: int = 0  # confirmed probes produced after this fault (before the next) never handled
    asks: dict[str, Any] | None = None  # the gateway fault: its HTTP asks, judged (chaos/gateway.py)
    chats: dict[str, Any] | None = None  # the llm fault: its chats, judged (chaos/llm.py)
    replicas: dict[str, Any] | None = None  # the replicas fault: its asks, judged (chaos/replicas.py)
    doze: dict[str, Any] | None = None  # the doze fault: its sleepers' wakes, judged (chaos/sleepers.py)
    inbox: dict[str, Any] | None = None  # the inbox fault: its agents served again, judged (chaos/inbox.py)
    started: float = field(default=0.0, repr=False)  # monotonic

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["started"]
        return data


class Context:
    """What a fault may look at: the mesh, its Redis, readiness checks, the probe stream,
    and the agents that are stopped right now (status must not show them alive)."""

    def __init__(self, mesh: Mesh, probes: ProbeSender, run_started: float, timeout: float,
                 paused: threading.Event | None = None, ask_rate: float = 20.0,
                 asks: AskStream | None = None) -> None:
        self.mesh = mesh
        self.asks = asks  # the run's asks straight to the agents' inboxes (chaos/asks.py)
        self.ask_rate = ask_rate  # asks per second, the gateway fault's over HTTP too
        self.probes = probes
        # set while the mesh restarts or goes quiet for the doze fault: the probes, the asks
        # and the status check pause
        self.paused = paused or threading.Event()
        self.run_started = run_started
        self.timeout = timeout  # a fault not recovered from by then is reported as such
        self.agents = probes.agents  # every agent process (a group's replicas each), as probed
        self.store = Store(mesh.redis_url, mesh.config.mesh, timeout=1.0)
        self.readiness = Readiness(mesh)
        self.frozen: dict[str, float] = {}

    def close(self) -> None:
        self.store.close()
        self.readiness.close()

    def agent_of(self, program: str) -> str | None:
        name = program.removeprefix(C.AGENT_PROGRAM_PREFIX)
        return name if program.startswith(C.AGENT_PROGRAM_PREFIX) and name in self.agents else None

    def probe_marks(self) -> dict[str, int]:
        """Per agent, the newest probe produced so far: handled later ones prove it works."""
        return {a: self.probes.last_seq(a) for a in self.agents}

    def handled_since(self, marks: dict[str, int], agents: list[str] | None = None) -> bool:
        return all(handled_after(self.store, a, self.probes, marks[a]) for a in agents or self.agents)

    def ready(self, program: str, pid: int) -> bool:
        return self.readiness(program, pid)

    def epoch(self) -> str | None:
        try:
            return self.store.kafka_epoch()
        except AgentMeshError:
            return None

    def snapshot(self) -> dict[str, Any]:
        try:
            return self.store.load_snapshot() or {}
        except AgentMeshError:
            return {}

    def dead_letters(self) -> int | None:
        try:
            counters = self.store.all_counters()
        except AgentMeshError:
            return None
        return sum(c.get(C.COUNTER_DEAD, 0) for c in counters.values())
