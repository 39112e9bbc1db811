"""Injecting one fault, then watching for the moment the mesh detected it and the moment it
works again. Every watch is polled from the run's loop (several at once in the random
phase) with one reading of supervisord per tick.

Recovered means the program runs again under a new pid AND does its job:
- an agent: its ready record carries the new pid and it handled a probe sent after the kill;
- a manager: its ready record carries the new pid;
- the host's inbox reader: its ready record carries the new pid and every agent handled a
  probe sent after the kill (each reads through it);
- memory, cognition: GET /health answers 200; metrics: GET /metrics answers 200;
- Redis: it answers PING and every agent handled a probe sent after the kill;
- the broker: it answers a metadata request and every agent handled a probe sent after the
  kill (round trips through the new broker).

A restart (`down` with its drain, then `up`) is detected when `down` has returned and
recovered when `up` has, and every agent handled a probe sent after it. The gateway fault
(a kill under asks over HTTP) is watched in chaos/gateway.py, the llm fault (kills of the
llm agent mid-answer) in chaos/llm.py, the replicas fault (kills of a group's replicas, the
group scaled down and up) in chaos/replicas.py, the doze fault (an agent and Redis killed
while the agents sleep) in chaos/sleepers.py, the inbox fault (the host's inbox reader killed
under load, every agent timed) in chaos/inbox.py.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Protocol

from agentmesh_cli import constants as C
from agentmesh_cli import events, lifecycle
from agentmesh_cli.bus import Bus
from agentmesh_cli.chaos.faults import (
    DOZE,
    GARBAGE,
    GATEWAY,
    INBOX,
    KILL,
    LLM,
    REPLICAS,
    RESTART,
    RESTART_DRAIN_S,
    STALL,
    Context,
    Fault,
    Outcome,
)
from agentmesh_cli.chaos.observe import ProgramStates
from agentmesh_cli.chaos.probes import quiet
from agentmesh_cli.errors import AgentMeshError, FaultSkipped, WaitTimeout
from agentmesh_cli.signing import mesh_signer
from agentmesh_cli.waiting import wait_until

RUNNING = "RUNNING"
GARBAGE_FLUSH_S = 10.0
STRANGER = "chaos-stranger"  # a sender that never joined: its messages are dead letters


class Watch:
    def __init__(self, ctx: Context, fault: Fault, phase: str) -> None:
        self.ctx = ctx
        self.fault = fault
        now = time.monotonic()
        self.outcome = Outcome(fault.label, fault.kind, fault.target, phase,
                               round(now - ctx.run_started, 2), started=now)

    def elapsed(self, now: float) -> float:
        return round(now - self.outcome.started, 2)

    def poll(self, now: float, states: ProgramStates) -> bool:
        """Look once; True when the watch is over (recovered, or given up)."""
        raise NotImplementedError

    def timed_out(self, now: float, since: float) -> bool:
        if now - since <= self.ctx.timeout:
            return False
        self.outcome.note = self.outcome.note or f"not recovered within {self.ctx.timeout:.0f} s"
        return True

    def abort(self) -> None:
        """Undo what must not outlive the run (a stopped agent)."""


class AskStream(Protocol):
    """What `warm_up` needs of a stream of asks over HTTP (http_asks.HttpAskStream)."""

    @property
    def answered(self) -> int: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


WARM_UP_S = 30.0  # the asks of a fault over HTTP: the first answers before the fault, within this


def warm_up(stream: AskStream, count: int, what: str) -> str | None:
    """Start a fault's asks and wait for their first `count` answers before the fault: None
    when they came; else why not, and the asks are stopped (what they sent is judged as it
    is; the caller injects nothing)."""
    stream.start()
    try:
        wait_until(lambda: stream.answered >= count, WARM_UP_S, what, interval=0.05)
    except WaitTimeout as exc:
        stream.stop()
        return f"not killed: {exc}"
    return None


class KillWatch(Watch):
    def __init__(self, ctx: Context, fault: Fault, phase: str, states: ProgramStates) -> None:
        state, pid = states.get(fault.target, ("UNKNOWN", 0))
        if state != RUNNING or not pid:
            raise FaultSkipped(f"{fault.target} is {state}")
        self.old_pid = pid
        self.marks = ctx.probe_marks()
        self.epoch = ctx.epoch() if fault.target == C.PROGRAM_KAFKA else None
        os.kill(pid, signal.SIGKILL)
        super().__init__(ctx, fault, phase)
        self.agent = ctx.agent_of(fault.target)

    def poll(self, now: float, states: ProgramStates) -> bool:
        out, target = self.outcome, self.fault.target
        state, pid = states.get(target, ("UNKNOWN", 0))
        if out.detect_s is None:
            if target == C.PROGRAM_KAFKA:
                if (epoch := self.ctx.epoch()) is not None and epoch != self.epoch:
                    out.detect_s, out.detected_by = self.elapsed(now), "new broker epoch (topics re-created)"
            elif pid != self.old_pid or state != RUNNING:
                out.detect_s, out.detected_by = self.elapsed(now), "supervisord saw the exit"
        restarted = state == RUNNING and pid not in (0, self.old_pid)
        if restarted and (out.detect_s is not None) and self.ctx.ready(target, pid) and self._works():
            out.recover_s, out.recovered_by = self.elapsed(now), self._recovered_by()
            return True
        return self.timed_out(now, out.started)

    def _works(self) -> bool:
        if self.agent is not None:
            return self.ctx.handled_since(self.marks, [self.agent])
        if self.fault.target in (C.PROGRAM_KAFKA, C.PROGRAM_REDIS, C.PROGRAM_INBOX):
            return self.ctx.handled_since(self.marks)
        return True

    def _recovered_by(self) -> str:
        target = self.fault.target
        if self.agent is not None:
            return "new pid ready, probes sent after the kill handled"
        if target == C.PROGRAM_KAFKA:
            return "metadata answers, every agent handled a probe sent after the kill"
        if target == C.PROGRAM_REDIS:
            return "PING answers, every agent handled a probe sent after the kill"
        if target == C.PROGRAM_INBOX:
            return "ready record carries the new pid, every agent handled a probe sent after the kill"
        if target in C.SERVICE_PROGRAMS:
            return "GET /health answers 200"
        if target == C.PROGRAM_METRICS:
            return "GET /metrics answers 200"
        return "ready record carries the new pid"


class StallWatch(Watch):
    """SIGSTOP an agent; detected when the topology snapshot removed it (reason timeout);
    then SIGCONT; recovered when the snapshot holds it again and it handles new probes."""

    def __init__(self, ctx: Context, fault: Fault, phase: str, states: ProgramStates) -> None:
        program = C.agent_program(fault.target)
        state, pid = states.get(program, ("UNKNOWN", 0))
        if state != RUNNING or not pid:
            raise FaultSkipped(f"{program} is {state}")
        self.pid = pid
        os.kill(pid, signal.SIGSTOP)
        super().__init__(ctx, fault, phase)
        ctx.frozen[fault.target] = self.outcome.started
        self.resumed: float | None = None
        self.marks: dict[str, int] = {}

    def _resume(self, now: float) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.ctx.frozen.pop(self.fault.target, None)
        self.resumed = now
        self.marks = self.ctx.probe_marks()

    def abort(self) -> None:
        if self.resumed is None:
            try:
                self._resume(time.monotonic())
            except ProcessLookupError:
                pass

    def poll(self, now: float, states: ProgramStates) -> bool:
        out, agent = self.outcome, self.fault.target
        snapshot = self.ctx.snapshot()
        present = agent in snapshot.get("graph", {}).get("agents", [])
        if self.resumed is None:
            reason = snapshot.get("departed", {}).get(agent, {}).get("reason")
            if not present and reason == "timeout":
                out.detect_s, out.detected_by = self.elapsed(now), "topology removed it (heartbeat timeout)"
                self._resume(now)
            elif now - out.started > self.ctx.timeout:
                out.note = f"not removed within {self.ctx.timeout:.0f} s"
                self._resume(now)
            return False
        if present and self.ctx.handled_since(self.marks, [agent]):
            out.recover_s = round(now - self.resumed, 2)
            out.recovered_by = "back in the topology after SIGCONT, new probes handled"
            return True
        return self.timed_out(now, self.resumed)


class GarbageWatch(Watch):
    """Write records that are not envelopes (empty, not JSON, not an object, missing
    fields, over kafka.max_record_bytes) to every partition of every topic, and messages from
    a sender that never joined to every agent. Detected when the dead-letter counters grew
    by what the readers must dead-letter; recovered when every agent handles new probes
    and no program crashed."""

    def __init__(self, ctx: Context, fault: Fault, phase: str, states: ProgramStates) -> None:
        before = ctx.dead_letters()
        if before is None:
            raise FaultSkipped("Redis does not answer: dead letters cannot be counted")
        self.dead_before = before
        self.pids = {name: pid for name, (state, pid) in states.items() if state == RUNNING}
        self.marks = ctx.probe_marks()
        super().__init__(ctx, fault, phase)
        self.written, self.expected = self._write()

    def _write(self) -> tuple[int, int]:
        kafka = self.ctx.mesh.config.kafka
        bodies = [b"", b"\xff\xfe not json", b"[1, 2, 3]", b'{"v": 1, "id": "x"}',
                  b"{" + b"x" * kafka.max_record_bytes]
        # signed when the mesh signs: garbage that verifies reaches the readers' parsers
        # (unsigned, the signature check alone would stop it)
        bus = Bus(quiet(kafka), client_id="agentmesh-chaos-garbage", signer=mesh_signer(self.ctx.mesh))
        written = expected = 0
        for topic in C.ALL_TOPICS:
            if topic == C.TOPIC_MESSAGES:
                continue
            for body in bodies:
                bus.produce_raw(topic, body)
                written += 1
            # the topology and consensus managers dead-letter what they cannot read
            expected += len(bodies) if topic in (C.TOPIC_TOPOLOGY, C.TOPIC_PROPOSALS, C.TOPIC_VOTES) else 0
        for agent in self.ctx.agents:
            partition = C.inbox_partition(agent, kafka.partitions)
            stranger = events.message(STRANGER, agent, "chaos_garbage", {})
            for body in [*bodies, stranger.encode()]:
                bus.produce_raw(C.TOPIC_MESSAGES, body, key=agent, partition=partition)
                written += 1
                expected += 1
        bus.flush(GARBAGE_FLUSH_S)
        refused = bus.delivery_failures
        if refused:
            self.outcome.note = f"the broker refused {refused} of {written} records"
        return written - refused, max(0, expected - refused)

    def poll(self, now: float, states: ProgramStates) -> bool:
        out = self.outcome
        if out.detect_s is None:
            total = self.ctx.dead_letters()
            if total is not None and total - self.dead_before >= self.expected:
                out.detect_s = self.elapsed(now)
                out.detected_by = f"{self.expected} dead letters counted"
        crashed = sorted(n for n, pid in self.pids.items() if states.get(n, ("", 0))[1] != pid)
        if crashed:
            out.note = f"{self.written} records; crashed: {', '.join(crashed)}"
        else:
            out.note = out.note or f"{self.written} records, no program crashed"
        running = all(states.get(n, ("", 0))[0] == RUNNING for n in self.pids)
        if out.detect_s is not None and running and self.ctx.handled_since(self.marks):
            out.recover_s, out.recovered_by = self.elapsed(now), "every agent handled new probes"
            return True
        return self.timed_out(now, out.started)


class RestartWatch(Watch):
    """`down` (drain, stop, save what is unread) then `up` (replay it), in a thread; the
    probes, asks and status check pause meanwhile (`ctx.paused`), as operator input does."""

    UP_TIMEOUT_S = 180.0

    def __init__(self, ctx: Context, fault: Fault, phase: str, states: ProgramStates) -> None:
        super().__init__(ctx, fault, phase)
        self.lines: list[str] = []
        self.down_s: float | None = None
        self.up_s: float | None = None
        self.error = ""
        self.marks: dict[str, int] = {}
        ctx.paused.set()
        self._thread = threading.Thread(target=self._restart, name="chaos-restart", daemon=True)
        self._thread.start()

    def _restart(self) -> None:
        started = time.monotonic()
        try:
            lifecycle.down(self.ctx.mesh, 30.0, lambda _tier, _members: None,
                           drain_timeout=RESTART_DRAIN_S, say=self.lines.append)
            self.down_s = round(time.monotonic() - started, 2)
            lifecycle.up(self.ctx.mesh, self.UP_TIMEOUT_S, lambda _states: None, say=self.lines.append)
            self.up_s = round(time.monotonic() - started, 2)
        except AgentMeshError as exc:
            self.error = str(exc)
        finally:
            self.marks = self.ctx.probe_marks()
            self.ctx.paused.clear()

    @property
    def busy(self) -> bool:
        """supervisord may be away: the run must not read it meanwhile."""
        return self._thread.is_alive()

    def poll(self, now: float, states: ProgramStates) -> bool:
        out = self.outcome
        if out.detect_s is None and self.down_s is not None:
            out.detect_s, out.detected_by = self.down_s, "down returned (drained, stopped)"
        if self.busy:
            return self.timed_out(now, out.started)
        kept = [line for line in self.lines
                if line.startswith(("drained", "drain timeout", "saved", "replayed", "nothing"))]
        out.note = self.error or "; ".join(kept)
        if self.error:
            return True
        if self.ctx.handled_since(self.marks):
            out.recover_s, out.recovered_by = self.elapsed(now), "up returned, every agent handled new probes"
            return True
        return self.timed_out(now, out.started)

    def abort(self) -> None:
        self._thread.join(self.UP_TIMEOUT_S)


def inject(ctx: Context, fault: Fault, phase: str, states: ProgramStates) -> Watch:
    # chaos/gateway.py, llm.py, replicas.py, sleepers.py and inbox.py build on Watch, so they are
    # imported here
    from agentmesh_cli.chaos.gateway import GatewayWatch
    from agentmesh_cli.chaos.inbox import InboxWatch
    from agentmesh_cli.chaos.llm import LlmWatch
    from agentmesh_cli.chaos.replicas import ReplicasWatch
    from agentmesh_cli.chaos.sleepers import DozeWatch

    kinds: dict[str, Callable[[Context, Fault, str, ProgramStates], Watch]] = {
        KILL: KillWatch, STALL: StallWatch, GARBAGE: GarbageWatch, RESTART: RestartWatch,
        GATEWAY: GatewayWatch, LLM: LlmWatch, REPLICAS: ReplicasWatch, DOZE: DozeWatch,
        INBOX: InboxWatch}
    return kinds[fault.kind](ctx, fault, phase, states)
