"""The host's inbox reader (`kafka.inbox_reader: host`, inbox_host.py) on real processes:
the `inbox-reader` program and agents of their own, a consensus manager where a proposal
is decided, on the session broker and Valkey. Two agents share an inbox partition (with
`kafka.partitions: 2`, A and B read partition 1, D partition 0), one handling on the
fast path (a sync handler), one through its book (async, concurrency 4).

- a kill -9 of the inbox reader, twice, while 2,100 messages flow: each handled exactly
  once (the ledger's counters, and each handler run noted once), none read twice, every
  group's offset committed to its partition's end, and a proposal still decided; a client
  that sends it a broken frame is dropped, not the reader;
- a kill -9 of an agent mid-stream: its restart subscribes from its committed offsets,
  and nothing is lost or recorded twice, nor read twice by the agent beside it;
- signed records (security.sign_envelopes) pass through and verify, extra headers (a
  None value among them) and all; forged ones are refused by the agents a reader of its
  own would have them refused by, on the inbox and the consensus topic; an unkeyed record
  is every agent's of its partition, as it is for a reader of its own;
- a gap in a partition (a transaction's marker) is passed, as a reader of its own passes it;
- frames an agent took off its socket beyond its read-ahead are read after a slow handler.

Every process is started here and stopped by its pid."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from agentmesh_cli import constants as C
from agentmesh_cli.broker import prepare_topics
from agentmesh_cli.bus import Bus
from agentmesh_cli.embedded import stop
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.inbox_wire import subscribe_frame
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.reader import committed_offsets
from agentmesh_cli.signing import HEADER, Signer, mesh_signer
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import wait_until
from tests.helpers.commands import spawn_role
from tests.helpers.mesh import REPO, mesh_bus
from tests.helpers.tables import OTHER_KEY

ROLES = "tests.helpers.waiting_roles"
SYNC: dict[str, Any] = {"role": f"{ROLES}:SyncWorker"}  # the fast path: handled on the loop, in order
ASYNC: dict[str, Any] = {"role": f"{ROLES}:Worker", "concurrency": 4}  # through the book
PARTITIONS = 2
SHARED, ALONE = 1, 0  # A and B read partition 1, D partition 0 (crc32 % 2)
INBOX = C.PROGRAM_INBOX


@pytest.fixture(autouse=True)
def roles_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agents started here import their roles from tests/helpers, from any folder."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def host_mesh(external_mesh: Any, agents: dict[str, dict[str, Any]], **extra: Any) -> Mesh:
    mesh: Mesh = external_mesh(kafka={"partitions": PARTITIONS, "inbox_reader": "host"},
                               agents=[{"name": name, **spec} for name, spec in agents.items()],
                               heartbeat={"interval": "1s", "missed": 5},
                               # every agent's vote decides: each read the opening
                               consensus={"quorum": 1.0, "proposal_timeout": "20s",
                                          "snapshot_interval": "200ms"},
                               **extra)
    assert [C.inbox_partition(name, PARTITIONS) for name in ("A", "B", "D")] == [SHARED, SHARED, ALONE]
    return mesh


class Programs:
    """The mesh's programs as processes of this test: started, killed and stopped by pid.
    Each start logs to a file of its own (`<program>-<n>.log`)."""

    def __init__(self, mesh: Mesh, folder: Path) -> None:
        self.mesh = mesh
        self.folder = folder
        self.store = Store(mesh.config.redis.resolved_url, mesh.config.mesh)
        self.procs: dict[str, subprocess.Popen[Any]] = {}
        self.gone: list[subprocess.Popen[Any]] = []  # killed: reaped, kept to be sure
        self.starts: Counter[str] = Counter()
        prepare_topics(mesh.config.kafka, self.store)

    def log(self, program: str, n: int | None = None) -> Path:
        return self.folder / f"{program}-{self.starts[program] if n is None else n}.log"

    def start(self, program: str, *args: str, ready: bool = True) -> subprocess.Popen[Any]:
        self.starts[program] += 1
        proc = self.procs[program] = spawn_role(*args, "--config", str(self.mesh.config_file),
                                                log=self.log(program))
        if ready:
            self.wait_ready(program)
        return proc

    def start_reader(self, ready: bool = True) -> None:
        self.start(INBOX, "inbox-reader", ready=ready)

    def start_agent(self, name: str, ready: bool = True) -> None:
        self.start(C.agent_program(name), "agent", "--name", name, ready=ready)

    def start_consensus(self) -> None:
        self.start(C.PROGRAM_CONSENSUS, "consensus")

    def wait_ready(self, program: str) -> None:
        proc = self.procs[program]
        wait_until(lambda: self.store.ready_pid(program) == proc.pid or proc.poll() is not None, 60,
                   f"{program} ready")
        assert proc.poll() is None, self.log(program).read_text(errors="replace")

    def kill(self, program: str) -> None:
        proc = self.procs.pop(program)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        self.gone.append(proc)

    def stop(self, *programs: str) -> None:
        """One TERM each, all at once (each takes a moment to leave), then wait for each to
        leave cleanly (a second TERM could meet a process already past its handler)."""
        procs = [self.procs.pop(p) for p in programs if p in self.procs]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                stop(proc)
            assert proc.returncode == 0, proc.args

    def close(self) -> None:
        for proc in [*self.procs.values(), *self.gone]:
            stop(proc)
        self.procs.clear()
        self.store.close()

    def counters(self, name: str) -> dict[str, int]:
        return self.store.counters(name)


@contextmanager
def programs(mesh: Mesh, folder: Path) -> Iterator[Programs]:
    running = Programs(mesh, folder)
    try:
        yield running
    finally:
        running.close()


def work(to: str, tag: str, folder: Path) -> Envelope:
    return Envelope(type="work", from_agent_id="cli", to_agent_id=to,
                    payload={"tag": tag, "log": str(folder / f"work-{to}.log")})


def stream(bus: Bus, folder: Path, names: list[str], n: int, rate: float,
           during: dict[int, Callable[[], None]], prefix: str = "") -> Counter[str]:
    """`n` messages, to each of `names` in turn, at about `rate`/s, calling `during[i]`
    before the i-th; how many went to each. The i-th is tagged `<prefix><name><i>`."""
    sent: Counter[str] = Counter()
    started = time.monotonic()
    for i in range(n):
        if i in during:
            during[i]()
        to = names[i % len(names)]
        bus.send_message(work(to, f"{prefix}{to}{i}", folder))
        sent[to] += 1
        ahead = started + (i + 1) / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)  # the pace of the load, not a wait
        bus.poll()
    assert bus.flush(30) == 0
    return sent


def handled(run: Programs, name: str) -> int:
    return run.counters(name).get(C.COUNTER_HANDLED_FROM_PREFIX + "cli", 0)


def runs(folder: Path, name: str) -> Counter[str]:
    """Handler runs noted by the roles: `start <tag>` / `finish <tag>` lines."""
    path = folder / f"work-{name}.log"
    return Counter(path.read_text(encoding="utf-8").splitlines()) if path.exists() else Counter()


def partition_ends(bus: Bus) -> dict[int, int]:
    """The next offset of each messages partition the bus wrote to."""
    return {p: last + 1 for (topic, p), last in bus.delivered.items() if topic == C.TOPIC_MESSAGES}


def committed(mesh: Mesh, name: str, partition: int) -> int | None:
    cfg = mesh.config.kafka
    where = (C.TOPIC_MESSAGES, partition)
    return committed_offsets(cfg, C.agent_group(cfg.topic_prefix, name), [where]).get(where)


def wait_committed(mesh: Mesh, ends: dict[int, int], names: list[str]) -> None:
    """Every agent's group committed its partition to its end (skipped records of another
    agent included: SKIPPED frames let it commit past them)."""
    def done(name: str) -> bool:
        partition = C.inbox_partition(name, PARTITIONS)
        return committed(mesh, name, partition) == ends[partition]

    wait_until(lambda: all(done(name) for name in names), 20,
               lambda: f"the offsets {ends} committed by {[n for n in names if not done(n)]}")


def subscriptions(log: Path, name: str) -> list[dict[str, int]]:
    """What the inbox reader's log says agent `name` subscribed with: (topic/partition -> offset)
    per connection."""
    out = []
    for line in log.read_text(encoding="utf-8").splitlines():
        if (m := re.search(rf" {re.escape(name)} subscribed: (.*)$", line)) is not None:
            out.append({where: int(offset) for where, offset in
                        (part.split(" from ") for part in m.group(1).split(", "))})
    return out


def propose(mesh: Mesh, run: Programs, pid: str, voters: int) -> None:
    """A signed proposal from the operator; decided by `voters` votes for it (each voter
    read the opening off the consensus topic through the inbox reader)."""
    bus = Bus(mesh.config.kafka, "test-propose", signer=mesh_signer(mesh))
    bus.send(C.TOPIC_PROPOSALS, Envelope(type=C.EVENT_PROPOSAL, from_agent_id="cli",
                                         payload={"proposal_id": pid, "type": "decision",
                                                  "content": {"priority": "high"}}), key=pid)
    assert bus.flush(10) == 0
    decided = wait_until(lambda: (r := run.store.proposal(pid)) and r["status"] != "pending" and r, 30,
                         f"proposal {pid} decided")
    assert decided["status"] == "accepted", decided
    assert decided["tally"]["for"] == voters and sorted(decided["votes"]) == sorted(decided["electorate"])


def refused(counters: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counters.items() if k.startswith("refused:")}


# -- a: kill -9 of the inbox reader ----------------------------------------------------

def broken_clients(path: Path) -> None:
    """Clients that send the inbox reader what it cannot take: each is dropped (the reader
    closes its connection), and the reader goes on."""
    for frame in (b"\x00\x00\x00\x01\x0a",  # a SUBSCRIBE of its kind alone
                  b"\x00\x00\x00\x00",  # a frame of 0 bytes
                  subscribe_frame(1, "X", b"X", {("votes", 0): 0}),  # a topic it does not read
                  b"\x00\x00\x00\x05\x03\x00\x00\x00\x01"):  # SUBSCRIBED: not a client's
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(frame)
            assert sock.recv(100) == b"", frame  # closed by the reader


def test_kill_9_of_the_inbox_reader_mid_stream_hands_every_message_once(external_mesh: Any,
                                                                         tmp_path: Path) -> None:
    agents = {"A": SYNC, "B": ASYNC, "D": SYNC}
    mesh = host_mesh(external_mesh, agents)
    with programs(mesh, tmp_path) as run:
        run.start_consensus()
        run.start_reader()
        for name in agents:
            run.start_agent(name)
        bus = mesh_bus(mesh)

        def kill_and_restart() -> None:
            assert 0 < sum(handled(run, name) for name in agents)  # it was handing records
            run.kill(INBOX)
            run.start_reader(ready=False)  # the agents connect again when it listens

        def connected_again() -> None:  # to the reader started after the first kill
            wait_until(lambda: all(subscriptions(run.log(INBOX), name) for name in agents), 30,
                       "every agent subscribed to the restarted reader")

        sent = stream(bus, tmp_path, list(agents), 2100, 1000.0,
                      {600: kill_and_restart, 1000: connected_again, 1400: kill_and_restart})
        assert sent == {"A": 700, "B": 700, "D": 700}
        run.wait_ready(INBOX)
        wait_until(lambda: all(handled(run, name) >= sent[name] for name in agents), 60,
                   "every message handled")
        broken_clients(run.mesh.inbox_socket)
        propose(mesh, run, "p-after-kills", voters=3)
        wait_committed(mesh, partition_ends(bus), list(agents))
        run.stop(*[C.agent_program(name) for name in agents])  # their last counters written
        assert run.procs[INBOX].poll() is None  # the reader the broken clients met runs on
        assert run.starts[INBOX] == 3
        for name in agents:
            counters = run.counters(name)
            assert handled(run, name) == sent[name] == counters[C.COUNTER_IN], name
            # the reader handed no record twice: none came to the agent again
            assert counters.get(C.COUNTER_DUPLICATES, 0) == 0, name
            assert counters.get(C.COUNTER_HANDLED_TWICE, 0) == 0, name
            assert counters.get(C.COUNTER_DEAD, 0) == 0 and refused(counters) == {}, name
            # each handler ran once: the agents were not killed, so nothing was run again
            tags = {f"{name}{i}" for i in range(2100) if list(agents)[i % 3] == name}
            assert runs(tmp_path, name) == Counter({f"{what} {tag}": 1 for tag in tags
                                                    for what in ("start", "finish")}), name
            log = run.log(C.agent_program(name), 1).read_text(encoding="utf-8")
            # it saw each kill, and came back each time (once more when it reached the killed
            # reader's listening socket before the kernel closed it)
            lost = log.count("lost the host's inbox reader")
            assert lost == log.count("the host's inbox reader is back") >= 2, log
        # each reader after a kill was told where each agent was: past the beginning
        for n in (2, 3):
            for name in agents:
                (subscribed,) = subscriptions(run.log(INBOX, n), name)
                where = f"messages/{C.inbox_partition(name, PARTITIONS)}"
                assert set(subscribed) == {"consensus/0", where} and subscribed[where] > 0, subscribed
        run.stop(INBOX)  # and it leaves cleanly, its socket removed
        assert not run.mesh.inbox_socket.exists()


# -- b: kill -9 of an agent ---------------------------------------------------------------

def test_kill_9_of_an_agent_it_resumes_from_its_committed_offsets_through_the_reader(
        external_mesh: Any, tmp_path: Path) -> None:
    agents = {"A": SYNC, "B": ASYNC}  # one inbox partition
    mesh = host_mesh(external_mesh, agents)
    resumed_from: list[int | None] = []
    with programs(mesh, tmp_path) as run:
        run.start_reader()
        for name in agents:
            run.start_agent(name)
        bus = mesh_bus(mesh)

        def kill_a() -> None:
            assert 0 < handled(run, "A") < 500
            run.kill(C.agent_program("A"))
            time.sleep(0.3)  # time passes on purpose: a commit it sent just before is taken first
            resumed_from.append(committed(mesh, "A", SHARED))  # what it left: its restart starts there
            run.start_agent("A", ready=False)

        sent = stream(bus, tmp_path, list(agents), 1600, 1000.0, {700: kill_a})
        assert sent == {"A": 800, "B": 800}
        run.wait_ready(C.agent_program("A"))
        wait_until(lambda: all(handled(run, name) >= sent[name] for name in agents), 60,
                   "every message handled")
        ends = partition_ends(bus)
        wait_committed(mesh, ends, list(agents))
        run.stop(*[C.agent_program(name) for name in agents])
        for name in agents:
            counters = run.counters(name)
            assert handled(run, name) == sent[name] == counters[C.COUNTER_IN], name
            assert counters.get(C.COUNTER_HANDLED_TWICE, 0) == 0, name
            assert counters.get(C.COUNTER_DEAD, 0) == 0 and refused(counters) == {}, name
        # B, beside it, was not handed again what the reader read again for A
        assert run.counters("B").get(C.COUNTER_DUPLICATES, 0) == 0
        # every message's handler ran; A's again only for those it had not recorded at its kill
        for what in ("start", "finish"):
            done = {line.split(" ", 1)[1] for line in runs(tmp_path, "A") if line.startswith(what + " ")}
            assert done == {f"A{i}" for i in range(0, 1600, 2)}, what
        assert all(n == 1 for line, n in runs(tmp_path, "B").items())
        # the restart subscribed through the reader from the offset its group had committed
        (start,) = resumed_from
        assert start is not None and 0 < start < ends[SHARED]
        first, again = subscriptions(run.log(INBOX), "A")
        assert first["messages/1"] in (-2, 0) and again["messages/1"] == start, (first, again)
        log = run.log(C.agent_program("A"), 2).read_text(encoding="utf-8")
        assert (m := re.search(r"(\d+) handled ids in the ledger", log)) and int(m.group(1)) > 0, log


# -- c: signed records ---------------------------------------------------------------------

class Writer:
    """A plain producer, outside the mesh: it signs only what it is told to sign."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.producer = Producer({"bootstrap.servers": mesh.config.kafka.bootstrap,
                                  "allow.auto.create.topics": False})

    def write(self, topic: str, value: bytes, partition: int, key: str | None = None,
              headers: list[tuple[str, Any]] | None = None) -> None:
        self.producer.produce(self.mesh.topic(topic), value, key=key, partition=partition, headers=headers)

    def flush(self) -> None:
        assert self.producer.flush(10) == 0


