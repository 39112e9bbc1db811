"""The roles of `agentmesh bench routing`, run in real agent processes
(`role: agentmesh_cli.bench.routing_roles:<Class>` in mesh.yaml).

- `Server`, replicable: a single server whose mean service time is chosen by its replica
  index (`Pool-1` 10 ms, `Pool-2` 20 ms, `Pool-3` 40 ms: capacities 100, 50 and 25 msg/s
  at concurrency 1). Each `bench_work` request waits its service time (asyncio.sleep, an
  exponential draw by default, `payload.service: fixed` for the mean itself) and is
  answered with `bench_done`. A request handed over right after the previous one ended
  (within GAP_S) waited behind it: its service starts where the previous one's ended on the
  server's own schedule, not when the runtime got round to it, so that the runtime's gap
  between two handlers (1-3 ms on the bench machine: without this the three served 82, 47
  and 23 msg/s) does not lower the capacities; a server behind its schedule catches up.
- `LoadGenerator` asks the group open loop. The bench sends it a job (`bench_routing_job`:
  rate, seconds, the monotonic time to start at, a seed, the ask timeout, the file to write);
  a task started from `on_start` (not `on_tick`, whose 100 ms steps would bunch the
  arrivals) sends Poisson arrivals at the job's rate, each ask its own new conversation,
  whatever the replies do. Once every ask has its outcome it writes one JSON file per job:
  per ask its scheduled time (seconds from the start), how late it left, the replica that
  answered, the latency from the scheduled time and the outcome.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import orjson

from agentmesh_cli.agent.base import Role
from agentmesh_cli.config import group_of
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.errors import AgentMeshError, RoleError

WORK_TYPE = "bench_work"
DONE_TYPE = "bench_done"
JOB_TYPE = "bench_routing_job"
SERVICE_MS = (10.0, 20.0, 40.0)  # replica k's mean service time is SERVICE_MS[k - 1]
OK = "ok"
GAP_S = 0.005  # a request handed over within this of the previous handler's end waited behind it


def service_ms(name: str) -> float:
    """The mean service time of replica `name` (`Pool-2`: 20 ms)."""
    index = group_of(name)
    if index is None or not 1 <= index[1] <= len(SERVICE_MS):
        raise RoleError(f"{name}: a bench routing server is a replica 1..{len(SERVICE_MS)} of a group")
    return SERVICE_MS[index[1] - 1]


class Server(Role):
    """bench_work {service} -> bench_done, after its service time (module doc)."""

    replicable = True

    def on_start(self) -> None:
        self._mean_s = service_ms(self.ctx.name) / 1000.0
        self._end = -math.inf  # where the previous service ended on the server's schedule
        self._returned = -math.inf  # when the previous handler really returned

    async def on_message(self, message: Envelope) -> None:
        if message.type != WORK_TYPE:
            return
        now = time.monotonic()
        start = self._end if now - self._returned < GAP_S else now  # waited behind it, or idle
        fixed = message.payload.get("service") == "fixed"
        self._end = start + (self._mean_s if fixed else self.ctx.rng.expovariate(1.0 / self._mean_s))
        if (wait := self._end - now) > 0:
            await asyncio.sleep(wait)
        self.ctx.reply(message, DONE_TYPE, {})
        self._returned = time.monotonic()


class LoadGenerator(Role):
    """Runs the bench's open-loop jobs from a task of its own (module doc)."""

    async def on_start(self) -> None:
        # async: with only sync hooks the agent would wait in its poll on the loop (up to
        # 100 ms), and this task would send late
        self._jobs: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._runner = asyncio.get_running_loop().create_task(self._run_jobs())

    def on_message(self, message: Envelope) -> None:
        if message.type == JOB_TYPE:
            self._jobs.put_nowait(dict(message.payload))

    async def _run_jobs(self) -> None:
        while True:
            job = await self._jobs.get()
            try:
                result = await self._job(job)
            except Exception as exc:  # the bench is told, rather than left waiting
                result = {"error": f"{type(exc).__name__}: {exc}"}
            out = Path(str(job["out"]))
            partial = out.with_suffix(".part")
            partial.write_bytes(orjson.dumps(result))
            os.replace(partial, out)  # the bench never reads half a file

    async def _job(self, job: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        rate, seconds = float(job["rate"]), float(job["seconds"])
        start = float(job["start_at"])  # time.monotonic(): one clock for every process here
        draws = random.Random(str(job["seed"]))  # the same arrivals for every model of a run
        tasks: list[asyncio.Task[tuple[float, float, str | None, float | None, str]]] = []
        at = start
        while (at := at + draws.expovariate(rate)) < start + seconds:
            if (wait := at - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            tasks.append(loop.create_task(self._ask(job, len(tasks), at)))
        done = await asyncio.gather(*tasks)
        return {"run": job["run"], "rate": rate, "seconds": seconds,
                "t": [round(d[0] - start, 5) for d in done], "lag_ms": [d[1] for d in done],
                "replica": [d[2] for d in done], "ms": [d[3] for d in done], "outcome": [d[4] for d in done]}

    async def _ask(self, job: dict[str, Any], n: int,
                   at: float) -> tuple[float, float, str | None, float | None, str]:
        """One ask, timed from its scheduled time `at`: (at, ms late, replica, ms, outcome)."""
        lag_ms = round((time.monotonic() - at) * 1000, 3)
        try:
            reply = await self.ctx.ask(str(job["to"]), WORK_TYPE, {"service": job.get("service", "exp")},
                                       timeout=float(job["timeout"]),
                                       meta={"conversation": f"{job['run']}-{n}"})
        except AgentMeshError as exc:  # AskTimeout, RemoteError, RoutingError...
            return at, lag_ms, None, None, type(exc).__name__
        return at, lag_ms, reply.from_agent_id, round((time.monotonic() - at) * 1000, 3), OK

    async def on_stop(self) -> None:
        self._runner.cancel()
