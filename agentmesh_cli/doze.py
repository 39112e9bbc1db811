"""When a reader sleeps (pure: no I/O; agentmesh_cli/dozing.py applies what it decides).

An idle reader that keeps fetching costs the broker a request per fetch wait, forever:
the embedded broker about 0.27 ms of CPU each, a broker that answers at once a busy wait.
So a reader with nothing to read for `idle_after` says it is going to sleep (senders
learn it and ring it when they write to it: doorbell.py), keeps fetching for `grace`
(what a sender wrote before it heard that is still fetched), then stops fetching at all
(its partitions unassigned). A ring, or a record, wakes it. Every `probe_every` a
sleeping reader fetches for `probe_for` anyway: a ring that never came (its sender was
killed between the write and the ring) delays a record by that much at most.

A reader that cannot hear rings (Redis unreachable) never sleeps.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass

IDLE_AFTER_S = 0.25
GRACE_S = 0.5
PROBE_EVERY_S = 5.0
PROBE_MARGIN_S = 0.03  # a probe lasts the fetch wait plus this (one answered fetch)
COUNTER_SLEEPS = "doze_sleeps"
COUNTER_RUNG = "doze_rung"
COUNTER_PROBE_FOUND = "doze_probe_found"
COUNTER_DEAF = "doze_deaf"


class State(enum.Enum):
    AWAKE = "awake"  # fetching
    DROWSY = "drowsy"  # fetching; senders were told it sleeps
    ASLEEP = "asleep"  # not fetching
    PROBING = "probing"  # fetching for a moment, still asleep for the senders


@dataclass(frozen=True)
class Action:
    """What to do after a step: fetch again (`assign`), stop fetching (`unassign`), tell
    the senders it sleeps (`announce_asleep`) or that it is awake (`announce_awake`)."""

    assign: bool = False
    unassign: bool = False
    announce_asleep: bool = False
    announce_awake: bool = False


NOTHING = Action()


@dataclass(frozen=True)
class Policy:
    idle_after: float = IDLE_AFTER_S
    grace: float = GRACE_S
    probe_every: float = PROBE_EVERY_S
    probe_for: float = 0.04

    @classmethod
    def for_fetch_wait(cls, fetch_wait: float, probe_every: float = PROBE_EVERY_S) -> Policy:
        """A probe lasts one fetch wait and a margin: long enough for one answered fetch."""
        return cls(probe_every=probe_every, probe_for=fetch_wait + PROBE_MARGIN_S)


class Doze:
    """The state of one reader; `step` is called after each poll (or wait for a ring)."""

    def __init__(self, policy: Policy, now: float) -> None:
        self.policy = policy
        self.state = State.AWAKE
        self.active_at = now  # the last record or ring
        self.since = now  # when the current state began
        self.next_probe = now + policy.probe_every
        # fell asleep; woke by a ring; a probe found records (a ring that never came);
        # woke since it could not hear rings (counted for status and the metrics)
        self.counts: Counter[str] = Counter()

    @property
    def fetching(self) -> bool:
        return self.state is not State.ASLEEP

    def step(self, now: float, records: bool, rung: bool, can_sleep: bool) -> Action:
        """`records`: the last poll had some; `rung`: a ring came since the last step;
        `can_sleep`: rings can be heard (else it stays awake)."""
        p, state = self.policy, self.state
        if records or rung or not can_sleep:
            self.active_at = now
            if state is State.AWAKE:
                return NOTHING
            self._enter(State.AWAKE, now)
            if state is not State.DROWSY:
                # deaf first: a doorbell that stops listening rings its reader awake as well
                self.counts[COUNTER_DEAF if not can_sleep else COUNTER_RUNG if rung
                            else COUNTER_PROBE_FOUND] += 1
            # the senders may believe it sleeps (told so, or some never heard it woke)
            return Action(assign=state is State.ASLEEP, announce_awake=can_sleep)
        if state is State.AWAKE:
            if now - self.active_at < p.idle_after:
                return NOTHING
            self._enter(State.DROWSY, now)
            return Action(announce_asleep=True)
        if state is State.DROWSY:
            if now - self.since < p.grace:
                return NOTHING
            self._enter(State.ASLEEP, now)
            self.counts[COUNTER_SLEEPS] += 1
            self.next_probe = now + p.probe_every
            return Action(unassign=True)
        if state is State.ASLEEP:
            if now < self.next_probe:
                return NOTHING
            self._enter(State.PROBING, now)
            return Action(assign=True)
        # PROBING
        if now - self.since < p.probe_for:
            return NOTHING
        self._enter(State.ASLEEP, now)
        self.next_probe = now + p.probe_every
        return Action(unassign=True)

    def _enter(self, state: State, now: float) -> None:
        self.state, self.since = state, now

    def wait_for(self, now: float, longest: float) -> float:
        """How long a sleeping reader may wait for a ring before its next step is due."""
        if self.state is State.ASLEEP:
            return max(0.0, min(longest, self.next_probe - now))
        return longest