def test_signed_records_pass_through_the_reader_and_verify_forged_ones_are_refused(
        external_mesh: Any, tmp_path: Path) -> None:
    agents = {"A": SYNC, "B": ASYNC, "D": SYNC}
    mesh = host_mesh(external_mesh, agents, security={"sign_envelopes": True})
    signer = mesh_signer(mesh)
    assert signer is not None
    with programs(mesh, tmp_path) as run:
        run.start_consensus()
        run.start_reader()
        for name in agents:
            run.start_agent(name)
        bus = mesh_bus(mesh)
        sent = stream(bus, tmp_path, list(agents), 30, 1000.0, {})
        writer = Writer(mesh)
        messages = mesh.topic(C.TOPIC_MESSAGES)

        def signed(to: str, tag: str) -> tuple[bytes, list[tuple[str, Any]]]:
            value = work(to, tag, tmp_path).encode()
            return value, signer.headers(messages, value)

        # signed, with more headers than the signature: a None value, a str, a repeat
        value, headers = signed("D", "D-headers")
        writer.write(C.TOPIC_MESSAGES, value, ALONE, "D",
                     [("trace", None), *headers, ("note", "é"), (HEADER, b"a second, ignored")])
        # signed, unkeyed, on the partition A shares: A's, by its recipient
        value, headers = signed("A", "A-unkeyed")
        writer.write(C.TOPIC_MESSAGES, value, SHARED, None, headers)
        # forged: unsigned, keyed to A (B skips it by its key)
        writer.write(C.TOPIC_MESSAGES, work("A", "A-forged", tmp_path).encode(), SHARED, "A")
        # forged: signed with another key, to D
        value = work("D", "D-forged", tmp_path).encode()
        writer.write(C.TOPIC_MESSAGES, value, ALONE, "D", [(HEADER, Signer(OTHER_KEY).sign(messages, value))])
        # forged, unkeyed: refused by every agent of the partition, as readers of their own do
        writer.write(C.TOPIC_MESSAGES, work("B", "B-forged", tmp_path).encode(), SHARED)
        # forged on the consensus topic: every agent reads it, every agent refuses it
        writer.write(C.TOPIC_CONSENSUS, Envelope(type=C.EVENT_DECIDED, from_agent_id="consensus-manager",
                                                 payload={"proposal_id": "p-x"}).encode(), 0)
        writer.flush()
        want_in = {"A": sent["A"] + 1, "B": sent["B"], "D": sent["D"] + 1}
        want_refused = {"A": {"refused:unsigned": 3}, "B": {"refused:unsigned": 2},
                        "D": {"refused:unsigned": 1, "refused:bad_signature": 1}}
        wait_until(lambda: all(handled(run, name) >= want_in[name] for name in agents), 30,
                   "the signed messages handled")
        propose(mesh, run, "p-signed", voters=3)  # the manager's records verify
        run.stop(*[C.agent_program(name) for name in agents])
        for name in agents:
            counters = run.counters(name)
            assert handled(run, name) == want_in[name] == counters[C.COUNTER_IN], name
            assert refused(counters) == want_refused[name], (name, counters)
            assert counters[C.COUNTER_DEAD] == sum(want_refused[name].values()), name
            assert counters.get(C.COUNTER_DUPLICATES, 0) == 0, name
        ran = runs(tmp_path, "A") + runs(tmp_path, "B") + runs(tmp_path, "D")
        assert ran["finish D-headers"] == ran["finish A-unkeyed"] == 1
        assert not [line for line in ran if "forged" in line]
        del writer, bus  # their producers go before the session's broker does


