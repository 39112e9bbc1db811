"""The bench's agent roles that wait, run in real agent processes by `agentmesh bench ask`
and `agentmesh bench slow` (`role: agentmesh_cli.bench.waiters:<Class>` in mesh.yaml).

- `Asker` times ask round trips from inside its agent. The bench sends it a job (a
  `bench_ask_job` message: a run id, whom to ask, and either `samples` asks one at a time
  or `in_flight` asks kept going for `seconds`). The sync `on_message` only queues the job,
  so its message is finished at once; the async `on_tick` runs it (a job of thousands of
  asks inside `on_message` would keep that message's offset open while every reply is
  read past it). Each `await ctx.ask` is timed with time.perf_counter; the results go to
  Redis as one JSON value (`Keys.bench_result(run)`), where the bench reads them. A job
  asks `bench_ping` unless it names a `type` and `payload`, and with a `conversation` its
  asks are public in that conversation (`bench llm` asks the llm role `chat`, shown to the
  conversation's user as a gateway ask is).
- `Answerer` replies at once with `ctx.reply` from a sync `on_message`: at concurrency 1
  that runs on the agent's loop, the runtime's fast path.
- `Sleeper` awaits `payload.sleep` seconds per message (asyncio.sleep); `SyncSleeper`
  blocks for as long (time.sleep), the baseline of `bench slow`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from agentmesh_cli import environment
from agentmesh_cli.agent.base import AgentContext, Role
from agentmesh_cli.constants import Keys
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.errors import AskError

JOB_TYPE = "bench_ask_job"
PING_TYPE = "bench_ping"
PONG_TYPE = "bench_pong"
SLEEP_TYPE = "bench_sleep"
ASK_TIMEOUT_S = 10.0
RESULT_TTL_S = 86_400  # a run's results outlive the bench by a day, then Redis drops them


@dataclass(frozen=True)
class Request:
    """What each ask of a job sends (module doc): `bench_ping` with no payload by default."""

    to: str
    type: str = PING_TYPE
    payload: dict[str, Any] = field(default_factory=dict)
    conversation: str | None = None

    @classmethod
    def of(cls, job: dict[str, Any]) -> Request:
        conversation = job.get("conversation")
        return cls(str(job["to"]), str(job.get("type", PING_TYPE)), dict(job.get("payload") or {}),
                   None if conversation is None else str(conversation))

    async def ask(self, ctx: AgentContext) -> None:
        meta = None if self.conversation is None else {"conversation": self.conversation}
        await ctx.ask(self.to, self.type, self.payload, timeout=ASK_TIMEOUT_S, meta=meta,
                      public=meta is not None)


class Asker(Role):
    """Runs the bench's ask jobs from its tick and reports what it measured (module doc)."""

    def on_start(self) -> None:
        cfg = self.ctx.config
        # a client of its own for the results (the runtime's Store is not the role's); a
        # bench mesh always names its Redis by URL (bench/infra.py)
        self._redis = redis.Redis.from_url(environment.expand(cfg.redis.url, "redis.url"), socket_timeout=5.0,
                                           socket_connect_timeout=5.0)
        self._keys = Keys(cfg.mesh)
        self._jobs: deque[dict[str, Any]] = deque()

    def on_message(self, message: Envelope) -> None:
        if message.type == JOB_TYPE:
            self._jobs.append(dict(message.payload))

    async def on_tick(self, now: float) -> None:
        while self._jobs:
            job = self._jobs.popleft()
            to = Request.of(job)
            try:
                if "rate" in job:
                    result = await self._paced(to, float(job["rate"]), float(job["seconds"]))
                elif int(job.get("in_flight", 1)) > 1:
                    result = await self._pipelined(to, int(job["in_flight"]), float(job["seconds"]),
                                                   float(job.get("warmup_s", 0.0)))
                else:
                    result = await self._sequential(to, int(job["samples"]), int(job.get("warmup", 0)))
            except Exception as exc:  # the bench is told, rather than left waiting
                result = {"error": f"{type(exc).__name__}: {exc}"}
            self._redis.set(self._keys.bench_result(str(job["run"])), orjson.dumps(result), ex=RESULT_TTL_S)

    async def _timed_ask(self, to: Request) -> float | None:
        """One ask's round trip in ms, as the role sees it; None when it failed."""
        started = time.perf_counter()
        try:
            await to.ask(self.ctx)
        except AskError:
            return None
        return (time.perf_counter() - started) * 1000

    async def _sequential(self, to: Request, samples: int, warmup: int) -> dict[str, Any]:
        """`warmup` asks not counted, then `samples` asks, one at a time."""
        took: list[float] = []
        failed = 0
        for i in range(warmup + samples):
            ms = await self._timed_ask(to)
            if i < warmup:
                continue
            if ms is None:
                failed += 1
            else:
                took.append(round(ms, 4))
        return {"latencies_ms": took, "failed": failed}

    async def _pipelined(self, to: Request, in_flight: int, seconds: float,
                         warmup_s: float) -> dict[str, Any]:
        """`in_flight` asks at all times for `warmup_s` + `seconds`: the asks that end within
        the last `seconds` are counted (and their round trips kept)."""
        begin = time.perf_counter()
        start, end = begin + warmup_s, begin + warmup_s + seconds
        took: list[float] = []
        failed = 0

        async def keep_asking() -> None:
            nonlocal failed
            while time.perf_counter() < end:
                ms = await self._timed_ask(to)
                if start <= time.perf_counter() <= end:
                    if ms is None:
                        failed += 1
                    else:
                        took.append(round(ms, 4))

        await asyncio.gather(*(keep_asking() for _ in range(in_flight)))
        return {"latencies_ms": took, "failed": failed, "seconds": seconds, "in_flight": in_flight}

    async def _paced(self, to: Request, rate: float, seconds: float) -> dict[str, Any]:
        """`rate` asks per second for `seconds` on a fixed schedule (open loop: an ask is
        sent at its time whatever the earlier ones do), each timed from that time, so a
        stall is counted in full rather than hidden by the asks it delays."""
        loop = asyncio.get_running_loop()
        begin = time.perf_counter() + 0.05
        took: list[float] = []
        failed = 0

        async def one(scheduled: float) -> None:
            nonlocal failed
            try:
                await to.ask(self.ctx)
            except AskError:
                failed += 1
                return
            took.append(round((time.perf_counter() - scheduled) * 1000, 4))

        tasks = []
        for n in range(int(rate * seconds)):
            scheduled = begin + n / rate
            if (wait := scheduled - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            tasks.append(loop.create_task(one(scheduled)))
        await asyncio.gather(*tasks)
        return {"latencies_ms": took, "failed": failed, "seconds": seconds, "rate": rate}

    def on_stop(self) -> None:
        self._redis.close()


class Answerer(Role):
    """bench_ping -> bench_pong, at once."""

    def on_message(self, message: Envelope) -> None:
        if message.type == PING_TYPE:
            self.ctx.reply(message, PONG_TYPE, {})


class Sleeper(Role):
    """bench_sleep {sleep}: awaits that many seconds (the agent's loop stays free)."""

    async def on_message(self, message: Envelope) -> None:
        if message.type == SLEEP_TYPE:
            await asyncio.sleep(float(message.payload.get("sleep", 1.0)))


class SyncSleeper(Role):
    """bench_sleep {sleep}: blocks that many seconds (at concurrency 1, on the agent's loop)."""

    def on_message(self, message: Envelope) -> None:
        if message.type == SLEEP_TYPE:
            time.sleep(float(message.payload.get("sleep", 1.0)))

