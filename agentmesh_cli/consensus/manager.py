"""The consensus manager process: proposals and votes in, decisions out, exactly once.

It reads every partition of `proposals` and `votes` by manual assignment. A proposal is
opened (waggle dance, electorate = the agents registered with a fresh heartbeat),
stored and broadcast on `consensus`; votes are counted by the pure `ProposalBook`; each
decision is broadcast on `consensus` and stored in Redis.

Exactly once across a SIGKILL: the snapshot holds the book and the next offset of every
partition. A restarted manager writes a marker to `consensus` and reads that topic from
the snapshot's position up to its marker: every proposal the dead manager opened or
decided after the snapshot is taken from there, so replaying proposals and votes from
the snapshot's offsets neither re-opens nor re-decides (nor re-broadcasts) anything.

Every record read ends in one counted outcome (docs/architecture.md, Dead letters): a
proposal opened, a duplicate, a vote counted, replaced or late, a vote held until its
proposal opens, or a dead letter with its reason.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
import uuid
from collections import Counter
from types import FrameType
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli import dozing, events
from agentmesh_cli.bus import Bus
from agentmesh_cli.consensus.core import Proposal, ProposalBook, Status, VoteResult, electorate_of
from agentmesh_cli.consensus.intake import EarlyVote, EarlyVotes, parse_proposal, parse_vote, vote_fields
from agentmesh_cli.consensus.snapshot import PendingRecords, record_of
from agentmesh_cli.envelope import Envelope, decode_fields, now_ms, shown
from agentmesh_cli.errors import AgentMeshError, ConsensusError, InvalidEnvelope, WrongSender
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.metrics.histogram import DECISION_BUCKETS
from agentmesh_cli.reader import Reader, resume_assignments
from agentmesh_cli.records import Record, offsets_from_json, offsets_to_json
from agentmesh_cli.recovery import BrokerWatch, wait_for_infra
from agentmesh_cli.signing import WRONG_SENDER, mesh_signer, refused_counter
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import Clock, Deadline

OWNER = C.PROGRAM_CONSENSUS
SNAPSHOT_VERSION = 1
ELECTORATE_CACHE_S = 0.25
KEEP_DECIDED_MS = 120_000  # decided proposals stay in memory this long, to count late votes
DIRTY_BATCH = 500  # pending proposals whose Redis record is behind: written at a loop turn's end
MARKER_TIMEOUT_S = 30.0

log = logging.getLogger("consensus")
_RECORDS = {topic: C.records_counter(topic) for topic in (C.TOPIC_PROPOSALS, C.TOPIC_VOTES)}  # made once
_VOTES = {result: f"votes_{result.value}" for result in VoteResult}
_DECIDED = {status: f"decided_{status.value}" for status in Status}

__all__ = ["ConsensusManager", "parse_proposal", "parse_vote", "record_of"]


class ConsensusManager:
    def __init__(self, mesh: Mesh, clock: Clock = time.monotonic) -> None:
        """`clock` times the snapshots, the electorate's cache and the reconcile marker;
        proposals expire on the wall clock in ms (`now_ms`), the time their records carry
        and other processes compare with (the registry's heartbeats)."""
        self.mesh = mesh
        self.clock = clock
        cfg = mesh.config
        self.cfg = cfg.consensus
        self.book = ProposalBook(cfg.consensus.quorum, int(cfg.consensus.proposal_timeout * 1000))
        self.offsets: dict[tuple[str, int], int] = {}
        self.consensus_offset = 0  # next offset of the consensus topic not yet reconciled
        self.dirty: dict[str, Proposal] = {}  # pending proposals whose Redis record is behind
        self.pending_records = PendingRecords()  # their records as last encoded, for the snapshot
        self.decided: list[dict[str, Any]] = []  # records decided in this loop turn, stored at its end
        self.early = EarlyVotes()  # votes read before their proposal
        self.counts: Counter[str] = Counter()
        self.stale_after_ms = int(cfg.heartbeat.interval * cfg.heartbeat.missed * 1000)
        self.stopping = False
        self._electorate: list[str] = []
        self._electorate_at = -math.inf  # never read yet
        self.epoch = ""
        self.signer = mesh_signer(mesh)  # security.sign_envelopes: sign, and check what is read

    # wiring ----------------------------------------------------------------------
    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: saving a last snapshot and stopping", signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        cfg = self.mesh.config
        self.store = Store(self.mesh.redis_url, cfg.mesh)
        self._joined = self.store.joined_check()  # proposers we accept
        self.epoch = wait_for_infra(cfg.kafka, self.store, OWNER, clock=self.clock)
        self.bus = Bus(cfg.kafka, client_id=OWNER, linger_ms=C.CONSENSUS_LINGER_MS, signer=self.signer,
                       clock=self.clock)
        watch = BrokerWatch(self.bus, self.store, self.epoch, clock=self.clock)
        self._load()
        self._reconcile()
        assignments = resume_assignments(cfg.kafka, (C.TOPIC_PROPOSALS, C.TOPIC_VOTES), self.offsets)
        # idle, it stops fetching until a proposal or vote rings it (dozing.py)
        bell = dozing.doorbell(self.store, cfg, OWNER, (C.TOPIC_PROPOSALS, C.TOPIC_VOTES))
        self.bus.doorbell = bell
        reader = dozing.Dozer(Reader(cfg.kafka, f"{cfg.kafka.topic_prefix}.{OWNER}", assignments, OWNER,
                                     fetch_wait=cfg.kafka.manager_fetch_wait, signer=self.signer),
                              bell, dozing.policy(cfg, cfg.kafka.manager_fetch_wait), self.clock)
        self._save()
        self.store.mark_ready(OWNER, os.getpid())
        log.info("ready: %d pending proposals, %d partitions", self.book.pending_count(), len(assignments))
        next_snapshot = self.clock() + self.cfg.snapshot_interval
        try:
            while not self.stopping:
                for record in reader.poll_batch(max_records=5000, timeout=0.05):
                    self.apply(record)
                for proposal in self.book.expire(now_ms()):
                    self._decided(proposal)
                self.bus.poll()
                if (epoch := watch.check(self.clock())) is not None:
                    self._new_epoch(epoch)
                    reader.rewind()
                if self.decided or len(self.dirty) >= DIRTY_BATCH:
                    self._store_records()
                if self.clock() >= next_snapshot:
                    next_snapshot = self.clock() + self.cfg.snapshot_interval
                    self._save()
        finally:
            self.bus.flush(10)
            self._save()
            reader.close()
        return 0

    # events ------------------------------------------------------------------------
    def apply(self, record: Record) -> None:
        topic = record.topic
        self.offsets[(topic, record.partition)] = record.offset + 1
        self.counts[_RECORDS.get(topic) or C.records_counter(topic)] += 1
        if record.forged is not None:  # nobody's proposal or vote: not even parsed
            self.counts[refused_counter(record.forged)] += 1
            self._dead_letter(record, record.forged)
            return
        try:
            if topic == C.TOPIC_PROPOSALS:
                event = Envelope.decode(record.value, self.mesh.config.kafka.max_record_bytes)
                self._open(record, event, *parse_proposal(event))
            else:  # the hot path: a vote's few fields, without building an Envelope
                data = decode_fields(record.value, self.mesh.config.kafka.max_record_bytes)
                sender = data["from_agent_id"]
                self._vote(record, sender, *vote_fields(data["type"], sender, data.get("payload", {})))
        except WrongSender as exc:
            self.counts[refused_counter(WRONG_SENDER)] += 1
            self._dead_letter(record, str(exc))
        except (InvalidEnvelope, ConsensusError) as exc:  # a record that does not fit, or the book refused it
            self._dead_letter(record, str(exc))
        except AgentMeshError:
            raise  # Kafka or Redis trouble, not this record's fault
        except Exception as exc:  # a bug one record triggers must not stop us on it again and again
            log.exception("record %s/%d@%d raised", record.topic, record.partition, record.offset)
            self._dead_letter(record, f"consensus manager error: {exc!r}")

    def _dead_letter(self, record: Record, reason: str, size: int | None = None) -> None:
        self.bus.dead_letter(record, reason, size)
        self.counts[C.COUNTER_DEAD] += 1
        self.counts[C.dead_letters_counter(record.topic)] += 1

    def _open(self, record: Record, event: Envelope, pid: str, ptype: str, content: dict[str, Any]) -> None:
        if not self._joined(event.from_agent_id):
            self._dead_letter(record, f"proposer {shown(event.from_agent_id)} has not joined")
            return
        now = now_ms()
        proposal = self.book.open(pid, event.from_agent_id, ptype, content, self.electorate(), now)
        if proposal is None:
            self.counts["duplicates"] += 1
            return
        log.info("opened %s from %s: %s, intensity %.3f, electorate %s", pid, event.from_agent_id,
                 ptype, proposal.waggle.intensity, ",".join(proposal.electorate) or "(none)")
        self._broadcast(C.EVENT_OPENED, proposal)
        if proposal.status is not Status.PENDING:  # an empty electorate decides at once
            self._decided(proposal)
        else:
            self.dirty[pid] = proposal
        for vote in self.early.pop(pid):
            self._ballot(proposal, vote.voter, vote.support, vote.intensity, vote.record, vote.size)

    def _vote(self, record: Record, voter: str, pid: str, support: bool, intensity: float) -> None:
        proposal = self.book.get(pid)
        if proposal is None:
            # proposals and votes are different topics: after a restart a vote can be read
            # before its proposal; hold it (bounded) until the proposal opens
            if self.early.hold(pid, EarlyVote.of(record, voter, support, intensity, now_ms())):
                self.counts["votes_early"] += 1
            else:
                self._unknown(pid, record)
            return
        self._ballot(proposal, voter, support, intensity, record)

    def _ballot(self, proposal: Proposal, voter: str, support: bool, intensity: float,
                record: Record, size: int | None = None) -> None:
        # the electorate is frozen at opening: anybody else's vote, before or after the
        # decision, claims a say it never had (a stranger's, or a forgery)
        if voter not in proposal.members:
            self._not_member(proposal.id, voter, record, size)
            return
        self._count(proposal, voter, support, intensity)

    def _not_member(self, pid: str, voter: str, record: Record, size: int | None = None) -> None:
        self.counts["votes_not_member"] += 1
        self._dead_letter(record, f"voter {shown(voter)} is not in the electorate of {pid}", size)

    def _unknown(self, pid: str, record: Record, size: int | None = None) -> None:
        self.counts["votes_unknown"] += 1
        self._dead_letter(record, f"vote for unknown proposal {pid}", size)

    def _settle_early(self, votes: list[tuple[str, EarlyVote]]) -> None:
        """Votes whose proposal did not open in time. A proposal decided before our snapshot
        (a restart replays votes from the snapshot's offsets) has its record in Redis: its
        votes are late. The others name a proposal nobody made: dead letters."""
        records: dict[str, dict[str, Any] | None] = {}
        try:
            for pid in {pid for pid, _vote in votes}:
                records[pid] = self.store.proposal(pid)
        except AgentMeshError as exc:
            log.warning("proposal records unavailable, votes held a while longer: %s", exc)
            for pid, vote in votes:
                self.early.hold(pid, vote)
            return
        for pid, vote in votes:
            record = records[pid]
            if record is None:
                self._unknown(pid, vote.record, vote.size)
            elif vote.voter not in record.get("electorate", []):
                self._not_member(pid, vote.voter, vote.record, vote.size)
            else:
                self.counts["votes_late"] += 1

    def _count(self, proposal: Proposal, voter: str, support: bool, intensity: float) -> None:
        result, decided = self.book.vote(proposal.id, voter, support, intensity, now_ms())
        self.counts[_VOTES[result]] += 1
        if decided is not None:
            self._decided(decided)
        elif proposal.status is Status.PENDING:
            self.dirty[proposal.id] = proposal

    def _decided(self, proposal: Proposal) -> None:
        # broadcast first (the latency that matters), the Redis record follows in a batch
        self.decided.append(record := self._broadcast(C.EVENT_DECIDED, proposal))
        self.dirty.pop(proposal.id, None)
        self.counts[_DECIDED[proposal.status]] += 1
        if proposal.decided_at is not None:  # the latency histogram of `agentmesh metrics`
            DECISION_BUCKETS.observe(self.counts, C.COUNTER_DECISION_MS,
                                     proposal.decided_at - proposal.created_at)
        t = record["tally"]
        log.info("decided %s: %s (%d for, %d against, %d needed of %d)", proposal.id,
                 proposal.status.value, t["for"], t["against"], t["needed"], t["electorate"])

    def _broadcast(self, kind: events.Broadcast, proposal: Proposal) -> dict[str, Any]:
        """Broadcast a proposal on the consensus topic; returns its record (for Redis)."""
        record = record_of(proposal)
        envelope = events.proposal_broadcast(kind, OWNER, proposal.id, record)
        self.bus.send(C.TOPIC_CONSENSUS, envelope, key=proposal.id)
        return record

    def electorate(self) -> list[str]:
        """Agents registered with a fresh heartbeat (a SIGKILLed agent stays until stale),
        one delegate per replica group."""
        if self.clock() - self._electorate_at > ELECTORATE_CACHE_S:
            now = now_ms()
            try:
                registry = self.store.agents()
                self._electorate = electorate_of({
                    name: rec for name, rec in registry.items()
                    if now - int(rec.get("last_heartbeat", 0)) <= self.stale_after_ms
                })
                self._electorate_at = self.clock()
            except AgentMeshError as exc:
                log.warning("registry unavailable, using the last electorate: %s", exc)
        return self._electorate

    # persistence -------------------------------------------------------------------
    def _snapshot(self) -> bytes:
        # pending only: decided ones are in Redis and on the topic, and the offsets are past
        # their proposal records, so a restart cannot open them again (records encoded once)
        return self.pending_records.snapshot(self.book.pending_proposals(), {
            "v": SNAPSHOT_VERSION,
            "ts": now_ms(),
            "epoch": self.epoch,
            "offsets": offsets_to_json(self.offsets),
            "consensus_offset": self.consensus_offset,
            "early_votes": self.early.to_json(),
        })

    def _store_records(self) -> None:
        """Decisions reach Redis at the end of the loop turn that made them (one round trip);
        pending records that are behind go with them once DIRTY_BATCH piled up, else with the snapshot."""
        pending = self.pending_records.encode(self.dirty.values()) if len(self.dirty) >= DIRTY_BATCH else []
        try:
            self.store.save_consensus(None, self.decided, pending)
            self.decided.clear()
            if pending:
                self.dirty.clear()
        except AgentMeshError as exc:
            log.warning("decisions not stored yet, will retry: %s", exc)

    def _save(self) -> None:
        self.book.forget_decided(now_ms() - KEEP_DECIDED_MS)
        # its proposal did not open (it could have until proposal_timeout after the vote)
        self._settle_early(self.early.take_older(now_ms() - int(self.cfg.proposal_timeout * 1000)))
        # the snapshot may only claim what the consensus topic already holds
        if self.bus.flush(10):
            log.warning("broadcasts still queued; snapshot postponed")
            return
        delivered = self.bus.delivered.get((C.TOPIC_CONSENSUS, 0))
        if delivered is not None:  # everything up to here is ours and reflected in the book
            self.consensus_offset = max(self.consensus_offset, delivered + 1)
        try:
            pending = self.pending_records.encode(self.dirty.values())
            self.store.save_consensus(self._snapshot(), self.decided, pending)
            self.store.add_counters(OWNER, self.counts + self.book_counts())
            self.dirty.clear()
            self.decided.clear()
            self.counts = Counter()
        except AgentMeshError as exc:
            log.warning("snapshot not saved, will retry: %s", exc)

    def book_counts(self) -> Counter[str]:
        counts = Counter({f"book_{k}": v for k, v in self.book.counts.items()})
        self.book.counts.clear()
        return counts

    def _load(self) -> None:
        data = self.store.load_json(self.mesh.keys.consensus_snapshot)
        if not data:
            log.info("no snapshot: reading proposals and votes from the beginning")
            return
        for item in data.get("proposals", []):
            self.book.restore(Proposal.from_dict(item))
        self.early = EarlyVotes.from_json(data.get("early_votes", {}))
        if data.get("epoch") != self.epoch:
            self._settle_early(self.early.take_all())  # their proposals went with the old broker
            # the broker restarted empty: the pending proposals stand (each still gets its
            # one decision, by votes or expiry); the old offsets mean nothing now
            log.info("snapshot is from an earlier broker: %d pending proposals kept, reading the "
                     "new topics from the beginning", len(data.get("proposals", [])))
            return
        self.offsets = offsets_from_json(data.get("offsets", {}))
        self.consensus_offset = int(data.get("consensus_offset", 0))
        log.info("resumed from snapshot: %d proposals in memory", len(data.get("proposals", [])))

    def _new_epoch(self, epoch: str) -> None:
        """The broker restarted empty while we ran: keep the book, read the new topics from
        their beginning (votes held for unknown proposals went with the old broker: dead letters)."""
        self.epoch = epoch
        self.offsets = {}
        self.consensus_offset = 0
        self.bus.delivered.pop((C.TOPIC_CONSENSUS, 0), None)
        self._settle_early(self.early.take_all())
        self._save()

    def _reconcile(self) -> None:
        """Learn what an earlier run broadcast after its last snapshot (see module doc)."""
        marker_id = f"mark:{uuid.uuid4()}"
        self.bus.send(C.TOPIC_CONSENSUS, events.manager_mark(OWNER, marker_id))
        if self.bus.flush(10):
            raise AgentMeshError("cannot write the reconcile marker to the consensus topic")
        reader = Reader(self.mesh.config.kafka, f"{self.mesh.config.kafka.topic_prefix}.{OWNER}.reconcile",
                        [(C.TOPIC_CONSENSUS, 0, self.consensus_offset)], OWNER, signer=self.signer)
        deadline = Deadline(MARKER_TIMEOUT_S, self.clock)
        learned = 0
        try:
            # more than a wait: every record up to the marker is read and learned from
            while True:
                if deadline.passed():
                    raise AgentMeshError("reconcile marker not seen on the consensus topic in time")
                for record in reader.poll_batch(max_records=5000, timeout=0.1):
                    self.consensus_offset = record.offset + 1
                    if record.forged is not None:  # not ours: the agents dead-letter it
                        log.warning("reconcile: %s at consensus@%d, not learned", record.forged,
                                    record.offset)
                        continue
                    try:
                        event = Envelope.decode(record.value)
                    except InvalidEnvelope:
                        continue
                    if event.id == marker_id:
                        log.info("reconciled: %d broadcasts learned from the consensus topic", learned)
                        return
                    if event.type in (C.EVENT_OPENED, C.EVENT_DECIDED):
                        learned += self._learn(Proposal.from_dict(event.payload))
        finally:
            reader.close()

    def _learn(self, broadcast: Proposal) -> int:
        known = self.book.get(broadcast.id)
        if known is not None and (known.status is not Status.PENDING or broadcast.status is Status.PENDING):
            return 0
        self.book.restore(broadcast)
        if broadcast.status is Status.PENDING:
            self.dirty[broadcast.id] = broadcast
        else:
            self.decided.append(record_of(broadcast))
        return 1