# -- d: a gap in a partition -----------------------------------------------------------------

def test_a_gap_in_an_inbox_partition_is_passed_as_a_reader_of_its_own_passes_it(
        external_mesh: Any, tmp_path: Path) -> None:
    """A transaction's commit marker takes an offset that no consumer is handed: the
    reader reads the gap again (GAP_REREADS), then takes it as real, and so must every
    agent it reads for (one stuck at the missing offset would be read for again and again)."""
    agents = {"A": SYNC, "B": ASYNC}
    mesh = host_mesh(external_mesh, agents)
    signer = mesh_signer(mesh)
    assert signer is not None
    with programs(mesh, tmp_path) as run:
        run.start_reader()
        for name in agents:
            run.start_agent(name)
        bus = mesh_bus(mesh)
        before = stream(bus, tmp_path, list(agents), 4, 1000.0, {})
        wait_until(lambda: all(handled(run, name) == before[name] for name in agents), 20,
                   "the first handled")
        messages = mesh.topic(C.TOPIC_MESSAGES)
        tx = Producer({"bootstrap.servers": mesh.config.kafka.bootstrap,
                       "transactional.id": f"{mesh.config.mesh}-tx"})
        tx.init_transactions(10)
        tx.begin_transaction()
        value = work("A", "A-tx", tmp_path).encode()
        tx.produce(messages, value, key="A", partition=SHARED, headers=list(signer.headers(messages, value)))
        tx.commit_transaction(10)  # its marker: the offset after the record
        after = stream(bus, tmp_path, list(agents), 6, 1000.0, {}, prefix="after-")
        ends = partition_ends(bus)
        assert ends[SHARED] == 4 + 2 + 6  # the 4 before, the record and its marker, the 6 after
        wait_until(lambda: all(handled(run, name) == before[name] + after[name] + (name == "A")
                               for name in agents), 30, "the messages after the gap handled")
        wait_committed(mesh, ends, list(agents))
        run.stop(*[C.agent_program(name) for name in agents])
        ran = runs(tmp_path, "A") + runs(tmp_path, "B")
        assert set(ran.values()) == {1} and len(ran) == 2 * (4 + 1 + 6)
        del tx, bus


