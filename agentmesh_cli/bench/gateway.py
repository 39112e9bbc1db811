"""Gateway scenario: what the front door costs an ask, next to a direct `ctx.ask` between two
agents in the same run (same broker, same Valkey, the same answering agent), and what a
thousand Server-Sent Events followers cost it.

The mesh: `Asker` and `Answerer` (bench/waiters.py, as `bench ask` runs them) and the
`gateway` program, each its own process, on a throwaway broker and Valkey, a fresh one for
each of the `rounds` rounds (the embedded broker slows down as its partitions grow, so one
broker for all would make each round measure the ones before it). Each round:

- one at a time: `samples` direct asks timed inside `Asker`, and `samples` gateway asks on
  one keep-alive connection (as `bench ask` measures its round trip; they warm both paths);
- open loop at `rate` asks/s for `duration` s, twice, in alternating order: `Asker` asking
  `Answerer` directly (`await ctx.ask`, paced inside the agent), and the bench's load
  generator sending `POST /agents/Answerer/ask` to the gateway. Both send on a fixed
  schedule and time each ask from its scheduled start (a slow answer delays nothing that
  follows, and a queue is counted in full: no coordinated omission). The generator
  (services.LeanLoad: keep-alive HTTP/1.1 connections, pre-encoded requests) reports its
  own CPU. The gateway's CPU per ask is its process's CPU time over the phase (psutil,
  every thread: HTTP, Redis, librdkafka) divided by the asks answered.

Every figure is the median over the rounds. Then, on a mesh of its own, the SSE phase
(bench/gateway_sse.py): `followers` streams open at once, each on its own conversation;
the bench appends `follower_events` events to each through `convlog.ConversationLog.append`,
as an agent does, so the gateway's CPU there is the fan-out's alone; every follower must
get every event of its conversation, in order (checked by SSE id).
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.bench.agents import AgentsMesh, agents_mesh
from agentmesh_cli.bench.ask import ANSWERER, ASKER, ROLES, Jobs
from agentmesh_cli.bench.gateway_sse import IDLE_S, cpu_s, followers_phase
from agentmesh_cli.bench.infra import percentiles, ratio
from agentmesh_cli.bench.procs import wait_while_alive
from agentmesh_cli.bench.roundtrip import WARMUP
from agentmesh_cli.bench.services import LeanLoad, http_request
from agentmesh_cli.bench.waiters import PING_TYPE
from agentmesh_cli.embedded import free_port, stop
from agentmesh_cli.errors import BenchError
from agentmesh_cli.waiting import wait_until

START_TIMEOUT_S = 60.0
ASK_TIMEOUT_S = 10.0  # each gateway ask's `timeout` (the asker's is waiters.ASK_TIMEOUT_S, as long)
CONNECTIONS = 32  # the generator's keep-alive connections (far more than `rate` x latency needs)
TARGET_CPU_US_PER_ASK = 300.0
TARGET_P50_ADDED_MS = 2.0


@dataclass
class GatewayMesh:
    agents: AgentsMesh
    pid: int
    host: str
    port: int
    token: str
    log: str


@contextmanager
def gateway_mesh() -> Iterator[GatewayMesh]:
    """The asker, the answerer and the gateway on a throwaway broker and Valkey (the
    gateway on the free port agents_mesh gave mesh.yaml); stopped by pid on exit."""
    agents = [{"name": ASKER, "role": f"{ROLES}:Asker"}, {"name": ANSWERER, "role": f"{ROLES}:Answerer"}]
    with agents_mesh(agents) as running:
        bench = running.bench
        proc = bench.spawn(C.PROGRAM_GATEWAY, name=C.PROGRAM_GATEWAY)
        log = str(bench.root / f"{C.PROGRAM_GATEWAY}.log")
        wait_while_alive(lambda: running.store.ready_pid(C.PROGRAM_GATEWAY) == proc.pid,
                         "the gateway to be ready", START_TIMEOUT_S, proc, log)
        cfg = bench.mesh.config
        yield GatewayMesh(running, proc.pid, "127.0.0.1", cfg.gateway.port,
                          bench.mesh.credentials.service_token, log)


def ask_request(gm: GatewayMesh) -> bytes:
    return http_request(f"{gm.host}:{gm.port}", "POST", f"/agents/{ANSWERER}/ask",
                        {"type": PING_TYPE, "payload": {}, "timeout": ASK_TIMEOUT_S}, token=gm.token)


# asks -------------------------------------------------------------------------------------
async def _gateway_paced(gm: GatewayMesh, rate: int, duration: float) -> dict[str, Any]:
    load = LeanLoad(gm.host, gm.port, [ask_request(gm)], CONNECTIONS, expect="in_reply_to")
    await load.open()
    try:
        cpu, own, wall = cpu_s(gm.pid), time.process_time(), time.perf_counter()
        result = await load.run_paced(rate, duration)
        elapsed = time.perf_counter() - wall
        gateway_s, generator_s = cpu_s(gm.pid) - cpu, time.process_time() - own
    finally:
        load.close()
    answered = len(load.took)
    return {"latency": percentiles(load.took or [0.0]), "sent": int(rate * duration),
            "answered": answered, "errors": result["errors"], "error_samples": load.error_samples,
            "gateway_cpu_s": gateway_s, "elapsed_s": elapsed,
            "gateway_cpu_us_per_ask": round(gateway_s / max(1, answered) * 1e6, 1),
            "gateway_cpu_share": round(gateway_s / elapsed, 3),
            "generator_cpu_us_per_ask": round(generator_s / max(1, answered) * 1e6, 1),
            "generator_cpu_share": round(generator_s / elapsed, 3)}


async def _gateway_one_at_a_time(gm: GatewayMesh, samples: int) -> dict[str, Any]:
    """`samples` asks one after the other on one keep-alive connection (after WARMUP)."""
    request = ask_request(gm)
    reader, writer = await asyncio.open_connection(gm.host, gm.port)
    took: list[float] = []
    failed = 0
    try:
        for i in range(WARMUP + samples):
            started = time.perf_counter()
            writer.write(request)
            head = (await reader.readuntil(b"\r\n\r\n")).lower()
            at = head.find(b"\r\ncontent-length:") + 17
            await reader.readexactly(int(head[at:head.find(b"\r\n", at)]))
            if i < WARMUP:
                continue
            if head.startswith(b"http/1.1 200 "):
                took.append((time.perf_counter() - started) * 1000)
            else:
                failed += 1
    finally:
        writer.close()
    if not took:
        raise BenchError(f"no gateway ask got its answer one at a time; see {gm.log}")
    return {**percentiles(took), "failed": failed}


FLOORS = ("bare", "uvicorn")


async def _floor_paced(port: int, pid: int, rate: int, duration: float) -> dict[str, Any]:
    """The HTTP floor (bench/floor_echo.py) under the same generator at the same rate."""
    request = http_request(f"127.0.0.1:{port}", "POST", f"/agents/{ANSWERER}/ask",
                           {"type": PING_TYPE, "payload": {}}, token="floor")
    load = LeanLoad("127.0.0.1", port, [request], CONNECTIONS, expect="in_reply_to")
    await load.open()
    try:
        cpu, wall = cpu_s(pid), time.perf_counter()
        await load.run_paced(rate, duration)
        used, elapsed = cpu_s(pid) - cpu, time.perf_counter() - wall
    finally:
        load.close()
    return {"cpu_us_per_request": round(used / max(1, len(load.took)) * 1e6, 1),
            "cpu_share": round(used / elapsed, 3), "answered": len(load.took),
            "latency": percentiles(load.took or [0.0])}


@contextmanager
def floor_server(kind: str) -> Iterator[tuple[int, int]]:
    """(port, pid) of an HTTP floor (bench/floor_echo.py: bare or uvicorn), a process of its
    own; stopped by pid."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "agentmesh_cli.bench.floor_echo", str(port), kind],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _listens(port, proc), 30, "the HTTP floor server")
        yield port, proc.pid
    finally:
        stop(proc)


