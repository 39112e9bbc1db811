"""A clock for tests: it moves only when told, so a timed mechanism replays a scripted
history in microseconds (the breaker's reset timeout, a wait's deadline)."""

from __future__ import annotations

import asyncio


class FakeClock:
    """`clock()` reads it; `advance(s)` moves it; `sleep(s)` (and `asleep`, for an event
    loop) moves it too and keeps the pause in `slept`."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)
        await asyncio.sleep(0)  # the loop runs its other tasks, as after a real pause
