"""When is the mesh quiet? The rule `agentmesh down` drains by (pure).

For every agent X of the mesh (a replica group's replicas each: `drained_agents`), from the
counters hashes (`Store.all_counters`):

    sent(X)      = sum over all owners of sent_to:X
    done(X)      = X's messages_in + duplicates + replies_in + late_replies + expired_requests
                   + lost
    unhandled(X) = max(0, sent(X) - done(X))

and, when X's registry record has an integer `in_flight` (handlers still running), that
too must be 0. A missing counter counts 0. `done` may exceed `sent` for good (a message
handled, then redelivered after a crash, is counted again as a duplicate), hence the max.
`lost` is written by `down` itself (`lost_counts`): messages counted as sent that an
embedded broker forgot before anyone read them, which no drain could ever wait out.

One quiet reading is not enough: agents flush their counters about once a second, so a
sender's `sent_to:X` can reach Redis up to a second after X counted the message done, and
a reading taken between the two looks quiet. So the mesh is taken as quiet once the
readings have been quiet, with the same sent and done counts, for QUIET_FOR_S (which
needs at least two readings, at least that far apart).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.backlog import Counters, sent_totals

# what an agent is done with: every inbox record it counts, whatever it made of it
DONE_COUNTERS = (C.COUNTER_IN, C.COUNTER_DUPLICATES, C.COUNTER_REPLIES_IN,
                 C.COUNTER_LATE_REPLIES, C.COUNTER_EXPIRED, C.COUNTER_LOST)
IN_FLIGHT_FIELD = "in_flight"  # registry record: handlers of the agent still running
# longer than the agents' counter flush (about 1 s), with a margin for a loaded machine
QUIET_FOR_S = 1.2
SHOWN_AGENTS = 8  # agents named in a progress line; the rest are counted


@dataclass(frozen=True)
class Reading:
    """One look at the mesh: per agent, messages sent to it, done with, handlers running."""

    sent: Mapping[str, int]
    done: Mapping[str, int]
    in_flight: Mapping[str, int]

    @property
    def unhandled(self) -> dict[str, int]:
        return {agent: max(0, n - self.done.get(agent, 0)) for agent, n in self.sent.items()}

    @property
    def total(self) -> int:
        """Messages unhandled in the whole mesh."""
        return sum(self.unhandled.values())

    @property
    def quiet(self) -> bool:
        return self.total == 0 and not any(self.in_flight.values())


def in_flight(record: Mapping[str, Any] | None) -> int:
    """A registry record's `in_flight`, 0 when it has none (or not an integer)."""
    value = (record or {}).get(IN_FLIGHT_FIELD)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def drained_agents(running: Iterable[str], registry: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The agents a drain waits for: those the mesh runs now (`running`: a replica group's
    replicas as many as it runs now, replicas.py `running_agents`) and any replica still
    registered beyond them (scaled down, it handles its inbox before it leaves)."""
    return sorted(set(running) | {name for name, record in registry.items() if record.get("group")})


def read(counters: Counters, registry: Mapping[str, Mapping[str, Any]],
         agents: Iterable[str]) -> Reading:
    """The reading of `agents` (the mesh's) from every owner's counters and the registry.
    A recipient that is no agent of the mesh (a message to a name that never ran) is left
    out: nobody will ever handle it, and the drain would wait for it to its timeout."""
    names = sorted(set(agents))
    totals = sent_totals(counters)
    return Reading(
        sent={a: totals.get(a, 0) for a in names},
        done={a: sum(counters.get(a, {}).get(name, 0) for name in DONE_COUNTERS) for a in names},
        in_flight={a: in_flight(registry.get(a)) for a in names},
    )


def lost_counts(reading: Reading, unread: Mapping[str, int]) -> dict[str, int]:
    """Per agent, messages counted unhandled that are not among the `unread` records found
    in the broker once the agents stopped: gone before this `down` (an embedded broker
    forgot them), so never to be handled. Agents with none are left out."""
    gone = {agent: n - unread.get(agent, 0) for agent, n in reading.unhandled.items()}
    return {agent: n for agent, n in gone.items() if n > 0}


class QuietWatch:
    """Readings in, in time order: is the mesh settled quiet? (see the module docstring)"""

    def __init__(self, quiet_for: float = QUIET_FOR_S) -> None:
        self.quiet_for = quiet_for
        self._since: float | None = None  # when the current quiet spell began
        self._counts: tuple[Mapping[str, int], Mapping[str, int]] | None = None

    def observe(self, reading: Reading, now: float) -> bool:
        if not reading.quiet:
            self._since = None
            return False
        counts = (reading.sent, reading.done)
        if self._since is None or counts != self._counts:
            self._since, self._counts = now, counts  # quiet, but something moved since
            return False
        return now - self._since >= self.quiet_for


def counted(n: int | str, noun: str) -> str:
    """`1 message`, `3 messages`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _named(counts: Mapping[str, int]) -> str:
    busy = [f"{agent} {n}" for agent, n in sorted(counts.items()) if n]
    more = len(busy) - SHOWN_AGENTS
    return ", ".join(busy[:SHOWN_AGENTS]) + (f", {more} more" if more > 0 else "")


def progress_line(reading: Reading, elapsed: float) -> str:
    """`draining: 15 messages unhandled (Sales 3, Support 12), 4.2 s`, with the handlers
    still running when there are any."""
    total = reading.total
    text = f"draining: {counted(total, 'message')} unhandled"
    if total:
        text += f" ({_named(reading.unhandled)})"
    running = sum(reading.in_flight.values())
    if running:
        text += f", {running} in flight ({_named(reading.in_flight)})"
    return f"{text}, {elapsed:.1f} s"