def _listens(port: int, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise BenchError(f"the HTTP floor server exited with {proc.returncode}")
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _direct_paced(jobs: Jobs, gm: GatewayMesh, rate: int, duration: float) -> dict[str, Any]:
    """The direct baseline at the same rate; the gateway's CPU meanwhile is its idle cost."""
    cpu, wall = cpu_s(gm.pid), time.perf_counter()
    result = jobs.run(rate=rate, seconds=duration)
    idle_share = (cpu_s(gm.pid) - cpu) / (time.perf_counter() - wall)
    return {"latency": percentiles(result["latencies_ms"]), "sent": int(rate * duration),
            "answered": len(result["latencies_ms"]), "failed": result["failed"],
            "gateway_idle_cpu_share": round(idle_share, 3)}


def _ask_round(n: int, rate: int, duration: float, samples: int) -> dict[str, Any]:
    """One round on a mesh of its own: both ways one at a time (a few hundred records, and
    the warm-up of both paths), then both open-loop phases (which first alternates)."""
    with gateway_mesh() as gm:
        jobs = Jobs(gm.agents)
        try:
            direct_one = jobs.run(in_flight=1, samples=samples, warmup=WARMUP)
            got: dict[str, Any] = {
                "direct_one": {**percentiles(direct_one["latencies_ms"]), "failed": direct_one["failed"]},
                "gateway_one": asyncio.run(_gateway_one_at_a_time(gm, samples))}
            for side in (("direct", "gateway") if n % 2 == 0 else ("gateway", "direct")):
                got[side] = (_direct_paced(jobs, gm, rate, duration) if side == "direct"
                             else asyncio.run(_gateway_paced(gm, rate, duration)))
            for kind in FLOORS:
                with floor_server(kind) as (port, pid):
                    got[f"floor_{kind}"] = asyncio.run(_floor_paced(port, pid, rate, duration))
        finally:
            jobs.close()
    return got


# the run ----------------------------------------------------------------------------------
def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _summary(runs: list[dict[str, float]]) -> dict[str, float]:
    return {"p50_ms": _median([r["p50_ms"] for r in runs]), "p99_ms": _median([r["p99_ms"] for r in runs]),
            "max_ms": max(r["max_ms"] for r in runs), "mean_ms": _median([r["mean_ms"] for r in runs])}


def run(repeats: int = 5, rate: int = 200, duration: float = 3.0, samples: int = 200,
        followers: int = 1000, follower_events: int = 5, event_rate: float = 1000.0) -> dict[str, Any]:
    """The gateway scenario and its direct baseline, in the bench result shape (cli/bench.py)."""
    if repeats < 1 or rate < 1 or samples < 1 or followers < 1 or follower_events < 1:
        raise BenchError("bench gateway needs repeats, rate, samples, followers and events >= 1")
    load_start = round(os.getloadavg()[0], 2)
    # a fresh broker each round: the embedded broker slows down as its partitions grow (over
    # eight rounds of 200 asks/s on one broker its CPU went from 0.4 to 1.1 of a core and
    # the direct p50 from 14 to 40-70 ms), and a round must not measure the ones before it
    rounds = [_ask_round(n, rate, duration, samples) for n in range(repeats)]
    with gateway_mesh() as gm:
        sse, problem_samples = asyncio.run(followers_phase(gm, followers, follower_events, event_rate))
    gw = [r["gateway"] for r in rounds]
    direct = [r["direct"] for r in rounds]
    added_runs = [round(g["latency"]["p50_ms"] - d["latency"]["p50_ms"], 3) for g, d in zip(gw, direct,
                                                                                              strict=True)]
    added_one_runs = [round(r["gateway_one"]["p50_ms"] - r["direct_one"]["p50_ms"], 3) for r in rounds]
    added, added_one = _median(added_runs), _median(added_one_runs)
    cpu_per_ask = _median([g["gateway_cpu_us_per_ask"] for g in gw])
    floors = {kind: _median([r[f"floor_{kind}"]["cpu_us_per_request"] for r in rounds]) for kind in FLOORS}
    floor_cpu = floors["uvicorn"]
    gateway_ask = _summary([g["latency"] for g in gw])
    direct_ask = _summary([d["latency"] for d in direct])
    figures = {
        "gateway_ask": gateway_ask,
        "gateway_ask_p50_runs": [g["latency"]["p50_ms"] for g in gw],
        "p50_added_ms": added, "p50_added_ms_runs": added_runs,
        "asks_sent": sum(g["sent"] for g in gw), "asks_answered": sum(g["answered"] for g in gw),
        "asks_failed": sum(g["errors"] for g in gw) + sum(r["gateway_one"]["failed"] for r in rounds),
        "gateway_cpu_us_per_ask": cpu_per_ask,
        "gateway_cpu_us_per_ask_runs": [g["gateway_cpu_us_per_ask"] for g in gw],
        "gateway_cpu_share": _median([g["gateway_cpu_share"] for g in gw]),
        "gateway_idle_cpu_share": _median([d["gateway_idle_cpu_share"] for d in direct]),
        # what the asks cost beyond the idle gateway's own polling (its threads, the registry)
        "gateway_cpu_us_per_ask_above_idle": round(_median(
            [(g["gateway_cpu_s"] - d["gateway_idle_cpu_share"] * g["elapsed_s"]) / max(1, g["answered"]) * 1e6
             for g, d in zip(gw, direct, strict=True)]), 1),
        "generator_cpu_us_per_ask": _median([g["generator_cpu_us_per_ask"] for g in gw]),
        "generator_cpu_share": _median([g["generator_cpu_share"] for g in gw]),
        "gateway_one_in_flight": _summary([r["gateway_one"] for r in rounds]),
        "p50_added_one_in_flight_ms": added_one, "p50_added_one_in_flight_ms_runs": added_one_runs,
        "sse": sse,
    }
    raw = {
        "direct_ask": direct_ask, "direct_ask_p50_runs": [d["latency"]["p50_ms"] for d in direct],
        "direct_asks_sent": sum(d["sent"] for d in direct),
        "direct_asks_answered": sum(d["answered"] for d in direct),
        "direct_asks_failed": (sum(d["failed"] for d in direct)
                               + sum(r["direct_one"]["failed"] for r in rounds)),
        "direct_one_in_flight": _summary([r["direct_one"] for r in rounds]),
    }
    every_event = sse["followers_complete"] == followers and sse["problems"] == 0
    cpu_met = 0 < cpu_per_ask <= TARGET_CPU_US_PER_ASK
    added_met = added <= TARGET_P50_ADDED_MS
    added_one_met = added_one <= TARGET_P50_ADDED_MS
    errors = [s for g in gw for s in g["error_samples"]][:3]
    notes = [
        f"load average {load_start} at start, {round(os.getloadavg()[0], 2)} at end (2-core machine: "
        "figures move with what else runs)",
        f"target: gateway CPU per ask at most {TARGET_CPU_US_PER_ASK:g} us: {'met' if cpu_met else 'MISSED'} "
        f"({cpu_per_ask:g} us at {rate} asks/s; answering at once at the same rate costs "
        f"{floors['uvicorn']:g} us per request under the gateway's server, uvicorn, and "
        f"{floors['bare']:g} us from a bare asyncio protocol on uvloop: bench/floor_echo.py)",
        f"target: the gateway adds at most {TARGET_P50_ADDED_MS:g} ms to a direct ask's p50 at {rate} "
        f"asks/s: {'met' if added_met else 'MISSED'} ({gateway_ask['p50_ms']:.2f} ms against "
        f"{direct_ask['p50_ms']:.2f} ms direct, {added:+.2f} ms); one at a time: "
        f"{'met' if added_one_met else 'MISSED'} ({figures['gateway_one_in_flight']['p50_ms']:.2f} ms "
        f"against {raw['direct_one_in_flight']['p50_ms']:.2f} ms, {added_one:+.2f} ms)",
        f"target: each of {followers} followers gets every event of its conversation, in order: "
        f"{'met' if every_event else 'MISSED'} ({sse['followers_complete']} complete, "
        f"{sse['events_delivered']} of {sse['events_appended']} events delivered)",
        f"median of {repeats} rounds, each on a fresh broker and Valkey: {samples} asks one at a time "
        f"each way (after {WARMUP} not counted), then {rate} asks/s for {duration:g} s open loop, direct "
        "and through the gateway in alternating order, timed from each ask's scheduled start",
        f"direct: Asker asks Answerer with `await ctx.ask`, timed inside the agent; gateway: POST "
        f"/agents/{ANSWERER}/ask from the bench's generator ({CONNECTIONS} keep-alive HTTP/1.1 connections, "
        "pre-encoded requests), a new conversation per ask (the gateway appends each request to it)",
        f"SSE: {followers} streams open at once, one conversation each; {follower_events} events appended to "
        f"each with convlog.ConversationLog.append from the bench (as an agent appends), the conversations "
        f"in turn at {event_rate:g} events/s; delivery is timed from each append's call to the event's "
        f"arrival; open streams idled {IDLE_S:g} s before the appends",
    ]
    notes += [f"gateway error answer: {sample}" for sample in errors]
    notes += [f"SSE problem: {sample}" for sample in problem_samples]
    return {
        "scenario": "gateway",
        "settings": {"repeats": repeats, "rate": rate, "duration_s": duration, "samples": samples,
                     "followers": followers, "follower_events": follower_events, "event_rate": event_rate,
                     "connections": CONNECTIONS, "asker": ASKER, "answerer": ANSWERER},
        "figures": figures,
        "raw": raw,
        # servers answering at once (bench/floor_echo.py), loaded the same way at the same rate:
        # bare (an asyncio Protocol on uvloop) and uvicorn (a raw ASGI app under the gateway's
        # server): what serving HTTP costs per request here before the gateway does anything
        "floor": {f"{kind}_http": {
            "cpu_us_per_request": floors[kind],
            "cpu_us_per_request_runs": [r[f"floor_{kind}"]["cpu_us_per_request"] for r in rounds],
            "p50_ms": _median([r[f"floor_{kind}"]["latency"]["p50_ms"] for r in rounds])} for kind in FLOORS},
        "ratios": {
            "p50_gateway_to_direct": ratio(gateway_ask["p50_ms"], direct_ask["p50_ms"]),
            "p99_gateway_to_direct": ratio(gateway_ask["p99_ms"], direct_ask["p99_ms"]),
            "p50_one_in_flight_gateway_to_direct": ratio(figures["gateway_one_in_flight"]["p50_ms"],
                                                         raw["direct_one_in_flight"]["p50_ms"]),
            "gateway_cpu_per_ask_to_uvicorn_floor": ratio(cpu_per_ask, floor_cpu),
        },
        "targets": {
            "gateway_cpu_us_per_ask": {"target": f"<= {TARGET_CPU_US_PER_ASK:g}", "value": cpu_per_ask,
                                       "met": cpu_met},
            "p50_added_ms": {"target": f"<= {TARGET_P50_ADDED_MS:g}", "value": added, "met": added_met},
            "p50_added_one_in_flight_ms": {"target": f"<= {TARGET_P50_ADDED_MS:g}", "value": added_one,
                                           "met": added_one_met},
            "followers_complete": {"target": f"= {followers}", "value": sse["followers_complete"],
                                   "met": every_event},
        },
        "notes": notes,
    }
