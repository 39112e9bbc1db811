"""Ask traffic of a chaos run: requests from the operator to the agents whose roles answer
one (`ANSWERED`), at a fixed rate, with ids the run chose (`chaos-ask-<run>-<seq>`), and
a reply address of the run's own (the `replies` topic, as `agentmesh ask` does).

Sent means confirmed by the broker. Answered means a reply with `meta.in_reply_to` = the
request's id came back. Lost: sent and never answered. Answered twice: two replies with
different ids for one request (one with the same id is the same reply sent again, from
the reply cache or a replay after a broker restart: not a second handling).
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli import events
from agentmesh_cli.bus import Bus
from agentmesh_cli.chaos.inbox_tally import asks_in
from agentmesh_cli.chaos.probes import Pace, quiet
from agentmesh_cli.config import KafkaConfig
from agentmesh_cli.dozing import ringing, stop_ringing
from agentmesh_cli.envelope import Envelope, now_ms
from agentmesh_cli.errors import AgentMeshError, InvalidEnvelope
from agentmesh_cli.reader import Reader
from agentmesh_cli.recovery import BrokerWatch
from agentmesh_cli.signing import Signer
from agentmesh_cli.store import Store

log = logging.getLogger(__name__)

SENDER = C.CLI_COUNTER_OWNER  # "cli": an operator's ask, as `agentmesh ask` sends (probes are "chaos")
TICK_S = 0.01
# what the demo roles answer: role -> (request type, payload)
ANSWERED: dict[str, tuple[str, dict[str, Any]]] = {
    "inventory": ("check_stock", {"items": {}}),  # nothing to reserve: the stock is left alone
    "fraud": ("risk_assessment", {"amount": 10}),
    "sales": ("recent_orders", {"customer": "chaos"}),
}


class AskStream:
    """Asks `targets` (agent -> role) round-robin at `rate` per second from one thread, and
    reads the replies from another. Rides out a broker restart as the probes do."""

    def __init__(self, kafka: KafkaConfig, targets: dict[str, str], rate: float, run_id: str,
                 store: Store, signer: Signer | None, deadline_s: float,
                 paused: threading.Event | None = None) -> None:
        """`paused`: while it is set no ask is sent (the mesh restarts)."""
        self.paused = paused or threading.Event()
        self.targets = sorted(a for a, role in targets.items() if role in ANSWERED)
        self.roles = targets
        self.rate = rate
        self.deadline_s = deadline_s
        self.prefix = f"chaos-ask-{run_id}-"
        self.address = f"chaos-{run_id}"
        self.sent_at: dict[int, float] = {}  # seq -> monotonic time it was confirmed
        self.produced = 0
        self.refused = 0
        self.replies: dict[int, set[str]] = {}  # seq -> ids of its replies
        self.round_trips: list[float] = []  # ms, first reply of each request
        self.error_replies = 0
        kafka = quiet(kafka)
        self._store = store
        self._bus = Bus(kafka, client_id="agentmesh-chaos-ask", signer=signer)
        ringing(self._bus, store)  # a sleeping agent is rung (dozing.py)
        self._bus.on_delivered = self._confirm
        self._watch = BrokerWatch(self._bus, store, store.kafka_epoch() or "", topics_every=5.0)
        self._epoch = store.kafka_epoch()
        self._reader = Reader(kafka, f"{kafka.topic_prefix}.chaos.{self.address}",
                              [(C.TOPIC_REPLIES, C.reply_partition(self.address, kafka.partitions), None)],
                              "agentmesh-chaos-ask", fetch_wait=0.02, signer=signer)
        self._reader.start_at_end()
        self._produced_at: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._drained = threading.Event()
        self._sender = threading.Thread(target=self._send_loop, name="chaos-asks", daemon=True)
        self._receiver = threading.Thread(target=self._read_loop, name="chaos-replies", daemon=True)

    def seq_of(self, request_id: object) -> int | None:
        if not isinstance(request_id, str) or not request_id.startswith(self.prefix):
            return None
        try:
            return int(request_id[len(self.prefix):])
        except ValueError:
            return None

    def _confirm(self, value: bytes | None) -> None:
        try:
            seq = self.seq_of(Envelope.decode(value).id)
        except InvalidEnvelope:
            return
        if seq is not None:
            with self._lock:
                self.sent_at.setdefault(seq, self._produced_at.get(seq, time.monotonic()))

    def _ask(self, seq: int) -> None:
        agent = self.targets[seq % len(self.targets)]
        type_, payload = ANSWERED[self.roles[agent]]
        meta = {"reply_to": self.address, "deadline": now_ms() + int(self.deadline_s * 1000)}
        request = events.message(SENDER, agent, type_, {**payload, "order_id": f"{self.prefix}{seq}"},
                                 meta, id=f"{self.prefix}{seq}")
        with self._lock:
            self._produced_at[seq] = time.monotonic()
        try:
            self._bus.send_message(request)
        except AgentMeshError:
            self.refused += 1

    def _send_loop(self) -> None:
        pace = Pace(self.rate, self.paused)
        while not self._stop.is_set():
            due = pace.due()
            while self.produced < due and not self._stop.is_set():
                self._ask(self.produced)
                self.produced += 1
            self._bus.poll()
            self._watch.check(time.monotonic())
            self._stop.wait(TICK_S)

    def _read_loop(self) -> None:
        while not self._stop.is_set() or self.unanswered():
            try:
                self._new_epoch()
                records = self._reader.poll_batch(timeout=0.1)
            except AgentMeshError as exc:  # the broker is away: a fault at work
                log.debug("replies not read: %s", exc)
                time.sleep(0.2)
                continue
            for record in records:
                if record.forged is not None:
                    continue
                try:
                    reply = Envelope.decode(record.value)
                except InvalidEnvelope:
                    continue
                self._answered(reply)
            if self._stop.is_set() and self._drained.is_set():
                return

    def _new_epoch(self) -> None:
        """The broker restarted empty: its replies partition starts again at 0."""
        try:
            epoch = self._store.kafka_epoch()
        except AgentMeshError:
            return
        if epoch != self._epoch and epoch is not None:
            self._epoch = epoch
            self._reader.rewind()

    def _answered(self, reply: Envelope) -> None:
        seq = self.seq_of(reply.meta.get("in_reply_to"))
        if seq is None:
            return
        with self._lock:
            ids = self.replies.setdefault(seq, set())
            if not ids and seq in self._produced_at:
                self.round_trips.append((time.monotonic() - self._produced_at[seq]) * 1000)
            ids.add(reply.id)
        if reply.type == C.TYPE_ERROR_REPLY:
            self.error_replies += 1

    def unanswered(self) -> int:
        with self._lock:
            return sum(1 for seq in self.sent_at if seq not in self.replies)

    def start(self) -> None:
        if self.targets and self.rate > 0:
            self._sender.start()
            self._receiver.start()

    def stop(self, flush_timeout: float) -> int:
        """Stop asking; wait for confirmations; return how many are still unconfirmed."""
        self._stop.set()
        if self._sender.is_alive():
            self._sender.join()
        return self._bus.flush(flush_timeout)

    def close(self) -> None:
        self._drained.set()
        self._stop.set()
        if self._receiver.is_alive():
            self._receiver.join(5)
        self._reader.close()
        stop_ringing(self._bus)

    def window(self, since: float, until: float) -> dict[str, int]:
        """The asks produced in [since, until] (monotonic) and confirmed: sent, answered,
        answered twice (chaos/inbox_tally.asks_in)."""
        with self._lock:
            return asks_in(self.sent_at, self.replies, since, until)

    def figures(self) -> dict[str, Any]:
        with self._lock:
            sent = len(self.sent_at)
            answered = sum(1 for seq in self.sent_at if seq in self.replies)
            twice = sum(1 for ids in self.replies.values() if len(ids) > 1)
            trips = sorted(self.round_trips)
        return {
            "agents": self.targets,
            "produced": self.produced,
            "refused": self.refused,
            "sent": sent,
            "answered": answered,
            "lost": sent - answered,
            "answered_twice": twice,
            "error_replies": self.error_replies,
            "p50_ms": round(statistics.median(trips), 1) if trips else None,
            "p99_ms": round(trips[min(len(trips) - 1, int(0.99 * len(trips)))], 1) if trips else None,
        }
