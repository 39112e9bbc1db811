"""The doze fault: readers that sleep (doze.py, doorbell.py), hit while they sleep.

Two rows, each on a quiet mesh: the probes and asks pause (`Context.paused`) and the demo
workloads stop as for a drain (the draining mark: `ctx.draining`), until every agent is
asleep. Who is asleep is read from the `asleep-feed` after ringing every agent once: an
entry of the `asleep` hash may be stale (an agent killed asleep leaves its entry; Redis
restarts with the entries it had), the feed says what each agent did after the ring.
An agent counts as asleep once it announced so `ASLEEP_AFTER_S` ago (its grace is over).

- an agent (`doze:<Agent>`, the first agent by default): kill -9 of the sleeping agent and,
  at once, the probes and the demo traffic resume, to every agent, the killed one included
  (its stale `asleep` entry is rung in vain). Detected when supervisord saw the exit,
  recovered when its new pid is ready and it handled a probe sent after the kill;
- `redis`: kill -9 of Valkey while the agents sleep. Detected when supervisord saw the
  exit, recovered when it answers PING and every agent's doorbell (and the probes') listens
  again. After `RESETTLE_S` (an agent that woke since it could not hear rings sleeps again
  by then) the probes resume, to agents asleep since before or since the restart.

Either way the agents that were asleep and not killed are timed (`WakeClock`): from the
first probe produced to each to the first moment its ledger holds one. Lost probes are
charged to the row by the run's probe accounting; handled twice: the agents'
`handled_twice` growth over the row. The row is judged in chaos/sleep_tally.py.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time

from agentmesh_cli import constants as C
from agentmesh_cli import doze
from agentmesh_cli.chaos.faults import Context, Fault
from agentmesh_cli.chaos.observe import ProgramStates
from agentmesh_cli.chaos.probes import ProbeSender, handled_after
from agentmesh_cli.chaos.sleep_tally import doze_note, doze_row, first_probe_after, longest_gap
from agentmesh_cli.chaos.watches import RUNNING, Watch
from agentmesh_cli.doorbell import parse_asleep
from agentmesh_cli.errors import AgentMeshError, FaultSkipped, WaitTimeout
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.store import Store, redis_errors
from agentmesh_cli.waiting import wait_until

ASLEEP_AFTER_S = doze.GRACE_S + 0.2  # announced this long ago: past its grace (and a loop turn)
# the doorbells listen again: an agent that woke deaf announces after IDLE_AFTER_S, sleeps GRACE_S later
RESETTLE_S = doze.IDLE_AFTER_S + doze.GRACE_S + 0.5
CLOCK_EVERY_S = 0.01  # how often the wake clock reads the ledgers
# ... their newest ids this many: a sleeper's ledger ends with probes from before the quiet
# and a few demo messages, and the first probe handled after it is among the newest
CLOCK_IDS = 20
CONFIRM_S = 2.0  # for the feed's subscription to be confirmed


class Sleepers:
    """The agents asleep now, from the `asleep-feed`, after ringing each once (subscribed
    first): a sleeping agent wakes and says so, then sleeps again and says so."""

    def __init__(self, store: Store, agents: list[str]) -> None:
        self.agents = agents
        self.asleep: dict[str, float] = {}  # agent -> when its announcement was read
        self._pubsub = store.redis.pubsub()
        try:
            with redis_errors("follow the asleep feed"):
                self._pubsub.subscribe(store.keys.asleep_channel)
                confirmed = self._pubsub.get_message(timeout=CONFIRM_S)
                if confirmed is None or confirmed["type"] != "subscribe":
                    raise AgentMeshError("the asleep feed's subscription was not confirmed")
                pipe = store.redis.pipeline(transaction=False)
                for agent in agents:
                    pipe.publish(store.keys.wake(agent), "")
                pipe.execute()
        except AgentMeshError:
            self.close()
            raise

    def poll(self, now: float) -> None:
        try:
            with redis_errors("read the asleep feed"):
                while (message := self._pubsub.get_message(timeout=0)) is not None:
                    if message["type"] == "message" and (parsed := parse_asleep(message["data"])):
                        reader, topics = parsed
                        if topics:
                            self.asleep[reader] = now
                        else:
                            self.asleep.pop(reader, None)
        except AgentMeshError:
            pass  # judged as not asleep until the quiet's timeout

    def not_asleep(self, now: float) -> list[str]:
        """The agents that did not say they sleep, or said so less than ASLEEP_AFTER_S ago."""
        return [a for a in self.agents if now - self.asleep.get(a, now) < ASLEEP_AFTER_S]

    def all_asleep(self, now: float) -> bool:
        return not self.not_asleep(now)

    def close(self) -> None:
        try:
            with redis_errors("stop following the asleep feed"):
                self._pubsub.close()
        except (OSError, AgentMeshError):
            pass


class WakeClock:
    """Per agent, the milliseconds from its first probe produced after `marks` (or from
    `since`, monotonic) to the first moment its ledger holds one (read every CLOCK_EVERY_S,
    in a thread)."""

    def __init__(self, mesh: Mesh, probes: ProbeSender, agents: list[str], marks: dict[str, int],
                 since: float | None = None) -> None:
        self.probes, self.marks, self.since = probes, marks, since
        self.started = time.monotonic()
        self.woke: dict[str, float] = {}
        self._pending = list(agents)
        self._store = Store(mesh.redis_url, mesh.config.mesh, timeout=1.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-wake-clock", daemon=True)
        self._thread.start()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def _run(self) -> None:
        while self._pending and not self._stop.is_set():
            for agent in list(self._pending):
                if handled_after(self._store, agent, self.probes, self.marks[agent], CLOCK_IDS):
                    self.woke[agent] = self._since_first(agent, time.monotonic())
                    self._pending.remove(agent)
            self._stop.wait(CLOCK_EVERY_S)

    def _since_first(self, agent: str, now: float) -> float:
        if self.since is not None:
            return round((now - self.since) * 1000, 1)
        seq = first_probe_after(self.probes.agents, agent, self.marks[agent])
        at = self.probes.produced_at[seq] if seq < self.probes.produced else math.nan
        return round((now - (self.started if math.isnan(at) else at)) * 1000, 1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._store.close()


class DozeWatch(Watch):
    """Steps: quieting (until every agent sleeps), then for an agent: waking (killed, probes
    resumed; until it is back and every sleeper woke); for Redis: restarting (killed; until
    it answers and every doorbell listens), resettling (RESETTLE_S), waking."""

    def __init__(self, ctx: Context, fault: Fault, phase: str, states: ProgramStates) -> None:
        if not ctx.mesh.config.kafka.idle_sleep:
            raise FaultSkipped("kafka.idle_sleep: false: no reader sleeps")
        if ctx.mesh.config.kafka.inbox_reader == "host":
            raise FaultSkipped("kafka.inbox_reader: host: the agents do not sleep, their host's inbox "
                               "reader does (the inbox fault kills it under load)")
        state, pid = states.get(fault.target, ("UNKNOWN", 0))
        if state != RUNNING or not pid:
            raise FaultSkipped(f"{fault.target} is {state}")
        super().__init__(ctx, fault, phase)
        self.victim = ctx.agent_of(fault.target)  # None: Redis
        self.resumed = False  # the draining mark is cleared again
        ctx.paused.set()
        try:
            ctx.store.set_draining(True)
            self.sleepers = Sleepers(ctx.store, ctx.agents)
        except AgentMeshError as exc:
            self._resume()
            raise FaultSkipped(f"Redis: {exc}") from exc
        self.step = "quieting"
        self.quiet_started = self.outcome.started
        self.asleep_after_s = 0.0
        self.old_pid = 0
        self.before: dict[str, dict[str, int]] = {}
        self.believed: list[str] = []
        self.marks: dict[str, int] = {}
        self.clock: WakeClock | None = None
        self.first_seq = 0  # the first probe produced after the quiet
        self.settle_until = 0.0

    # quiet and resume ---------------------------------------------------------------
    def _resume(self) -> bool:
        """The probes and the demo workloads go on; False when Redis did not take the
        draining mark's removal (tried again on a later poll, and at the end)."""
        self.ctx.paused.clear()
        try:
            self.ctx.store.set_draining(False)
            self.resumed = True
        except AgentMeshError:
            pass
        return self.resumed

    def _resumed_at_last(self) -> None:
        """The end of the row: the draining mark must not outlive it."""
        if self.resumed:
            return
        try:
            wait_until(self._resume, self.ctx.timeout, "the draining mark cleared", interval=0.2)
        except WaitTimeout:
            self.outcome.note += "; [red]the draining mark could not be cleared[/]"

    def _send(self) -> None:
        """Probes to every agent again; the sleepers' wakes timed."""
        self.marks = self.ctx.probe_marks()
        self.first_seq = self.ctx.probes.produced
        sleepers = [a for a in self.ctx.agents if a != self.victim]
        self.clock = WakeClock(self.ctx.mesh, self.ctx.probes, sleepers, self.marks)
        self._resume()

    def abort(self) -> None:
        if self.clock is not None:
            self.clock.stop()
        self.sleepers.close()
        if not self.resumed:
            self._resume()  # once: the run is ending

    # the steps -------------------------------------------------------------------
    def poll(self, now: float, states: ProgramStates) -> bool:
        if not self.resumed and self.step == "waking":
            self._resume()  # Redis did not take it last time
        if self.step == "quieting":
            return self._quieting(now, states)
        if self.step == "restarting":
            return self._restarting(now, states)
        if self.step == "resettling":
            if now >= self.settle_until:
                self.believed = self._believed()
                self._send()
                self.step = "waking"
            return False
        return self._waking(now, states)

    def _quieting(self, now: float, states: ProgramStates) -> bool:
        self.sleepers.poll(now)
        if not self.sleepers.all_asleep(now):
            if now - self.quiet_started <= self.ctx.timeout:
                return False
            awake = ", ".join(self.sleepers.not_asleep(now))
            self.outcome.note = (f"not run: the agents were not all asleep within {self.ctx.timeout:.0f} s "
                                 f"(not asleep: {awake})")
            return self._give_up()
        state, pid = states.get(self.fault.target, ("UNKNOWN", 0))
        if state != RUNNING or not pid:
            self.outcome.note = f"not run: {self.fault.target} is {state}"
            return self._give_up()
        self.sleepers.close()
        self.asleep_after_s = round(now - self.quiet_started, 2)
        try:
            self.before = self.ctx.store.all_counters()
        except AgentMeshError:
            self.before = {}
        self.old_pid = pid
        with contextlib.suppress(ProcessLookupError):  # died meanwhile: supervisord restarts it all the same
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        self.outcome.started, self.outcome.at_s = killed, round(killed - self.ctx.run_started, 2)
        if self.victim is not None:
            self._send()
            self.step = "waking"
        else:
            self.step = "restarting"
        return False

    def _give_up(self) -> bool:
        self.sleepers.close()
        self._resume()
        self._resumed_at_last()
        return True

    def _exited(self, now: float, states: ProgramStates) -> tuple[str, int]:
        state, pid = states.get(self.fault.target, ("UNKNOWN", 0))
        if self.outcome.detect_s is None and (pid != self.old_pid or state != RUNNING):
            self.outcome.detect_s, self.outcome.detected_by = self.elapsed(now), "supervisord saw the exit"
        return state, pid

    def _restarting(self, now: float, states: ProgramStates) -> bool:
        self._exited(now, states)
        if self.outcome.detect_s is not None and self._listening():
            self.outcome.recover_s = self.elapsed(now)
            self.outcome.recovered_by = "PING answers, every agent's doorbell and the probes' listen again"
            try:
                self.ctx.store.set_draining(True)  # kept quiet, should the restart have lost the mark
            except AgentMeshError:
                pass
            self.step, self.settle_until = "resettling", now + RESETTLE_S
            return False
        if self.timed_out(now, self.outcome.started):
            self._send()  # the load goes on; the sleepers' wakes are not timed
            return self._finish()
        return False

    def _listening(self) -> bool:
        """Redis answers, every agent's doorbell is subscribed again, and the probes' hears."""
        if not self.ctx.store.ping() or not self.ctx.probes.hears_sleepers:
            return False
        channels = [self.ctx.store.keys.wake(a) for a in self.ctx.agents]
        try:
            with redis_errors("count the doorbells"):
                counts = self.ctx.store.redis.pubsub_numsub(*channels)
        except AgentMeshError:
            return False
        return all(int(n) > 0 for _channel, n in counts)

    def _believed(self) -> list[str]:
        """The agents the `asleep` hash lists (what a sender that starts now believes)."""
        try:
            with redis_errors("read the asleep hash"):
                listed = self.ctx.store.redis.hkeys(self.ctx.store.keys.asleep)
        except AgentMeshError:
            return []
        return sorted({str(name) for name in listed} & set(self.ctx.agents))

    def _waking(self, now: float, states: ProgramStates) -> bool:
        out = self.outcome
        if self.victim is not None and out.recover_s is None:
            state, pid = self._exited(now, states)
            restarted = state == RUNNING and pid not in (0, self.old_pid)
            if (restarted and out.detect_s is not None and self.ctx.ready(self.fault.target, pid)
                    and self.ctx.handled_since(self.marks, [self.victim])):
                out.recover_s = self.elapsed(now)
                out.recovered_by = "new pid ready, probes sent after the kill handled"
        back = self.victim is None or out.recover_s is not None
        if (back and self.clock is not None and self.clock.done) or self.timed_out(now, out.started):
            return self._finish()
        return False

    def _finish(self) -> bool:
        if self.clock is not None:
            self.clock.stop()
        woke = dict(self.clock.woke) if self.clock is not None else {}
        sleepers = [a for a in self.ctx.agents if a != self.victim]
        try:
            after = self.ctx.store.all_counters()
            twice: int | None = sum(after.get(a, {}).get(C.COUNTER_HANDLED_TWICE, 0)
                                    - self.before.get(a, {}).get(C.COUNTER_HANDLED_TWICE, 0)
                                    for a in self.ctx.agents) if self.before else None
        except AgentMeshError:
            twice = None
        probes = self.ctx.probes
        row = doze_row(self.victim, self.asleep_after_s, sleepers, woke, twice,
                       back=self.victim is None or self.outcome.recover_s is not None,
                       believed=self._believed() if self.victim is not None else self.believed,
                       gap=longest_gap(probes.produced_at, self.first_seq, probes.produced))
        self.outcome.doze = row
        self.outcome.note = "; ".join(n for n in (self.outcome.note, doze_note(row)) if n)
        self._resumed_at_last()
        return True
