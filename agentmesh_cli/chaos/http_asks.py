"""Asks through the gateway over HTTP, as a client outside the mesh makes them: each ask
with an `Idempotency-Key` of its own, sent again with the same key after a connection
error, a 503 or a 504, until it is answered or its final deadline passes.

The gateway derives the request's id from the user and the key, so every attempt of an
ask is the same request to the agent: handled once, and answered again from its reply
cache (agent/exchange.py) or when its handler replies. The stream runs an event loop of
its own in one thread (many asks wait at once, each a task); `figures()` sums it up.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from agentmesh_cli.chaos.probes import Pace

TICK_S = 0.01
RETRY_S = 0.2  # between two attempts of one ask
RETRIED = frozenset({503, 504})  # the gateway is not ready, or the reply did not come in time
MAX_CONNECTIONS = 256
EXAMPLES_KEPT = 5

Request = tuple[str, str, dict[str, Any]]  # agent, message type, payload


@dataclass
class HttpAsk:
    seq: int
    key: str  # its Idempotency-Key
    agent: str
    started: float  # monotonic, its first attempt
    attempts: int = 0
    done: bool = False
    reply: dict[str, Any] | None = None  # the 200's body
    attempt_started: float = 0.0  # of the attempt that got the reply
    answered_at: float = 0.0
    error: str = ""  # why it ended unanswered, or why the last attempt failed


class HttpAskStream:
    """Asks `request(seq)` through the gateway at `rate` per second (0: only what `add`
    asks for), each retried until `deadline_s` after its first attempt; in conversation
    `conversation(seq)` when given (else each ask is one of its own)."""

    def __init__(self, url: str, token: str, request: Callable[[int], Request], *, rate: float = 0.0,
                 key_prefix: str, ask_timeout: float, deadline_s: float,
                 verify: Any = True, retry_s: float = RETRY_S,
                 conversation: Callable[[int], str] | None = None) -> None:
        self.url = url
        self.request = request
        self.conversation = conversation
        self.rate = rate
        self.key_prefix = key_prefix
        self.ask_timeout = ask_timeout
        self.deadline_s = deadline_s
        self.retry_s = retry_s
        self.asks: list[HttpAsk] = []
        self.causes: Counter[str] = Counter()  # why attempts were sent again
        self.in_flight = 0  # attempts waiting for their answer now
        self._headers = {"Authorization": f"Bearer {token}"}
        self._verify = verify
        self._lock = threading.Lock()
        self._added = 0  # asks `add` asked for, not yet started
        self._sending = threading.Event()
        self._sending.set()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="chaos-http-asks",
                                        daemon=True)

    # control (from other threads) ---------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def add(self, count: int) -> None:
        """Start `count` asks now (besides the paced ones)."""
        with self._lock:
            self._added += count

    def stop(self) -> None:
        """Start no more asks; those started go on until answered or out of time."""
        self._sending.clear()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float) -> bool:
        """Stop, and wait up to `timeout` for every ask to end; True when all did."""
        self.stop()
        self._thread.join(timeout)
        return self.done()

    # what it saw -----------------------------------------------------------------------
    @property
    def answered(self) -> int:
        with self._lock:
            return sum(1 for a in self.asks if a.reply is not None)

    def answered_since(self, since: float) -> bool:
        """Was an attempt made after `since` (monotonic) answered?"""
        with self._lock:
            return any(a.reply is not None and a.attempt_started >= since for a in self.asks)

    def figures(self) -> dict[str, Any]:
        with self._lock:
            return ask_figures(list(self.asks), self.causes)

    # the loop --------------------------------------------------------------------------
    async def _main(self) -> None:
        timeout = httpx.Timeout(self.ask_timeout + 5.0, connect=2.0)
        limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS)
        tasks: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(base_url=self.url, headers=self._headers, timeout=timeout,
                                     limits=limits, verify=self._verify) as client:
            pace = Pace(self.rate, threading.Event())
            paced = 0
            while self._sending.is_set():
                due = pace.due() - paced if self.rate > 0 else 0
                paced += due
                with self._lock:
                    due, self._added = due + self._added, 0
                for _ in range(due):
                    task = asyncio.create_task(self._ask(client, self._new_ask()))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await asyncio.sleep(TICK_S)
            if tasks:
                await asyncio.wait(tasks)

    def _new_ask(self) -> HttpAsk:
        with self._lock:
            seq = len(self.asks)
            agent = self.request(seq)[0]
            ask = HttpAsk(seq, f"{self.key_prefix}{seq}", agent, time.monotonic())
            self.asks.append(ask)
        return ask

    async def _ask(self, client: httpx.AsyncClient, ask: HttpAsk) -> None:
        agent, type_, payload = self.request(ask.seq)
        deadline = ask.started + self.deadline_s
        while True:
            left = deadline - time.monotonic()
            timeout = round(max(0.1, min(self.ask_timeout, left)), 2)
            body: dict[str, Any] = {"type": type_, "payload": payload, "timeout": timeout}
            if self.conversation is not None:
                body["conversation"] = self.conversation(ask.seq)
            attempt = time.monotonic()
            ask.attempts += 1
            self.in_flight += 1
            try:
                response = await client.post(f"/agents/{agent}/ask", json=body,
                                             headers={"Idempotency-Key": ask.key})
            except httpx.TransportError as exc:
                cause = f"connection: {type(exc).__name__}"
            else:
                if response.status_code == 200:
                    with self._lock:
                        ask.reply, ask.attempt_started = response.json(), attempt
                        ask.answered_at, ask.done = time.monotonic(), True
                    return
                cause = f"HTTP {response.status_code}"
                if response.status_code not in RETRIED:
                    ask.error, ask.done = f"{cause}: {response.text[:200]}", True
                    return
            finally:
                self.in_flight -= 1
            ask.error = cause
            if time.monotonic() + self.retry_s >= deadline:
                ask.error, ask.done = f"no answer within {self.deadline_s:g} s (last: {cause})", True
                return
            with self._lock:
                self.causes[cause] += 1
            await asyncio.sleep(self.retry_s)


def ask_figures(asks: list[HttpAsk], causes: Counter[str]) -> dict[str, Any]:
    """What a client saw of its asks (pure): sent, answered, retried (asks sent more than
    once) and retries (the attempts after the first), lost (never answered: out of time),
    failed (another answer than 200, 503 or 504), and the time to each answer."""
    answered = [a for a in asks if a.reply is not None]
    failed = [a for a in asks if a.done and a.reply is None and not a.error.startswith("no answer")]
    trips = sorted((a.answered_at - a.started) * 1000 for a in answered)
    return {
        "sent": len(asks),
        "answered": len(answered),
        "retried": sum(1 for a in asks if a.attempts > 1),
        "retries": sum(max(0, a.attempts - 1) for a in asks),
        "retry_causes": dict(sorted(causes.items())),
        "lost": len(asks) - len(answered) - len(failed),
        "failed": len(failed),
        "unfinished": sum(1 for a in asks if not a.done),
        "examples": [f"ask {a.seq} to {a.agent}: {a.error}" for a in asks if a.reply is None][:EXAMPLES_KEPT],
        "p50_ms": round(statistics.median(trips), 1) if trips else None,
        "max_ms": round(trips[-1], 1) if trips else None,
    }
