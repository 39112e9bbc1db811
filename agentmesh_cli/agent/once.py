"""`await ctx.once(key, compute)`: a step of a handler done once per message, even across a
crash (a language model's answer, a payment's receipt).

The first run of the handler computes the step and keeps its result (JSON) in Redis, in a
hash per message (`Keys.once`). A run of the handler again after a crash (the message was
not recorded as handled, so it is read again) gets the kept result instead of computing
it again. Once the message's id is in the ledger, its hash is deleted (Settlement's
`after_record`), and it expires after ONCE_TTL_S anyway: a message that is never read
again leaves nothing behind.

A Redis failure costs the guarantee, never the step: the result is computed and returned,
and the failure is logged. Outside a handler (on_tick, on_start), every call computes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from agentmesh_cli import constants as C
from agentmesh_cli.agent.handling import current
from agentmesh_cli.errors import AgentMeshError, RoleError

if TYPE_CHECKING:
    from agentmesh_cli.agent.runtime import AgentRuntime

ONCE_TTL_S = 3600  # a kept result outlives its message's handling by this long at most


class Once:
    def __init__(self, rt: AgentRuntime) -> None:
        self.rt = rt
        # (the ledger's mark once the message was handled, message id) of the messages
        # whose results are kept, until the ledger recorded them
        self.kept: list[tuple[int, str]] = []

    async def run(self, key: str, compute: Callable[[], Awaitable[Any]]) -> Any:
        """AgentContext.once, on the agent's loop."""
        handling = current()
        if handling is None:
            return await compute()
        rt = self.rt
        try:
            raw = rt.store.once_get(rt.shared, handling.message_id, key)
        except AgentMeshError as exc:
            rt.log.warning("ctx.once(%r): kept results not read (%s): computed again", key, exc)
            raw = None
        if raw is not None:
            handling.once = True
            rt.counts[C.COUNTER_ONCE_REPLAYED] += 1
            return orjson.loads(raw)
        result = await compute()
        try:
            encoded = orjson.dumps(result).decode("utf-8")
        except TypeError as exc:
            raise RoleError(f"ctx.once({key!r}): the result must be JSON (dicts, lists, str, "
                            f"numbers, bool, None): {exc}") from exc
        try:
            rt.store.once_put(rt.shared, handling.message_id, key, encoded, ONCE_TTL_S)
            handling.once = True
        except AgentMeshError as exc:
            rt.log.warning("ctx.once(%r): result not kept (%s): a re-run computes it again", key, exc)
        return result

    def handled(self, message_id: str) -> None:
        """The runtime handled a message (in its handler's context): keep its id when
        results were kept for it, to delete them once the ledger holds it."""
        handling = current()
        if handling is not None and handling.once:
            self.kept.append((self.rt.ledger.mark(), message_id))

    def recorded(self, mark: int) -> None:
        """Settlement's after_record: the ledger holds every id handled up to `mark`."""
        if not self.kept:
            return
        done = [message_id for at, message_id in self.kept if at <= mark]
        if not done:
            return
        self.kept = [(at, message_id) for at, message_id in self.kept if at > mark]
        try:
            self.rt.store.once_forget(self.rt.shared, done)
        except AgentMeshError as exc:  # they expire by themselves
            self.rt.log.warning("kept results of %d handled messages not deleted: %s", len(done), exc)
