"""One Redis pub/sub subscription per process, fanned out in memory to its followers.

A follow stream needs every message of a channel from the moment it starts. Holding one
pub/sub connection per stream ran the connection pool dry at about 50 streams; here the
process subscribes once and a reader task hands each message to every follower that
wants it, through the follower's own bounded queue:

- Started by the first `follow()`, which returns once Redis has confirmed the
  subscription: a message published after `follow()` returns reaches the follower, so
  a stream registers first and reads its backlog after, and nothing falls between.
- Decoded once per process (`decode`), not once per stream; a follower's `wants`
  picks what goes into its queue, so a stream is woken only for its own changes. A feed
  with a `key` (the gateway's: a message's conversation) also files each follower under
  the key it follows, so a message costs the followers of its key only, not every open
  stream (at 1,000 streams, asking each one cost ~0.4 ms of CPU per message).
- A follower that does not keep up is dropped when its queue is full; its next read
  raises FellBehind. The reader never waits for a follower, so no stream stalls another.
- When the subscription breaks (redis-py reconnects and subscribes again, or the
  connection fails for good), messages may have been missed: every follower's next read
  raises StoreError, and the next `follow()` after a failure subscribes anew.
- `close()` (at shutdown) cancels the reader, unsubscribes and ends every follower.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

import anyio
import redis
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from agentmesh_cli.errors import AgentMeshError, FellBehind, StoreError
from agentmesh_cli.waiting import Clock, Deadline

log = logging.getLogger(__name__)

T = TypeVar("T")
READ_WAIT_S = 1.0  # the reader's wait per read (below the client's socket timeout)
SUBSCRIBE_TIMEOUT_S = 5.0  # how long follow() waits for Redis to confirm the subscription
CLOSE_TIMEOUT_S = 1.0  # unsubscribing at shutdown, when Redis may be gone


class Follower(Generic[T]):
    """One reader of the feed: `next()` gives what it wants, in published order."""

    def __init__(self, feed: ChannelFeed[T], wants: Callable[[T], bool], size: int,
                 key: Hashable | None = None) -> None:
        self.feed = feed
        self.wants = wants
        self.key = key
        self.queue: asyncio.Queue[T | None] = asyncio.Queue(size)  # None only wakes a failed reader
        self.failure: AgentMeshError | None = None

    async def next(self, timeout: float) -> T | None:
        """The next message, or None after `timeout` s without one. Raises FellBehind or
        StoreError once the follower has been dropped."""
        if self.failure is not None:
            raise self.failure
        try:
            message = self.queue.get_nowait()
        except asyncio.QueueEmpty:
            try:
                async with asyncio.timeout(timeout):
                    message = await self.queue.get()
            except TimeoutError:
                return None
        if self.failure is not None:
            raise self.failure
        return message

    def offer(self, message: T) -> bool:
        """Queue `message` if wanted; False when the queue was full (the follower is then
        dropped: the caller stops offering)."""
        if not self.wants(message):
            return True
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.fail(FellBehind(self.queue.maxsize))
            return False
        return True

    def fail(self, error: AgentMeshError) -> None:
        if self.failure is None:
            self.failure = error
            if not self.queue.full():  # a full queue means the reader is not waiting
                self.queue.put_nowait(None)

    def close(self) -> None:
        """Leave the feed (idempotent)."""
        self.feed.leave(self)


class ChannelFeed(Generic[T]):
    """The process's one subscription to `channel`, decoded by `decode` (None: ignore)."""

    def __init__(self, client: aioredis.Redis, channel: str, decode: Callable[[bytes], T | None],
                 queue_size: int, clock: Clock = time.monotonic,
                 key: Callable[[T], Hashable] | None = None) -> None:
        """`clock` times the wait for Redis to confirm the subscription; `key`, when given,
        is what a decoded message is for: it goes to the followers of that key only."""
        self.client = client
        self.clock = clock
        self.channel = channel
        self.decode = decode
        self.queue_size = queue_size
        self.key = key
        self.followers: set[Follower[T]] = set()
        self.keyed: dict[Hashable, set[Follower[T]]] = {}  # a keyed feed's followers, by key
        self.reader: asyncio.Task[None] | None = None
        self.live: asyncio.Future[None] | None = None
        self.ending: set[asyncio.Task[None]] = set()  # broken readers still closing

    async def follow(self, wants: Callable[[T], bool], key: Hashable | None = None) -> Follower[T]:
        """A new follower, once the subscription is confirmed (StoreError if it cannot be).
        On a keyed feed it names the `key` it follows (and is offered its messages only)."""
        assert (key is None) == (self.key is None), "a follower names a key on a keyed feed, and only there"
        if self.reader is None or self.reader.done():
            loop = asyncio.get_running_loop()
            self.live = loop.create_future()
            # a failure nobody awaited any more must not be logged as "never retrieved"
            self.live.add_done_callback(lambda f: f.cancelled() or f.exception())
            self.reader = loop.create_task(self._read(self.live), name=f"feed {self.channel}")
        assert self.live is not None
        await asyncio.shield(self.live)
        follower = Follower(self, wants, self.queue_size, key)
        self.followers.add(follower)
        if key is not None:
            self.keyed.setdefault(key, set()).add(follower)
        return follower

    def leave(self, follower: Follower[T]) -> None:
        """Take `follower` off the feed (idempotent)."""
        self.followers.discard(follower)
        group = self.keyed.get(follower.key) if follower.key is not None else None
        if group is not None:
            group.discard(follower)
            if not group:
                del self.keyed[follower.key]

    async def close(self) -> None:
        """Stop reading and unsubscribe; any follower left ends with StoreError."""
        if self.live is not None and not self.live.done():
            self.live.set_exception(StoreError("the service is shutting down"))
        readers = [*self.ending, *([self.reader] if self.reader is not None else [])]
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        self.reader = None
        self.ending.clear()
        self._fail_all(StoreError("the service is shutting down"))

    def _fail_all(self, error: AgentMeshError) -> None:
        followers, self.followers, self.keyed = self.followers, set(), {}
        for follower in followers:
            follower.fail(error)

    async def _read(self, live: asyncio.Future[None]) -> None:
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            await self._dispatch(pubsub, live)
        except StoreError as exc:
            self._broken(live, exc)
        except (redis.RedisError, OSError) as exc:
            error = StoreError(f"Redis subscription failed: {exc}")
            error.__cause__ = exc
            self._broken(live, error)
        except Exception as exc:  # a bug here must not leave followers waiting forever
            log.exception("the reader of %s failed", self.channel)
            self._broken(live, StoreError(f"the change feed failed: {type(exc).__name__}"))
        finally:
            if not live.done():
                live.cancel()
            await _close_pubsub(pubsub)

    def _broken(self, live: asyncio.Future[None], error: StoreError) -> None:
        # this reader is finished even while it still closes its connection: the next
        # follow must subscribe afresh, not join a subscription that is going away
        task = asyncio.current_task()
        if task is not None and task is self.reader:
            self.reader = None
            self.ending.add(task)
            task.add_done_callback(self.ending.discard)
        if live.done():
            log.warning("lost the subscription to %s: %s", self.channel, error.__cause__ or error)
        else:
            live.set_exception(error)
        self._fail_all(error)

    async def _dispatch(self, pubsub: PubSub, live: asyncio.Future[None]) -> None:
        deadline = Deadline(SUBSCRIBE_TIMEOUT_S, self.clock)
        # the reader's loop, which also bounds the wait for the subscription's confirmation
        while True:
            if not live.done() and deadline.passed():
                raise StoreError(f"Redis did not confirm the subscription within {SUBSCRIBE_TIMEOUT_S} s")
            message: dict[str, Any] | None = await pubsub.get_message(timeout=READ_WAIT_S)
            if message is None:
                continue
            if message["type"] == "subscribe":
                if live.done():
                    # redis-py reconnected and subscribed again: whatever was published
                    # in between is lost, so the followers so far cannot be trusted
                    log.warning("the subscription to %s was restored after a break", self.channel)
                    self._fail_all(StoreError("the subscription to Redis broke; changes may "
                                              "have been missed"))
                else:
                    live.set_result(None)
            elif message["type"] == "message" and self.followers:
                self._deliver(message["data"])

    def _deliver(self, data: bytes) -> None:
        decoded = self.decode(data)
        if decoded is None:
            return
        followers: Iterable[Follower[T]] = (
            self.followers if self.key is None else self.keyed.get(self.key(decoded), ()))
        dropped = [follower for follower in followers if not follower.offer(decoded)]
        for follower in dropped:
            follower.close()


async def _close_pubsub(pubsub: PubSub) -> None:
    """Give the connection back; shielded (this runs while the reader is cancelled) and
    bounded (Redis may be gone)."""
    with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
        try:
            await pubsub.aclose()
        except (redis.RedisError, OSError) as exc:
            log.debug("closing the subscription: %s", exc)
