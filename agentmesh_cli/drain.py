"""`agentmesh down` drains, and loses nothing: intake stops, the mesh goes quiet, and what
the embedded broker still holds unread is kept for the next `up`.

- `drain_mesh` sets the draining mark in Redis: roles see `ctx.draining` (the demo
  workloads stop making orders, refunds and leads) and `send` and `propose` refuse; then
  `wait_quiet` polls the counters and the registry until the quiet rule (quiet.py) holds,
  or the drain timeout passes, with a progress line about every second.
- `save_unread` (embedded broker only, after the agents stopped and committed their
  offsets): every `messages` record from the agents' committed offsets to the end of their
  inbox partitions, addressed to an agent that has not read it, into the state folder's
  unread file; the broker keeps records in memory only and forgets them when it stops.
- `replay_unread` (the next `up`, after the topics are made and before the agents start):
  the same bytes produced again, so the same message ids, and the file removed. An agent's
  ledger (in Redis, which survives) skips a copy it had handled.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.bus import Bus
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.errors import (
    AgentMeshError,
    BusError,
    ConfigError,
    InvalidEnvelope,
    MeshDraining,
    WaitTimeout,
)
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.quiet import (
    QuietWatch,
    Reading,
    counted,
    drained_agents,
    lost_counts,
    progress_line,
    read,
)
from agentmesh_cli.reader import Reader, committed_offsets
from agentmesh_cli.records import Record
from agentmesh_cli.replicas import Groups, running_agents
from agentmesh_cli.signing import mesh_signer
from agentmesh_cli.store import Store
from agentmesh_cli.unread import FILE_VERSION, load_unread, write_unread
from agentmesh_cli.waiting import Clock, Deadline, wait_until

Say = Callable[[str], None]

POLL_S = 0.25  # how often the drain reads the counters
PROGRESS_EVERY_S = 1.0
# Reading the unread records to the end of their partitions (`_read_to_end`): once every
# partition's fetch said "no more" (EOF), nothing more for this long (or 3 fetch waits)...
SETTLE_AFTER_END_S = 0.3
# ... and, should the broker never say so, nothing more for this long
IDLE_END_S = 1.5
SAVE_TIMEOUT_S = 60.0  # the whole read, however much there is
REPLAY_FLUSH_S = 30.0


@dataclass(frozen=True)
class Drained:
    """How a drain ended: quiet (or timed out) after `seconds`, with the last reading
    (None when Redis could not be read at all)."""

    quiet: bool
    seconds: float
    reading: Reading | None


@dataclass
class Saved:
    """What `save_unread` kept: records per recipient, and what it left out."""

    to: Counter[str] = field(default_factory=Counter)
    forged: int = 0  # records whose signature does not verify: never signed anew
    undecodable: int = 0  # not an envelope: the agent dead-letters it, there is nothing to handle
    path: Path | None = None

    @property
    def records(self) -> int:
        return sum(self.to.values())


def unread_path(mesh: Mesh) -> Path:
    return mesh.state_dir / C.UNREAD_FILE


def refuse_while_draining(store: Store, what: str) -> None:
    """MeshDraining when `down` drains the mesh. While Redis does not answer, `what` goes
    ahead: it does not need Redis, and a dead Redis is not a drain."""
    try:
        draining = store.draining()
    except AgentMeshError:
        return
    if draining:
        raise MeshDraining(f"the mesh is draining for `down`: {what} refused (input is taken "
                           "again after the next `agentmesh up`)")


def drain_mesh(mesh: Mesh, timeout: float, say: Say) -> Drained | None:
    """Stop intake and wait for the mesh to be quiet, or `timeout`; None when Redis does
    not answer (then there is nothing to wait by). Interrupted (Ctrl+C) while waiting:
    the mark is cleared again, and the mesh goes on."""
    store = Store(mesh.redis_url, mesh.config.mesh, timeout=2.0)
    try:
        try:
            store.set_draining(True)
        except AgentMeshError as exc:
            say(f"cannot drain, Redis does not answer ({exc}): stopping without waiting")
            return None
        try:
            result = wait_quiet(mesh, store, timeout, say)
        except BaseException:
            try:
                store.set_draining(False)
            except AgentMeshError:
                pass  # the next `up` clears it
            raise
        if result.quiet:
            say(f"drained: the mesh is quiet after {result.seconds:.1f} s")
        else:
            left: int | str = "?" if result.reading is None else result.reading.total
            say(f"drain timeout after {result.seconds:.1f} s: {counted(left, 'message')} unhandled")
        return result
    finally:
        store.close()


def wait_quiet(mesh: Mesh, store: Store, timeout: float, say: Say,
               clock: Clock = time.monotonic) -> Drained:
    """Wait until the mesh is quiet (quiet.py) or `timeout` passed; `say` gets a progress
    line about every second. Redis failing meanwhile is said, and waited through."""
    watch = QuietWatch()
    started = clock()
    said_at = -math.inf
    last: Reading | None = None

    def settled() -> bool:
        nonlocal said_at, last, watch
        now = clock()
        try:
            registry = store.agents()
            # a replica group's replicas as many as it runs now, and those still leaving
            agents = drained_agents(running_agents(mesh.config, _counts(mesh, store)), registry)
            last = read(store.all_counters(), registry, agents)
        except AgentMeshError as exc:
            watch = QuietWatch()  # a quiet spell is not taken across what was not seen
            line = f"draining: Redis unavailable ({exc}), {now - started:.1f} s"
        else:
            if watch.observe(last, now):
                return True
            line = progress_line(last, now - started)
        if now - said_at >= PROGRESS_EVERY_S:
            say(line)
            said_at = now
        return False

    try:
        wait_until(settled, Deadline(timeout, clock), "the mesh to be quiet", interval=POLL_S,
                   clock=clock)
    except WaitTimeout:
        return Drained(False, clock() - started, last)
    return Drained(True, clock() - started, last)


def _counts(mesh: Mesh, store: Store) -> dict[str, int]:
    """The replicas each group runs now (a mesh without groups reads nothing)."""
    return Groups(store).counts() if mesh.config.groups() else {}


def _stopped_agents(mesh: Mesh) -> list[str]:
    """The agents of the mesh once they stopped: a group's replicas as many as it ran, and
    those that were retiring (Redis away: as mesh.yaml declares)."""
    if not mesh.config.groups():
        return running_agents(mesh.config, {})
    store = Store(mesh.redis_url, mesh.config.mesh, timeout=2.0)
    try:
        groups = Groups(store)
        return sorted({*running_agents(mesh.config, groups.counts()), *groups.retiring()})
    except AgentMeshError:
        return running_agents(mesh.config, {})
    finally:
        store.close()


def readdressed(value: bytes, replicas: list[str]) -> tuple[bytes, str]:
    """An envelope for a replica that is gone, addressed to one of `replicas` instead (by
    its conversation, else its id, so a conversation's messages stay together)."""
    envelope = Envelope.decode(value)
    conversation = envelope.meta.get("conversation")
    pick = zlib.crc32(str(conversation if isinstance(conversation, str) else envelope.id).encode())
    to = replicas[pick % len(replicas)]
    return dataclasses.replace(envelope, to_agent_id=to).encode(), to


def _readers_of(mesh: Mesh, agents: list[str]) -> dict[int, list[str]]:
    """Inbox partition -> the agents that read it (several may share one)."""
    partitions = mesh.config.kafka.partitions
    readers: dict[int, list[str]] = {}
    for agent in agents:
        readers.setdefault(C.inbox_partition(agent, partitions), []).append(agent)
    return readers


def save_unread(mesh: Mesh) -> Saved:
    """Read what the agents have not read from the embedded broker and add it to the
    unread file (kept with what an earlier save left there). Call once the agents have
    stopped: their committed offsets are where they would go on from."""
    kafka = mesh.config.kafka
    readers = _readers_of(mesh, _stopped_agents(mesh))
    committed: dict[str, int] = {}
    for partition, agents in readers.items():
        for agent in agents:
            offsets = committed_offsets(kafka, C.agent_group(kafka.topic_prefix, agent),
                                        [(C.TOPIC_MESSAGES, partition)])
            # never committed: it reads from the beginning (auto.offset.reset earliest)
            committed[agent] = offsets.get((C.TOPIC_MESSAGES, partition), 0)
    saved = Saved()
    kept: list[dict[str, Any]] = []
    # from the lowest offset of the agents that share a partition
    starts = [(C.TOPIC_MESSAGES, p, min(committed[a] for a in agents)) for p, agents in readers.items()]
    for record in _read_to_end(mesh, starts):
        if record.forged is not None:
            saved.forged += 1
            continue
        try:
            envelope = Envelope.decode(record.value, max_bytes=kafka.max_record_bytes)
        except InvalidEnvelope:
            saved.undecodable += 1
            continue
        to = envelope.to_agent_id
        if to not in readers.get(record.partition, ()) or record.offset < committed[to]:
            continue  # read already, or addressed to no agent that reads here
        saved.to[to] += 1
        kept.append({"v": FILE_VERSION, "topic": record.topic, "partition": record.partition,
                     "offset": record.offset, "to": to, "id": envelope.id,
                     "key": None if record.key is None else record.key.decode("utf-8", "replace"),
                     "value": base64.b64encode(record.value or b"").decode("ascii")})
    if kept:
        path = unread_path(mesh)
        earlier = load_unread(path)
        known = {item["value"] for item in earlier}  # the same bytes: the same message
        write_unread(path, earlier + [item for item in kept if item["value"] not in known])
        saved.path = path
    return saved


def _read_to_end(mesh: Mesh, starts: list[tuple[str, int, int]]) -> list[Record]:
    """Every record from `starts` to the end of each partition. The end: every partition
    said it has no more (a fetch answered: EOF) and nothing came for a few fetch waits
    more, or, should the broker never say so, nothing came for IDLE_END_S. Nobody writes
    to them any more (the agents stopped, operator input is refused)."""
    if not starts:
        return []
    kafka = mesh.config.kafka
    settle = max(SETTLE_AFTER_END_S, 3 * kafka.fetch_wait)
    wanted = {(topic, partition) for topic, partition, _ in starts}
    records: list[Record] = []
    reader = Reader(kafka, f"{kafka.topic_prefix}.down", starts, "agentmesh-down",
                    signer=mesh_signer(mesh), track_ends=True)
    try:
        deadline = Deadline(SAVE_TIMEOUT_S)
        last = time.monotonic()
        while True:
            batch = reader.poll_batch(timeout=0.05)
            now = time.monotonic()
            if batch:
                records += batch
                last = now
            if now - last >= (settle if reader.at_end >= wanted else IDLE_END_S):
                return records
            if deadline.passed():
                raise BusError(f"reading the unread messages took over {SAVE_TIMEOUT_S:g} s")
    finally:
        reader.close()


def keep_unread(mesh: Mesh, say: Say) -> Saved:
    """`save_unread`, said; an error says that the infra is left running, and why."""
    try:
        saved = save_unread(mesh)
    except (BusError, ConfigError) as exc:
        raise type(exc)(f"unread messages not saved: {exc}; the broker and Redis are left "
                        "running: `agentmesh down --now` stops them (what the broker holds "
                        "unread is then lost)") from exc
    if saved.path is not None:
        shown = ", ".join(f"{agent} {n}" for agent, n in sorted(saved.to.items()))
        where = saved.path.relative_to(mesh.root) if saved.path.is_relative_to(mesh.root) else saved.path
        say(f"saved {counted(saved.records, 'unread message')} ({shown}) to {where}: the next "
            "`up` replays them")
    else:
        say("nothing unread to save")
    for count, what in ((saved.forged, "whose signature does not verify"),
                        (saved.undecodable, "that are not envelopes")):
        if count:
            say(f"not saved: {count} records {what} (their agents dead-letter such records)")
    _count_lost(mesh, saved, say)
    return saved


def _count_lost(mesh: Mesh, saved: Saved, say: Say) -> None:
    """Messages counted as sent that the broker no longer held (`quiet.lost_counts`) are
    counted `lost` in their agent's counters: the next drain does not wait for them."""
    store = Store(mesh.redis_url, mesh.config.mesh, timeout=2.0)
    try:
        registry = store.agents()
        reading = read(store.all_counters(), registry, drained_agents(_stopped_agents(mesh), registry))
        lost = lost_counts(reading, saved.to)
        for agent, n in sorted(lost.items()):
            store.add_counters(agent, Counter({C.COUNTER_LOST: n}))
    except AgentMeshError as exc:
        say(f"messages lost earlier not counted (Redis: {exc})")
        return
    finally:
        store.close()
    if lost:
        shown = ", ".join(f"{agent} {n}" for agent, n in sorted(lost.items()))
        say(f"counted as sent but no longer in the broker, so never to be handled: {shown} "
            f"(lost before this down, by `down --now` or a broker restart); counted `lost`")


def replay_unread(mesh: Mesh, counts: dict[str, int] | None = None) -> int:
    """Produce the unread file's records again, each to its recipient's inbox partition
    (the partition it was read from, unless `kafka.partitions` changed since), signed
    with the mesh key when the mesh signs; then remove the file. A record for a replica
    this `up` does not run (its group was scaled up before the `down`; `counts` is what
    runs now) goes to one that runs, with the same id. Returns how many; the file stays
    when the broker did not take them all."""
    path = unread_path(mesh)
    items = load_unread(path)
    if not items:
        path.unlink(missing_ok=True)
        return 0
    kafka = mesh.config.kafka
    running = set(running_agents(mesh.config, counts or {}))
    bus = Bus(kafka, client_id="agentmesh-up", signer=mesh_signer(mesh))
    for item in items:
        value, to, key = base64.b64decode(item["value"]), str(item["to"]), item.get("key")
        group = mesh.config.group_name(to)
        if group is not None and to not in running:
            value, to = readdressed(value, sorted(n for n in running if mesh.config.group_name(n) == group))
            key = to
        bus.produce_raw(item["topic"], value, key, C.inbox_partition(to, kafka.partitions))
    left = bus.flush(REPLAY_FLUSH_S)
    if left or bus.delivery_failures:
        raise BusError(f"{left + bus.delivery_failures} of {len(items)} unread messages saved by "
                       f"`down` were not taken by the broker at {kafka.bootstrap}; {path} is kept "
                       "for the next `up`")
    path.unlink()
    return len(items)
