"""The topology manager's state machine, pure: records in; graph, counters, dead letters
and snapshots out.

Every record read ends in exactly one outcome, counted (see docs/architecture.md, Dead
letters). `topology` records: an applied event (`events`) or a dead letter. `messages`
records: a copy of a message already read (`duplicates`, by envelope id), a
reinforcement, a self-message, an operator's message, a record that does not decode or
whose signature does not verify (`invalid`: the agent that reads its partition
dead-letters it), a message from a sender that never joined (`unknown_sender`: its
recipient dead-letters it), `unrouted` (both agents were in the mesh but one is gone), a
dead letter of ours (what no agent will ever read: unknown recipients, misrouted records,
garbage on a partition nobody reads), or held, for a while, until the agents it needs join.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson

from agentmesh_cli import constants as C
from agentmesh_cli.envelope import Envelope, RecentIds, envelope_problem, is_agent_name, shown
from agentmesh_cli.errors import InvalidEnvelope, SnapshotError
from agentmesh_cli.records import RAW_PREVIEW_BYTES, Record, offsets_from_json, offsets_to_json
from agentmesh_cli.signing import BAD_SIGNATURE, UNSIGNED, refused_counter
from agentmesh_cli.topology.graph import MALFORMED, SlimeMoldGraph, SlimeMoldRules

SNAPSHOT_VERSION = 1
MAX_HELD = 20_000  # bound on held records (each keeps at most RAW_PREVIEW_BYTES of itself)
MAX_ROLE_CHARS = 200
MESSAGE_IDS_REMEMBERED = 50_000
ANY_PARTITION = -1  # (`_inbox_of`) partitions are not checked
_MESSAGES_RECORDS = C.records_counter(C.TOPIC_MESSAGES)

log = logging.getLogger("topology")


@dataclass(frozen=True)
class Held:
    """A `messages` record waiting: an envelope for its agents' joins, or one that does not
    decode (`reason`) for an agent that reads its partition. `record.value` is cut to
    RAW_PREVIEW_BYTES (all a dead letter carries); `size` is the record's own size."""

    record: Record
    size: int
    held_at: int  # when it was read (epoch ms): it waits heartbeat_timeout_ms from there
    source: str = ""
    target: str = ""
    ts: int = 0
    reason: str = ""

    @classmethod
    def of(cls, record: Record, now: int, **fields: Any) -> Held:
        value = record.value or b""
        return cls(record._replace(value=value[:RAW_PREVIEW_BYTES]), len(value), now, **fields)


K = TypeVar("K")


_UNSEEN = object()  # (apply_batch) a recipient not in the inbox cache yet


def _take_older(book: dict[K, list[Held]], before: int) -> list[Held]:
    """Remove and return the held records read before `before` (epoch ms)."""
    taken: list[Held] = []
    for key, waiting in list(book.items()):
        if any(m.held_at < before for m in waiting):
            taken.extend(m for m in waiting if m.held_at < before)
            kept = [m for m in waiting if m.held_at >= before]
            if kept:
                book[key] = kept
            else:
                del book[key]
    return taken


