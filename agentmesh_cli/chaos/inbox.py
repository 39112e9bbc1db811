"""The inbox fault: kill -9 of the host's inbox reader (program `inbox-reader`, with
`kafka.inbox_reader: host`) under the run's probes and asks. Every agent of the host reads
its inbox and the consensus topic through it (inbox_host.py), so while it is away no agent
is handed anything; each one connects again every 0.2 s and subscribes at the next offset
it wants (inbox_client.py).

Detected when supervisord saw the exit. Recovered when the new inbox reader's ready record
carries its pid (supervisord may still call it STARTING: it says RUNNING `startsecs` later)
and every agent handled a probe produced after the kill (`WakeClock`, from the kill: how
long each agent went unserved). The row then waits (up to the fault's
timeout, the recovery time unchanged) for its evidence:

- every ask produced from `CHARGE_AHEAD_S` before the kill until every agent was served
  again (the asks in flight when it died, and those sent while it was away) answered, none
  twice;
- the new reader's `subscriptions` counter (written every 2 s) grew by at least the agents
  supervisord runs here: each connected again and said where it was;
- supervisord's log: the inbox reader spawned once (the kill's restart; more is a crash
  after it), no agent spawned again (none went down with its reader).

Lost probes are charged to the row by the run's probe accounting (figures.py); handled
twice: the agents' `handled_twice` growth over the row, beside the redeliveries their
offsets and ledger skipped (`duplicates`). Judged in chaos/inbox_tally.py.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

from agentmesh_cli import constants as C
from agentmesh_cli.chaos.faults import Context, Fault
from agentmesh_cli.chaos.figures import CHARGE_AHEAD_S
from agentmesh_cli.chaos.inbox_tally import asks_in, inbox_note, inbox_row, restarts_between
from agentmesh_cli.chaos.observe import HAS_PROCESS, ProgramStates
from agentmesh_cli.chaos.sleepers import WakeClock
from agentmesh_cli.chaos.watches import RUNNING, Watch
from agentmesh_cli.errors import AgentMeshError, FaultSkipped
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.supervisor.control import Supervisor
from agentmesh_cli.supervisor.restarts import SpawnLog

SUBSCRIPTIONS = "subscriptions"  # the inbox reader's counter: one per subscribe frame it took


def spawn_counts(mesh: Mesh) -> Counter[str] | None:
    """supervisord's spawns of each program since it started (None: its log is not there)."""
    spawns = SpawnLog()
    try:
        with Supervisor(mesh) as sup:
            spawns.update(sup.read_main_log)
    except (AgentMeshError, OSError):
        return None
    return spawns.spawns


class InboxWatch(Watch):
    def __init__(self, ctx: Context, fault: Fault, phase: str, states: ProgramStates) -> None:
        if ctx.mesh.config.kafka.inbox_reader != "host":
            raise FaultSkipped("kafka.inbox_reader: agent: each agent reads its own inbox")
        state, pid = states.get(fault.target, ("UNKNOWN", 0))
        if state != RUNNING or not pid:
            raise FaultSkipped(f"{fault.target} is {state}")
        try:
            self.before = ctx.store.all_counters()
        except AgentMeshError as exc:
            raise FaultSkipped(f"Redis: {exc}") from exc
        # the agents that read through this host's reader: those its supervisord runs
        self.local = [a for a in ctx.agents if C.agent_program(a) in states]
        self.spawns = spawn_counts(ctx.mesh)
        self.old_pid = pid
        marks = ctx.probe_marks()
        os.kill(pid, signal.SIGKILL)
        super().__init__(ctx, fault, phase)
        self.clock = WakeClock(ctx.mesh, ctx.probes, ctx.agents, marks, since=self.outcome.started)
        self.back_s: float | None = None
        self.served_at: float | None = None

    def poll(self, now: float, states: ProgramStates) -> bool:
        out, target = self.outcome, self.fault.target
        state, pid = states.get(target, ("UNKNOWN", 0))
        if out.detect_s is None and (pid != self.old_pid or state != RUNNING):
            out.detect_s, out.detected_by = self.elapsed(now), "supervisord saw the exit"
        # its ready record is the signal: supervisord calls it RUNNING only startsecs (3 s) later
        if (self.back_s is None and out.detect_s is not None and state in HAS_PROCESS
                and pid not in (0, self.old_pid) and self.ctx.ready(target, pid)):
            self.back_s = self.elapsed(now)
        if self.served_at is None and self.back_s is not None and self.clock.done:
            self.served_at = now
            out.recover_s = self.elapsed(now)
            out.recovered_by = "new pid ready, every agent handled a probe sent after the kill"
        if self.served_at is not None and self._evidence()[0]:
            return self._finish()
        if now - out.started > self.ctx.timeout:
            if out.recover_s is None:
                out.note = f"not recovered within {self.ctx.timeout:.0f} s"
            return self._finish()
        return False

    def _asks(self) -> dict[str, int]:
        since = self.outcome.started - CHARGE_AHEAD_S
        until = self.served_at if self.served_at is not None else self.outcome.started + self.ctx.timeout
        if self.ctx.asks is None:
            return asks_in({}, {}, since, until)
        return self.ctx.asks.window(since, until)

    def _subscribed(self) -> int | None:
        try:
            after = self.ctx.store.all_counters()
        except AgentMeshError:
            return None
        return (after.get(C.PROGRAM_INBOX, {}).get(SUBSCRIPTIONS, 0)
                - self.before.get(C.PROGRAM_INBOX, {}).get(SUBSCRIPTIONS, 0))

    def _evidence(self) -> tuple[bool, dict[str, int], int | None]:
        """(complete?, the asks around the outage, the new reader's subscriptions)."""
        asks, subscribed = self._asks(), self._subscribed()
        complete = (asks["answered"] >= asks["sent"]
                    and subscribed is not None and subscribed >= len(self.local))
        return complete, asks, subscribed

    def _finish(self) -> bool:
        self.clock.stop()
        _complete, asks, subscribed = self._evidence()
        try:
            after = self.ctx.store.all_counters()
            grew = {name: sum(after.get(a, {}).get(name, 0) - self.before.get(a, {}).get(name, 0)
                              for a in self.ctx.agents)
                    for name in (C.COUNTER_HANDLED_TWICE, C.COUNTER_DUPLICATES)}
            twice: int | None = grew[C.COUNTER_HANDLED_TWICE]
            duplicates: int | None = grew[C.COUNTER_DUPLICATES]
        except AgentMeshError:
            twice = duplicates = None
        restarts, again = restarts_between(self.spawns, spawn_counts(self.ctx.mesh), self.fault.target,
                                           self.local)
        row = inbox_row(self.ctx.agents, dict(self.clock.woke), self.back_s, subscribed, len(self.local),
                        asks, twice, duplicates, restarts, again)
        self.outcome.inbox = row
        self.outcome.note = "; ".join(n for n in (self.outcome.note, inbox_note(row)) if n)
        return True

    def abort(self) -> None:
        self.clock.stop()
