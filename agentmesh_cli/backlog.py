"""Inbox backlogs from our own counters (the embedded broker's watermarks are wrong).

Every sender counts `sent_to:<recipient>` in its counters hash; an agent counts what it
handled as `messages_in` (a handler failure included, so dead letters are not subtracted
again). backlog(X) = max(0, sum over owners of sent_to:X - messages_in(X)). Used by
`status` and the metrics exporter; docs/architecture.md (Status) gives its limits.
"""

from __future__ import annotations

from collections.abc import Mapping

from agentmesh_cli import constants as C

Counters = Mapping[str, Mapping[str, int]]  # owner -> counter name -> value


def sent_totals(counters: Counters) -> dict[str, int]:
    """recipient -> messages every sender (agents, the CLI) counted as sent to it."""
    totals: dict[str, int] = {}
    for owned in counters.values():
        for name, value in owned.items():
            if name.startswith(C.COUNTER_SENT_TO_PREFIX):
                recipient = name[len(C.COUNTER_SENT_TO_PREFIX):]
                totals[recipient] = totals.get(recipient, 0) + value
    return totals


def backlog(sent: Mapping[str, int], counters: Counters, agent: str) -> int:
    """Agent's backlog, given `sent_totals(counters)`."""
    return max(0, sent.get(agent, 0) - counters.get(agent, {}).get(C.COUNTER_IN, 0))
