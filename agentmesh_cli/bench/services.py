"""Services scenario: the Memory (and, when it exists, Cognition) service as real processes
on a throwaway Valkey, loaded over loopback HTTP, next to raw redis-py doing the same Redis
work at the same concurrency in the same run.

Figures: store_input calls/s with `concurrency` calls in flight and their latency; latency
at a paced rate (measured from each call's scheduled start, so a stall is not hidden);
reading a history of `history` items; get_context over that history; and SSE fan-out, the
delay from a store call's return to each follower's `stored` event.

The service figures come from a lean load generator (`LeanLoad`: keep-alive HTTP/1.1
connections sending pre-encoded requests, parsing only the status line and
Content-Length), which spends well under a tenth of the service's CPU per call; through
httpx the generator itself (~1 ms of CPU per call) would be the limit. store_input is
also measured through httpx, as the figure a Python client library gets.
"""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import redis.asyncio as aioredis
import yaml

from agentmesh_cli import constants as C
from agentmesh_cli import environment
from agentmesh_cli.bench.infra import cpu_seconds, free_port, percentiles
from agentmesh_cli.constants import Keys
from agentmesh_cli.embedded import start_valkey, stop
from agentmesh_cli.errors import BenchError
from agentmesh_cli.services.memory_store import STORE_SCRIPT
from agentmesh_cli.waiting import wait_until, wait_until_async

