"""The replicas fault: kill -9 of a replica group's replicas mid-work, and the group scaled
down by one and back up under fire, while asks go to the group's logical name over HTTP.

The embedded mesh runs its Support as a group for this fault (`replicas: 3`, concurrency
4). Demo Support handles a ticket asked through the front door by awaiting Cognition's
context, asking Sales for the customer's recent orders (a public ask: it shows in the
conversation's log), keeping the ticket in Memory and answering. The asks go through the
gateway over HTTP to `Support` (chaos/http_asks.py: each with its own `Idempotency-Key`,
retried with it), in conversations of `ASKS_PER_CONVERSATION` asks, `CONVERSATIONS` of them
open at a time: the group's router places each new conversation, the sticky table keeps it
on its replica.

Once `WARM_UP_ASKS` are answered, a running replica is killed every `KILL_EVERY_S` (`KILLS`
in all; one with an ask of its conversations in flight when one comes within `MID_WORK_S`),
and supervisord restarts it. After the `SCALE_DOWN_AFTER`-th kill, once an ask of the leaving
replica's conversations is in flight (within `MID_WORK_S`), the group is scaled down by one
(scaling.scale in a thread, drain timeout `SCALE_DRAIN_S`) and the leaving replica killed
as soon as it is marked retiring, and again each time supervisord restarts it, until it is
stopped: what its conversations sent it is left unread and handed over to the group;
after the `SCALE_UP_AFTER`-th kill and the scale-down, back up. Probes to the leaving replica
are held meanwhile (chaos/probes.py), so that its inbox holds only the group's asks.

A kill is detected when supervisord saw the exit, recovered when the new pid's ready record
carries it and it handled a message after the kill. Then the asks go on `AFTER_S`, every ask
is let finish, and the row is judged (chaos/replica_tally.py).
"""

from __future__ import annotations

import os
import random
import signal
import time
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.chaos import chats
from agentmesh_cli.chaos.faults import REPLICAS, Context, Fault
from agentmesh_cli.chaos.gateway import LIVE, counter_delta, wind_down
from agentmesh_cli.chaos.http_asks import HttpAskStream, Request
from agentmesh_cli.chaos.observe import ProgramStates
from agentmesh_cli.chaos.probes import HANDLED_FROM as PROBES_HANDLED
from agentmesh_cli.chaos.probes import WHOLE_LEDGER
from agentmesh_cli.chaos.replica_tally import (
    Answer,
    ReplicaKill,
    choose_victim,
    conversation_of,
    in_flight_by_replica,
    judge_replicas,
    moved,
    replicas_note,
    tally_conversation,
    waited_for_return,
)
from agentmesh_cli.chaos.scale_step import ScaleStep
from agentmesh_cli.chaos.watches import RUNNING, Watch, warm_up
from agentmesh_cli.convlog import ConversationLog
from agentmesh_cli.errors import AgentMeshError, FaultSkipped, WaitTimeout
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.replicas import Groups
from agentmesh_cli.services.probe import gateway_url, tls_verify
from agentmesh_cli.waiting import wait_until

GROUP = "Support"
REPLICAS_RUN = 3
CONCURRENCY = 4
ASKED = ("Sales", "recent_orders")  # whom a ticket's handler asks, and what
HANDLED_FROM = C.COUNTER_HANDLED_FROM_PREFIX + C.GATEWAY_SENDER
RATE = 10.0  # asks per second (each ticket awaits Cognition, Sales and Memory)
CONVERSATIONS = 8  # open at a time
ASKS_PER_CONVERSATION = 8  # a conversation lives about 6 s
KILLS = 6
KILL_EVERY_S = 3.0
MID_WORK_S = 2.0  # how long a kill may wait for a replica with an ask in flight
SCALE_DOWN_AFTER = 2  # kills
SCALE_UP_AFTER = 4
SCALE_DRAIN_S = 1.0  # the scale-down's drain timeout: its leaving replica is kept down anyway
WARM_UP_ASKS = 5
ASK_TIMEOUT_S = 5.0  # each attempt's (the gateway answers 504 after it)
AFTER_S = 3.0  # asks go on this long after the last recovery
EXAMPLES_KEPT = 5


