"""What an agent has handled, by message id: redeliveries are recognised, counts are exact.

After each handled batch the runtime records the batch's ids in the agent's Redis ledger
(a sorted set, the newest `recovery.dedup_window`) in one atomic step that also counts
`messages_in` and `handled_from:<sender>`, and only then commits the Kafka offsets. So:

- a SIGKILL after the ledger write and before the commit redelivers the batch, whose ids
  the restarted agent loads from the ledger and skips (counted as `duplicates`);
- a SIGKILL before the ledger write redelivers a batch that was never recorded: it is
  handled again and counted once, and what its handler sent carries the same ids as the
  first time (ids derived from the message's id, see `derived_id`), so the recipients
  skip those copies in turn;
- while Redis is down the ids wait here (and still dedup in memory) and the offsets are
  not committed, so nothing is counted twice or lost when it comes back.
"""

from __future__ import annotations

import time

from agentmesh_cli.envelope import RecentIds
from agentmesh_cli.errors import AgentMeshError
from agentmesh_cli.store import Store


class Ledger:
    def __init__(self, store: Store, agent: str, window: int, shared: str | None = None) -> None:
        """`shared`: a replica's group, whose one ledger every replica records in and asks
        (a retry routed to another replica is not handled twice); counts stay the agent's."""
        self.store = store
        self.agent = agent
        self.shared = shared
        self.window = window
        self._recent = RecentIds(window)
        self._pending: list[tuple[str, str]] = []  # (id, sender) handled, not yet recorded
        self._taken = 0  # ids handled before the first of `_pending` (for `mark`)
        self._inflight: tuple[int, list[tuple[str, str]]] | None = None  # a write that failed
        self._score = 0

    def load(self) -> int:
        """Read the newest ids from Redis (after a restart); return how many."""
        ids, self._score = self.store.handled_ids(self.shared or self.agent, self.window)
        for message_id in ids:
            self._recent.add(message_id)
        return len(ids)

    def seen(self, message_id: str) -> bool:
        """Handled before: by this agent, or, in a group, by any replica (the group's ledger
        in Redis is asked for an id this one has not seen; Redis down: not seen)."""
        if message_id in self._recent:
            return True
        if self.shared is None:
            return False
        try:
            return self.store.was_handled(self.shared, message_id)
        except AgentMeshError:
            return False

    def handled(self, message_id: str, sender: str) -> None:
        self._recent.add(message_id)
        self._pending.append((message_id, sender))

    def mark(self) -> int:
        """How many ids have been handled so far: `record(up_to=mark)` records those."""
        return self._taken + len(self._pending)

    @property
    def pending(self) -> int:
        return len(self._pending) + (len(self._inflight[1]) if self._inflight else 0)

    def record(self, up_to: int | None = None) -> bool:
        """Write the pending ids to Redis (those handled before `mark()` said `up_to`, or
        all); True when none of those is left pending.

        A batch whose write failed is sent again as it was (same ids, same first score,
        hence the same token) before anything newer: if Redis applied it and only its
        answer was lost, the script recognises the token and counts nothing twice."""
        if self._inflight is None:
            count = len(self._pending) if up_to is None else min(len(self._pending), up_to - self._taken)
            if count <= 0:
                return True
            # scores order the ledger (the trim keeps the newest): microseconds, never reused
            first = max(self._score + 1, time.time_ns() // 1000)
            self._inflight = (first, self._pending[:count])
            del self._pending[:count]
            self._taken += count
        first, batch = self._inflight
        try:
            self.store.record_handled(self.agent, batch, first, self.window, self.shared)
        except AgentMeshError:
            return False
        self._inflight = None
        self._score = first + len(batch)
        return self.record(up_to)