SSE = {"Accept": "text/event-stream"}
# the rig's services let this token in ($AGENTMESH_SERVICE_TOKEN); every request sends it
TOKEN = secrets.token_urlsafe(32)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
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
        self.clients = [httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10.0, headers=AUTH)
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
        raise BenchError(f"{name} exited {proc.returncode}; see {root / (name + '.log')}")
    try:
        return httpx.get(url + "/health", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


def _listens(port: int, proc: subprocess.Popen[bytes], root: Path) -> bool:
    if proc.poll() is not None:
        raise BenchError(f"the floor server exited with {proc.returncode}; see {root}/floor.log")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
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
        placed = {environment.service_url_variable(s) for s in ports} | {
            environment.service_port_variable(s) for s in ports}
        env = {k: v for k, v in environment.current().items() if k not in placed}
        env[environment.SECRETS["service_token"]] = TOKEN
        procs: dict[str, subprocess.Popen[bytes]] = {"valkey": start_valkey(redis_port, root)}
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        try:
            for name in C.SERVICE_PROGRAMS if with_cognition else (C.PROGRAM_MEMORY,):
                with (root / f"{name}.log").open("wb") as log:
                    procs[name] = subprocess.Popen(
                        [sys.executable, "-m", "agentmesh_cli", name, "--config", str(root / "mesh.yaml")],
                        stdout=log, stderr=subprocess.STDOUT, env=env)
                proc = procs[name]
                wait_until(lambda: _answers(urls[name], proc, name, root), 30, name)  # noqa: B023
            # the floor: a bare server doing the same store (bench/floor_http.py)
            floor_port = free_port()
            with (root / "floor.log").open("wb") as log:
                procs["floor"] = subprocess.Popen(
                    [sys.executable, "-m", "agentmesh_cli.bench.floor_http", str(floor_port), redis_url,
                     mesh + "-floor"], stdout=log, stderr=subprocess.STDOUT)
            urls["floor"] = f"http://127.0.0.1:{floor_port}"
            wait_until(lambda: _listens(floor_port, procs["floor"], root), 30, "floor server")
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
            except (httpx.HTTPError, OSError, BenchError):  # BenchError: an error answer
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
        except (httpx.HTTPError, OSError, BenchError):  # BenchError: an error answer
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
    spent, calls = time.process_time() - own, max(1, result["calls_per_s"] * elapsed)
    result["client_cpu_share"] = round(spent / elapsed, 2)
    result["client_cpu_ms_per_call"] = round(spent * 1000 / calls, 3)
    if cpu_pid:
        served = cpu_seconds(cpu_pid) - before
        result["server_cpu_share"] = round(served / elapsed, 2)
        result["server_cpu_ms_per_call"] = round(served * 1000 / calls, 3)
    # pacing above what the closed loop reached only measures a growing queue: then pace
    # at half the capacity instead (the result says which rate was used)
    capacity = result["calls_per_s"]
    result["paced"] = await paced(call, rate if capacity >= rate else max(1, capacity // 2), duration)
    return result


# -- the lean load generator ------------------------------------------------------------------------

SAMPLE_EVERY = 50  # every n-th 200 answer is decoded and checked (the rest: status line only)
CONTENTS = ("the parcel arrived late but the support was quick",
            "my invoice shows the wrong address, can you fix it",
            "thanks, the replacement works fine now",
            "how long does a refund take to reach my card")


def http_request(host: str, method: str, path: str, body: Any = None, token: str = TOKEN) -> bytes:
    """One HTTP/1.1 keep-alive request, encoded once (with the rig's token unless told)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
    if body is None:
        return (head + "\r\n").encode()
    data = orjson.dumps(body)
    return (head + f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data


def store_requests(host: str, users: int = 16) -> list[bytes]:
    """store_input requests for `users` users and a few contents, taken in turn: the
    service does real work (a new message, five keys, an event) on every one."""
    return [http_request(host, "POST", "/tool/store_input", {"arguments": {
        "user_id": f"bench-writer-{n % users}", "input_data": {
            "content": CONTENTS[n % len(CONTENTS)], "conversation_id": CONVERSATION,
            "metadata": {"channel": "chat"}}}}) for n in range(users * len(CONTENTS))]


class LeanConnection(asyncio.Protocol):
    """One keep-alive connection, one request in flight. Parses only the status line and
    Content-Length, then skips the body (decoding one in `SAMPLE_EVERY`)."""

    def __init__(self, load: LeanLoad) -> None:
        self.load = load
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.started = -1.0  # perf_counter the latency of the request in flight counts from
        self.end = -1  # bytes of the answer being read (headers + body), once its headers are in
        self.body_at = 0
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, started: float) -> None:
        load, transport = self.load, self.transport
        if transport is None:  # lost: the call fails, it is not sent elsewhere
            load.finish(self, 0, b"", started)
            return
        self.started = started
        transport.write(load.requests[load.turn % len(load.requests)])
        load.turn += 1

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            if self.end < 0:
                at = buffer.find(b"\r\n\r\n")
                if at < 0:
                    return
                head = bytes(buffer[:at]).lower()
                length = head.find(b"\r\ncontent-length:")
                if not head.startswith(b"http/1.1 ") or length < 0:
                    self.load.note(f"unparsed answer: {head[:120]!r}")
                    self.close()
                    return
                stop_at = head.find(b"\r\n", length + 2)
                self.status = int(head[9:12])
                self.body_at = at + 4
                self.end = self.body_at + int(head[length + 17:stop_at if stop_at > 0 else len(head)])
            if len(buffer) < self.end:
                return
            body = bytes(buffer[self.body_at:self.end]) if self.load.wants_body(self.status) else b""
            del buffer[:self.end]
            self.end = -1
            started, self.started = self.started, -1.0
            self.load.finish(self, self.status, body, started)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.load.lost(self)
        if self.started >= 0:
            started, self.started = self.started, -1.0
            self.load.finish(self, 0, b"", started)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class LeanLoad:
    """A wrk-like load generator: `connections` keep-alive HTTP/1.1 connections on
    loopback sending pre-encoded `requests` in turn. Latency is time.perf_counter from
    the send (closed loop) or from the scheduled start (paced). Only 200 answers count as
    calls; anything else, a lost connection, or a sampled body without `expect` is an error."""

    def __init__(self, host: str, port: int, requests: list[bytes], connections: int, expect: str) -> None:
        self.host, self.port, self.requests, self.connections = host, port, requests, connections
        self.expect = expect
        self.turn = self.answers = self.errors = self.outstanding = self.live = 0
        self.took: list[float] = []
        self.error_samples: list[str] = []
        self.conns: list[LeanConnection] = []
        self.idle: deque[LeanConnection] = deque()
        self.backlog: deque[float] = deque()
        self.deadline = 0.0
        self.closed_loop = True
        self.drained: asyncio.Future[None] | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.connections):
            _, conn = await loop.create_connection(lambda: LeanConnection(self), self.host, self.port)
            self.conns.append(conn)
            self.live += 1

    def close(self) -> None:
        for conn in self.conns:
            conn.close()

    def note(self, error: str) -> None:
        if len(self.error_samples) < 3:
            self.error_samples.append(error)

    def wants_body(self, status: int) -> bool:
        return status != 200 or (self.answers + 1) % SAMPLE_EVERY == 0

    def lost(self, conn: LeanConnection) -> None:
        self.live -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        if self.live == 0 and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)  # what is still waiting will never be sent

    def finish(self, conn: LeanConnection, status: int, body: bytes, started: float) -> None:
        now = time.perf_counter()
        self.outstanding -= 1
        if status == 200:
            self.answers += 1
            if body and self.expect not in orjson.loads(body):
                self.errors += 1
                self.note(f"200 without {self.expect!r}: {body[:120]!r}")
            else:
                self.took.append((now - started) * 1000)
        else:
            self.errors += 1
            self.note(f"{status or 'connection lost'}: {body[:160]!r}")
        if conn.transport is None:
            pass
        elif self.closed_loop:
            if now < self.deadline:
                self.outstanding += 1
                conn.send(now)
        elif self.backlog:  # counted in `outstanding` when it was scheduled
            conn.send(self.backlog.popleft())
        else:
            self.idle.append(conn)
        if self.outstanding == 0 and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    async def _drain(self, timeout: float) -> None:
        """Wait for every call in flight to answer (or fail)."""
        if self.outstanding > 0:
            self.drained = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(self.drained, timeout)
        self.drained = None

    async def run_closed(self, duration: float) -> dict[str, Any]:
        """Every connection calls back to back for `duration` seconds."""
        self.took, self.errors, self.answers, self.closed_loop = [], 0, 0, True
        with no_gc():
            started = time.perf_counter()
            self.deadline = started + duration
            for conn in [conn for conn in self.conns if conn.transport is not None]:
                self.outstanding += 1
                conn.send(time.perf_counter())
            await self._drain(duration + 30)
            elapsed = time.perf_counter() - started
        return {"calls_per_s": round(len(self.took) / elapsed), "errors": self.errors,
                **percentiles(self.took or [0.0])}

    async def run_paced(self, rate: int, duration: float) -> dict[str, Any]:
        """`rate` calls/s on a fixed schedule; a call with no free connection waits in a
        backlog, and its latency still counts from its scheduled start."""
        self.took, self.errors, self.answers, self.closed_loop = [], 0, 0, False
        self.backlog.clear()
        self.idle = deque(conn for conn in self.conns if conn.transport is not None)
        total = int(rate * duration)
        with no_gc():
            begin = time.perf_counter() + 0.05
            n = 0
            while n < total:
                now = time.perf_counter()
                due = begin + n / rate
                if due > now:
                    await asyncio.sleep(due - now)
                    continue
                while n < total and begin + n / rate <= now:
                    self.outstanding += 1
                    if self.idle:
                        self.idle.popleft().send(begin + n / rate)
                    else:
                        self.backlog.append(begin + n / rate)
                    n += 1
                if self.live == 0:
                    break  # every connection lost: the rest would never be sent
            if self.live > 0:
                await self._drain(duration + 30)
        unsent = len(self.backlog) + total - n  # scheduled but never sent (connections lost)
        self.errors += unsent
        self.outstanding -= len(self.backlog)
        self.backlog.clear()
        if unsent:
            self.note(f"{unsent} calls never sent: every connection was lost")
        return {"rate": rate, "errors": self.errors, **percentiles(self.took or [0.0])}


async def lean_loaded(url: str, requests: list[bytes], expect: str, concurrency: int, rate: int,
                      duration: float, cpu_pid: int | None = None) -> dict[str, Any]:
    """`loaded` with the lean generator: the closed loop and the paced phase on fresh
    connections each, and both sides' CPU per call."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    load = LeanLoad(host, int(port), requests, concurrency, expect)
    await load.open()
    try:
        before = cpu_seconds(cpu_pid) if cpu_pid else 0.0
        own, wall = time.process_time(), time.perf_counter()
        result = await load.run_closed(duration)
        elapsed, spent = time.perf_counter() - wall, time.process_time() - own
        served = (cpu_seconds(cpu_pid) - before) if cpu_pid else 0.0
    finally:
        load.close()
    result["generator"] = f"lean: {concurrency} keep-alive HTTP/1.1 connections, pre-encoded requests"
    calls = max(1, result["calls_per_s"] * elapsed)
    result["client_cpu_share"] = round(spent / elapsed, 2)
    result["client_cpu_ms_per_call"] = round(spent * 1000 / calls, 3)
    if cpu_pid:
        result["server_cpu_share"] = round(served / elapsed, 2)
        result["server_cpu_ms_per_call"] = round(served * 1000 / calls, 3)
    capacity = result["calls_per_s"]
    samples = load.error_samples
    load = LeanLoad(host, int(port), requests, concurrency, expect)
    await load.open()
    try:
        own, wall = time.process_time(), time.perf_counter()
        paced_rate = rate if capacity >= rate else max(1, capacity // 2)
        result["paced"] = await load.run_paced(paced_rate, duration)
        spent, elapsed = time.process_time() - own, time.perf_counter() - wall
        result["paced"]["client_cpu_share"] = round(spent / elapsed, 2)
    finally:
        load.close()
    if samples or load.error_samples:
        result["error_samples"] = (samples + load.error_samples)[:4]
    return result


# -- the calls ------------------------------------------------------------------------------------

def _checked(answer: httpx.Response) -> None:
    if answer.status_code != 200:
        raise BenchError(f"{answer.request.url} answered {answer.status_code}: {answer.text[:200]}")


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
    async with httpx.AsyncClient(base_url=memory_url, limits=limits, timeout=timeout, headers=AUTH) as http:

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
            await wait_until_async(lambda: len(following) + len(refused) == followers, 30,
                                   "followers to subscribe", interval=0.001)
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
                await wait_until_async(lambda: len(arrived.get(content, [])) == len(following),  # noqa: B023
                                       10, f"round {n} at every follower", interval=0.001)
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


# -- the run --------------------------------------------------------------------------------------

TARGETS = {"store_input_calls_per_s": 2000, "store_input_paced_p99_ms": 10.0}


async def get_context_scenario(rig_: Rig, concurrency: int, rate: int, duration: float
                               ) -> dict[str, Any] | None:
    """get_context over the seeded history, loaded like store_input; None without cognition."""
    if "cognition" not in rig_.procs:
        return None
    url = rig_.urls["cognition"]
    async with Clients(url, 1) as http:
        await context_call(http, USER)()  # fails loudly if cognition cannot answer at all
    request = http_request(url.removeprefix("http://"), "POST", "/tool/get_context",
                           {"arguments": {"user_id": USER, "query": "late parcel support", "limit": 10}})
    return await lean_loaded(url, [request], "result", concurrency, rate, duration,
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
            url = rig_.urls["memory"]
            host = url.removeprefix("http://")
            result["store_input"] = await lean_loaded(url, store_requests(host), "result", concurrency,
                                                      rate, duration, cpu_pid=memory_pid)
            # the same calls through a client library, as an application would make them
            result["store_input_httpx"] = await loaded(store_call(http, "bench-writer"), concurrency, rate,
                                                       duration, cpu_pid=memory_pid)
            floor = rig_.urls["floor"]
            result["floor_store"] = await lean_loaded(floor, store_requests(floor.removeprefix("http://")),
                                                      "result", concurrency, rate, duration,
                                                      cpu_pid=rig_.procs["floor"].pid)
            result["raw_store"] = await loaded(raw_store_call(store, raw_keys, "bench-writer"), concurrency,
                                               rate, duration, cpu_pid=valkey_pid)
            read = http_request(host, "GET", f"/resource/history/{USER}/limit/{history}")
            result["history_read"] = await lean_loaded(url, [read], "items", concurrency, rate, duration,
                                                       cpu_pid=memory_pid)
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
    figures = {key: result[key] for key in ("store_input", "store_input_httpx", "history_read",
                                            "get_context", "sse_fan_out") if result.get(key) is not None}
    floor, raw = result["floor_store"], result["raw_store"]
    return {
        "scenario": "services",
        "settings": {"duration_s": duration, "concurrency": concurrency, "paced_rate": rate,
                     "followers": followers, "history_items": history, "fan_out_rounds": rounds},
        "machine": machine,
        "figures": figures,
        # raw: redis-py doing the same Redis work (the physical limit of the path); floor: a bare
        # HTTP server with no framework doing the same store (bench/floor_http.py)
        "raw": {"store": raw, "history_read": result["raw_history_read"]},
        "floor": {"store": floor},
        "ratios": {
            "store_input_to_floor": round(store["calls_per_s"] / max(1, floor["calls_per_s"]), 3),
            "store_input_to_raw": round(store["calls_per_s"] / max(1, raw["calls_per_s"]), 3),
            "store_input_paced_p99_to_floor": round(store["paced"]["p99_ms"]
                                                    / max(0.001, floor["paced"]["p99_ms"]), 3),
        },
        "targets": {
            "store_input_calls_per_s": {"target": ">= 2000/s", "value": store["calls_per_s"],
                                        "met": store["calls_per_s"] >= TARGETS["store_input_calls_per_s"]},
            "store_input_paced_p99_ms": {
                "target": f"< {TARGETS['store_input_paced_p99_ms']:g} ms at {store['paced']['rate']}/s",
                "value": store["paced"]["p99_ms"],
                "met": store["paced"]["p99_ms"] < TARGETS["store_input_paced_p99_ms"]},
        },
        "notes": notes,
    }
