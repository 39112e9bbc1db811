"""One way to wait for a condition: poll it until it holds or the time is up.

Every wait of the package, its benches and its tests goes through `wait_until` (or its
async twin `wait_until_async`, for a wait inside an event loop); both take their clock and
their sleep as arguments, so a test can drive them with a fake clock. A `Deadline` is
that clock's point in time: several waits can share one (`up`'s gates), and a loop that
does more than wait (it reads records, or sends again) can bound itself by one.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from agentmesh_cli.errors import WaitTimeout

T = TypeVar("T")
Clock = Callable[[], float]
What = str | Callable[[], str]  # what is waited for; a callable says it at the timeout


class Deadline:
    """`timeout` seconds after now on `clock` (math.inf: never)."""

    def __init__(self, timeout: float, clock: Clock = time.monotonic) -> None:
        self.timeout = timeout
        self.clock = clock
        self.at = clock() + timeout

    def left(self) -> float:
        """Seconds until the deadline, 0 once it passed."""
        return max(0.0, self.at - self.clock())

    def passed(self) -> bool:
        return self.clock() >= self.at

    def pauses(self, interval: float, what: What) -> Iterator[float]:
        """The pauses of a wait between two checks of its condition: `interval`, the last
        one cut to end at the deadline; WaitTimeout (naming `what`) when it has passed."""
        while True:
            left = self.at - self.clock()
            if left <= 0:
                said = what() if callable(what) else what
                raise WaitTimeout(f"timed out after {self.timeout:g} s waiting for {said}")
            yield min(interval, left)


def _deadline(timeout: float | Deadline | None, clock: Clock) -> Deadline:
    if isinstance(timeout, Deadline):
        return timeout
    return Deadline(math.inf if timeout is None else timeout, clock)


def wait_until(predicate: Callable[[], T | None], timeout: float | Deadline | None, what: What,
               interval: float = 0.1, clock: Clock = time.monotonic,
               sleep: Callable[[float], object] = time.sleep) -> T:
    """Call `predicate` every `interval` seconds until it returns something truthy, and
    return that. WaitTimeout (naming `what`) once `timeout` seconds have passed (None: no
    limit; a Deadline: that one, on its own clock): the predicate is asked at least once,
    and once more at the deadline. A predicate may raise to end the wait early (a process
    it waits for died)."""
    pauses = _deadline(timeout, clock).pauses(interval, what)
    while not (value := predicate()):
        sleep(next(pauses))
    return value


async def wait_until_async(predicate: Callable[[], T | None], timeout: float | Deadline | None, what: What,
                           interval: float = 0.1, clock: Clock = time.monotonic,
                           sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> T:
    """`wait_until` inside an event loop: the same checks and deadline, pausing with
    `await sleep(...)` so that the loop runs what is waited for meanwhile."""
    pauses = _deadline(timeout, clock).pauses(interval, what)
    while not (value := predicate()):
        await sleep(next(pauses))
    return value