def group_agent() -> dict[str, Any]:
    """The embedded mesh's Support, as a replica group."""
    return {"name": GROUP, "role": "support", "replicas": REPLICAS_RUN, "concurrency": CONCURRENCY}


def wants_replicas(spec: str) -> bool:
    """Does `--faults` name the replicas fault (the embedded mesh then runs Support as a group)?"""
    return bool({w.strip() for w in spec.split(",")} & {"all", REPLICAS})


def replica_group(mesh: Mesh) -> str | None:
    """The group the replicas fault works on: the embedded mesh's Support, when a group."""
    return GROUP if GROUP in mesh.config.groups() else None


class ReplicasWatch(Watch):
    """Asks to the group over HTTP; its replicas killed under them, the group scaled down and
    up; then the asks judged (steps: firing, after, finishing, settling)."""

    def __init__(self, ctx: Context, fault: Fault, phase: str, states: ProgramStates) -> None:
        gateway, _ = states.get(C.PROGRAM_GATEWAY, ("UNKNOWN", 0))
        if gateway != RUNNING:
            raise FaultSkipped(f"the asks go through the gateway, which is {gateway}")
        self.group = fault.target
        self.spec = ctx.mesh.config.groups()[self.group]
        self.replicas = self.spec.replica_names(REPLICAS_RUN)
        down = [r for r in self.replicas if states.get(C.agent_program(r), ("", 0))[0] != RUNNING]
        if down:
            raise FaultSkipped(f"{', '.join(down)} not running")
        before = self._counters(ctx)
        if before is None:
            raise FaultSkipped("Redis does not answer: the replicas' counters cannot be read")
        self.before, self.groups, self.rng = before, Groups(ctx.store), random.Random()
        self.count, self.leaving = REPLICAS_RUN, ""  # the leaving replica, once scaling down
        self.kills: list[ReplicaKill] = []
        self.probes_left = 0  # probes the leaving replica had not handled when it was scaled away
        self.retire_kills: list[ReplicaKill] = []  # of the leaving replica, each new pid as it retires
        self.scale_due: float | None = None  # when it could first scale down
        self.down_step: ScaleStep | None = None
        self.up_step: ScaleStep | None = None
        tag = f"chaos-rep-{os.getpid()}-{time.time_ns()}-"
        self.stream = HttpAskStream(
            gateway_url(ctx.mesh), ctx.mesh.credentials.service_token, self._request,
            rate=RATE, key_prefix=tag, ask_timeout=ASK_TIMEOUT_S, deadline_s=ctx.timeout,
            verify=tls_verify(ctx.mesh),
            conversation=lambda seq: conversation_of(seq, tag, CONVERSATIONS, ASKS_PER_CONVERSATION))
        self.step, self.until, self.next_kill = "firing", 0.0, 0.0
        problem = warm_up(self.stream, WARM_UP_ASKS, f"{WARM_UP_ASKS} asks answered by {self.group}")
        if problem is not None:  # not killed: the asks are judged (and fail) as they are
            super().__init__(ctx, fault, phase)
            self.outcome.note, self.step = problem, "finishing"
            return
        super().__init__(ctx, fault, phase)
        self.next_kill = self.outcome.started

    def _request(self, seq: int) -> Request:
        conversation = conversation_of(seq, "", CONVERSATIONS, ASKS_PER_CONVERSATION)
        return self.group, "ticket", {  # a customer per conversation: a short history for Cognition
            "text": f"chaos ticket {seq}: does the cable come in other sizes?", "kind": "question",
            "product": "cable", "customer": f"chaos-customer-{conversation}"}

    def _answers(self) -> list[Answer]:
        """What became of every ask so far, in order."""
        assert self.stream.conversation is not None
        return [Answer(self.stream.conversation(a.seq), None if a.reply is None else str(a.reply.get("from")),
                       a.done, a.started, a.answered_at) for a in list(self.stream.asks)]

    def _counters(self, ctx: Context) -> dict[str, dict[str, int]] | None:
        try:
            return {a: ctx.store.counters(a) for a in [*self.spec.replica_names(REPLICAS_RUN), ASKED[0]]}
        except AgentMeshError:
            return None

    # kills ------------------------------------------------------------------------------
    def poll(self, now: float, states: ProgramStates) -> bool:
        if self.step != "firing":
            return wind_down(self, now)
        for kill in self.kills:
            if not kill.settled:
                self._watch_restart(kill, now, states)
        self._scale(now, states)
        if len(self.kills) < KILLS and now >= self.next_kill:
            self._kill_one(now, states)
        self._summarise_kills()
        done = (len(self.kills) >= KILLS and all(k.settled for k in self.kills)
                and self.up_step is not None and self.up_step.done)
        if done or now - self.outcome.started > 4 * self.ctx.timeout:
            self.step, self.until = "after", now + AFTER_S
        return False

    def _kill(self, replica: str, pid: int, in_flight: int) -> ReplicaKill | None:
        """SIGKILL on the pid supervisord reported; None when it had exited meanwhile."""
        counters = self._counters(self.ctx) or {}
        kill = ReplicaKill(replica, pid, time.monotonic(), in_flight,
                           counters.get(replica, {}).get(C.COUNTER_IN, 0))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        return kill

    def _kill_one(self, now: float, states: ProgramStates) -> None:
        """Kill a running replica (not the one to leave before it is scaled back, nor one not
        yet back from its last kill), one with an ask of its conversations in flight when one
        comes within MID_WORK_S."""
        busy = {k.replica for k in self.kills if not k.settled}
        if self.down_step is None:  # the one to leave keeps its conversations until it retires
            busy.add(self.spec.replica_names(self.count)[-1])
        elif self.up_step is None or not self.up_step.done:
            busy.add(self.leaving)  # scaled away, or on its way back
        running = [r for r in self.spec.replica_names(self.count)
                   if r not in busy and states.get(C.agent_program(r), ("", 0))[0] == RUNNING]
        in_flight = in_flight_by_replica(self._answers())
        victim = choose_victim(running, in_flight, self.rng, patient=now < self.next_kill + MID_WORK_S)
        kill = None if victim is None else self._kill(victim, states[C.agent_program(victim)][1],
                                                       in_flight[victim])
        if kill is not None:
            self.kills.append(kill)
            self.next_kill = now + KILL_EVERY_S

    def _watch_restart(self, kill: ReplicaKill, now: float, states: ProgramStates) -> None:
        program = C.agent_program(kill.replica)
        state, pid = states.get(program, ("UNKNOWN", 0))
        if kill.detect_s is None and (pid != kill.pid or state != RUNNING):
            kill.detect_s = round(now - kill.at, 2)
        if (kill.detect_s is not None and state in LIVE and pid not in (0, kill.pid)
                and self.ctx.ready(program, pid) and self._worked(kill)):
            kill.recover_s = round(now - kill.at, 2)
        elif now - kill.at > self.ctx.timeout:
            kill.given_up = True

    def _worked(self, kill: ReplicaKill) -> bool:
        try:
            return self.ctx.store.counters(kill.replica).get(C.COUNTER_IN, 0) > kill.messages_in
        except AgentMeshError:
            return False

    def _summarise_kills(self) -> None:
        """The row shows the slowest kill (each since its own kill); the note has them all."""
        out = self.outcome
        detects = [k.detect_s for k in self.kills if k.detect_s is not None]
        recovers = [k.recover_s for k in self.kills if k.recover_s is not None]
        if detects and len(detects) == len(self.kills):
            out.detect_s, out.detected_by = max(detects), "supervisord saw the exit"
        if recovers and len(recovers) == len(self.kills):
            out.recover_s, out.recovered_by = max(recovers), "new pid ready, it handled messages again"

    # scaling ----------------------------------------------------------------------------
    def _scale(self, now: float, states: ProgramStates) -> None:
        if self.down_step is None:
            leaving = self.spec.replica_names(self.count)[-1]
            back = all(k.settled for k in self.kills if k.replica == leaving)
            if len(self.kills) >= SCALE_DOWN_AFTER and back and states.get(
                    C.agent_program(leaving), ("", 0))[0] == RUNNING:
                # scaled down while an ask of its conversations is in flight (waiting up to
                # MID_WORK_S for one): those conversations go on asking it as it is killed
                self.scale_due = now if self.scale_due is None else self.scale_due
                if (in_flight_by_replica(self._answers())[leaving] == 0
                        and now < self.scale_due + MID_WORK_S):
                    return
                self.leaving, self.count = leaving, self.count - 1
                self.down_step = ScaleStep(self.ctx.mesh, self.group, self.count, SCALE_DRAIN_S,
                                           self.ctx.timeout, before=lambda: self._hold(leaving))
            return
        if not self.down_step.done:
            self._kill_retiring(states)
        if self.up_step is None and self.down_step.done and len(self.kills) >= SCALE_UP_AFTER:
            leaving, self.count = self.leaving, self.count + 1
            self.up_step = ScaleStep(self.ctx.mesh, self.group, self.count, SCALE_DRAIN_S, self.ctx.timeout,
                                     after=lambda: self.ctx.probes.release(leaving))

    def _kill_retiring(self, states: ProgramStates) -> None:
        """Once the leaving replica is marked retiring, kill it, and each process supervisord
        starts in its place, until it is stopped: it never reads its inbox again, so what
        its conversations sent it is left for the handover."""
        if not self.retire_kills:
            try:
                if self.leaving not in self.groups.retiring():
                    return
            except AgentMeshError:
                return
        state, pid = states.get(C.agent_program(self.leaving), ("", 0))
        if state in LIVE and pid and pid not in {k.pid for k in self.retire_kills}:
            kill = self._kill(self.leaving, pid, in_flight_by_replica(self._answers())[self.leaving])
            self.retire_kills += [kill] if kill is not None else []

    def _hold(self, replica: str) -> None:
        """No more probes to the leaving replica, and those it was sent handled, so that
        what is handed over of its inbox is the group's asks only."""
        probes = self.ctx.probes
        if replica not in probes.agents:
            return
        probes.hold(replica)
        time.sleep(0.5)  # the probes produced meanwhile are confirmed
        want = probes.produced_to(replica)
        try:
            wait_until(lambda: self._probes_handled(replica) >= want, self.ctx.timeout,
                       f"{replica} handled its probes", interval=0.1)
        except WaitTimeout:  # then some are handed over: handled by another replica, lost for it
            self.probes_left = want - self._probes_handled(replica)

    def _probes_handled(self, replica: str) -> int:
        """Probes it handled (the embedded mesh's counters begin with the run's probes)."""
        try:
            return self.ctx.store.counters(replica).get(PROBES_HANDLED, 0)
        except AgentMeshError:
            return 0

    # the verdict ------------------------------------------------------------------------
    def _settle(self, now: float) -> bool:
        """Judge once the replicas' counters hold every answered ask, or SETTLE_S passed."""
        client = self.stream.figures()
        after = self._counters(self.ctx)
        if after is None:
            if now < self.until:
                return False
            after = self.before  # Redis away: judged as nothing handled
            self.outcome.note = "Redis did not answer"

        def delta(counter: str) -> int:
            return sum(counter_delta(after, self.before, r, counter) for r in self.replicas)

        handled = delta(HANDLED_FROM)
        unrecorded, examples = self._unrecorded()
        if handled + unrecorded < client["answered"] and now < self.until:
            return False
        group = {"handled": handled, "handled_twice": delta(C.COUNTER_HANDLED_TWICE),
                 "duplicates": delta(C.COUNTER_DUPLICATES), "cached_replies": delta(C.COUNTER_CACHED_REPLIES),
                 "expired": delta(C.COUNTER_EXPIRED),
                 "asked_handled_twice": counter_delta(after, self.before, ASKED[0], C.COUNTER_HANDLED_TWICE),
                 "per_replica": {r: counter_delta(after, self.before, r, HANDLED_FROM)
                                 for r in self.replicas}}
        figures = judge_replicas(client, group, self._logs(), unrecorded, self._scaling(),
                                 [k.figures() for k in self.kills])
        figures["unrecorded_examples"] = examples
        self.outcome.replicas = figures
        note = replicas_note(figures)
        self.outcome.note = f"{self.outcome.note}; {note}" if self.outcome.note else note
        return True

    def _scaling(self) -> dict[str, Any]:
        down, up = self.down_step, self.up_step
        steps = [s for s in (down, up) if s is not None]
        handed = down.result.handed_over if down is not None and down.result is not None else {}
        waited = waited_for_return(self._answers(), self.leaving, up.started) if up is not None else 0
        return {"replicas": REPLICAS_RUN, "leaving": self.leaving,
                "errors": [s.error for s in steps if s.error],
                "done": len(steps) == 2 and all(s.done and not s.error for s in steps),
                "handed_over": sum(handed.values()), "killed_retiring": len(self.retire_kills),
                "quiet": bool(down is not None and down.result is not None and down.result.quiet),
                "down_s": down.took if down else None, "up_s": up.took if up else None,
                "waited_for_return": waited, "probes_left": self.probes_left,
                "lines": [line for s in steps for line in s.lines]}

    def _unrecorded(self) -> tuple[int, list[str]]:
        """Answered requests whose id is not in the group's ledger (all when Redis fails), and
        a few of them: which ask, who answered it."""
        asks = [a for a in list(self.stream.asks) if a.reply is not None]
        try:
            ledger = set(self.ctx.store.handled_ids(self.group, WHOLE_LEDGER)[0])
        except AgentMeshError:
            return len(asks), []
        missing = [a for a in asks if str(a.reply and a.reply.get("in_reply_to")) not in ledger]
        return len(missing), [f"ask {a.seq} ({a.key}) answered by {a.reply and a.reply.get('from')} "
                              f"after {a.attempts} attempts" for a in missing[:EXAMPLES_KEPT]]

    def _logs(self) -> dict[str, int]:
        """What the conversations' logs hold (all counted as bad when Redis fails)."""
        settings = self.ctx.mesh.config.gateway
        log = ConversationLog(self.ctx.store.redis, self.ctx.store.keys, settings.events_kept,
                              settings.events_ttl)
        answers = self._answers()
        conversations = sorted({a.conversation for a in answers})
        twice = asked_twice = 0
        try:
            for conversation in conversations:
                events = chats.all_events(log, conversation)
                _, answered, asked = tally_conversation(events, set(self.replicas), ASKED)
                twice, asked_twice = twice + answered, asked_twice + asked
        except AgentMeshError as exc:
            self.outcome.note = f"conversation logs not read: {exc}"
            twice = asked_twice = sum(1 for a in answers if a.replica is not None)
        return {"conversations": len(conversations), "moved": moved(answers), "answered_twice": twice,
                "asked_twice": asked_twice}

    def abort(self) -> None:
        self.stream.join(0)
        for step in (self.down_step, self.up_step):
            if step is not None:
                step.join(self.ctx.timeout)
        if self.leaving:
            self.ctx.probes.release(self.leaving)
