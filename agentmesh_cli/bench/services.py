"""Services scenario: the Memory (and, when it exists, Cognition) service as real processes
on a throwaway Valkey, loaded over loopback HTTP, next to raw redis-py doing the same Redis
work at the same concurrency in the same run.

Figures: store_input calls/s with `concurrency` calls in flight and their latency; latency
at a paced rate (measured from each call's scheduled start, so a stall is not hidden);
reading a history of `history` items; get_context over that history; and SSE fan-out, the
delay from a store call's return to each follower's `stored` event.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import redis.asyncio as aioredis
import yaml

from agentmesh_cli.bench.infra import cpu_seconds, free_port, percentiles
from agentmesh_cli.constants import Keys
from agentmesh_cli.embedded import start_valkey, stop, wait_until
from agentmesh_cli.services.memory import STORE_SCRIPT

SSE = {"Accept": "text/event-stream"}
USER, CONVERSATION = "bench-user", "bench-conv"
PER_CLIENT = 4  # connections per httpx client (see Clients)
Call = Callable[[], Awaitable[None]]


class Clients:
    """httpx clients of `PER_CLIENT` connections each, taken in turn. One client with 64
    connections costs the load generator far more CPU per call (measured here: 121 calls/s
    at 64 in flight against 970 calls/s with 16 clients of 4), which would measure httpx's
    pool instead of the service."""

    def __init__(self, base_url: str, connections: int) -> None:
        limits = httpx.Limits(max_connections=PER_CLIENT, max_keepalive_connections=PER_CLIENT)
        self.clients = [httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10.0)
                        for _ in range(max(1, -(-connections // PER_CLIENT)))]
        self.turn = 0

    def next(self) -> httpx.AsyncClient:
        self.turn += 1
        return self.clients[self.turn % len(self.clients)]

    async def __aenter__(self) -> Clients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients))


@dataclass
class Rig:
    """The throwaway processes of one run and the URLs they answer on."""

    root: Path
    redis_url: str
    mesh: str
    urls: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]]


def cognition_available() -> bool:
    """Whether this install has the `agentmesh cognition` command."""
    found = subprocess.run([sys.executable, "-m", "agentmesh_cli", "cognition", "--help"],
                           capture_output=True, timeout=60)
    return found.returncode == 0


def _answers(url: str, proc: subprocess.Popen[bytes], name: str, root: Path) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"{name} exited {proc.returncode}; see {root / (name + '.log')}")
    try:
        return httpx.get(url + "/health", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def rig(with_cognition: bool) -> Iterator[Rig]:
    """Valkey, memory and (maybe) cognition on free loopback ports; stopped by pid."""
    with tempfile.TemporaryDirectory(prefix="agentmesh-bench-") as tmp:
        root = Path(tmp)
        redis_port = free_port()
        ports = {"memory": free_port(), "cognition": free_port()}
        mesh = f"bench{uuid.uuid4().hex[:6]}"
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        (root / "mesh.yaml").write_text(yaml.safe_dump({
            "mesh": mesh, "redis": {"url": redis_url}, "agents": [],
            "services": {name: {"host": "127.0.0.1", "port": port} for name, port in ports.items()},
        }), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.endswith(("_SERVICE_PORT", "_SERVICE_URL"))}
        procs: dict[str, subprocess.Popen[bytes]] = {"valkey": start_valkey(redis_port, root)}
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        try:
            for name in ("memory", "cognition") if with_cognition else ("memory",):
                with (root / f"{name}.log").open("wb") as log:
                    procs[name] = subprocess.Popen(
                        [sys.executable, "-m", "agentmesh_cli", name, "--config", str(root / "mesh.yaml")],
                        stdout=log, stderr=subprocess.STDOUT, env=env)
                proc = procs[name]
                wait_until(lambda: _answers(urls[name], proc, name, root), 30, name)  # noqa: B023
            yield Rig(root, redis_url, mesh, urls, procs)
        finally:
            for proc in reversed(procs.values()):
                stop(proc)


# -- load shapes --------------------------------------------------------------------------------

@contextmanager
def no_gc() -> Iterator[None]:
    """The load generator's own garbage collector paused for a timed phase: one of its
    full collections (~100 ms with thousands of calls in flight) would otherwise show up
    as the service's p99."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def closed_loop(call: Call, concurrency: int, duration: float) -> dict[str, Any]:
    """`concurrency` workers calling back to back for `duration` seconds."""
    took: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                await call()
            except (httpx.HTTPError, OSError, RuntimeError):
                errors += 1
                continue
            took.append((time.perf_counter() - start) * 1000)

    with no_gc():
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"calls_per_s": round(len(took) / elapsed), "errors": errors, **percentiles(took or [0.0])}


