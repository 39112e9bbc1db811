"""The llm fault: kill -9 of an agent of the `llm` role (the Concierge) while it answers
chats, mid-answer, `KILLS` times.

The embedded mesh runs it for this fault only: a Concierge whose model is the run's
scripted server (llm/process.py) playing `SCRIPT`: every chat is one tool call (an ask of
Inventory) and then a text streamed slowly, so that a kill lands while a turn streams.
Chats go through the gateway over HTTP (chaos/http_asks.py), each with its own
`Idempotency-Key` and retried with it, so a request is the same request after the crash;
the kill waits until a chat is well into its streamed text.

Detected when supervisord saw the exit; recovered when the new process is ready and a chat
sent after the kill was answered; then the next kill. The chats go on for a moment, every
one is let finish, and the row is judged (`judge_chats`): every chat answered, once (its
conversation's log holds one reply), handled once by the Concierge and its tool request
handled once by Inventory (a re-run's ask under the same id is answered from Inventory's
reply cache: `tool_cached_replies`), every answer carrying the tool's result.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.chaos import chats
from agentmesh_cli.chaos.faults import Context, Fault
from agentmesh_cli.chaos.gateway import LIVE, counter_delta, unrecorded, wind_down
from agentmesh_cli.chaos.http_asks import HttpAskStream, Request
from agentmesh_cli.chaos.observe import ProgramStates
from agentmesh_cli.chaos.watches import RUNNING, Watch, warm_up
from agentmesh_cli.convlog import ConversationLog
from agentmesh_cli.errors import AgentMeshError, FaultSkipped, WaitTimeout
from agentmesh_cli.llm.process import model_calls
from agentmesh_cli.services.probe import gateway_url, tls_verify
from agentmesh_cli.waiting import wait_until

CONCIERGE = "Concierge"
TOOL_AGENT = "Inventory"
# one tool call with nothing to reserve (Inventory's stock is left alone, as chaos/asks.py
# does), then the answer streamed in 10 pieces 0.1 s apart: about 1 s of streaming
SCRIPT: dict[str, Any] = {"model": "scripted", "scenarios": [{"name": "chat", "when": "", "steps": [
    {"tool_calls": [{"name": f"{TOOL_AGENT}__check_stock", "arguments": {"items": {}}}]},
    {"text": "In stock: {tool_results}. Thank you for asking the concierge.", "chunks": 10,
     "chunk_delay": 0.1}]}]}
TOOL_RESULT = '"approved":'  # in every answer whose tool call Inventory answered (not an error text)
ROUNDS = len(SCRIPT["scenarios"][0]["steps"])  # model calls per chat when no turn is run again
HANDLED_FROM_GATEWAY = C.COUNTER_HANDLED_FROM_PREFIX + C.GATEWAY_SENDER
HANDLED_FROM_CONCIERGE = C.COUNTER_HANDLED_FROM_PREFIX + CONCIERGE
RATE = 2.0  # chats per second: a turn takes about 1.2 s, the Concierge handles 4 at once
KILLS = 2
WARM_UP_CHATS = 3  # answered before the first kill: the Concierge, its model and its tool work
MID_STREAM_S = 5.0  # how long to wait for a chat well into its streamed text to kill under
ASK_TIMEOUT_S = 15.0  # each attempt's: a chat waits out the restart and the backlog before it
AFTER_S = 3.0  # chats go on this long after the last recovery


def concierge_agent(base_url: str) -> dict[str, Any]:
    """The Concierge of mesh.yaml: the scripted model at `base_url`, Inventory as its tool,
    no Cognition context, a model call that fails in seconds rather than a minute."""
    return {"name": CONCIERGE, "role": "llm", "concurrency": 4,
            "llm": {"base_url": base_url, "model": "scripted", "tools": [TOOL_AGENT], "timeout": "5s",
                    "max_retries": 1, "max_tool_rounds": 2, "context_items": 0}}


def judge_chats(client: Mapping[str, Any], concierge: Mapping[str, int], tool: Mapping[str, int],
                logs: Mapping[str, int], unrecorded: int) -> dict[str, Any]:
    """The llm row's figures and verdict (pure). `client`: what the asker saw (ask_figures,
    and the kills); `concierge`, `tool`: counter deltas (`handled` counts the requests from
    the gateway, resp. from the Concierge); `logs`: from the conversations' logs, chats with
    two replies (`answered_twice`), with two tool asks (`tool_asked_twice`), and answers
    without the tool's result (`without_tool`). Ok: every chat answered, none lost or
    failed; the Concierge handled exactly the chats answered, none twice, each one in its
    ledger; Inventory handled one tool request per chat, none twice."""
    figures = {**client, "handled": concierge["handled"], "handled_twice": concierge["handled_twice"],
               "unrecorded": unrecorded, "answered_twice": logs["answered_twice"],
               "without_tool": logs["without_tool"], "tool_asked_twice": logs["tool_asked_twice"],
               "tool_requests": tool["handled"], "tool_handled_twice": tool["handled_twice"],
               "tool_duplicates": tool["duplicates"], "tool_cached_replies": tool["cached_replies"]}
    once = client["sent"] == client["answered"] == figures["handled"] == figures["tool_requests"]
    bad = ("lost", "failed", "handled_twice", "unrecorded", "answered_twice", "without_tool",
           "tool_asked_twice", "tool_handled_twice")
    figures["ok"] = once and all(figures[name] == 0 for name in bad)
    return figures


def chats_note(f: Mapping[str, Any]) -> str:
    kills = f["kills"]
    streaming = " and ".join(str(k["streaming"]) for k in kills) or "0"
    in_flight = " and ".join(str(k["in_flight"]) for k in kills) or "0"
    causes = ", ".join(f"{n} {cause}" for cause, n in f["retry_causes"].items())
    calls = f["model_calls"]
    again = "" if calls is None else (f"; {calls} model calls, {calls - ROUNDS * f['answered']} of them "
                                      "rounds run again")
    return (f"{len(kills)} kills, {streaming} chats streaming ({in_flight} in flight); "
            f"{f['sent']} chats over HTTP: {f['answered']} answered, {f['retried']} retried "
            f"({f['retries']} retries{': ' + causes if causes else ''}), {f['lost']} lost, "
            f"{f['failed']} failed, {f['answered_twice']} answered twice, {f['without_tool']} without "
            f"the tool's result; {f['handled']} handled by {CONCIERGE}, {f['handled_twice']} twice; "
            f"{f['tool_requests']} tool requests handled by {TOOL_AGENT}, {f['tool_handled_twice']} "
            f"twice, {f['tool_asked_twice']} asked under a new id, {f['tool_cached_replies']} "
            f"answered again from its reply cache; {f['restreamed']} streams started over{again}")


@dataclass
class Kill:
    pid: int
    at: float  # monotonic
    in_flight: int  # chats waiting for their answer over HTTP then
    detect_s: float | None = None
    recover_s: float | None = None
    streaming: int = 0  # chats caught mid-answer (counted at the end, from the deltas)

    def figures(self) -> dict[str, Any]:
        return {"in_flight": self.in_flight, "streaming": self.streaming, "detect_s": self.detect_s,
                "recover_s": self.recover_s}


class LlmWatch(Watch):
    """Chats to the Concierge over HTTP, the Concierge killed under them `KILLS` times, then
    the chats judged (steps: down, next, after, finishing, settling)."""

    def __init__(self, ctx: Context, fault: Fault, phase: str, states: ProgramStates) -> None:
        self.program = fault.target
        state, pid = states.get(self.program, ("UNKNOWN", 0))
        if state != RUNNING or not pid:
            raise FaultSkipped(f"{self.program} is {state}")
        gateway, _ = states.get(C.PROGRAM_GATEWAY, ("UNKNOWN", 0))
        if gateway != RUNNING:
            raise FaultSkipped(f"the chats go through the gateway, which is {gateway}")
        before = self._counters(ctx)
        if before is None:
            raise FaultSkipped("Redis does not answer: the agents' counters cannot be read")
        self.before = before
        spec = next(a for a in ctx.mesh.config.agents if a.name == CONCIERGE)
        self.model_url = ctx.mesh.config.llm_settings(spec).base_url or ""
        self.calls_before = model_calls(self.model_url)
        self.kills: list[Kill] = []
        self.deltas = chats.DeltaLog(ctx.store, CONCIERGE)
        self.deltas.start()
        self.stream = HttpAskStream(
            gateway_url(ctx.mesh), ctx.mesh.credentials.service_token, _chat, rate=RATE,
            key_prefix=f"chaos-llm-{os.getpid()}-{time.time_ns()}-", ask_timeout=ASK_TIMEOUT_S,
            deadline_s=ctx.timeout, verify=tls_verify(ctx.mesh))
        self.step, self.until = "down", 0.0
        problem = warm_up(self.stream, WARM_UP_CHATS, f"{WARM_UP_CHATS} chats answered by {CONCIERGE}")
        if problem is not None:  # not killed: the chats are judged (and fail) as they are
            super().__init__(ctx, fault, phase)
            self.outcome.note, self.step = problem, "finishing"
            return
        self._wait_mid_stream(time.monotonic() + MID_STREAM_S)
        self._kill(pid)
        super().__init__(ctx, fault, phase)

    def _counters(self, ctx: Context) -> dict[str, dict[str, int]] | None:
        try:
            return {a: ctx.store.counters(a) for a in (CONCIERGE, TOOL_AGENT)}
        except AgentMeshError:
            return None

    def _wait_mid_stream(self, until: float) -> None:
        try:  # killed while a chat streams, when one does in time
            wait_until(lambda: chats.mid_stream(self.deltas.streams(), time.monotonic()) > 0,
                       max(0.0, until - time.monotonic()), "a chat streaming", interval=0.01)
        except WaitTimeout:
            pass

    def _kill(self, pid: int) -> None:
        self.kills.append(Kill(pid, time.monotonic(), self.stream.in_flight))
        os.kill(pid, signal.SIGKILL)

    def poll(self, now: float, states: ProgramStates) -> bool:
        if self.step == "down":
            self._watch_restart(now, states)
            return False
        if self.step == "next":
            state, pid = states.get(self.program, ("UNKNOWN", 0))
            streaming = chats.mid_stream(self.deltas.streams(), now) > 0
            if state == RUNNING and pid and (streaming or now >= self.until):
                self._kill(pid)
                self.step = "down"
            elif now >= self.until + self.ctx.timeout:
                self.step, self.until = "after", now + AFTER_S
            return False
        return wind_down(self, now)

    def _watch_restart(self, now: float, states: ProgramStates) -> None:
        kill, out = self.kills[-1], self.outcome
        state, pid = states.get(self.program, ("UNKNOWN", 0))
        if kill.detect_s is None and (pid != kill.pid or state != RUNNING):
            kill.detect_s = round(now - kill.at, 2)
        if (kill.detect_s is not None and state in LIVE and pid not in (0, kill.pid)
                and self.ctx.ready(self.program, pid) and self.stream.answered_since(kill.at)):
            kill.recover_s = round(now - kill.at, 2)
            if len(self.kills) < KILLS:
                self.step, self.until = "next", now + MID_STREAM_S
            else:
                self.step, self.until = "after", now + AFTER_S
        elif self.timed_out(now, kill.at):
            self.step, self.until = "after", now + AFTER_S
        # the row shows the slowest kill (each since its own kill); the note says how many
        detects = [k.detect_s for k in self.kills if k.detect_s is not None]
        recovers = [k.recover_s for k in self.kills if k.recover_s is not None]
        if len(detects) == len(self.kills):
            out.detect_s, out.detected_by = max(detects), "supervisord saw the exit"
        if len(recovers) == len(self.kills):
            out.recover_s = max(recovers)
            out.recovered_by = "new pid ready, a chat sent after the kill answered over HTTP"

    def _settle(self, now: float) -> bool:
        """Judge once the ledgers hold every answered chat and its tool request, or SETTLE_S passed."""
        client = self.stream.figures()
        after = self._counters(self.ctx)
        if after is None:
            if now < self.until:
                return False
            after = self.before  # Redis away: judged as nothing handled
            self.outcome.note = "Redis did not answer"

        def delta(agent: str, counter: str) -> int:
            return counter_delta(after, self.before, agent, counter)

        concierge = {"handled": delta(CONCIERGE, HANDLED_FROM_GATEWAY),
                     "handled_twice": delta(CONCIERGE, C.COUNTER_HANDLED_TWICE)}
        tool = {"handled": delta(TOOL_AGENT, HANDLED_FROM_CONCIERGE),
                "handled_twice": delta(TOOL_AGENT, C.COUNTER_HANDLED_TWICE),
                "duplicates": delta(TOOL_AGENT, C.COUNTER_DUPLICATES),
                "cached_replies": delta(TOOL_AGENT, C.COUNTER_CACHED_REPLIES)}
        if min(concierge["handled"], tool["handled"]) < client["answered"] and now < self.until:
            return False
        self.deltas.stop()
        client.update(self._streamed())
        figures = judge_chats(client, concierge, tool, self._logs(),
                              unrecorded(self.ctx.store, self.stream.asks))
        self.outcome.chats = figures
        note = chats_note(figures)
        if self.deltas.problem:
            note += f"; deltas not heard: {self.deltas.problem}"
        self.outcome.note = f"{self.outcome.note}; {note}" if self.outcome.note else note
        return True

    def _answers(self) -> list[tuple[str, float, dict[str, Any]]]:
        """(request id, when the asker got the answer, the answer) of every answered chat."""
        return [(str(ask.reply.get("in_reply_to")), ask.answered_at, ask.reply)
                for ask in self.stream.asks if ask.reply is not None]

    def _streamed(self) -> dict[str, Any]:
        streams = self.deltas.streams()
        answers = self._answers()
        answered = {request: at for request, at, _ in answers}
        for kill in self.kills:
            kill.streaming = chats.streaming_at(kill.at, streams, answered)
        texts = {request: str(reply.get("payload", {}).get("text", "")) for request, _, reply in answers}
        calls, before = model_calls(self.model_url), self.calls_before
        return {"kills": [k.figures() for k in self.kills], "restreamed": chats.restreamed(streams, texts),
                "model_calls": None if calls is None or before is None else calls - before}

    def _logs(self) -> dict[str, int]:
        """What the answered chats' conversation logs hold (all counted as bad when Redis fails)."""
        answers = self._answers()
        settings = self.ctx.mesh.config.gateway
        log = ConversationLog(self.ctx.store.redis, self.ctx.store.keys, settings.events_kept,
                              settings.events_ttl)
        try:
            twice, asked_twice = chats.read_logs(
                log, [(request, str(reply.get("conversation"))) for request, _, reply in answers], CONCIERGE)
        except AgentMeshError as exc:
            self.outcome.note = f"conversation logs not read: {exc}"
            twice = asked_twice = len(answers)
        without = sum(1 for _, _, reply in answers
                      if TOOL_RESULT not in str(reply.get("payload", {}).get("text", "")))
        return {"answered_twice": twice, "tool_asked_twice": asked_twice, "without_tool": without}

    def abort(self) -> None:
        self.stream.join(0)
        self.deltas.stop()


def _chat(seq: int) -> Request:
    return CONCIERGE, "chat", {"text": f"chaos chat {seq}: are the cables in stock?"}

