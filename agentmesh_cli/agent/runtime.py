"""One agent process: join, read the inbox partition, run the role, heartbeat, leave.

The process runs one asyncio event loop. Its main task polls a batch of records (the
blocking poll runs in one worker thread, so the loop goes on meanwhile), hands each
record of this agent's to the role, ticks the role, ends the turn (what was sent leaves
at once, one request per partition), and settles the turns whose sends the broker has
confirmed: their handled ids are recorded in the agent's ledger, then offsets are
committed, never past a record whose handling is not durable (agent/settle.py). A
restarted agent resumes after the last committed offsets; a redelivered message the
ledger holds is not handled again.

How a message is handled depends on the role and `agents[].concurrency`:
- a sync `on_message` at concurrency 1 runs on the loop, in read order (the fast path,
  as before: no task, no thread);
- an async `on_message` runs in a task; a sync one at concurrency > 1 in a worker thread
  (a bounded pool; every ctx call is handed to the loop). Messages of one conversation
  run in order, different conversations at once up to the limit (schedule.Conversations).
Replies to this agent's asks never wait in those queues (agent/asking.py). Heartbeats
leave from a thread of their own (agent/pulse.py), so a blocked loop keeps its agent.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import inspect
import logging
import math
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli import dozing, events
from agentmesh_cli.agent.asking import (
    deadline_of,
    error_payload,
    is_request,
)
from agentmesh_cli.agent.base import AgentContext, Role, accepts_schemas
from agentmesh_cli.agent.exchange import Exchange
from agentmesh_cli.agent.handling import CURRENT, Handling, Mode, current
from agentmesh_cli.agent.ledger import Ledger
from agentmesh_cli.agent.once import Once
from agentmesh_cli.agent.public import DRAIN_TIMEOUT_S, PublicEvents
from agentmesh_cli.agent.pulse import Heartbeat, LagMeter
from agentmesh_cli.agent.schedule import Conversations, ReadAhead
from agentmesh_cli.agent.services import AgentServices
from agentmesh_cli.agent.settle import Finished, Settlement
from agentmesh_cli.agent.voting import Voting
from agentmesh_cli.bus import Bus, hostname
from agentmesh_cli.config import AgentSpec, group_of
from agentmesh_cli.doorbell import Doorbell
from agentmesh_cli.envelope import Envelope, now_ms, shown
from agentmesh_cli.errors import (
    AgentMeshError,
    InvalidEnvelope,
    RoutingError,
)
from agentmesh_cli.inbox_client import HostIdle, HostInbox
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.reader import Reader
from agentmesh_cli.records import Record
from agentmesh_cli.recovery import BrokerWatch, wait_for_infra
from agentmesh_cli.replicas import Groups
from agentmesh_cli.routing.dispatch import ROLE_PREFIX, Dispatch
from agentmesh_cli.signing import mesh_signer, refused_counter
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import Clock

TICK_S = 0.1
TICK_ASLEEP_S = 0.5  # on_tick while the agent's reader sleeps (dozing.py): its loop's idle cost
COUNTER_FLUSH_S = 1.0
PEERS_REFRESH_S = 2.0
ACCEPTS_REFRESH_S = 1.0  # ctx.accepts reads the published accepts again this often
WATCH_TOPICS_S = 5.0  # how often an agent checks that the broker still has the topics
POLL_MAX = 500  # records taken in one poll, at most
POOL_MAX = 64  # worker threads of a sync role at concurrency > 1, at most
STOP_GRACE_S = 2.0  # on stop, running handlers get this long to finish before they are cancelled
MIN_WINDOW_SHARE = 256  # a replica's share of its group's ledger window, at least
HOOKS = ("on_message", "on_start", "on_tick", "on_stop", "evaluate", "on_decision")


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
        self.key = spec.name.encode()  # its records' key on the messages topic
        self.log = logging.getLogger(f"agent.{spec.name}")
        self.counts: Counter[str] = Counter()
        self.stopping = False
        cfg = mesh.config
        self.partition = C.inbox_partition(self.name, cfg.kafka.partitions)
        # a replica of a group (Support-2 of Support): the group's ledger, reply cache and
        # ctx.once results are shared, under the group's name
        self.group = cfg.group_name(self.name)
        self.shared = self.group or self.name
        self.store = Store(mesh.redis_url, cfg.mesh)
        self.groups = Groups(self.store)
        # with security.sign_envelopes: what it sends is signed, what it reads is checked
        self.signer = mesh_signer(mesh)
        self.bus = Bus(cfg.kafka, client_id=self.program, linger_ms=C.AGENT_LINGER_MS,
                       signer=self.signer, clock=clock)
        self.ledger = Ledger(self.store, self.name, cfg.recovery.dedup_window, self.group)
        # what is durably done, and the offsets it lets the agent commit (agent/settle.py)
        self.once = Once(self)  # ctx.once: results kept until the ledger holds their message
        self.settlement = Settlement(self.bus, self.ledger, self.log, self._cache_replies, self.once.recorded)
        self._joined = self.store.joined_check()  # senders we accept
        # how messages are handled (see the module's docstring)
        self.concurrency = spec.concurrency
        self.is_async = {hook: inspect.iscoroutinefunction(getattr(role_cls, hook)) for hook in HOOKS}
        self.inline = self.concurrency == 1 and not self.is_async["on_message"]
        # nothing but the main task ever runs on the loop (no async hook, so no task): it
        # may wait in the poll itself
        self._blocking_poll = self.inline and not any(self.is_async.values())
        self._pool = (ThreadPoolExecutor(min(self.concurrency, POOL_MAX), f"{self.name}-handler")
                      if not self.inline and not self.is_async["on_message"] else None)
        self._conversations: Conversations[tuple[Envelope, Record, Finished]] = \
            Conversations(self.concurrency)
        # a group's replicas all write the one ledger: each keeps its read-ahead within its
        # share of the window, so a crash never redelivers an id the ledger has trimmed
        group_spec = cfg.spec_of(self.name) if self.group is not None else None
        share = max(MIN_WINDOW_SHARE, cfg.recovery.dedup_window
                    // (group_spec.max_replicas if group_spec is not None else 1))
        self._read_ahead = ReadAhead.for_concurrency(self.concurrency, share)
        self._active: set[str] = set()  # ids of the messages queued or being handled
        self._tasks: set[asyncio.Task[Any]] = set()
        self._peers: dict[str, dict[str, Any]] = {}
        self._peers_at = -math.inf
        self.exchange = Exchange(self)  # ask and reply
        self.public = PublicEvents(self)  # what the conversation's user sees (convlog.py)
        self._lag = LagMeter()
        self.sync_hook_running = False  # a sync hook runs on the loop now: a blocking ask is refused
        self._tick_task: asyncio.Task[Any] | None = None
        self._voting_task: asyncio.Task[Any] | None = None  # runs until the agent stops
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread = threading.get_ident()
        self._wake: asyncio.Event | None = None
        self.dozer: dozing.Dozer | HostIdle | None = None  # the inbox reader, asleep when idle
        # the main task runs a turn (from a poll's result to the next await): sends leave at
        # its end, no kick needed (and asyncio.current_task() on every send cost 5% of a relay)
        self._main_turn = False
        self._kick_due = False  # a kick of the producer is scheduled (nudge)
        seed = cfg.workload.seed
        rng = random.Random(None if seed is None else f"{seed}:{self.name}")
        self.services = AgentServices(mesh, self.name, self.log, clock=clock)
        # where a message to a group (or role:<role>) goes (routing/dispatch.py)
        self.dispatch = Dispatch(cfg, self.groups, self.name, clock, random.Random(),
                                 registry=self.registry, log=self.log)
        self._services_state: dict[str, Any] = {}
        self._services_published = -math.inf
        self.voting = Voting(self)  # Bee consensus: votes and decisions
        self.heartbeat = Heartbeat(cfg.heartbeat.interval, self._heartbeat, self._draining, self.log,
                                   self._load, self._register,
                                   lambda: self.dozer is not None and self.dozer.asleep)
        ctx = AgentContext(self.name, spec.role, list(spec.capabilities), cfg, self.log, rng,
                           self._send, self.registry, self._propose, self.services, self.next_id,
                           self.exchange.ask, self.exchange.reply,
                           lambda: self.heartbeat.draining, self.public.delta, self.accepts_of,
                           lambda counts: self.on_loop(self.counts.update, counts), self.once.run)
        self._accepts: tuple[float, dict[str, dict[str, Any]]] = (-math.inf, {})
        self.role = role_cls(ctx)

    # what the role uses --------------------------------------------------------
    def next_id(self) -> str | None:
        """While a handler runs, the id of the next envelope it sends (see ledger.derived_id)."""
        handling = current()
        return None if handling is None else handling.next_id()

    def accepts_of(self, agent: str) -> dict[str, dict[str, Any]]:
        """AgentContext.accepts: read again at most once a second (Redis down: the last read)."""
        read_at, accepts = self._accepts
        if self.clock() - read_at >= ACCEPTS_REFRESH_S:
            try:
                accepts = self.store.accepts()
            except AgentMeshError as exc:
                self.log.warning("accepts not read, Redis unavailable: %s", exc)
            self._accepts = (self.clock(), accepts)
        if agent not in accepts and self.dispatch.is_group(agent):  # what its replicas publish
            group = agent
            agent = next((n for n in sorted(accepts) if self.mesh.config.group_name(n) == group), agent)
        return dict(accepts.get(agent, {}))

    def on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn` on the event loop: now when called there, else as soon as the loop can
        (a sync handler in a worker thread: the bus and the counters are the loop's)."""
        if self.loop is None or threading.get_ident() == self.loop_thread:
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def _send(self, envelope: Envelope) -> Envelope:
        """Send what the role built (AgentContext.send, which took its id from `next_id`)."""
        if self._pool is None:  # every hook runs on the loop: no thread to hand over from
            for routed in self.routed(envelope):
                self.bus.send_message(routed)
                if routed.meta.get("public") is True:
                    self.public.sent(routed)
            if not self._main_turn:
                self.nudge()
        else:
            self.on_loop(self._send_now, envelope)
        return envelope

    def _send_now(self, envelope: Envelope) -> None:
        try:
            routed = self.routed(envelope)
        except RoutingError as exc:  # sent from a worker thread: nobody to raise it to
            self.log.error("not sent: %s", exc)
            return
        for one in routed:
            self.bus.send_message(one)  # counted as sent when the broker confirms it
            if one.meta.get("public") is True:
                self.public.sent(one)
        self.nudge()

    def routed(self, envelope: Envelope) -> list[Envelope]:
        """The envelope as sent: to a group, to one of its replicas; to `role:<role>`, one
        copy per agent of the role (routing/dispatch.py); else as it is."""
        to = envelope.to_agent_id
        if to not in self.dispatch.specs and not to.startswith(ROLE_PREFIX):
            return [envelope]
        conversation = envelope.meta.get("conversation")
        targets = self.dispatch.targets(to, conversation if isinstance(conversation, str) else None)
        return [dataclasses.replace(envelope, to_agent_id=target) for target in targets]

    def _draining(self) -> bool:
        """For the heartbeat thread: the mesh drains (`down`), or this replica retires
        (scaled down: it takes no new work, finishes what it has). The mark as the doorbell
        heard it on the mesh feed, or, when it does not listen, read from Redis."""
        bell = self.bus.doorbell
        if isinstance(bell, Doorbell) and bell.listening:
            if bell.draining:
                return True
        elif self.store.draining():
            return True
        return self.group is not None and self.name in self.groups.retiring()

    def nudge(self) -> None:
        """Something was sent from a task (an async handler, an ask, a reply): it leaves
        once this turn of the event loop ends, in one request per partition with whatever
        else the loop's tasks sent meanwhile, rather than after the producer's linger
        (C.AGENT_LINGER_MS). Sends of the main task (the sync fast path) leave when its
        turn ends (Settlement.end_turn)."""
        if self._main_turn or self._kick_due or self.loop is None:
            return
        self._kick_due = True
        self.loop.call_soon(self._kick)

    def _kick(self) -> None:
        self._kick_due = False
        if self.bus.sent_unconfirmed():
            self.bus.kick()

    def _propose(self, type: str, content: dict[str, Any]) -> str:
        proposal_id = events.new_proposal_id(self.name, self.next_id())
        envelope = events.proposal(self.name, proposal_id, type, content)
        self.on_loop(self._send_proposal, envelope, proposal_id)
        return proposal_id

    def _send_proposal(self, envelope: Envelope, proposal_id: str) -> None:
        self.bus.send(C.TOPIC_PROPOSALS, envelope, key=proposal_id)
        self.counts["proposals"] += 1
        self.nudge()

    def registry(self) -> dict[str, dict[str, Any]]:
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
        index = group_of(self.name)
        replica = {} if self.group is None or index is None else {"group": self.group, "replica": index[1]}
        return {
            "name": self.name,
            **replica,
            "role": self.spec.role,
            "capabilities": list(self.spec.capabilities),
            "pid": os.getpid(),
            "host": hostname(),
            "partition": self.partition,
            "last_heartbeat": now_ms(),
            "concurrency": self.concurrency,
            "in_flight": len(self._active),
            "running": self._conversations.running,
            "asks_pending": len(self.exchange.asks.waiting),
            "loop_lag_ms": self._lag.summary(),
        }

    def _announce(self, event: events.Presence) -> None:
        envelope = events.presence(event, self.name, self.spec.role, self.spec.capabilities)
        self.bus.send(C.TOPIC_TOPOLOGY, envelope, key=self.name)

    def _load(self) -> tuple[int, int, int]:
        return len(self._active), self._conversations.running, len(self.exchange.asks.waiting)

    def _heartbeat(self) -> None:
        """On the heartbeat thread: the topology heartbeat and the registry record."""
        envelope = events.presence(C.EVENT_HEARTBEAT, self.name, self.spec.role, self.spec.capabilities)
        self.bus.send_detached(C.TOPIC_TOPOLOGY, envelope, key=self.name)
        self._register()

    def _register(self) -> None:
        try:
            self.store.register_agent(self.name, self._record())
        except AgentMeshError as exc:
            self.log.warning("heartbeat not recorded in Redis: %s", exc)

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        """SIGTERM/SIGINT, handled at once (a plain signal handler, not the loop's: a batch
        of sync handlers on the loop sees it between two messages), then the loop wakes."""
        self.log.info("signal %s: leaving the mesh", signal.Signals(signum).name)
        self.stopping = True
        if self.loop is not None and self._wake is not None:
            self.loop.call_soon_threadsafe(self._wake.set)

    def run(self) -> int:
        return asyncio.run(self._main())

    async def _main(self) -> int:
        loop = self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        cfg = self.mesh.config
        epoch = await loop.run_in_executor(None, lambda: wait_for_infra(
            cfg.kafka, self.store, self.program, clock=self.clock))
        # the topics are looked for about twice a second across the mesh, at most every 5 s
        # per agent: a metadata request costs the embedded broker ~0.2 ms of CPU
        topics_every = max(WATCH_TOPICS_S, sum(a.declared_replicas for a in cfg.agents) / 2)
        watch = BrokerWatch(self.bus, self.store, epoch, topics_every=topics_every, clock=self.clock)
        loaded = self.ledger.load()
        group = C.agent_group(cfg.kafka.topic_prefix, self.name)
        wake = self._wake
        reader: Reader | HostInbox
        dozer: dozing.Dozer | HostIdle
        if cfg.kafka.inbox_reader == "host":  # the host's inbox reader fetches for it (inbox_host.py)
            reader = HostInbox(cfg.kafka, group, [(C.TOPIC_MESSAGES, self.partition), (C.TOPIC_CONSENSUS, 0)],
                               self.program, self.mesh.inbox_socket, self.name, self.key, self.signer,
                               self.clock)
            bell = dozing.doorbell(self.store, cfg)  # it rings others; its host reader is rung for it
            dozer = HostIdle(reader, bell, self.clock)
        else:
            reader = Reader(cfg.kafka, group, [(C.TOPIC_MESSAGES, self.partition, None),
                                               (C.TOPIC_CONSENSUS, 0, None)], self.program,
                            signer=self.signer, queued_kbytes=C.AGENT_QUEUED_KBYTES,
                            only_keys={C.TOPIC_MESSAGES: self.key})
            # idle, it stops fetching until a sender rings it (dozing.py)
            bell = dozing.doorbell(self.store, cfg, self.name, (C.TOPIC_MESSAGES, C.TOPIC_CONSENSUS),
                                   lambda: self.on_loop(wake.set))
            dozer = dozing.Dozer(reader, bell, dozing.policy(cfg, cfg.kafka.fetch_wait), self.clock)
        self.bus.doorbell = bell
        self.dozer = dozer
        io = ThreadPoolExecutor(1, f"{self.name}-poll")  # the blocking polls, one at a time
        self.store.register_agent(self.name, self._record())
        self.store.set_accepts(self.name, accepts_schemas(self.role))
        self._announce(C.EVENT_JOINED)
        self.bus.flush(10)
        started = self.role.on_start()  # a role that cannot start ends its agent (not caught)
        if inspect.isawaitable(started):
            await started
        self.store.mark_ready(self.program, os.getpid())
        self.heartbeat.start()
        # the fast path waits in its poll: its turns are the lag (LagMeter.busy), no task
        lag = loop.create_task(self._lag.run() if not self._blocking_poll else asyncio.sleep(0))
        if self.voting.queue is not None:
            self._voting_task = self._spawn(self.voting.worker())
        self.log.info("joined as %s (role %s, concurrency %d%s), inbox partition %d, %d handled "
                      "ids in the ledger", self.name, self.spec.role, self.concurrency,
                      ", async" if self.is_async["on_message"] else "", self.partition, loaded)
        next_flush = self.clock() + COUNTER_FLUSH_S
        try:
            while not self.stopping:
                room = self._room()
                self._main_turn = False
                # a turn that finished nothing and sent nothing ends without end_turn: stop
                # holding before the next await, where tasks send and must not be held
                self.bus.release()
                turn_started: float | None = None  # a turn of the fast path: from its poll's answer
                if room > 0 and dozer.asleep:  # nothing fetched: wait for a ring (or the tick)
                    wake.clear()
                    if not bell.rung.is_set() and not self.stopping:
                        dozer.arm(loop, wake.set)
                        try:
                            await asyncio.wait_for(wake.wait(), dozer.wait_for(TICK_ASLEEP_S))
                        except TimeoutError:
                            pass
                        finally:
                            dozer.disarm()
                    dozer.step(0)
                    self._lag.paused = dozer.asleep
                    self._main_turn = True
                elif room > 0:
                    if self._blocking_poll:
                        # the fast path with nothing else on the loop: wait in the poll itself,
                        # as a plain consumer loop does (a hop to the poll thread per batch cost
                        # `bench mesh` a third of its throughput); the lag meter leaves it out
                        records = reader.poll_batch(POLL_MAX, TICK_S)
                        turn_started = self.clock()
                    else:
                        # what librdkafka has fetched already is taken at once, on the loop;
                        # only a wait for more goes to the poll thread
                        records = reader.poll_batch(min(POLL_MAX, room), 0) or await loop.run_in_executor(
                            io, reader.poll_batch, min(POLL_MAX, room), TICK_S)
                    self._main_turn = True  # until the next await: nothing else runs meanwhile
                    self.bus.hold()  # the turn's sends leave together (end_turn)
                    dozer.step(len(records))
                    for record in records:
                        if self.stopping and self.inline:
                            break  # the rest of the batch is read again next time
                        self._take(record)
                else:  # read ahead enough: wait for a handler to finish
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), TICK_S)
                    except TimeoutError:
                        pass
                    self._main_turn = True
                now = self.clock()
                self._tick(now)
                if self.settlement.turn_open:
                    self.settlement.end_turn()
                if self.settlement.due(now):
                    self.settlement.settle(reader, now)
                if watch.check(now) is not None:
                    self._new_epoch(reader)
                if now >= next_flush:
                    next_flush = now + COUNTER_FLUSH_S
                    self._flush_counters()
                    self.dispatch.publish(now)
                self.bus.poll()
                if turn_started is not None:  # (asleep, the wait is no lag)
                    self._lag.busy((self.clock() - turn_started) * 1000)
        finally:
            self._main_turn = False
            lag.cancel()
            await self._leave(reader)
            io.shutdown(wait=False)
        return 0

    def _room(self) -> int:
        """How many records to read now. Past the read-ahead bound, reading goes on while
        asks wait (their replies come through the inbox), within the ledger's window."""
        if self.inline:
            return POLL_MAX
        span = self.settlement.span()
        room = self._read_ahead.room(self._conversations.waiting, self._conversations.fullest(), span)
        if room == 0 and self.exchange.asks.waiting and span < self._read_ahead.window // 2:
            return POLL_MAX
        return room

    def _tick(self, now: float) -> None:
        if not self.is_async["on_tick"]:
            self.safely_sync("on_tick", self.role.on_tick, now)
        elif self._tick_task is None or self._tick_task.done():
            self._tick_task = self._spawn(self.hook("on_tick", now))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def hook(self, hook: str, *args: Any) -> Any:
        """Run a hook that is not on_message, sync or async; a role's bug is logged."""
        fn = getattr(self.role, hook)
        if not self.is_async[hook]:
            return self.safely_sync(hook, fn, *args)
        try:
            return await fn(*args)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("%s raised", hook)
            return None

    def _cache_replies(self) -> None:
        """Before ids enter the ledger (Settlement): the replies sent so far, cached, and
        the conversation events of what was handled, appended."""
        if not self.public.drain():
            self.log.warning("conversation events still not appended after %.0f s", DRAIN_TIMEOUT_S)
        window = self.mesh.config.recovery.dedup_window
        self.store.cache_replies(self.shared, self.exchange.answered.unsaved, window)
        self.exchange.answered.unsaved.clear()

    def _new_epoch(self, reader: Reader | HostInbox) -> None:
        """The broker restarted empty: read from its beginning again, announce ourselves."""
        self.settlement.new_epoch()
        reader.rewind()
        if self.dozer is not None:
            self.dozer.awake()
        self._announce(C.EVENT_JOINED)
        try:
            self.store.register_agent(self.name, self._record())
        except AgentMeshError as exc:
            self.log.warning("registry not updated: %s", exc)

    async def _leave(self, reader: Reader | HostInbox) -> None:
        running = [t for t in self._tasks if t not in (self._tick_task, self._voting_task)]
        if running:  # handlers get a moment; what they leave unfinished is read again
            _, pending = await asyncio.wait(running, timeout=STOP_GRACE_S)
            for task in pending:
                task.cancel()
            if pending:
                self.log.info("%d handlers cancelled; their messages are read again next time",
                              len(pending))
        for task in list(self._tasks):
            task.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        await self.hook("on_stop")
        self.heartbeat.stop()
        self._announce(C.EVENT_LEFT)
        left = self.bus.flush(5)
        try:
            self.store.unregister_agent(self.name)
        except AgentMeshError as exc:
            self.log.warning("could not remove the registry entry: %s", exc)
        unsaved = self.services.stop()
        if unsaved:
            self.log.warning("%d memory writes not saved: memory unavailable", unsaved)
        self.public.close()  # the last deltas published, every event appended
        if self.settlement.turn_open:
            self.settlement.end_turn()
        self.settlement.settle(reader, self.clock(), final=True)
        self._flush_counters()
        if self.dozer is not None:
            self.dozer.doorbell.close()
        reader.close()
        self.log.info("left the mesh%s", f" ({left} records undelivered)" if left else "")

    # what is read --------------------------------------------------------------
    def _take(self, record: Record) -> None:
        """One record read: finished at once (skipped, a reply, a copy, a dead letter),
        handled now (the fast path), or queued in its conversation."""
        self.counts[C.records_counter(record.topic)] += 1
        if record.foreign:  # keyed to another agent of this inbox partition: skipped unread
            self.counts[C.COUNTER_SKIPPED] += 1
            where = (record.topic, record.partition)
            if self.inline:
                self.settlement.read_in_order(where, record.offset)
            else:
                self.settlement.finish(self.settlement.read(where, record.offset))
            return
        if self.inline and record.topic == C.TOPIC_MESSAGES:  # the fast path, no book
            self.settlement.read_in_order((record.topic, record.partition), record.offset)
            envelope = self._intake(record)
            if envelope is not None:
                self._handle_inline(envelope, record)
            return
        where = (record.topic, record.partition)
        finished = self.settlement.read(where, record.offset)
        if record.topic == C.TOPIC_CONSENSUS:
            if not self.voting.take(record, finished):
                self.settlement.finish(finished)
            return
        envelope = self._intake(record)
        if envelope is None:
            self.settlement.finish(finished)
        else:
            self._active.add(envelope.id)
            conversation = envelope.meta.get("conversation")
            key = conversation if isinstance(conversation, str) and conversation else \
                f"from:{envelope.from_agent_id}"
            for started, item in self._conversations.add(key, (envelope, record, finished)):
                self._spawn(self._run(started, *item))

    def _intake(self, record: Record) -> Envelope | None:
        """The message to handle in an inbox record, or None (counted, dead-lettered or
        handed to its ask)."""
        if record.forged is not None:
            # nothing in it is to be believed, its recipient neither: refused by every
            # agent that reads its partition, like a record that does not decode
            self.refuse(record, record.forged)
            return None
        try:
            envelope = Envelope.decode(record.value, max_bytes=self.mesh.config.kafka.max_record_bytes)
        except InvalidEnvelope as exc:
            self.dead_letter(record, str(exc))
            return None
        if envelope.to_agent_id != self.name:
            if record.key == self.key:
                # keyed to this agent, addressed to another: the other skips it by its key
                self.dead_letter(record, f"key {self.name} does not name the recipient "
                                         f"{shown(envelope.to_agent_id)}")
                return None
            self.counts[C.COUNTER_SKIPPED] += 1  # another agent shares this partition
            return None
        if "in_reply_to" in envelope.meta:  # a reply: to its ask, never queued
            self.counts[self.exchange.asks.deliver(envelope)] += 1
            return None
        if self.ledger.seen(envelope.id) or envelope.id in self._active:
            self.counts[C.COUNTER_DUPLICATES] += 1  # a redelivery, or a copy sent after a crash
            if is_request(envelope):  # a re-run asker asks again: the same answer, where it waits
                if envelope.id in self._active:
                    self.exchange.answer_also(envelope)  # when the first copy's handler replies
                else:
                    self.exchange.answer_again(envelope)
            return None
        if not self._joined(envelope.from_agent_id):
            self.dead_letter(record, f"sender {shown(envelope.from_agent_id)} has not joined")
            return None
        if "deadline" in envelope.meta and (deadline_of(envelope) or 0) <= now_ms():
            self.counts[C.COUNTER_EXPIRED] += 1  # nobody waits for its answer any more
            return None
        return envelope

    def _handle_inline(self, envelope: Envelope, record: Record) -> None:
        """The fast path (a sync on_message at concurrency 1): handled now, on the loop.
        Written out rather than through safely_sync and _handled: it runs per message."""
        token = CURRENT.set(self._handling(envelope, "inline"))
        self.sync_hook_running = True
        try:
            result = self.role.on_message(envelope)
            if result is not None and inspect.isawaitable(result):  # async, not declared as such
                self._spawn(result)
            self.ledger.handled(envelope.id, envelope.from_agent_id)  # counted as messages_in
        except Exception as exc:  # a role's bug must not stop the agent
            self.log.exception("on_message raised")
            self._handled(envelope, record, None, exc)  # an error reply's id is derived too
        finally:
            self.sync_hook_running = False
            CURRENT.reset(token)

    @staticmethod
    def _handling(envelope: Envelope, mode: Mode) -> Handling:
        meta = envelope.meta
        conversation, user = meta.get("conversation"), meta.get("user")
        return Handling(envelope.id, conversation if isinstance(conversation, str) else None, mode,
                        user if isinstance(user, str) else None)

    async def _run(self, key: Any, envelope: Envelope, record: Record, finished: Finished) -> None:
        """Handle one message in a task (async handler, or sync one in the pool), then start
        what its conversation's end lets start."""
        error: BaseException | None = None
        # this task's own context: the handler's sends (and its error reply) derive their ids
        CURRENT.set(self._handling(envelope, "task" if self._pool is None else "pool"))
        try:
            if self._pool is None:
                await self.role.on_message(envelope)
            else:
                context = contextvars.copy_context()
                await asyncio.get_running_loop().run_in_executor(
                    self._pool, context.run, self.role.on_message, envelope)
        except asyncio.CancelledError:
            raise  # the agent stops: not handled, read again next time
        except Exception as exc:  # a role's bug must not stop the agent
            self.log.exception("on_message raised")
            error = exc
        self._handled(envelope, record, finished, error)
        for started, item in self._conversations.finished(key):
            if self.stopping:  # leaving: what has not started is read again next time
                break
            self._spawn(self._run(started, *item))
        if self._wake is not None:
            self._wake.set()

    def _handled(self, envelope: Envelope, record: Record, finished: Finished | None,
                 error: BaseException | None) -> None:
        """`finished`: None on the fast path (its turn's offsets cover the record)."""
        if error is not None and is_request(envelope):
            self.exchange.reply(envelope, C.TYPE_ERROR_REPLY, error_payload(error))  # the asker learns why
        self._active.discard(envelope.id)
        self.exchange.also.pop(envelope.id, None)
        self.ledger.handled(envelope.id, envelope.from_agent_id)  # counted as messages_in
        self.once.handled(envelope.id)
        if finished is not None:
            self.settlement.finish(finished)
        if error is not None:
            self.counts[C.COUNTER_HANDLER_ERRORS] += 1
            self.dead_letter(record, f"handler error in role {self.spec.role}")

    def dead_letter(self, record: Record, reason: str) -> None:
        self.log.warning("dead letter at %s/%d@%d: %s", record.topic, record.partition,
                         record.offset, reason)
        self.bus.dead_letter(record, reason)
        self.counts[C.COUNTER_DEAD] += 1
        self.counts[C.dead_letters_counter(record.topic)] += 1

    def refuse(self, record: Record, reason: str) -> None:
        """A dead letter for a record that does not verify (counted as such too)."""
        self.counts[refused_counter(reason)] += 1
        self.dead_letter(record, reason)

    # counters ------------------------------------------------------------------
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

    def safely_sync(self, hook: str, fn: Any, *args: Any, error: bool = False) -> Any:
        """Call a sync hook on the loop (a blocking ask in it is refused); a role's bug is
        logged, never stops the agent. With `error`: return the exception (or None)."""
        self.sync_hook_running = True
        try:
            result = fn(*args)
        except Exception as exc:
            self.log.exception("%s raised", hook)
            return exc if error else None
        finally:
            self.sync_hook_running = False
        if result is not None and inspect.isawaitable(result):  # async, not declared as such
            self._spawn(result)
        return None if error else result

    def _flush_counters(self) -> None:
        self.counts.update(self.services.take_counts())
        self.counts.update(self._lag.take_counts())
        self.counts.update(self.public.take_counts())
        if self.dozer is not None:
            self.counts.update(self.dozer.take_counts())
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