# -- e: records read off the socket, not yet taken ----------------------------------------------

def test_records_an_agent_took_off_its_socket_are_handled_after_a_slow_handler(
        external_mesh: Any, tmp_path: Path) -> None:
    """An agent takes from its socket more frames than it has room for (its read-ahead):
    the rest wait in its frame buffer while its handlers work. A handler that works longer
    than the inbox's quiet time must not leave them there: nothing more comes on the
    socket to wake the agent for them."""
    agents = {"B": ASYNC}
    mesh = host_mesh(external_mesh, agents)
    with programs(mesh, tmp_path) as run:
        run.start_reader()
        run.start_agent("B")
        bus = mesh_bus(mesh)
        for i in range(600):  # one conversation (from cli), more than a read-ahead of 256
            message = work("B", f"B{i}", tmp_path)
            if i == 300:
                message.payload["sleep"] = 1.5  # its conversation's others wait behind it: no room
            bus.send_message(message)
        assert bus.flush(10) == 0
        wait_until(lambda: handled(run, "B") == 600, 20, lambda: f"600 handled, not {handled(run, 'B')}")
        assert runs(tmp_path, "B")["finish B599"] == 1
        del bus


# -- f: an agent that does not take what it is handed -------------------------------------------

def test_an_agent_that_falls_behind_blocks_nobody_and_gets_everything_after(
        external_mesh: Any, tmp_path: Path) -> None:
    """A handler that blocks its agent's loop: the reader's bytes for it pile up past
    OUT_HIGH, it falls behind, and the agent beside it on the same partition gets its
    records meanwhile; when it takes them again, the reader goes back for it."""
    agents = {"A": SYNC, "B": SYNC}  # one inbox partition
    mesh = host_mesh(external_mesh, agents)
    big = "x" * 100_000
    with programs(mesh, tmp_path) as run:
        run.start_reader()
        for name in agents:
            run.start_agent(name)
        bus = mesh_bus(mesh)
        first = work("A", "A0", tmp_path)
        first.payload["sleep"] = 5.0  # A's loop does nothing else meanwhile: it reads nothing
        bus.send_message(first)
        for i in range(1, 121):  # 12 MB for A, more than the reader keeps for one agent
            message = work("A", f"A{i}", tmp_path)
            message.payload["pad"] = big
            bus.send_message(message)
            for j in (2 * i, 2 * i + 1):
                bus.send_message(work("B", f"B{j}", tmp_path))
        assert bus.flush(30) == 0
        wait_until(lambda: handled(run, "B") == 240, 20, "B's messages handled")
        assert handled(run, "A") == 0 and runs(tmp_path, "A") == {"start A0": 1}  # while A was busy
        wait_until(lambda: handled(run, "A") == 121, 30, lambda: f"A's 121 handled, not {handled(run, 'A')}")
        wait_committed(mesh, partition_ends(bus), list(agents))
        run.stop(*[C.agent_program(name) for name in agents], INBOX)
        # each once, in order (a sync handler at concurrency 1 handles in order)
        assert (tmp_path / "work-A.log").read_text().splitlines() == [
            f"{what} A{i}" for i in range(121) for what in ("start", "finish")]
        assert runs(tmp_path, "B") == Counter({f"{what} B{j}": 1 for j in range(2, 242)
                                               for what in ("start", "finish")})
        for name in agents:
            assert run.counters(name).get(C.COUNTER_DUPLICATES, 0) == 0, name
        reader = run.counters(INBOX)
        assert reader.get("agents_behind", 0) >= 1 and reader.get("moves", 0) >= 1, reader
        del bus