async def paced(call: Call, rate: int, duration: float) -> dict[str, Any]:
    """`rate` calls per second on a fixed schedule; latency counts from the scheduled
    start, so calls that queue behind a slow one pay for the wait."""
    took: list[float] = []
    errors = 0
    begin = 0.0  # set once the collector is paused (the collection before takes a while)

    async def one(n: int) -> None:
        nonlocal errors
        scheduled = begin + n / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        try:
            await call()
        except (httpx.HTTPError, OSError, RuntimeError):
            errors += 1
            return
        took.append((time.perf_counter() - scheduled) * 1000)

    with no_gc():
        begin = time.perf_counter() + 0.05
        await asyncio.gather(*(one(n) for n in range(int(rate * duration))))
    return {"rate": rate, "errors": errors, **percentiles(took or [0.0])}


async def loaded(call: Call, concurrency: int, rate: int, duration: float,
                 cpu_pid: int | None = None) -> dict[str, Any]:
    """Both shapes for one call; the CPU share (of one core) of the load generator and, with
    `cpu_pid`, of that server process in the closed loop."""
    before, own, wall = (cpu_seconds(cpu_pid) if cpu_pid else 0.0), time.process_time(), time.perf_counter()
    result = await closed_loop(call, concurrency, duration)
    elapsed = time.perf_counter() - wall
    result["client_cpu_share"] = round((time.process_time() - own) / elapsed, 2)
    if cpu_pid:
        result["server_cpu_share"] = round((cpu_seconds(cpu_pid) - before) / elapsed, 2)
    # pacing above what the closed loop reached only measures a growing queue: then pace
    # at half the capacity instead (the result says which rate was used)
    capacity = result["calls_per_s"]
    result["paced"] = await paced(call, rate if capacity >= rate else max(1, capacity // 2), duration)
    return result


# -- the calls ------------------------------------------------------------------------------------

def _checked(answer: httpx.Response) -> None:
    if answer.status_code != 200:
        raise RuntimeError(f"{answer.request.url} answered {answer.status_code}: {answer.text[:200]}")


def store_call(http: Clients, user: str) -> Call:
    body = {"arguments": {"user_id": user, "input_data": {
        "content": "the parcel arrived late but the support was quick", "conversation_id": CONVERSATION,
        "metadata": {"channel": "chat"}}}}

    async def call() -> None:
        _checked(await http.next().post("/tool/store_input", json=body))

    return call


def raw_store_call(store: aioredis.Redis, keys: Keys, user: str) -> Call:
    """What MemoryStore.add sends for one message: STORE_SCRIPT by EVALSHA (the counter,
    SET, three ZADDs and PUBLISH in one round trip)."""
    script = store.register_script(STORE_SCRIPT)

    async def call() -> None:
        now, message_id = time.time(), str(uuid.uuid4())
        item = {"message_id": message_id, "user_id": user, "conversation_id": CONVERSATION,
                "timestamp": now, "content": "the parcel arrived late but the support was quick",
                "metadata": {"channel": "chat"}}
        encoded = orjson.dumps(item)
        await script(keys=[keys.memory_seq, keys.memory_message(message_id), keys.memory_user(user),
                           keys.memory_conversation(CONVERSATION),
                           keys.memory_conversation_user(CONVERSATION, user)],
                     args=[message_id, repr(now), encoded, keys.memory_events,
                           b'{"event":"stored","item":' + encoded + b"}"])

    return call


def history_call(http: Clients, user: str, limit: int) -> Call:
    async def call() -> None:
        _checked(await http.next().get(f"/resource/history/{user}/limit/{limit}"))

    return call


def raw_history_call(store: aioredis.Redis, keys: Keys, user: str, limit: int) -> Call:
    """What MemoryStore.items sends: ZREVRANGE, then MGET of the messages (and the decode)."""
    async def call() -> None:
        members = cast(list[bytes], await store.zrevrange(keys.memory_user(user), 0, limit - 1))
        ids = [member.decode().split(":", 1)[1] for member in members]
        raws = await store.mget([keys.memory_message(i) for i in ids])
        [orjson.loads(raw) for raw in raws if raw is not None]

    return call


def context_call(http: Clients, user: str) -> Call:
    body = {"arguments": {"user_id": user, "query": "late parcel support", "limit": 10}}

    async def call() -> None:
        _checked(await http.next().post("/tool/get_context", json=body))

    return call


# -- SSE fan-out ----------------------------------------------------------------------------------

async def fan_out(memory_url: str, followers: int, rounds: int) -> dict[str, Any]:
    """`followers` streams on one user's history; per round one store call, and the delay
    from its return to each follower's `stored` event (negative: it came first). A stream
    the service refuses, or a store call that fails while the streams are open, is
    reported in the result instead of raised: that is a finding too."""
    user = f"fan-{uuid.uuid4().hex[:6]}"
    arrived: dict[str, list[float]] = {}
    following: list[bool] = []
    refused: list[str] = []
    limits = httpx.Limits(max_connections=followers + 8, max_keepalive_connections=followers + 8)
    timeout = httpx.Timeout(30.0, connect=5.0)
    result: dict[str, Any] = {"followers": followers, "rounds": rounds}
    async with httpx.AsyncClient(base_url=memory_url, limits=limits, timeout=timeout) as http:

        async def follow() -> None:
            async with http.stream("GET", f"/resource/history/{user}", params={"follow": "true"},
                                   headers=SSE) as answer:
                if answer.status_code != 200:
                    refused.append(f"{answer.status_code} {(await answer.aread())[:160].decode()}")
                    return
                event = ""
                async for line in answer.aiter_lines():
                    if line.startswith(": following"):
                        following.append(True)
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event == "stored":
                        content = orjson.loads(line[5:])["content"]
                        arrived.setdefault(content, []).append(time.perf_counter())

        tasks = [asyncio.create_task(follow()) for _ in range(followers)]
        delays: list[float] = []
        from_start: list[float] = []
        try:
            await _until(lambda: len(following) + len(refused) == followers, 30, "followers to subscribe")
            result |= {"subscribed": len(following), "refused": len(refused), "refusals": refused[:3]}
            for n in range(rounds):
                content = f"fan-out round {n}"
                sent = time.perf_counter()
                answer = await http.post("/tool/store_input", json={"arguments": {
                    "user_id": user, "input_data": {"content": content}}})
                returned = time.perf_counter()
                if answer.status_code != 200:
                    result["store_error"] = f"round {n}: {answer.status_code} {answer.text[:160]}"
                    break
                await _until(lambda: len(arrived.get(content, [])) == len(following), 10,  # noqa: B023
                             f"round {n} at every follower")
                delays += [(at - returned) * 1000 for at in arrived[content]]
                from_start += [(at - sent) * 1000 for at in arrived[content]]
                await asyncio.sleep(0.02)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    if delays:
        result |= {**percentiles(delays), "from_call_start": percentiles(from_start)}
    return result


async def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.001)


# -- the run --------------------------------------------------------------------------------------

TARGETS = {"store_input_calls_per_s": 2000, "store_input_paced_p99_ms": 10.0}


async def get_context_scenario(rig_: Rig, concurrency: int, rate: int, duration: float
                               ) -> dict[str, Any] | None:
    """get_context over the seeded history, loaded like store_input; None without cognition."""
    if "cognition" not in rig_.procs:
        return None
    async with Clients(rig_.urls["cognition"], concurrency) as http:
        await context_call(http, USER)()  # fails loudly if cognition cannot answer at all
        return await loaded(context_call(http, USER), concurrency, rate, duration,
                            cpu_pid=rig_.procs["cognition"].pid)


def _machine() -> dict[str, Any]:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), "")
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": sys.version.split()[0],
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


