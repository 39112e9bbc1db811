"""The gateway fault: kill -9 of the gateway while asks go through it over HTTP
(chaos/http_asks.py), each with its own `Idempotency-Key` and retried with it.

Detected when supervisord saw the exit; recovered when the new gateway process is ready
(its ready record carries its pid, GET /health answers 200) and an ask sent after the kill
was answered. The asks go on for a moment after that, then stop; every ask is let finish
(answered, or out of time) and judged as the probes are: answered once each from the
client's view, and handled once each by the agents: their exact `handled_from:gateway`
counters, their `handled_twice`, and each answered request's id in its answerer's ledger.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any, Protocol

from agentmesh_cli import constants as C
from agentmesh_cli.chaos.asks import ANSWERED
from agentmesh_cli.chaos.faults import Context, Fault
from agentmesh_cli.chaos.http_asks import HttpAsk, HttpAskStream, Request
from agentmesh_cli.chaos.observe import ProgramStates
from agentmesh_cli.chaos.probes import WHOLE_LEDGER
from agentmesh_cli.chaos.watches import RUNNING, Watch, warm_up
from agentmesh_cli.errors import AgentMeshError, FaultSkipped, WaitTimeout
from agentmesh_cli.services.probe import gateway_url, tls_verify
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import wait_until

HANDLED_FROM = C.COUNTER_HANDLED_FROM_PREFIX + C.GATEWAY_SENDER
WARM_UP_ASKS = 5  # answered before the kill: the gateway works
IN_FLIGHT_S = 2.0  # how long to wait for an ask in flight to kill the gateway under
ASK_TIMEOUT_S = 5.0  # each attempt's `timeout` (the gateway answers 504 after it)
AFTER_S = 3.0  # asks go on this long after the recovery
SETTLE_S = 15.0  # for the agents' ledgers to hold what they answered
LIVE = ("STARTING", RUNNING)  # a gateway serves before supervisord calls it RUNNING
RATE = 20.0  # asks per second when the run sends none of its own (--ask-rate 0)


def judge_asks(client: dict[str, Any], handled: int, twice: int, unrecorded: int,
               answered_again: int = 0) -> dict[str, Any]:
    """The gateway row's figures and verdict (pure): every ask answered once, none lost or
    failed, and the agents handled exactly as many requests as were answered, none twice,
    each answered one recorded in its answerer's ledger. (`answered_again`: repeated
    requests the agents answered from their reply cache, for the record.)"""
    figures = {**client, "handled": handled, "handled_twice": twice, "unrecorded": unrecorded,
               "answered_again": answered_again}
    figures["ok"] = (client["lost"] == 0 and client["failed"] == 0 and twice == 0 and unrecorded == 0
                     and client["sent"] == client["answered"] == handled)
    return figures


def asks_note(f: dict[str, Any]) -> str:
    causes = ", ".join(f"{n} {cause}" for cause, n in f["retry_causes"].items())
    return (f"{f['sent']} asks over HTTP: {f['answered']} answered, {f['retried']} retried "
            f"({f['retries']} retries{': ' + causes if causes else ''}), {f['lost']} lost, "
            f"{f['failed']} failed; {f['handled']} handled by the agents, {f['handled_twice']} twice, "
            f"{f['answered_again']} answered again from the reply cache; "
            f"{f['in_flight_at_kill']} in flight at the kill")


class GatewayWatch(Watch):
    """Asks through the gateway, kills it under them, watches it come back, then judges
    the asks (steps: down, after, finishing, settling)."""

    def __init__(self, ctx: Context, fault: Fault, phase: str, states: ProgramStates) -> None:
        state, pid = states.get(C.PROGRAM_GATEWAY, ("UNKNOWN", 0))
        if state != RUNNING or not pid:
            raise FaultSkipped(f"the gateway is {state}")
        roles = {a.name: a.role for a in ctx.mesh.config.agents}
        self.targets = sorted(a for a, role in roles.items() if role in ANSWERED)
        if not self.targets:
            raise FaultSkipped("no agent whose role answers an ask")
        before = self._counters(ctx)
        if before is None:
            raise FaultSkipped("Redis does not answer: the agents' counters cannot be read")
        self.before = before
        self.old_pid = pid
        self.stream = HttpAskStream(
            gateway_url(ctx.mesh), ctx.mesh.credentials.service_token, self._request(roles),
            rate=ctx.ask_rate or RATE, key_prefix=f"chaos-gw-{os.getpid()}-{time.time_ns()}-",
            ask_timeout=ASK_TIMEOUT_S, deadline_s=ctx.timeout, verify=tls_verify(ctx.mesh))
        self.step, self.until = "down", 0.0
        problem = warm_up(self.stream, WARM_UP_ASKS, f"{WARM_UP_ASKS} asks answered through the gateway")
        if problem is not None:  # not killed: the asks are judged (and fail) as they are
            super().__init__(ctx, fault, phase)
            self.outcome.note, self.in_flight_at_kill, self.step = problem, 0, "finishing"
            return
        try:  # killed under a waiting ask, when one comes in time
            wait_until(lambda: self.stream.in_flight > 0, IN_FLIGHT_S, "an ask in flight", interval=0.001)
        except WaitTimeout:
            pass
        self.in_flight_at_kill = self.stream.in_flight
        os.kill(pid, signal.SIGKILL)
        super().__init__(ctx, fault, phase)

    def _request(self, roles: dict[str, str]) -> Callable[[int], Request]:
        targets = self.targets

        def request(seq: int) -> Request:
            agent = targets[seq % len(targets)]
            type_, payload = ANSWERED[roles[agent]]
            return agent, type_, {**payload, "order_id": f"chaos-gw-{seq}"}
        return request

    def _counters(self, ctx: Context) -> dict[str, dict[str, int]] | None:
        try:
            return {a: ctx.store.counters(a) for a in self.targets}
        except AgentMeshError:
            return None

    def poll(self, now: float, states: ProgramStates) -> bool:
        out = self.outcome
        if self.step == "down":
            state, pid = states.get(C.PROGRAM_GATEWAY, ("UNKNOWN", 0))
            if out.detect_s is None and (pid != self.old_pid or state != RUNNING):
                out.detect_s, out.detected_by = self.elapsed(now), "supervisord saw the exit"
            if (out.detect_s is not None and state in LIVE and pid not in (0, self.old_pid)
                    and self._ready(pid) and self.stream.answered_since(out.started)):
                out.recover_s = self.elapsed(now)
                out.recovered_by = "new pid ready, an ask sent after the kill answered over HTTP"
                self.step, self.until = "after", now + AFTER_S
            elif self.timed_out(now, out.started):
                self.step = "after"
            return False
        return wind_down(self, now)

    def _ready(self, pid: int) -> bool:
        try:
            ready = self.ctx.store.ready_pid(C.PROGRAM_GATEWAY) == pid
            return ready and self.ctx.ready(C.PROGRAM_GATEWAY, pid)
        except AgentMeshError:
            return False

    def _settle(self, now: float) -> bool:
        """Judge once the agents' ledgers hold every answered request, or SETTLE_S passed."""
        client = self.stream.figures()
        after = self._counters(self.ctx)
        if after is None:  # Redis away: judged at the end of the wait, as nothing handled
            if now < self.until:
                return False
            self._judge(client, 0, 0, client["answered"], "; Redis did not answer")
            return True
        handled = sum(counter_delta(after, self.before, a, HANDLED_FROM) for a in self.targets)
        if handled < client["answered"] and now < self.until:
            return False
        twice = sum(counter_delta(after, self.before, a, C.COUNTER_HANDLED_TWICE) for a in self.targets)
        again = sum(counter_delta(after, self.before, a, C.COUNTER_CACHED_REPLIES) for a in self.targets)
        self._judge(client, handled, twice, unrecorded(self.ctx.store, self.stream.asks), again=again)
        return True

    def _judge(self, client: dict[str, Any], handled: int, twice: int, unrecorded: int,
               why: str = "", again: int = 0) -> None:
        figures = judge_asks({**client, "in_flight_at_kill": self.in_flight_at_kill}, handled, twice,
                             unrecorded, again)
        self.outcome.asks = figures
        note = asks_note(figures) + why
        self.outcome.note = f"{self.outcome.note}; {note}" if self.outcome.note else note

    def abort(self) -> None:
        self.stream.join(0)


