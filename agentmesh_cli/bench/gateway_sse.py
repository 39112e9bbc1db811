"""The SSE part of `agentmesh bench gateway`: many followers of the gateway's conversation
events, each on its own conversation, all open at once, fed by an appender that writes
each conversation's events as an agent does.

- `SseFollower`: one `GET /conversations/{id}/events` on a raw asyncio connection (no HTTP
  library: a thousand of them must cost the bench little CPU). It undoes the chunked
  transfer coding, splits the stream into events (sse_starlette separates lines with
  CRLF), and keeps each `message` event's id and arrival time; any other event (`error`,
  `gone`) is kept as a problem.
- `append_events`: `convlog.ConversationLog.append` on a synchronous redis-py client, as an
  agent appends (the gateway only reads: its CPU is the fan-out's alone), `per_follower`
  events to every conversation in turn, paced at `rate` events/s. It returns the stream
  ids each append got, which are the SSE ids the followers must see, in that order.
- `followers_phase`: the streams opened (the gateway's CPU per stream opened), left idle
  IDLE_S (its CPU share while they are open), fed (its CPU per event delivered, the
  delivery delay), checked, closed; the gateway's RSS before, with the streams open,
  after the events, at its peak (sampled every RSS_EVERY_S) and after the streams closed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import psutil
import redis

from agentmesh_cli import convlog, events
from agentmesh_cli.bench.infra import percentiles
from agentmesh_cli.bench.services import no_gc
from agentmesh_cli.constants import Keys
from agentmesh_cli.errors import BenchError, WaitTimeout
from agentmesh_cli.waiting import wait_until_async

if TYPE_CHECKING:
    from agentmesh_cli.bench.gateway import GatewayMesh

CONNECT_BATCH = 100  # connections opened at once (the rest wait their turn)
OPEN_TIMEOUT_S = 60.0  # for all the follow streams to be answered
IDLE_S = 2.0  # the followers stay open this long, nothing appended: what open streams cost
RSS_EVERY_S = 0.05
EVENT_TYPE = "bench_event"
APPENDER = "bench-appender"


class SseFollower(asyncio.Protocol):
    """One follow stream; `status` once its answer's head is in (0: none yet, -1: lost)."""

    def __init__(self, request: bytes, on_event: Callable[[], None]) -> None:
        self.request = request
        self.on_event = on_event
        self.head_in: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.raw = bytearray()  # bytes read and not yet de-chunked
        self.text = bytearray()  # the body, de-chunked, not yet split into events
        self.chunked = False
        self.status = 0
        self.ids: list[str] = []
        self.arrived: list[float] = []  # time.perf_counter of each message event
        self.problems: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.head_in.done():
            self.status = -1
            self.head_in.set_result(-1)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.raw += data
        if not self.head_in.done():
            at = self.raw.find(b"\r\n\r\n")
            if at < 0:
                return
            head = bytes(self.raw[:at]).lower()
            self.status = int(head[9:12]) if head.startswith(b"http/1.1 ") else -1
            self.chunked = b"\r\ntransfer-encoding: chunked" in head
            del self.raw[:at + 4]
            self.head_in.set_result(self.status)
        if self.chunked:
            self._dechunk()
        else:
            self.text += self.raw
            self.raw.clear()
        self._split(now)

    def _dechunk(self) -> None:
        raw = self.raw
        while True:
            line_end = raw.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(raw[:line_end]).split(b";", 1)[0], 16)
            if len(raw) < line_end + 2 + size + 2:
                return  # the chunk is not all in yet
            self.text += raw[line_end + 2:line_end + 2 + size]
            del raw[:line_end + 2 + size + 2]
            if size == 0:
                self.problems.append("the stream ended")
                return

    def _split(self, now: float) -> None:
        text = self.text
        while (end := text.find(b"\r\n\r\n")) >= 0:
            block = bytes(text[:end])
            del text[:end + 4]
            event, event_id = "", ""
            for line in block.split(b"\r\n"):  # `data:` lines are not read: the id says it all
                if line.startswith(b"id: "):
                    event_id = line[4:].decode()
                elif line.startswith(b"event: "):
                    event = line[7:].decode()
            if not event:
                continue  # a comment (the keep-alive ping)
            if event == convlog.EVENT_MESSAGE:
                self.ids.append(event_id)
                self.arrived.append(now)
                self.on_event()
            else:
                self.problems.append(f"{event}: {block[:160]!r}")


