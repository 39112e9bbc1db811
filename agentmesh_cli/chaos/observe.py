"""Two observers that run beside the faults, each in its own thread.

- `ConsensusTally` follows the `consensus` topic from its beginning and counts the
  `proposal_opened` and `proposal_decided` broadcasts per proposal id. It follows the topic
  live because a broker restart empties it: when the broker epoch changes it reads the new
  topic from its beginning. A record read twice (by that re-read) is counted once; two
  broadcasts of one decision are two records and count twice.
- `StatusTruth` takes a `status` frame every second (the same collector `agentmesh status`
  uses) between two readings of supervisord, and counts the frames that contradict it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.chaos.probes import quiet
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.errors import AgentMeshError, InvalidEnvelope
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.reader import Reader, beginning
from agentmesh_cli.replica_view import processes
from agentmesh_cli.signing import mesh_signer
from agentmesh_cli.store import Store
from agentmesh_cli.supervisor.control import Supervisor

EPOCH_CHECK_S = 1.0
HAS_PROCESS = frozenset({"STARTING", "RUNNING", "STOPPING"})  # supervisord states with a live pid
STATUS_EVERY_S = 1.0
EXAMPLES_KEPT = 10

ProgramStates = dict[str, tuple[str, int]]  # program -> (supervisord state, pid)


def program_states(sup: Supervisor) -> ProgramStates:
    return {p["name"]: (p["statename"], int(p["pid"] or 0)) for p in sup.processes()}


class ConsensusTally:
    def __init__(self, mesh: Mesh, since_ms: int) -> None:
        self.mesh = mesh
        self.since_ms = since_ms  # proposals created before the run are not ours to judge
        self.opened: Counter[str] = Counter()
        self.decided: Counter[str] = Counter()
        self.unreadable = 0
        self.rereads = 0  # times the topic was read again from a new broker's beginning
        self._seen: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-consensus", daemon=True)
        self.error: str | None = None
        self.signer = mesh_signer(mesh)  # a broadcast that does not verify is not the manager's

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _reader(self) -> Reader:
        return Reader(quiet(self.mesh.config.kafka), f"agentmesh-chaos-{uuid.uuid4().hex[:8]}",
                      [(C.TOPIC_CONSENSUS, 0, beginning())], signer=self.signer)

    def _run(self) -> None:
        store = Store(self.mesh.redis_url, self.mesh.config.mesh, timeout=1.0)
        reader = self._reader()
        epoch = self._epoch(store)
        next_check = time.monotonic() + EPOCH_CHECK_S
        try:
            while not self._stop.is_set():
                try:
                    for record in reader.poll_batch(timeout=0.2):
                        if record.forged is not None:
                            self.unreadable += 1
                        else:
                            self._count(record.value)
                except AgentMeshError as exc:
                    self.error = str(exc)
                    time.sleep(0.2)
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + EPOCH_CHECK_S
                    now = self._epoch(store)
                    if now is not None and now != epoch:
                        epoch = now
                        self.rereads += 1
                        reader.close()
                        reader = self._reader()
        finally:
            reader.close()
            store.close()

    @staticmethod
    def _epoch(store: Store) -> str | None:
        try:
            return store.kafka_epoch()
        except AgentMeshError:
            return None

    def _count(self, value: bytes | None) -> None:
        try:
            event = Envelope.decode(value)
        except InvalidEnvelope:
            self.unreadable += 1
            return
        if event.type not in (C.EVENT_OPENED, C.EVENT_DECIDED):
            return
        # the same broadcast again: re-read after a new epoch, or sent again by the manager
        # (Bus.replay) to a broker that restarted empty. A decision made twice would be a
        # new envelope, with its own time.
        if (event.id, event.ts) in self._seen:
            return
        self._seen.add((event.id, event.ts))
        proposal_id, created = event.payload.get("id"), event.payload.get("created_at")
        if not isinstance(proposal_id, str) or not isinstance(created, int) or created < self.since_ms:
            return
        (self.opened if event.type == C.EVENT_OPENED else self.decided)[proposal_id] += 1


class StatusTruth:
    """Counts status frames that contradict supervisord: a program whose state or pid differs
    from what supervisord reported both just before and just after the frame; an agent shown
    alive whose process supervisord no longer runs (or runs under another pid), or that has
    been stopped (SIGSTOP) for longer than the heartbeat timeout. (A new agent process may
    join before supervisord calls it RUNNING, after `startsecs`: STARTING has a live pid.)"""

    def __init__(self, mesh: Mesh, frozen: dict[str, float], paused: threading.Event | None = None) -> None:
        self.mesh = mesh
        self.paused = paused or threading.Event()  # the mesh restarts: supervisord is away
        self.frozen = frozen  # agent -> monotonic time it was stopped (the stall fault)
        cfg = mesh.config.heartbeat
        self.stale_after = cfg.interval * cfg.missed
        self.samples = 0
        self.disagreements = 0
        self.failures = 0  # frames that could not be taken at all
        self.slowest_s = 0.0
        self.examples: list[str] = []
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-status", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        from agentmesh_cli.status import StatusCollector

        with StatusCollector(self.mesh) as collector, Supervisor(self.mesh) as sup:
            while not self._stop.wait(STATUS_EVERY_S):
                if self.paused.is_set():
                    continue
                try:
                    before = program_states(sup)
                    started = time.monotonic()
                    frame = collector.collect()
                    took = time.monotonic() - started
                    after = program_states(sup)
                except (AgentMeshError, OSError) as exc:
                    self.failures += 1
                    self._note(f"no frame: {exc}")
                    continue
                self.samples += 1
                self.slowest_s = max(self.slowest_s, took)
                problems = judge(frame, before, after, self.frozen, self.stale_after, started)
                if problems:
                    self.disagreements += 1
                    for problem in problems:
                        self._note(problem)

    def _note(self, text: str) -> None:
        if len(self.examples) < EXAMPLES_KEPT:
            self.examples.append(f"+{time.monotonic() - self._started:.1f}s {text}")


def judge(frame: dict[str, Any], before: ProgramStates, after: ProgramStates,
          frozen: dict[str, float], stale_after: float, now: float) -> list[str]:
    """What a status frame says that supervisord contradicts (pure)."""
    problems = []
    for p in frame["programs"]:
        truth = before.get(p["name"])
        if truth is None or truth != after.get(p["name"]):
            continue  # it changed while the frame was taken: either answer is right
        shown = (p["state"], int(p["pid"] or 0))
        if shown != truth:
            problems.append(f"{p['name']}: status shows {shown[0]} pid {shown[1]}, "
                            f"supervisord {truth[0]} pid {truth[1]}")
    for agent in processes(frame["agents"]):  # a group's replicas each
        truth = before.get(agent["program"])
        if not agent["alive"] or truth is None or truth != after.get(agent["program"]):
            continue
        state, pid = truth
        if state not in HAS_PROCESS or agent["pid"] != pid:
            problems.append(f"agent {agent['name']} shown alive with pid {agent['pid']}, "
                            f"supervisord: {state} pid {pid}")
        elif agent["name"] in frozen and now - frozen[agent["name"]] > stale_after + 1.0:
            problems.append(f"agent {agent['name']} shown alive while stopped for "
                            f"{now - frozen[agent['name']]:.1f} s")
    return problems