class TopologyState:
    """The graph plus the bookkeeping a snapshot needs; no I/O (fed records, returns snapshots).

    The manager sets `partitions`, `max_record_bytes` and `expected` (mesh.yaml's agents,
    which will read their inbox once they start) from mesh.yaml; left unset, records are not
    checked against them. Dead letters wait in `letters` for the manager to send."""

    def __init__(self, rules: SlimeMoldRules, heartbeat_timeout_ms: int, epoch: str = "") -> None:
        self.graph = SlimeMoldGraph(rules)
        self.epoch = epoch
        self.rules = rules
        self.offsets: dict[tuple[str, int], int] = {}
        self.last_seen: dict[str, int] = {}
        self.roles: dict[str, str] = {}
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.counts: Counter[str] = Counter()
        self.partitions: int | None = None
        self.max_record_bytes: int | None = None
        self.expected: frozenset[str] = frozenset()
        self.letters: list[tuple[Record, str, int]] = []  # (record, reason, size) to send
        # messages read before their sender's or recipient's join (joins and messages are
        # two topics, so a replay can read them in either order): absent agent -> messages
        self.held: dict[str, list[Held]] = {}
        # records that do not decode, on a partition no agent reads yet: partition -> records
        self.held_invalid: dict[int, list[Held]] = {}
        self.held_count = 0
        # agents removed from the graph: name -> {reason: left | timeout, ts}; kept until
        # they join again (their counters in Redis are never reset)
        self.departed: dict[str, dict[str, Any]] = {}
        # ids of the newest messages read (not kept in snapshots): copies are not reinforced twice
        self.seen = RecentIds(MESSAGE_IDS_REMEMBERED)
        # inbox partitions of the agents that read theirs (a cache, for these settings)
        self._read: tuple[tuple[int | None, frozenset[str]], set[int]] | None = None
        # (`apply_batch`) recipient -> the partition its messages must be on, or None for a
        # name no agent can have; for the `partitions` it was made with
        self._inbox: dict[str, int | None] = {}
        self._inbox_for: int | None = None

    @property
    def membership_changes(self) -> int:
        return self.counts["joins"] + self.counts["leaves"]

    def known(self, agent: str) -> bool:
        """Has `agent` joined at some time (present, or removed since)?"""
        return self.graph.has_agent(agent) or agent in self.departed

    def reader(self, agent: str) -> bool:
        """Will `agent` read its inbox: it joined at some time, or mesh.yaml runs it?"""
        return self.known(agent) or agent in self.expected

    def take_letters(self) -> list[tuple[Record, str, int]]:
        letters, self.letters = self.letters, []
        return letters

    def dead_letter(self, record: Record, reason: str, size: int | None = None) -> str:
        """Count a dead letter of ours and queue it for the manager to send."""
        self.counts[C.COUNTER_DEAD] += 1
        self.counts[C.dead_letters_counter(record.topic)] += 1
        self.letters.append((record, reason, len(record.value or b"") if size is None else size))
        return reason

    def _raised(self, record: Record, exc: Exception, size: int | None = None) -> str:
        """A record whose handling raised (a bug it triggers): logged, and a dead letter."""
        log.exception("record %s/%d@%d raised", record.topic, record.partition, record.offset)
        return self.dead_letter(record, f"topology manager error: {exc!r}", size)

    # records -------------------------------------------------------------------------
    def apply(self, record: Record, now: int) -> str | None:
        """Apply one record read at `now` (epoch ms); return the reason when it became a dead
        letter of ours at once (it is queued in `letters` too)."""
        self.offsets[(record.topic, record.partition)] = record.offset + 1
        self.counts[C.records_counter(record.topic)] += 1
        if record.forged is not None:  # it does not verify (security.sign_envelopes)
            if record.topic == C.TOPIC_MESSAGES:
                # like a record that does not decode: the agents that read its partition
                # refuse it; it reinforces nothing
                return self._bad_message(Held.of(record, now, reason=record.forged))
            self.counts[refused_counter(record.forged)] += 1  # a join, heartbeat or leave
            return self.dead_letter(record, record.forged)
        try:
            event = Envelope.decode(record.value, self.max_record_bytes)
        except InvalidEnvelope as exc:
            if record.topic == C.TOPIC_MESSAGES:
                return self._bad_message(Held.of(record, now, reason=str(exc)))
            return self.dead_letter(record, str(exc))
        if record.topic == C.TOPIC_MESSAGES:
            return self._message(record, event.id, event.from_agent_id, event.to_agent_id,
                                 event.ts, now)
        return self._event(record, event, now)

    def apply_safely(self, record: Record, now: int) -> str | None:
        """`apply`, where a bug that one record triggers makes it a dead letter instead of
        stopping the manager on it again after every restart."""
        try:
            return self.apply(record, now)
        except Exception as exc:
            return self._raised(record, exc)

    def apply_batch(self, records: Iterable[Record], now: int) -> None:
        """Apply records read at `now`, in order, each with the outcome `apply_safely` gives it.

        The common record, a message between two present agents, is checked here as
        `Envelope.decode` and `_message` would check it, without building an Envelope, and
        its reinforcement waits in a batch for `SlimeMoldGraph.reinforce_many`. Only edge
        weights wait: every other outcome depends on who is present, never on weights, and
        the batch is applied before anything that changes who is present (a `topology`
        record: a join also releases held messages onto the edges) and at the end.
        Anything that is not that common record takes the one-by-one path, so dead-letter
        reasons and counts stay those of `apply`."""
        pending: list[Record] = []
        sources: list[int] = []
        targets: list[int] = []
        times: list[int] = []
        slots = self.graph.slots
        remember = self.seen.add
        loads = orjson.loads
        limit = self.max_record_bytes
        inbox = self._inbox_map()
        # partition -> next offset of the messages taken here; written to `offsets` before
        # any record goes the one-by-one way (which writes its own), so the last one wins
        read: dict[int, int] = {}
        messages = duplicates = 0
        try:
            for record in records:
                if record.topic != C.TOPIC_MESSAGES:
                    self._note_offsets(read)
                    self._flush(pending, sources, targets, times)
                    self.apply_safely(record, now)
                    continue
                if record.forged is not None:  # it does not verify: the one-by-one way says so
                    self._note_offsets(read)
                    self.apply_safely(record, now)
                    continue
                value = record.value
                data: Any = None
                if value is not None and (limit is None or len(value) <= limit):
                    try:
                        data = loads(value)
                    except orjson.JSONDecodeError:
                        pass
                # Envelope.decode's checks, without building an Envelope
                if data is None or envelope_problem(data) is not None:
                    self._note_offsets(read)
                    self.apply_safely(record, now)  # decoded again there, for its reason
                    continue
                message_id, source, target, ts = (data["id"], data["from_agent_id"],
                                                  data["to_agent_id"], data["ts"])
                read[record.partition] = record.offset + 1
                messages += 1
                try:
                    src, dst = slots.get(source), slots.get(target)
                    if src is not None and dst is not None and src != dst:
                        partition = inbox.get(target, _UNSEEN)
                        if partition is _UNSEEN:
                            partition = self._inbox_of(target)
                        if partition is not None and (partition == record.partition
                                                      or partition == ANY_PARTITION):
                            if remember(message_id):
                                pending.append(record)
                                sources.append(src)
                                targets.append(dst)
                                times.append(ts)
                            else:
                                duplicates += 1
                            continue
                    self._message(record, message_id, source, target, ts, now)
                except Exception as exc:
                    self._raised(record, exc)
        finally:
            self._note_offsets(read)
            self.counts[_MESSAGES_RECORDS] += messages
            self.counts["duplicates"] += duplicates
            self._flush(pending, sources, targets, times)

    def _note_offsets(self, read: dict[int, int]) -> None:
        for partition, offset in read.items():
            self.offsets[(C.TOPIC_MESSAGES, partition)] = offset
        read.clear()

    def _flush(self, pending: list[Record], sources: list[int], targets: list[int],
               times: list[int]) -> None:
        """Apply the waiting reinforcements (and empty the lists)."""
        if not pending:
            return
        try:
            self.counts["reinforcements"] += self.graph.reinforce_many(
                np.array(sources, np.int64), np.array(targets, np.int64), np.array(times, np.int64))
        except Exception as exc:
            log.exception("a batch of %d reinforcements raised", len(pending))
            for record in pending:
                self.dead_letter(record, f"topology manager error: {exc!r}")
        pending.clear()
        sources.clear()
        targets.clear()
        times.clear()

    def _inbox_map(self) -> dict[str, int | None]:
        if self._inbox_for != self.partitions or len(self._inbox) > MESSAGE_IDS_REMEMBERED:
            self._inbox, self._inbox_for = {}, self.partitions
        return self._inbox

    def _inbox_of(self, target: str) -> int | None:
        """The partition a message to `target` must be on (ANY_PARTITION when partitions are
        not checked), or None when no agent can have that name; remembered."""
        if not is_agent_name(target):
            partition = None
        elif self.partitions:
            partition = C.inbox_partition(target, self.partitions)
        else:
            partition = ANY_PARTITION
        self._inbox[target] = partition
        return partition

    def _event(self, record: Record, event: Envelope, now: int) -> str | None:
        agent = event.from_agent_id
        if not is_agent_name(agent):
            return self.dead_letter(record, f"agent id {shown(agent)} is not a valid agent name")
        if event.type in (C.EVENT_JOINED, C.EVENT_HEARTBEAT):
            role = event.payload.get("role")
            if role is not None and (not isinstance(role, str) or len(role) > MAX_ROLE_CHARS):
                return self.dead_letter(record, f"field 'payload.role' is not a string of at most "
                                                f"{MAX_ROLE_CHARS} characters")
            self.counts["events"] += 1
            if self.graph.add_agent(agent):
                self.counts["joins"] += 1
                self._read = None  # a new reader
                log.info("agent %s joined (%s)%s", agent, event.type,
                         " again: its edges start fresh" if self.departed.pop(agent, None) else "")
                self._release(agent)
            # a time ahead of ours is taken as now: a forged future would keep it forever
            self.last_seen[agent] = max(min(event.ts, now), self.last_seen.get(agent, 0))
            self.roles[agent] = role if role is not None else self.roles.get(agent, "")
        elif event.type == C.EVENT_LEFT:
            if not self.known(agent):
                return self.dead_letter(record, f"agent_left from {agent}, which never joined")
            self.counts["events"] += 1
            self._remove(agent, "left", event.ts)
        else:
            return self.dead_letter(record, f"unknown topology event type {shown(event.type)}")
        return None

    def _message(self, record: Record, message_id: str, source: str, target: str, ts: int,
                 now: int) -> str | None:
        if not self.seen.add(message_id):
            # a copy: sent again after a broker restart, or by a handler that ran again
            # after its agent crashed (same id); the recipient skips it too
            self.counts["duplicates"] += 1
            return None
        if not is_agent_name(target):  # nobody can ever have this name, nobody reads it
            return self.dead_letter(record, f"unknown recipient {shown(target)}")
        if self.partitions and record.partition != (inbox := C.inbox_partition(target, self.partitions)):
            return self.dead_letter(record, f"message to {target} on partition {record.partition}, "
                                            f"not its inbox partition {inbox}")
        self._route(Held.of(record, now, source=source, target=target, ts=ts))
        return None

    def _route(self, m: Held) -> None:
        source, target = m.source, m.target
        if source == target:
            if self.reader(target):
                self.counts["self_messages"] += 1  # not an edge; its agent handles it
            else:
                self._hold(target, m)
        elif self.graph.reinforce(source, target, m.ts) is not None:
            self.counts["reinforcements"] += 1
        elif not self.graph.has_agent(target):
            self._hold(target, m)
        elif source in C.OPERATOR_SENDERS:
            self.counts["operator_messages"] += 1  # `agentmesh send`: not an agent, not an edge
        elif not is_agent_name(source):
            self.counts["unknown_sender"] += 1  # can never join; its recipient dead-letters it
        else:
            self._hold(source, m)

    def _hold(self, agent: str, m: Held) -> None:
        if self.held_count >= MAX_HELD:
            self._resolve(m)
            return
        self.held.setdefault(agent, []).append(m)
        self.held_count += 1

    def _bad_message(self, m: Held) -> str | None:
        partition = m.record.partition
        if self.partitions is None or partition in self._read_partitions():
            self.counts["invalid"] += 1  # the agent that reads its partition dead-letters it
            return None
        if self.held_count >= MAX_HELD:
            return self._resolve(m)
        self.held_invalid.setdefault(partition, []).append(m)
        self.held_count += 1
        return None

    def _read_partitions(self) -> set[int]:
        settings = (self.partitions, self.expected)
        if self._read is None or self._read[0] != settings:
            agents = [*self.graph.agents(), *self.departed, *self.expected]
            self._read = (settings, {C.inbox_partition(a, self.partitions or 1) for a in agents})
        return self._read[1]

    def _resolve(self, m: Held) -> str | None:
        """The outcome of a record that waited long enough (or could wait no longer)."""
        if m.reason:
            if self.partitions is None or m.record.partition in self._read_partitions():
                self.counts["invalid"] += 1
                return None
            if m.reason in (UNSIGNED, BAD_SIGNATURE):  # it did not verify
                self.counts[refused_counter(m.reason)] += 1
            return self.dead_letter(
                m.record, f"{m.reason} (no agent reads partition {m.record.partition})", m.size)
        if not self.reader(m.target):
            return self.dead_letter(m.record, f"unknown recipient {m.target}", m.size)
        if not self.known(m.source) and m.source not in C.OPERATOR_SENDERS:
            self.counts["unknown_sender"] += 1  # its recipient dead-letters it
        else:
            self.counts["unrouted"] += 1  # both were in the mesh; one of them is gone
        return None

    def _release(self, agent: str) -> None:
        """Apply the messages that waited for `agent` to join, in their order."""
        waiting = self.held.pop(agent, [])
        partition = C.inbox_partition(agent, self.partitions) if self.partitions else None
        invalid = self.held_invalid.pop(partition, []) if partition is not None else []
        self.held_count -= len(waiting) + len(invalid)
        self.counts["invalid"] += len(invalid)  # it reads them now, and dead-letters them
        for m in waiting:
            # each on its own: a message that raises is its own dead letter, and neither
            # the join (already counted) nor the messages after it are lost with it
            try:
                self._route(m)
            except Exception as exc:
                self._raised(m.record, exc, m.size)

    def _expire_held(self, now: int) -> None:
        due = [*_take_older(self.held, now - self.heartbeat_timeout_ms),
               *_take_older(self.held_invalid, now - self.heartbeat_timeout_ms)]
        self.held_count -= len(due)
        for m in due:
            self._resolve(m)

    def new_epoch(self, epoch: str, now: int | None = None) -> None:
        """The broker restarted empty: keep the graph, forget the offsets (the new topics
        are read from their beginning); held records are settled. `now`: every agent counts
        as seen then: while the broker was away none could be heard, so its silence says
        nothing (the liveness check took them all for dead before their joins on the new
        broker were read: test_recovery's rebuilt graph held one agent of three)."""
        self.epoch = epoch
        self.offsets = {}
        if now is not None:
            self.last_seen = {agent: max(seen, now) for agent, seen in self.last_seen.items()}
        held = [m for book in (self.held, self.held_invalid) for ms in book.values() for m in ms]
        self.held, self.held_invalid, self.held_count = {}, {}, 0
        for m in held:
            self._resolve(m)

    def _remove(self, agent: str, reason: str, ts: int) -> None:
        if self.graph.remove_agent(agent):
            self.counts["leaves"] += 1
            self.departed[agent] = {"reason": reason, "ts": ts}
            log.info("agent %s removed: %s", agent, reason)
        self.last_seen.pop(agent, None)
        self.roles.pop(agent, None)

    # time ------------------------------------------------------------------------------
    def tick(self, now: int, beats: Mapping[str, int] | None = None) -> int:
        """One decay interval: decay and prune, then drop agents whose heartbeats stopped
        (`drop_silent`)."""
        pruned = self.graph.decay()
        self.counts["prunes"] += pruned
        self.drop_silent(now, beats)
        return pruned

    def silent(self, now: int) -> list[str]:
        """The agents not heard from for over `heartbeat_timeout_ms` (on the broker)."""
        return [agent for agent, seen in self.last_seen.items() if now - seen > self.heartbeat_timeout_ms]

    def drop_silent(self, now: int, beats: Mapping[str, int] | None = None) -> list[str]:
        """Settle held records older than `heartbeat_timeout_ms`, and remove the agents whose
        heartbeats stopped that long ago. `beats`: agent -> its last heartbeat as written in
        the registry (Redis), when it was read: an agent that beat there lately is alive,
        only the broker did not carry its heartbeat (it was away, or restarting)."""
        self._expire_held(now)
        beats = beats or {}
        removed = []
        for agent in self.silent(now):
            beat = min(beats.get(agent, 0), now)
            if now - beat <= self.heartbeat_timeout_ms:
                self.last_seen[agent] = max(beat, self.last_seen[agent])
                continue
            self._remove(agent, "timeout", now)
            removed.append(agent)
        return removed

    # snapshots -------------------------------------------------------------------------
    def snapshot(self, now: int) -> dict[str, Any]:
        return {
            "v": SNAPSHOT_VERSION,
            "ts": now,
            "epoch": self.epoch,
            "graph": self.graph.to_dict(),
            "offsets": offsets_to_json(self.offsets),
            "last_seen": self.last_seen,
            "roles": self.roles,
            "departed": self.departed,
            # the records' coordinates, not their bytes (a dead letter after a restart
            # carries no preview)
            "held": [[m.source, m.target, m.ts, m.held_at, m.record.partition, m.record.offset, m.size]
                     for ms in self.held.values() for m in ms],
            "held_invalid": [[m.record.partition, m.record.offset, m.size, m.held_at, m.reason]
                             for ms in self.held_invalid.values() for m in ms],
            "stats": self.graph.stats().as_dict(),
        }

    @classmethod
    def restore(cls, data: dict[str, Any], rules: SlimeMoldRules, timeout_ms: int) -> TopologyState:
        """The state a snapshot saved; SnapshotError when the snapshot is malformed."""
        graph = snapshot_graph(data, rules)
        try:
            return cls._restore(data, graph, rules, timeout_ms)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            # a field of the wrong shape: a list where an object goes, a word for a number
            raise SnapshotError(f"{MALFORMED}: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def _restore(cls, data: dict[str, Any], graph: SlimeMoldGraph, rules: SlimeMoldRules,
                 timeout_ms: int) -> TopologyState:
        state = cls(rules, timeout_ms, str(data.get("epoch", "")))
        state.graph = graph
        state.offsets = offsets_from_json(data.get("offsets", {}))
        state.last_seen = {k: int(v) for k, v in data.get("last_seen", {}).items()}
        state.roles = dict(data.get("roles", {}))
        state.departed = dict(data.get("departed", {}))
        for item in data.get("held", []):
            # [source, target, ts] before the records' coordinates were kept
            source, target, ts, held_at, partition, offset, size = [*item, *[None] * 4][:7]
            record = Record(C.TOPIC_MESSAGES, int(partition or 0), -1 if offset is None else int(offset),
                            None, None)
            state._route(Held(record, int(size or 0), int(ts if held_at is None else held_at),
                              str(source), str(target), int(ts)))
        for partition, offset, size, held_at, reason in data.get("held_invalid", []):
            record = Record(C.TOPIC_MESSAGES, int(partition), int(offset), None, None)
            state.held_invalid.setdefault(int(partition), []).append(
                Held(record, int(size), int(held_at), reason=str(reason)))
            state.held_count += 1
        return state


def snapshot_graph(data: Any, rules: SlimeMoldRules | None = None) -> SlimeMoldGraph:
    """The graph of a topology snapshot (what `TopologyState.snapshot` makes, as JSON);
    SnapshotError when the snapshot is malformed."""
    if not isinstance(data, dict):
        raise SnapshotError(f"{MALFORMED}: not an object but {type(data).__name__}")
    if "graph" not in data:
        raise SnapshotError(f"{MALFORMED}: it has no graph")
    return SlimeMoldGraph.from_dict(data["graph"], rules)