class Followers:
    """`len(conversations)` followers on the gateway at host:port, one per conversation."""

    def __init__(self, host: str, port: int, token: str, conversations: list[str]) -> None:
        self.host, self.port, self.token = host, port, token
        self.conversations = conversations
        self.streams: list[SseFollower] = []
        self.delivered = 0

    def _counted(self) -> None:
        self.delivered += 1

    def _request(self, conversation: str) -> bytes:
        return (f"GET /conversations/{conversation}/events HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n\r\n").encode()

    async def open(self, timeout: float) -> None:
        """Open every stream and wait for each answer's head: the gateway registers a
        follower before it answers, so an event appended after this is not missed."""
        loop = asyncio.get_running_loop()
        for start in range(0, len(self.conversations), CONNECT_BATCH):
            batch = [SseFollower(self._request(c), self._counted)
                     for c in self.conversations[start:start + CONNECT_BATCH]]
            await asyncio.gather(*(loop.create_connection(lambda s=s: s, self.host, self.port)  # type: ignore[misc]
                                   for s in batch))
            self.streams += batch
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(s.head_in for s in batch))
        refused = [s.status for s in self.streams if s.status != 200]
        if refused:
            raise BenchError(f"{len(refused)} of {len(self.streams)} follow streams were refused "
                             f"(status {refused[0]})")

    def close(self) -> None:
        for stream in self.streams:
            stream.close()

    def check(self, appended: dict[str, list[tuple[str, float]]]) -> dict[str, Any]:
        """Did every follower get every event of its conversation, in order, and nothing
        else? The counts, and the delivery delay from each append's call."""
        complete = in_order = 0
        delays: list[float] = []
        problems: list[str] = []
        for conversation, stream in zip(self.conversations, self.streams, strict=True):
            expected = appended.get(conversation, [])
            ids = [stream_id for stream_id, _ in expected]
            complete += stream.ids == ids
            pairs = [convlog.stream_id(i) or (0, 0) for i in stream.ids]
            in_order += all(a < b for a, b in zip(pairs, pairs[1:], strict=False))
            sent = dict(expected)
            delays += [(at - sent[i]) * 1000 for i, at in zip(stream.ids, stream.arrived, strict=True)
                       if i in sent]
            problems += stream.problems
        return {"complete": complete, "in_order": in_order, "problems": len(problems),
                "problem_samples": problems[:3], "delivery": percentiles(delays or [0.0])}


def append_events(redis_url: str, mesh: str, conversations: list[str], per_follower: int, rate: float,
                  kept: int, ttl_s: float) -> dict[str, list[tuple[str, float]]]:
    """Append `per_follower` events to each conversation, the conversations in turn, at
    `rate` events/s: conversation -> [(stream id, time.perf_counter of the append's call)]."""
    client = redis.Redis.from_url(redis_url, socket_timeout=10.0, socket_connect_timeout=5.0)
    log = convlog.ConversationLog(client, Keys(mesh), kept, ttl_s)
    appended: dict[str, list[tuple[str, float]]] = {c: [] for c in conversations}
    try:
        begin, n = time.perf_counter(), 0
        for round_ in range(per_follower):
            for conversation in conversations:
                if (wait := begin + n / rate - time.perf_counter()) > 0:
                    time.sleep(wait)
                n += 1
                envelope = events.message(APPENDER, "bench-reader", EVENT_TYPE, {"n": round_},
                                          {"conversation": conversation})
                called = time.perf_counter()
                stream_id = log.append(conversation, envelope)
                if not stream_id:
                    raise BenchError(f"the append to {conversation} was refused ({stream_id!r})")
                appended[conversation].append((stream_id, called))
    finally:
        client.close()
    return appended


