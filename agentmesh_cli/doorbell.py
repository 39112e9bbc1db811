"""Doorbells: a reader that sleeps (stops fetching, doze.py) is rung when somebody writes
to it, through Redis pub/sub, beside Kafka.

A process has one `Doorbell`. Its thread listens to the mesh's `asleep-feed` (readers
going to sleep and waking), so the process knows who sleeps; a reader's doorbell also
listens to its own `wake:<reader>` channel.

- A sender notes every record it writes (`note`, from the Bus). A record for a reader
  that sleeps makes it due a ring; the Bus waits (briefly) until the broker confirmed
  what it sent, then `ring` publishes `wake:<reader>` once per reader. So a ring comes
  after its record can be read, and a sleeping reader's first fetch finds it.
- A reader going to sleep says so (`announce`): the hash `asleep` (for processes that
  start later) and a message on the feed. It keeps fetching for a grace period while the
  senders learn it. A reader rung, or that found records on its own, says it woke.

Which readers a record concerns: on `messages` and `replies` (keyed by recipient, or by
reply address) the reader named by the key, and a reader of the whole topic (`messages*`:
the topology manager); on every other topic every sleeping reader of that topic
(`consensus`: every agent; `proposals`, `votes`: the consensus manager).

Readers that do not listen (Redis unreachable) never sleep; a ring lost anyway (a sender
killed between its write and its ring) is found by the reader's next probe.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import cast

import redis

from agentmesh_cli import constants as C
from agentmesh_cli.constants import Keys

log = logging.getLogger(__name__)

KEYED_TOPICS = frozenset({C.TOPIC_MESSAGES, C.TOPIC_REPLIES})  # the key names the one reader
EVERY_KEY = "*"  # a reader of `<topic>*` reads a keyed topic whole (the topology manager)
LISTEN_S = 5.0  # the listening thread checks that it should go on this often
RETRY_S = 1.0  # after Redis went away, listen again after this


def parse_asleep(entry: str) -> tuple[str, frozenset[str]] | None:
    """A feed message `<reader> <topic,topic>` -> (reader, topics); `-<reader>` (woke) ->
    (reader, empty); None when it is neither."""
    if entry.startswith("-"):
        return (entry[1:], frozenset()) if len(entry) > 1 else None
    reader, _, topics = entry.partition(" ")
    if not reader or not topics:
        return None
    return reader, frozenset(t for t in topics.split(",") if t)


class Doorbell:
    """Who sleeps (for the sender side of a process), and its own ring (for a reader).

    `me`, `topics`: this process's reader name and the topics it reads, when it may sleep.
    `on_ring` is called from the listening thread on every ring, and when listening breaks
    (a sleeping reader must wake: it can no longer hear rings)."""

    def __init__(self, client: redis.Redis, mesh: str, me: str | None = None,
                 topics: Iterable[str] = (), on_ring: Callable[[], None] | None = None,
                 listen: bool = True, seed: bool | None = None) -> None:
        """`listen`: a thread follows who sleeps (and hears this reader's rings); without
        it, `seed` reads who sleeps once, now (a short-lived sender)."""
        self.keys = Keys(mesh)
        self.client = client
        self.me = me
        self.topics = ",".join(sorted(topics))
        self.on_ring = on_ring
        self.rung = threading.Event()
        self.listening = False  # subscribed and the sleepers read: rings can be heard
        # the broker epoch and the draining mark, as the mesh feed says (read when the
        # thread subscribes, then followed): valid while `listening`
        self.epoch: str | None = None
        self.draining = False
        # reader -> topics, for every reader believed asleep; replaced whole, never changed
        # in place (the listening thread and the sender read it without a lock)
        self.asleep: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()
        self._due: set[str] = set()
        self.rings = 0  # rings published
        self.announced = False  # this reader told the mesh it sleeps
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # the listening thread hears this channel too: this reader's rings, and `close`
        self._own = self.keys.wake(me if me else f"bell-{uuid.uuid4().hex}")
        if listen if seed is None else seed:
            try:  # who sleeps now, before the first send (the thread reads it again once subscribed)
                self.asleep = self._read_asleep()
            except redis.RedisError as exc:
                log.warning("doorbell: Redis unavailable (%s); sleepers find records by probing", exc)
        if listen:
            self._thread = threading.Thread(target=self._listen, name="doorbell", daemon=True)
            self._thread.start()

    # the sender's side -----------------------------------------------------------
    def sleepers(self, topic: str, key: str | None) -> list[str]:
        """The sleeping readers a record written to `topic` (short name) with `key` concerns."""
        asleep = self.asleep
        if not asleep:
            return []
        if topic in KEYED_TOPICS:
            whole = topic + EVERY_KEY
            named = [key] if key is not None and topic in asleep.get(key, ()) else []
            return named + [reader for reader, topics in asleep.items() if whole in topics]
        return [reader for reader, topics in asleep.items() if topic in topics]

    def note(self, topic: str, key: str | None) -> None:
        """A record was written to `topic` (short name) with `key`: its sleeping readers
        are due a ring."""
        if not self.asleep:
            return
        due = self.sleepers(topic, key)
        if due:
            with self._lock:
                self._due.update(due)

    @property
    def due(self) -> bool:
        return bool(self._due)

    def ring(self) -> None:
        """Ring every reader a record was noted for; they leave this process's set of
        sleepers (a rung reader wakes, and says so when it sleeps again)."""
        with self._lock:
            due, self._due = self._due, set()
            if not due:
                return
            self.asleep = {r: t for r, t in self.asleep.items() if r not in due}
        try:
            pipe = self.client.pipeline(transaction=False)
            for reader in sorted(due):
                pipe.publish(self.keys.wake(reader), "")
            pipe.execute()
            self.rings += len(due)
        except redis.RedisError as exc:  # its reader cannot listen either: it is awake
            log.warning("could not ring %s: %s", ", ".join(sorted(due)), exc)

    # the reader's side -----------------------------------------------------------
    def announce(self, asleep: bool) -> bool:
        """Tell the mesh this reader sleeps, or woke; False when Redis did not take it
        (then it must not sleep)."""
        if self.me is None:
            return False
        try:
            pipe = self.client.pipeline(transaction=False)
            if asleep:
                pipe.hset(self.keys.asleep, self.me, self.topics)
                pipe.publish(self.keys.asleep_channel, f"{self.me} {self.topics}")
            else:
                pipe.hdel(self.keys.asleep, self.me)
                pipe.publish(self.keys.asleep_channel, f"-{self.me}")
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not say this reader %s: %s", "sleeps" if asleep else "woke", exc)
            return False
        self.announced = asleep
        return True

    def take_ring(self) -> bool:
        """Was it rung since the last call?"""
        if not self.rung.is_set():
            return False
        self.rung.clear()
        return True

    def close(self) -> None:
        """Stop listening (the thread ends before this returns, or within a second); a
        reader that said it sleeps says it left (nobody rings it)."""
        self._stop.set()
        if self.announced:
            self.announce(False)
        if self._thread is not None:
            with suppress(redis.RedisError):  # the listening thread's wait ends at once
                self.client.publish(self._own, "")
            if self._thread is not threading.current_thread():
                self._thread.join(RETRY_S)

    # listening ----------------------------------------------------------------------
    def _rang(self) -> None:
        self.rung.set()
        if self.on_ring is not None:
            self.on_ring()

    def _listen(self) -> None:
        channels = [self.keys.asleep_channel, self._own, self.keys.mesh_channel]
        while not self._stop.is_set():
            pubsub = self.client.pubsub()
            try:
                pubsub.subscribe(*channels)
                confirmed = 0
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=LISTEN_S)
                    if message is None:
                        continue
                    kind, channel = message["type"], message["channel"]
                    if kind == "subscribe":
                        confirmed += 1
                        if confirmed >= len(channels):  # again after redis-py reconnected
                            self._seed()
                    elif kind == "message":
                        if channel == channels[0]:
                            self._feed(message["data"])
                        elif channel == channels[2]:
                            self._news(message["data"])
                        elif not self._stop.is_set():
                            self._rang()
            except Exception as exc:  # Redis gone, or anything else: the thread must live on
                if self._stop.is_set():
                    break  # closed
                if self.listening:
                    log.warning("doorbell: lost Redis (%s); fetching until it is back", exc)
                self.listening = False
                self._rang()  # a sleeping reader wakes: it would not hear a ring now
                self._stop.wait(RETRY_S)
            finally:
                try:
                    pubsub.close()
                except (redis.RedisError, OSError):
                    pass

    def _read_asleep(self) -> dict[str, frozenset[str]]:
        entries = cast(dict[str, str], self.client.hgetall(self.keys.asleep))  # decode_responses
        asleep = {}
        for reader, topics in entries.items():
            parsed = parse_asleep(f"{reader} {topics}")
            if parsed is not None:
                asleep[parsed[0]] = parsed[1]
        return asleep

    def _seed(self) -> None:
        """Subscribed: who sleeps now, the epoch and the draining mark (anything said from
        now on comes on the feeds)."""
        asleep = self._read_asleep()
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.kafka_epoch)
        pipe.exists(self.keys.draining)
        epoch, draining = pipe.execute()
        with self._lock:
            self.asleep = asleep
        self.epoch = None if epoch is None else str(epoch)
        self.draining = bool(draining)
        self.listening = True

    def _news(self, data: str) -> None:
        """A message of the mesh feed (Keys.mesh_channel)."""
        kind, _, value = data.partition(" ")
        if kind == "epoch" and value:
            self.epoch = value
        elif kind == "draining":
            self.draining = value == "1"

    def _feed(self, data: str) -> None:
        parsed = parse_asleep(data)
        if parsed is None:
            return
        reader, topics = parsed
        with self._lock:
            asleep = dict(self.asleep)
            if topics:
                asleep[reader] = topics
            else:
                asleep.pop(reader, None)
            self.asleep = asleep