async def _measure(rig_: Rig, duration: float, concurrency: int, rate: int, followers: int,
                   history: int, rounds: int) -> dict[str, Any]:
    keys, raw_keys = Keys(rig_.mesh), Keys(rig_.mesh + "-raw")
    pool = aioredis.BlockingConnectionPool.from_url(rig_.redis_url, max_connections=concurrency, timeout=10)
    store = aioredis.Redis(connection_pool=pool)
    memory_pid, valkey_pid = rig_.procs["memory"].pid, rig_.procs["valkey"].pid
    result: dict[str, Any] = {}
    try:
        async with Clients(rig_.urls["memory"], concurrency) as http:
            seed = store_call(http, USER)
            await asyncio.gather(*(seed() for _ in range(history)))
            result["store_input"] = await loaded(store_call(http, "bench-writer"), concurrency, rate,
                                                 duration, cpu_pid=memory_pid)
            result["raw_store"] = await loaded(raw_store_call(store, raw_keys, "bench-writer"), concurrency,
                                               rate, duration, cpu_pid=valkey_pid)
            result["history_read"] = await loaded(history_call(http, USER, history), concurrency, rate,
                                                  duration, cpu_pid=memory_pid)
            result["raw_history_read"] = await loaded(raw_history_call(store, keys, USER, history),
                                                      concurrency, rate, duration, cpu_pid=valkey_pid)
        result["get_context"] = await get_context_scenario(rig_, concurrency, rate, duration)
        result["sse_fan_out"] = await fan_out(rig_.urls["memory"], followers, rounds)
    finally:
        await store.aclose()
        await pool.aclose()
    return result


def run(duration: float = 5.0, concurrency: int = 64, rate: int = 500, followers: int = 100,
        history: int = 200, rounds: int = 20) -> dict[str, Any]:
    """Start the rig, measure every figure, stop the rig; one dict of results."""
    notes = []
    with_cognition = cognition_available()
    if not with_cognition:
        notes.append("get_context skipped: this install has no `agentmesh cognition` command")
    machine = _machine()
    with rig(with_cognition) as rig_:
        result = asyncio.run(_measure(rig_, duration, concurrency, rate, followers, history, rounds))
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    store = result["store_input"]
    return {
        "scenario": "services",
        "settings": {"duration_s": duration, "concurrency": concurrency, "paced_rate": rate,
                     "followers": followers, "history_items": history, "fan_out_rounds": rounds},
        "machine": machine,
        **result,
        "targets": {
            **TARGETS,
            "store_input_calls_per_s_met": store["calls_per_s"] >= TARGETS["store_input_calls_per_s"],
            "store_input_paced_p99_met": store["paced"]["p99_ms"] < TARGETS["store_input_paced_p99_ms"],
        },
        "notes": notes,
    }
