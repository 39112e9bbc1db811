"""A conversation's events as Server-Sent Events (GET /conversations/{id}/events).

The follower registers with the gateway's one subscription (services/feed.py) before the
log is read, so nothing appended in between is missed. Then: a `gone` event when the
Last-Event-ID is older than what the log keeps (convlog.is_gone), and again whenever
appends outran the follower past what is kept; every event after the cursor, each with
its stream id as the SSE id (a client that reconnects with Last-Event-ID resumes after
it, without loss or repetition); then, as appends are announced, the new events.
`delta` events (streamed partial output) carry no id: they are not resumable, and the
final message follows as a normal event.

A follower that falls too far behind the feed is dropped: the stream ends with an
`error` event, and the client resumes from its Last-Event-ID.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
from sse_starlette import ServerSentEvent

from agentmesh_cli import convlog
from agentmesh_cli.errors import AgentMeshError
from agentmesh_cli.gateway.state import READ_BATCH, FeedItem, GatewayState
from agentmesh_cli.services.feed import Follower
from agentmesh_cli.services.http import sse_json

WAKE_S = 1.0  # how long a follower waits for the feed before it checks for shutdown


async def conversation_events(state: GatewayState, conversation: str, follower: Follower[FeedItem],
                              last: tuple[int, int] | None, resume: str | None,
                              shutdown: anyio.Event) -> AsyncIterator[ServerSentEvent]:
    cursor = "0-0" if last is None else f"{last[0]}-{last[1]}"
    told = resume  # the last id the client has, as it wrote it (None: it asked from the start)
    try:
        read = True
        while not shutdown.is_set():
            while read:  # everything after the cursor, in batches
                gone, entries = await state.read_after(conversation, cursor, READ_BATCH)
                # a resume past what is kept, or appends that outran this follower: told, then
                # the kept events (what was trimmed before a follower from the start came, it
                # never asked for)
                if gone and told is not None:
                    yield sse_json(convlog.EVENT_GONE, {"conversation": conversation, "last_event_id": told,
                                                        "kept": state.kept})
                for entry_id, event, data in entries:
                    cursor = told = entry_id
                    yield _event(entry_id, event, data)
                read = len(entries) == READ_BATCH and not shutdown.is_set()
            item = await follower.next(WAKE_S)
            if item is None:
                continue
            _, stream_id, delta = item
            if delta is not None:
                yield sse_json(convlog.EVENT_DELTA, delta)
            elif stream_id is not None and _pair(stream_id) > _pair(cursor):
                read = True  # new events: read them from the log
    except AgentMeshError as exc:  # dropped by the feed, or Redis failed: the client resumes
        yield sse_json("error", {"code": type(exc).__name__, "message": str(exc)})
    finally:
        follower.close()


def _event(entry_id: str, event: str, data: Any) -> ServerSentEvent:
    sse = sse_json(event, data)
    sse.id = entry_id
    return sse


def _pair(entry_id: str) -> tuple[int, int]:
    return convlog.stream_id(entry_id) or (0, 0)
