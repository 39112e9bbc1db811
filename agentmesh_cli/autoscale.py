"""The autoscaling rule of a group with `replicas: {min, max, target_in_flight}` (pure).

Every check (about once a second) the scaler measures the group's load: per running
replica the messages sent to it and not yet done, or the messages it holds in flight,
whichever is more (quiet.py's `unhandled` and the registry's `in_flight`), summed. The
count the load asks for is

    wanted = ceil(load / target_in_flight), within [min, max]

and, as Ray Serve's `target_ongoing_requests` with its delays, the group changes size only
when the load has asked for it without a break:

- up, once every `wanted` of the last `upscale_delay` seconds was above the current count:
  to the least of them (the need that lasted, not one burst's);
- down, once every `wanted` of the last `downscale_delay` seconds was below it: to the most
  of them.

The long downscale delay is the hysteresis: a group that scaled up stays up through a lull
shorter than it, so a bursty load does not start and stop replicas. A check that could not
read the load counts as a break (no decision on what was not seen).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agentmesh_cli.config import AutoReplicas


def group_load(unhandled: Mapping[str, int], in_flight: Mapping[str, int], replicas: Iterable[str]) -> int:
    """The work a group holds: per replica max(sent and not done, in flight), summed."""
    return sum(max(unhandled.get(name, 0), in_flight.get(name, 0)) for name in replicas)


def wanted(load: float, rule: AutoReplicas) -> int:
    """The replicas `load` asks for, within the group's bounds."""
    return min(rule.max, max(rule.min, math.ceil(load / rule.target_in_flight)))


@dataclass
class Autoscale:
    """One group's history of what the load asked for, and its decisions."""

    rule: AutoReplicas
    history: deque[tuple[float, int]] = field(default_factory=deque)  # (when, wanted)
    since: float | None = None  # the first check of the unbroken run `history` holds

    def observe(self, now: float, load: int | None) -> None:
        """One check's load (None: it could not be read, which breaks the run)."""
        if load is None:
            self.history.clear()
            self.since = None
            return
        if self.since is None:
            self.since = now
        self.history.append((now, wanted(load, self.rule)))
        horizon = now - max(self.rule.upscale_delay, self.rule.downscale_delay)
        while self.history and self.history[0][0] < horizon:
            self.history.popleft()

    def decide(self, now: float, current: int) -> int | None:
        """The count to scale to now, or None to stay."""
        if self.since is None:
            return None
        up = self._window(now, self.rule.upscale_delay)
        if up and all(w > current for w in up):
            return min(up)
        down = self._window(now, self.rule.downscale_delay)
        if down and all(w < current for w in down):
            return max(down)
        if current < self.rule.min or current > self.rule.max:  # scaled by hand out of bounds
            return min(self.rule.max, max(self.rule.min, current))
        return None

    def _window(self, now: float, delay: float) -> list[int]:
        """What the last `delay` seconds asked for, when the unbroken run covers them."""
        assert self.since is not None
        if now - self.since < delay:
            return []
        return [w for t, w in self.history if t >= now - delay]

    def scaled(self) -> None:
        """The group changed size: the run starts again from what comes next."""
        self.history.clear()
        self.since = None
