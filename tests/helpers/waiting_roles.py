"""Roles that wait, for the tests of async handlers, concurrency and ask/reply.

They import nothing but `agentmesh` and the standard library, as a user's roles would.
What they do they write, one flushed line per event, to the file named by the message's
`log` payload key, so a test reads the exact order of starts and finishes.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import agentmesh
from agentmesh import AskError, Envelope


def note(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as out:
        out.write(line + "\n")


class Worker(agentmesh.Role):
    """`work` {log, tag, sleep}: notes its start, awaits `sleep` seconds, notes its finish."""

    async def on_message(self, message: Envelope) -> None:
        if message.type != "work":
            return
        p = message.payload
        note(p["log"], f"start {p['tag']}")
        await asyncio.sleep(float(p.get("sleep", 0)))
        note(p["log"], f"finish {p['tag']}")


class SyncWorker(agentmesh.Role):
    """`Worker` as a sync handler (at concurrency > 1 it runs in the agent's thread pool)."""

    def on_message(self, message: Envelope) -> None:
        if message.type != "work":
            return
        p = message.payload
        note(p["log"], f"start {p['tag']}")
        time.sleep(float(p.get("sleep", 0)))
        note(p["log"], f"finish {p['tag']}")


class Answerer(agentmesh.Role):
    """double {x} -> doubled {x: 2x}; fail -> raises; slow {sleep} -> answers late;
    cycle {timeout} -> asks the asker back (`inner`) before it answers. Each request
    handled is noted (`handled <type> <n>`) when the payload has a `log`."""

    async def on_message(self, message: Envelope) -> None:
        p = message.payload
        if "log" in p:
            note(p["log"], f"handled {message.type} {p.get('n')}")
        if message.type == "double":
            self.ctx.reply(message, "doubled", {"x": 2 * p["x"], "n": p.get("n")})
        elif message.type == "fail":
            raise ValueError(f"bad x {p.get('x')}")
        elif message.type == "slow":
            await asyncio.sleep(float(p["sleep"]))
            self.ctx.reply(message, "slow_done", {})
        elif message.type == "cycle":
            await self.ctx.ask(message.from_agent_id, "inner", {}, timeout=float(p["timeout"]))
            self.ctx.reply(message, "cycled", {})


def _ask_outcome(reply: Envelope) -> str:
    return f"reply {reply.type} {json.dumps(reply.payload, sort_keys=True)}"


class Asker(agentmesh.Role):
    """ask {to, type, payload, timeout, log, tag, sink?}: asks, notes `<tag> <outcome>`,
    and tells `sink` (a `done` message) when it has an outcome. inner -> inner_done."""

    async def on_message(self, message: Envelope) -> None:
        p: dict[str, Any] = message.payload
        if message.type == "inner":
            self.ctx.reply(message, "inner_done", {})
            return
        if message.type != "ask":
            return
        try:
            reply = await self.ctx.ask(p["to"], p["type"], p.get("payload", {}),
                                       timeout=float(p.get("timeout", 10)))
            outcome = _ask_outcome(reply)
        except AskError as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        if "log" in p:
            note(p["log"], f"{p.get('tag')} {outcome}")
        if "sink" in p:
            self.ctx.send(p["sink"], "done", {"tag": p.get("tag"), "outcome": outcome})


class SyncAsker(agentmesh.Role):
    """`Asker` with a sync handler: its ask blocks in the pool (concurrency > 1) and is
    refused on the loop (concurrency 1)."""

    def on_message(self, message: Envelope) -> None:
        p: dict[str, Any] = message.payload
        if message.type != "ask":
            return
        try:
            reply = self.ctx.ask(p["to"], p["type"], p.get("payload", {}),
                                 timeout=float(p.get("timeout", 10)))
            outcome = _ask_outcome(reply)
        except AskError as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        note(p["log"], f"{p.get('tag')} {outcome}")


class Sink(agentmesh.Role):
    """done {tag, outcome}: notes `<tag> <outcome>` in the file named by `self.log_path`
    (set from the agent's capabilities: `log=<path>` is not a capability; the path comes
    from the AGENTMESH_TEST_SINK environment variable)."""

    def on_start(self) -> None:
        import os

        self.path = os.environ["AGENTMESH_TEST_SINK"]

    def on_message(self, message: Envelope) -> None:
        if message.type == "done":
            note(self.path, f"{message.payload.get('tag')} {message.payload.get('outcome')}")


class Lingerer(agentmesh.Role):
    """Replies at once, then goes on working on the request for `linger` seconds: a copy
    of the request that comes meanwhile meets a handling that has replied already."""

    async def on_message(self, message: Envelope) -> None:
        self.ctx.reply(message, "done", {"n": message.payload.get("n")})
        await asyncio.sleep(float(message.payload.get("linger", 0)))


class Replica(agentmesh.Role):
    """A replicable answerer: who {n, log?, sleep?} -> me {name, n, conversation}; notes
    `handled <n> <its name>`. Any replica may answer any request: it keeps no state."""

    replicable = True

    async def on_message(self, message: Envelope) -> None:
        p = message.payload
        if message.type != "who":
            return
        if p.get("sleep"):
            await asyncio.sleep(float(p["sleep"]))
        if "log" in p:
            note(p["log"], f"handled {p.get('n')} {self.ctx.name}")
        self.ctx.reply(message, "me", {"name": self.ctx.name, "n": p.get("n"),
                                       "conversation": self.ctx.conversation})
