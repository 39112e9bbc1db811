"""One agent process: join, read the inbox partition, run the role, heartbeat, leave.

The loop is single-threaded: poll a batch from the inbox partition, hand the agent's
own messages to the role, tick the role, end the turn (what the handlers and the tick
sent leaves at once, one request per partition), settle the turns whose sends the broker
has confirmed (their message ids are recorded in the agent's ledger, then, at most every
COMMIT_EVERY_S, their offsets are committed: see agent/ledger.py), heartbeat when due.
The loop does not wait for the broker's answers; it runs at most TURNS_AHEAD turns ahead
of them. A restarted agent resumes after the last committed offsets; a redelivered
message the ledger holds is not handled again.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import time
from collections import Counter, deque
from types import FrameType
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli import events
from agentmesh_cli.agent.base import AgentContext, Role, Vote
from agentmesh_cli.agent.ledger import Ledger, derived_id
from agentmesh_cli.agent.services import AgentServices
from agentmesh_cli.bus import Bus, Reader, hostname
from agentmesh_cli.config import AgentSpec
from agentmesh_cli.consensus.core import Proposal
from agentmesh_cli.envelope import Envelope, RecentIds, now_ms, shown
from agentmesh_cli.errors import AgentMeshError, BusError, InvalidEnvelope
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.records import Record
from agentmesh_cli.recovery import BrokerWatch, wait_for_infra
from agentmesh_cli.signing import mesh_signer, refused_counter
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import Clock

TICK_S = 0.1
COUNTER_FLUSH_S = 1.0
PEERS_REFRESH_S = 2.0
SETTLE_FLUSH_S = 10.0  # how long a batch waits for the delivery of what its handlers sent
TURNS_AHEAD = 8  # loop turns the agent may run ahead of the broker's confirmations
SETTLE_RETRY_S = 1.0  # while Redis is down, how often the ledger write is tried again
# Offsets are committed at most this often, not after every batch: each commit is a
# request the broker serves, and the ledger, not the offset, is what keeps a redelivered
# message from being handled twice (a crash replays at most this long of traffic, which
# the ledger's `recovery.dedup_window` ids cover up to 100,000 messages/s).
COMMIT_EVERY_S = 0.2
BROADCASTS_REMEMBERED = 10_000  # consensus broadcast ids kept to recognise copies
WATCH_TOPICS_S = 5.0  # how often an agent checks that the broker still has the topics


class AgentRuntime:
    def __init__(self, mesh: Mesh, spec: AgentSpec, role_cls: type[Role],
                 clock: Clock = time.monotonic) -> None:
        """`clock` times the loop's timers (heartbeat, counters, settle and commit, the
        peers' cache) and is the `now` a role's `on_tick` gets; the times of records and of
        the registry stay wall-clock ms (`now_ms`), which other processes compare with."""
        self.mesh = mesh
        self.clock = clock
        self.spec = spec
        self.name = spec.name
        self.program = C.agent_program(spec.name)
        self.log = logging.getLogger(f"agent.{spec.name}")
        self.counts: Counter[str] = Counter()
        self.stopping = False
        cfg = mesh.config
        self.partition = C.inbox_partition(self.name, cfg.kafka.partitions)
        self.store = Store(mesh.redis_url, cfg.mesh)
        # with security.sign_envelopes: what it sends is signed, what it reads is checked
        self.signer = mesh_signer(mesh)
        self.bus = Bus(cfg.kafka, client_id=self.program, linger_ms=C.AGENT_LINGER_MS,
                       signer=self.signer, clock=clock)
        self.ledger = Ledger(self.store, self.name, cfg.recovery.dedup_window)
        self._joined = self.store.joined_check()  # senders we accept
        self._broadcasts = RecentIds(BROADCASTS_REMEMBERED)  # consensus broadcasts seen
        self._handling: str | None = None  # id of the message whose handler is running
        self._derived = 0  # envelopes sent by that handler so far
        # turns whose sends the broker has not all confirmed yet: (the bus generation of
        # their sends, the ledger's mark at their end, their next offsets)
        self._turns: deque[tuple[int, int, dict[tuple[str, int], int]]] = deque()
        self._confirmed_mark = 0  # the ledger's mark at the end of the last confirmed turn
        # next offsets of the confirmed turns, committed once their ids are recorded
        self._uncommitted: dict[tuple[str, int], int] = {}
        self._next_settle = -math.inf
        self._next_commit = -math.inf
        self._peers: dict[str, dict[str, Any]] = {}
        self._peers_at = -math.inf
        seed = cfg.workload.seed
        rng = random.Random(None if seed is None else f"{seed}:{self.name}")
        self.services = AgentServices(mesh, self.name, self.log, clock=clock)
        self._services_state: dict[str, Any] = {}
        self._services_published = -math.inf
        ctx = AgentContext(self.name, spec.role, list(spec.capabilities), cfg, self.log, rng,
                           self._send, self._registry, self._propose, self.services, self._next_id)
        self.role = role_cls(ctx)

    # what the role uses --------------------------------------------------------
    def _next_id(self) -> str | None:
        """While a handler runs, the id of the next envelope it sends (see ledger.derived_id)."""
        if self._handling is None:
            return None
        self._derived += 1
        return derived_id(self._handling, self._derived)

    def _send(self, envelope: Envelope) -> Envelope:
        """Send what the role built (AgentContext.send, which took its id from `_next_id`)."""
        self.bus.send_message(envelope)  # counted as sent when the broker confirms it
        return envelope

    def _propose(self, type: str, content: dict[str, Any]) -> str:
        proposal_id = events.new_proposal_id(self.name, self._next_id())
        self.bus.send(C.TOPIC_PROPOSALS, events.proposal(self.name, proposal_id, type, content),
                      key=proposal_id)
        self.counts["proposals"] += 1
        return proposal_id

    def _registry(self) -> dict[str, dict[str, Any]]:
        now = self.clock()
        if now - self._peers_at > PEERS_REFRESH_S:
            try:
                self._peers = self.store.agents()
            except AgentMeshError as exc:
                self.log.warning("registry unavailable, using the last known peers: %s", exc)
            self._peers_at = now
        return self._peers

    # life cycle ----------------------------------------------------------------
    def _record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.spec.role,
            "capabilities": list(self.spec.capabilities),
            "pid": os.getpid(),
            "host": hostname(),
            "partition": self.partition,
            "last_heartbeat": now_ms(),
        }

    def _announce(self, event: events.Presence) -> None:
        envelope = events.presence(event, self.name, self.spec.role, self.spec.capabilities)
        self.bus.send(C.TOPIC_TOPOLOGY, envelope, key=self.name)

    def _heartbeat(self) -> None:
        self._announce(C.EVENT_HEARTBEAT)
        try:
            self.store.register_agent(self.name, self._record())
        except AgentMeshError as exc:
            self.log.warning("heartbeat not recorded in Redis: %s", exc)

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        self.log.info("signal %s: leaving the mesh", signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        cfg = self.mesh.config
        epoch = wait_for_infra(cfg.kafka, self.store, self.program, clock=self.clock)
        watch = BrokerWatch(self.bus, self.store, epoch, topics_every=WATCH_TOPICS_S, clock=self.clock)
        loaded = self.ledger.load()
        group = f"{cfg.kafka.topic_prefix}.agent.{self.name}"
        reader = Reader(cfg.kafka, group, [(C.TOPIC_MESSAGES, self.partition, None),
                                           (C.TOPIC_CONSENSUS, 0, None)], self.program,
                        signer=self.signer)
        self.store.register_agent(self.name, self._record())
        self._announce(C.EVENT_JOINED)
        self.bus.flush(10)
        self.role.on_start()
        self.store.mark_ready(self.program, os.getpid())
        self.log.info("joined as %s (role %s), inbox partition %d, %d handled ids in the ledger",
                      self.name, self.spec.role, self.partition, loaded)
        started = self.clock()
        next_heartbeat = started + cfg.heartbeat.interval
        next_flush = started + COUNTER_FLUSH_S
        try:
            while not self.stopping:
                records = reader.poll_batch(timeout=TICK_S)
                offsets: dict[tuple[str, int], int] = {}
                for record in records:
                    self.counts[C.records_counter(record.topic)] += 1
                    if record.topic == C.TOPIC_CONSENSUS:
                        self._consensus(record)
                    else:
                        self._handle(record)
                    offsets[(record.topic, record.partition)] = record.offset + 1
                now = self.clock()
                # before the turn ends, so that what the tick sends leaves in the same
                # requests as what the handlers sent
                self._safely("on_tick", self.role.on_tick, now)
                if records or self.bus.sent_unconfirmed():
                    self._end_turn(offsets)
                if self._turns or (self._uncommitted and now >= self._next_settle):
                    self._settle(reader, now)
                if watch.check(now) is not None:
                    self._new_epoch(reader)
                if now >= next_heartbeat:
                    next_heartbeat = now + cfg.heartbeat.interval
                    self._heartbeat()
                if now >= next_flush:
                    next_flush = now + COUNTER_FLUSH_S
                    self._flush_counters()
                self.bus.poll()
        finally:
            self._leave(reader)
        return 0

    def _end_turn(self, offsets: dict[tuple[str, int], int]) -> None:
        """Close the loop turn: what it sent leaves now (one request per partition), and its
        handled ids and offsets wait in `_turns` until the broker has confirmed those sends."""
        if self.bus.sent_unconfirmed():
            self.bus.kick()
        self._turns.append((self.bus.close_generation(), self.ledger.mark(), offsets))

    def _settle(self, reader: Reader, now: float, final: bool = False) -> None:
        """Make handled turns durable in the order that neither loses nor doubles: what a
        turn's handlers sent is confirmed by the broker, then its ids are recorded (with the
        exact counts), and only then are its offsets committed (every COMMIT_EVERY_S, and
        when the agent leaves). The loop does not wait for the broker's answers: it goes
        on with the next turn while they come (up to TURNS_AHEAD turns). While Redis is
        down the offsets wait."""
        if final or len(self._turns) > TURNS_AHEAD:
            undelivered = self.bus.flush(SETTLE_FLUSH_S)  # wait for the answers
            if undelivered:
                self.log.warning("%d sent records not yet confirmed by the broker", undelivered)
        else:
            self.bus.poll()  # take the answers that have come
        while self._turns and self.bus.confirmed(self._turns[0][0]):
            _, self._confirmed_mark, offsets = self._turns.popleft()
            self._uncommitted.update(offsets)
        if not self.ledger.record(self._confirmed_mark):
            if now >= self._next_settle:
                self.log.warning("handled messages not recorded yet (Redis unavailable): %d "
                                 "waiting, offsets not committed", self.ledger.pending)
            self._next_settle = now + SETTLE_RETRY_S
            return
        if not self._uncommitted:
            return
        if now < self._next_commit and not final:
            self._next_settle = self._next_commit
            return
        try:
            # not waited for but when leaving: the ledger, not the offset, keeps a message
            # from being handled twice, and the next commit covers one that was lost
            reader.commit(self._uncommitted, wait=final)
            self._uncommitted.clear()
            self._next_commit = now + COMMIT_EVERY_S
        except BusError as exc:
            self._next_settle = now + SETTLE_RETRY_S
            self.log.warning("offsets not committed yet: %s", exc)

    def _new_epoch(self, reader: Reader) -> None:
        """The broker restarted empty: read from its beginning again, announce ourselves."""
        # offsets of the old broker mean nothing to the new one
        self._uncommitted.clear()
        self._turns = deque((generation, mark, {}) for generation, mark, _ in self._turns)
        reader.rewind()
        self._announce(C.EVENT_JOINED)
        try:
            self.store.register_agent(self.name, self._record())
        except AgentMeshError as exc:
            self.log.warning("registry not updated: %s", exc)

    def _leave(self, reader: Reader) -> None:
        self._safely("on_stop", self.role.on_stop)
        self._announce(C.EVENT_LEFT)
        left = self.bus.flush(5)
        try:
            self.store.unregister_agent(self.name)
        except AgentMeshError as exc:
            self.log.warning("could not remove the registry entry: %s", exc)
        unsaved = self.services.stop()
        if unsaved:
            self.log.warning("%d memory writes not saved: memory unavailable", unsaved)
        self._settle(reader, self.clock(), final=True)
        self._flush_counters()
        reader.close()
        self.log.info("left the mesh%s", f" ({left} records undelivered)" if left else "")

    def _dead_letter(self, record: Record, reason: str) -> None:
        self.log.warning("dead letter at %s/%d@%d: %s", record.topic, record.partition,
                         record.offset, reason)
        self.bus.dead_letter(record, reason)
        self.counts[C.COUNTER_DEAD] += 1
        self.counts[C.dead_letters_counter(record.topic)] += 1

    def _refuse(self, record: Record, reason: str) -> None:
        """A dead letter for a record that does not verify (counted as such too)."""
        self.counts[refused_counter(reason)] += 1
        self._dead_letter(record, reason)

    def _handle(self, record: Record) -> None:
        if record.forged is not None:
            # nothing in it is to be believed, its recipient neither: refused by every
            # agent that reads its partition, like a record that does not decode
            self._refuse(record, record.forged)
            return
        try:
            envelope = Envelope.decode(record.value, max_bytes=self.mesh.config.kafka.max_record_bytes)
        except InvalidEnvelope as exc:
            self._dead_letter(record, str(exc))
            return
        if envelope.to_agent_id != self.name:
            self.counts[C.COUNTER_SKIPPED] += 1  # another agent shares this partition
            return
        if self.ledger.seen(envelope.id):
            self.counts[C.COUNTER_DUPLICATES] += 1  # a redelivery, or a copy sent after a crash
            return
        if not self._joined(envelope.from_agent_id):
            self._dead_letter(record, f"sender {shown(envelope.from_agent_id)} has not joined")
            return
        self._handling, self._derived = envelope.id, 0
        try:
            ok = self._safely("on_message", self.role.on_message, envelope)
        finally:
            self._handling = None
        self.ledger.handled(envelope.id, envelope.from_agent_id)  # counted as messages_in
        if not ok:
            self.counts[C.COUNTER_HANDLER_ERRORS] += 1
            self._dead_letter(record, f"handler error in role {self.spec.role}")

    def _consensus(self, record: Record) -> None:
        """Vote on opened proposals this agent may vote on; tell the role of decisions."""
        if record.forged is not None:  # not the manager's: a forged decision or opening
            self.counts["consensus_invalid"] += 1
            self._refuse(record, record.forged)
            return
        try:
            event = Envelope.decode(record.value, max_bytes=self.mesh.config.kafka.max_record_bytes)
            if event.type == C.EVENT_MANAGER_MARK:
                return
            if event.type not in (C.EVENT_OPENED, C.EVENT_DECIDED):
                raise InvalidEnvelope(f"unexpected type {event.type[:64]!r} on the consensus topic")
            proposal = Proposal.from_dict(event.payload)
            if not self._broadcasts.add(event.id):  # sent again after a broker restart
                self.counts["consensus_duplicates"] += 1
                return
        except Exception as exc:  # whatever a hostile record makes from_dict raise
            # the manager is the only writer: whatever else is here is dead-lettered by
            # every agent that reads it (the dead letter names the agent)
            self.counts["consensus_invalid"] += 1
            self._dead_letter(record, f"not a consensus broadcast: {exc}")
            return
        if event.type == C.EVENT_DECIDED:
            self._safely("on_decision", self.role.on_decision, proposal)
            return
        if self.name not in proposal.electorate or now_ms() >= proposal.expires_at:
            return  # not ours to vote on, or already over (an agent catching up)
        try:
            vote: Vote | None = self.role.evaluate(proposal)
        except Exception:  # a role's bug must not stop the agent; it abstains
            self.log.exception("evaluate raised on %s", proposal.id)
            return
        if vote is None:
            return
        ballot = events.vote(self.name, proposal.id, vote.support, vote.intensity)
        self.bus.send(C.TOPIC_VOTES, ballot, key=proposal.id)
        self.counts["votes"] += 1

    def _publish_services(self) -> None:
        """The clients' state for `status`: when it changes, and with every heartbeat."""
        state = self.services.state()
        now = self.clock()
        fresh = now - self._services_published < self.mesh.config.heartbeat.interval
        if state == self._services_state and fresh:
            return
        try:
            self.store.set_service_clients(self.name, {"ts": now_ms(), **state})
        except AgentMeshError as exc:
            self.log.warning("service client state not recorded in Redis: %s", exc)
            return
        self._services_state, self._services_published = state, now

    def _safely(self, hook: str, fn: Any, *args: Any) -> bool:
        try:
            fn(*args)
        except Exception:  # a role's bug must not stop the agent
            self.log.exception("%s raised", hook)
            return False
        return True

    def _flush_counters(self) -> None:
        self.counts.update(self.services.take_counts())
        if self.bus.delivered_to:
            for recipient, n in self.bus.delivered_to.items():
                self.counts[C.sent_to_counter(recipient)] += n  # backlog in status
                self.counts[C.COUNTER_OUT] += n
            self.bus.delivered_to.clear()
        self._publish_services()
        if not self.counts:
            return
        try:
            self.store.add_counters(self.name, self.counts)
            self.counts = Counter()
        except AgentMeshError as exc:
            self.log.warning("counters kept for later, Redis unavailable: %s", exc)
