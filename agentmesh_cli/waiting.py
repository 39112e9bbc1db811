"""One way to wait for a condition: poll it until it holds or the time is up.

Every wait of the package, its benches and its tests goes through `wait_until`; it takes
its clock and its sleep as arguments, so a test can drive it with a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from agentmesh_cli.errors import WaitTimeout

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], object] = time.sleep) -> T:
    """Call `predicate` every `interval` seconds until it returns something truthy, and
    return that. WaitTimeout (naming `what`) once `timeout` seconds have passed: the
    predicate is asked at least once, and once more at the deadline."""
    deadline = clock() + timeout
    while True:
        value = predicate()
        if value:
            return value
        left = deadline - clock()
        if left <= 0:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}")
        sleep(min(interval, left))
