"""The probe stream: messages from the operator sender "chaos" to every agent in turn, at a
fixed rate, with ids the run chose (`chaos-<run>-<seq>`), so what was lost or handled twice
can be told exactly.

Sent means confirmed by the broker. Handled comes from the agents themselves: the exact
`handled_from:chaos` counter, and the ledger of handled ids (which probe, not just how
many), both written in one Redis transaction per handled batch (agent/ledger.py).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from array import array
from collections import Counter
from collections.abc import Mapping

import orjson

from agentmesh_cli import constants as C
from agentmesh_cli import environment, events
from agentmesh_cli.bus import Bus
from agentmesh_cli.config import KafkaConfig
from agentmesh_cli.dozing import ringing, stop_ringing
from agentmesh_cli.errors import AgentMeshError
from agentmesh_cli.recovery import BrokerWatch
from agentmesh_cli.signing import Signer
from agentmesh_cli.store import Store

log = logging.getLogger(__name__)

SENDER = "chaos"  # an operator sender (constants.OPERATOR_SENDERS): accepted without a join
PROBE_TYPE = "chaos_probe"
HANDLED_FROM = C.COUNTER_HANDLED_FROM_PREFIX + SENDER
TICK_S = 0.005
RECENT_IDS = 200  # newest ledger ids read to see whether probes are being handled
WHOLE_LEDGER = 10_000_000


def quiet(kafka: KafkaConfig) -> KafkaConfig:
    """The same Kafka settings with librdkafka's own log lines off: a broker that goes away
    is what this tool does on purpose, not news for the terminal."""
    settings = environment.expand_all(kafka.client, "kafka.client")
    return kafka.model_copy(update={"client": {"log_level": 2, **settings}})


class Pace:
    """How many sends are due at `rate` per second, the time `paused` is set left out."""

    def __init__(self, rate: float, paused: threading.Event) -> None:
        self.rate = rate
        self.paused = paused
        self._active = 0.0  # seconds of sending so far
        self._last = time.monotonic()

    def due(self) -> int:
        now = time.monotonic()
        if not self.paused.is_set():
            self._active += now - self._last
        self._last = now
        return int(self._active * self.rate)


class ProbeSender:
    """Sends probes round-robin to `agents` at `rate` per second from its own thread. With
    a `store` it rides out a broker restart as an agent does (BrokerWatch: re-create the
    topics, send again what the dead broker had confirmed lately)."""

    def __init__(self, kafka: KafkaConfig, agents: list[str], rate: float, run_id: str,
                 store: Store | None = None, signer: Signer | None = None,
                 paused: threading.Event | None = None, ledgers: Mapping[str, str] | None = None) -> None:
        """`signer`: the mesh's (security.sign_envelopes), else the agents refuse the probes.
        `paused`: while it is set no probe is sent (the mesh restarts), and the rate's
        clock stops. `ledgers`: a replica's ledger is its group's (the others: their own)."""
        self.paused = paused or threading.Event()
        self.agents = agents
        self.ledgers = dict(ledgers or {})
        self.rate = rate
        self.prefix = f"chaos-{run_id}-"
        self.produced_at = array("d")  # seq -> monotonic time it was produced (nan: refused)
        self.confirmed = bytearray()  # seq -> 1 once the broker confirmed it
        self.sent: Counter[str] = Counter()  # agent -> probes confirmed
        self.refused = 0  # produce calls the client refused (not sent)
        self.held = 0  # probes not produced: their agent was held (`hold`)
        self._held: set[str] = set()
        self._bus = Bus(quiet(kafka), client_id="agentmesh-chaos", signer=signer)
        self._bus.on_delivered = self._confirm
        # a sleeping agent is rung (dozing.py)
        self._bell = ringing(self._bus, store) if store is not None else None
        self._watch = None if store is None else BrokerWatch(self._bus, store, store.kafka_epoch() or "",
                                                             topics_every=5.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-probes", daemon=True)

    @property
    def hears_sleepers(self) -> bool:
        """Its doorbell follows who sleeps (it rings what it sends to a sleeping agent)."""
        return self._bell is not None and self._bell.listening

    def agent_of(self, seq: int) -> str:
        return self.agents[seq % len(self.agents)]

    def ledger_of(self, agent: str) -> str:
        """The ledger the agent records its handled ids in: a replica's is its group's."""
        return self.ledgers.get(agent, agent)

    def sharing(self, agent: str) -> int:
        """How many of the probed agents record in the agent's ledger (a group's replicas)."""
        ledger = self.ledger_of(agent)
        return sum(1 for other in self.agents if self.ledger_of(other) == ledger)

    def seq_of(self, message_id: str) -> int | None:
        if not message_id.startswith(self.prefix):
            return None
        try:
            return int(message_id[len(self.prefix):])
        except ValueError:
            return None

    @property
    def produced(self) -> int:
        return len(self.produced_at)

    def last_seq(self, agent: str) -> int:
        """The newest probe produced so far to `agent` (-1: none)."""
        n, i = self.produced, self.agents.index(agent)
        if n <= i:
            return -1
        return (n - 1 - i) // len(self.agents) * len(self.agents) + i

    def _confirm(self, value: bytes | None) -> None:
        try:
            seq = self.seq_of(str(orjson.loads(value or b"{}").get("id", "")))
        except orjson.JSONDecodeError:
            return
        if seq is not None and seq < len(self.confirmed) and not self.confirmed[seq]:
            self.confirmed[seq] = 1
            self.sent[self.agent_of(seq)] += 1

    def hold(self, agent: str) -> None:
        """Send `agent` no probe until `release`: a replica about to be scaled away, whose
        unread inbox would be handed over to another replica (chaos/replicas.py). Its turns
        meanwhile produce nothing (`held`; never sent, so never lost)."""
        self._held.add(agent)

    def release(self, agent: str) -> None:
        self._held.discard(agent)

    def produced_to(self, agent: str) -> int:
        """Probes produced to `agent` so far (refused and held ones left out)."""
        start, step = self.agents.index(agent), len(self.agents)
        return sum(1 for seq in range(start, self.produced, step) if not math.isnan(self.produced_at[seq]))

    def _produce(self, seq: int) -> None:
        agent = self.agent_of(seq)
        self.confirmed.append(0)
        if agent in self._held:
            self.held += 1
            self.produced_at.append(math.nan)
            return
        probe = events.message(SENDER, agent, PROBE_TYPE, {"seq": seq}, id=f"{self.prefix}{seq}")
        try:
            self._bus.send_message(probe)
        except AgentMeshError:
            self.refused += 1
            self.produced_at.append(math.nan)
            return
        self.produced_at.append(time.monotonic())

    def _run(self) -> None:
        pace = Pace(self.rate, self.paused)
        while not self._stop.is_set():
            due = pace.due()
            while self.produced < due and not self._stop.is_set():
                self._produce(self.produced)
            self._bus.poll()
            if self._watch is not None:
                self._watch.check(time.monotonic())
            self._stop.wait(TICK_S)

    def start(self) -> None:
        self._thread.start()

    def stop(self, flush_timeout: float) -> int:
        """Stop sending; wait for confirmations; return how many are still unconfirmed."""
        self._stop.set()
        self._thread.join()
        left = self._bus.flush(flush_timeout)
        stop_ringing(self._bus)
        return left


def newest_probe(store: Store, agent: str, probes: ProbeSender, recent: int = RECENT_IDS) -> int:
    """The newest probe seq to the agent among its ledger's `recent` most recently handled
    ids (-1: none); a group's ledger holds every replica's, so more of them are read."""
    ids, _score = store.handled_ids(probes.ledger_of(agent), recent * probes.sharing(agent))
    seqs = [s for s in map(probes.seq_of, ids) if s is not None and probes.agent_of(s) == agent]
    return max(seqs, default=-1)


def handled_after(store: Store, agent: str, probes: ProbeSender, seq: int, recent: int = RECENT_IDS) -> bool:
    """Has the agent handled a probe newer than `seq`? (Its inbox is one partition, read in
    order, so a newer probe handled means everything it was sent before was read.)"""
    try:
        return newest_probe(store, agent, probes, recent) > seq
    except AgentMeshError:
        return False


def handled_seqs(store: Store, agent: str, probes: ProbeSender, window: int) -> tuple[set[int], bool]:
    """Probe seqs in the agent's whole ledger, and whether the ledger is full (it keeps the
    newest `window` ids), so that probes older than its oldest cannot be judged."""
    ids, _score = store.handled_ids(probes.ledger_of(agent), WHOLE_LEDGER)
    seqs = {s for s in map(probes.seq_of, ids) if s is not None and probes.agent_of(s) == agent}
    return seqs, len(ids) >= window