# the phase ----------------------------------------------------------------------------------
def cpu_s(pid: int) -> float:
    """User + system CPU seconds process `pid` has used so far, every thread (psutil)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


class RssPeak:
    """The gateway's RSS, sampled every RSS_EVERY_S while it runs (the peak of the phase)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0.0
        self._task: asyncio.Task[None] | None = None

    def now(self) -> float:
        rss = round(self.process.memory_info().rss / 2**20, 1)
        self.peak = max(self.peak, rss)
        return rss

    async def _sample(self) -> None:
        while True:
            self.now()
            await asyncio.sleep(RSS_EVERY_S)

    def __enter__(self) -> RssPeak:
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


async def followers_phase(gm: GatewayMesh, followers: int, per_follower: int,
                          event_rate: float) -> tuple[dict[str, Any], list[str]]:
    """Open the streams, let them idle, append, wait for every event: the figures, and a few
    samples of what went wrong (empty when nothing did)."""
    mesh = gm.agents.bench.mesh
    settings = mesh.config.gateway
    tag = uuid.uuid4().hex[:8]
    conversations = [f"bench-{tag}-{i}" for i in range(followers)]
    streams = Followers(gm.host, gm.port, gm.token, conversations)
    total = followers * per_follower
    with RssPeak(gm.pid) as rss:
        rss_before, cpu0, wall0 = rss.now(), cpu_s(gm.pid), time.perf_counter()
        try:
            await streams.open(OPEN_TIMEOUT_S)
            cpu1, wall1, rss_open = cpu_s(gm.pid), time.perf_counter(), rss.now()
            await asyncio.sleep(IDLE_S)
            with no_gc():  # the bench's own collections would show up as delivery delays
                cpu2, own2, wall2 = cpu_s(gm.pid), time.process_time(), time.perf_counter()
                appended = await asyncio.to_thread(append_events, mesh.redis_url, mesh.config.mesh,
                                                   conversations, per_follower, event_rate,
                                                   settings.events_kept, settings.events_ttl)
                appends_s = time.perf_counter() - wall2
                try:
                    await wait_until_async(lambda: streams.delivered >= total, 30 + total / event_rate,
                                           "every event at its follower", interval=0.005)
                except WaitTimeout:
                    pass  # reported: the check below counts what came
                cpu3, own3, wall3, rss_after = (cpu_s(gm.pid), time.process_time(), time.perf_counter(),
                                                rss.now())
        finally:
            streams.close()
        check = streams.check(appended)
        await asyncio.sleep(1.0)  # the gateway notices the closed streams
        rss_closed = rss.now()
    delivered = streams.delivered
    return {
        "followers": followers, "events_per_follower": per_follower, "events_appended": total,
        "events_delivered": delivered, "followers_complete": check["complete"],
        "followers_in_order": check["in_order"], "problems": check["problems"],
        "append_rate": round(total / appends_s), "delivery": check["delivery"],
        "open_s": round(wall1 - wall0, 3),
        "gateway_cpu_s_open": round(cpu1 - cpu0, 3),
        "gateway_cpu_us_per_follower_open": round((cpu1 - cpu0) / followers * 1e6, 1),
        "gateway_idle_cpu_share_open": round((cpu2 - cpu1) / (wall2 - wall1), 3),
        "gateway_cpu_s_delivery": round(cpu3 - cpu2, 3),
        "gateway_cpu_us_per_event": round((cpu3 - cpu2) / max(1, delivered) * 1e6, 1),
        "gateway_cpu_share_delivery": round((cpu3 - cpu2) / (wall3 - wall2), 3),
        "bench_cpu_us_per_event": round((own3 - own2) / max(1, delivered) * 1e6, 1),
        "rss_mb": {"before": rss_before, "open": rss_open, "after": rss_after, "peak": rss.peak,
                   "closed": rss_closed},
    }, check["problem_samples"]