class _HttpAsksWatch(Protocol):
    step: str
    until: float
    stream: HttpAskStream

    def _settle(self, now: float) -> bool: ...


def wind_down(watch: _HttpAsksWatch, now: float) -> bool:
    """The end of a fault under asks over HTTP (the gateway's, the llm agent's): the asks go
    on AFTER_S after the recovery ("after"), are let finish ("finishing"), then the watch
    settles and judges; True once judged."""
    if watch.step == "after":
        if now >= watch.until:
            watch.stream.stop()
            watch.step = "finishing"
        return False
    if watch.step == "finishing":
        if watch.stream.done():
            watch.step, watch.until = "settling", now + SETTLE_S
        return False
    return watch._settle(now)


def counter_delta(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]], agent: str,
                  counter: str) -> int:
    return after.get(agent, {}).get(counter, 0) - before.get(agent, {}).get(counter, 0)


def unrecorded(store: Store, asks: list[HttpAsk]) -> int:
    """Answered requests whose id is not in their answerer's ledger (all of them when
    Redis does not answer)."""
    by_agent: dict[str, set[str]] = {}
    for ask in asks:
        if ask.reply is not None:
            by_agent.setdefault(str(ask.reply.get("from")), set()).add(str(ask.reply.get("in_reply_to")))
    missing = 0
    for agent, ids in by_agent.items():
        try:
            ledger = set(store.handled_ids(agent, WHOLE_LEDGER)[0])
        except AgentMeshError:
            return sum(len(i) for i in by_agent.values())
        missing += len(ids - ledger)
    return missing
