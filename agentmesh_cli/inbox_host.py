"""The host's inbox reader (program `inbox-reader`, with `kafka.inbox_reader: host`): one
process per host fetches the inboxes of the host's agents and the consensus topic, and
hands each agent its records over a local unix socket (inbox_wire.py says what travels
and who gets what).

- An agent connects and subscribes with the next offset it wants of each partition it
  reads. Reading goes back (or forward) to the lowest offset any agent of a partition
  wants, so a restarted reader, or an agent that restarted, misses nothing; an agent
  drops what it already read, so nothing comes twice.
- An agent that does not take what it is handed (more than OUT_HIGH bytes waiting) falls
  behind; when it has room again, the partition is read again from where it stopped.
- It commits nothing: each agent commits its own offsets, as it does when it reads for
  itself. A kill -9 of this process loses nothing: supervisord starts it again, the agents
  connect again and say where they are.
- Idle, it sleeps as any reader (dozing.py): it stops fetching until a sender rings it
  (it reads `messages*`: every message rings it) or its probe comes.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import selectors
import signal
import socket
import time
from collections import Counter
from pathlib import Path
from types import FrameType

from agentmesh_cli import constants as C
from agentmesh_cli import dozing
from agentmesh_cli.doorbell import EVERY_KEY
from agentmesh_cli.errors import AgentMeshError, WireError
from agentmesh_cli.inbox_wire import (
    TOPIC_INDEX,
    Fanout,
    FrameReader,
    Route,
    encode_headers,
    parse_subscribe,
    record_frame,
    skipped_frame,
    subscribed_frame,
)
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.reader import Reader
from agentmesh_cli.records import Record
from agentmesh_cli.recovery import wait_for_infra
from agentmesh_cli.signing import mesh_signer
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import Clock

log = logging.getLogger("inbox-reader")

KEYED = frozenset({C.TOPIC_MESSAGES})  # an agent's own records of these carry its key
POLL_MAX = 2000
FETCH_TICK_S = 0.05  # awake with nothing read: the sockets are looked at this often
# an agent's socket is full (it takes less than it is handed): wait this long at most for it
# to take more before the next fetch (not 0: the loop spun a core while any agent lagged)
SEND_WAIT_S = 0.01
OUT_HIGH = 8 * 1024 * 1024  # bytes waiting for one agent: past this it falls behind
OUT_LOW = 2 * 1024 * 1024  # ... and it takes records again below this
RECV_BYTES = 256 * 1024
COUNTS_EVERY_S = 2.0


def reader_name(mesh: Mesh) -> str:
    """Its name as a sleeping reader (doorbell.py), one per host."""
    return C.PROGRAM_INBOX + (f"@{mesh.host}" if mesh.host else "")


class Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames = FrameReader()
        self.out = bytearray()
        self.name = ""
        self.full = False
        self.writing = False  # registered for EVENT_WRITE


class InboxHost:
    def __init__(self, mesh: Mesh, clock: Clock = time.monotonic) -> None:
        self.mesh = mesh
        self.clock = clock
        self.stopping = False
        self.fanout = Fanout()
        self.conns: dict[int, Conn] = {}
        self._ids = itertools.count(1)
        self.counts: Counter[str] = Counter()
        # per partition, the offset the reader reads next (as `move` left it): a record past
        # it is past a gap the reader took as real (Fanout.route)
        self.reading: dict[tuple[str, int], int | None] = {}
        self.sel = selectors.DefaultSelector()
        self._poke_r, self._poke_w = os.pipe()
        os.set_blocking(self._poke_r, False)
        os.set_blocking(self._poke_w, False)

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        self.stopping = True
        self._poke()

    def _poke(self) -> None:
        """Wake the loop's wait (a ring, a signal): any thread."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._poke_w, b"\0")

    def listen(self, path: Path) -> socket.socket:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a process killed before it could remove it
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the agents of this mesh (this user) only
        try:
            server.bind(str(path))
        finally:
            os.umask(old)
        server.listen(256)
        server.setblocking(False)
        return server

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        cfg = self.mesh.config
        store = Store(self.mesh.redis_url, cfg.mesh)
        wait_for_infra(cfg.kafka, store, C.PROGRAM_INBOX, clock=self.clock)
        signs = mesh_signer(self.mesh) is not None
        self.reader = Reader(cfg.kafka, f"{cfg.kafka.topic_prefix}.{C.PROGRAM_INBOX}", [], C.PROGRAM_INBOX,
                             queued_kbytes=C.AGENT_QUEUED_KBYTES, keep_headers=signs)
        bell = dozing.doorbell(store, cfg, reader_name(self.mesh),
                               (C.TOPIC_MESSAGES + EVERY_KEY, C.TOPIC_CONSENSUS), self._poke)
        self.dozer = dozing.Dozer(self.reader, bell, dozing.policy(cfg, cfg.kafka.fetch_wait), self.clock)
        path = self.mesh.inbox_socket
        server = self.listen(path)
        self.sel.register(server, selectors.EVENT_READ, "listen")
        self.sel.register(self._poke_r, selectors.EVENT_READ, "poke")
        store.mark_ready(C.PROGRAM_INBOX, os.getpid())
        log.info("ready: listening on %s", path)
        next_counts = self.clock() + COUNTS_EVERY_S
        try:
            while not self.stopping:
                if self.dozer.asleep:
                    self.serve(self.dozer.wait_for(dozing.ASLEEP_WAIT_S))
                    self.dozer.step(0)
                else:
                    records = self.fetch()
                    self.dozer.step(len(records))
                    if records:
                        self.hand(records)
                    self.serve(0)
                self.move()
                self.flush()
                if (now := self.clock()) >= next_counts:
                    next_counts = now + COUNTS_EVERY_S
                    self._flush_counts(store)
        finally:
            for cid in list(self.conns):
                self.drop(cid)
            self.sel.close()
            server.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self.dozer.close()
            self._flush_counts(store)
            store.close()
        return 0

    def _flush_counts(self, store: Store) -> None:
        self.counts.update(self.dozer.take_counts())
        try:
            store.add_counters(C.PROGRAM_INBOX, self.counts)
            self.counts.clear()
        except AgentMeshError as exc:
            log.warning("counters not written: %s", exc)

    def _sending(self) -> bool:
        return any(conn.out for conn in self.conns.values())

    def fetch(self) -> list[Record]:
        """The next batch read, awake. Records left after a flush wait on a full socket: the
        wait is then for an agent to take more (at most SEND_WAIT_S), and the fetch takes
        what is there; else the fetch itself waits (at most FETCH_TICK_S)."""
        if self._sending():
            self.serve(SEND_WAIT_S)
            return self.reader.poll_batch(POLL_MAX, 0)
        return self.reader.poll_batch(POLL_MAX, FETCH_TICK_S)

    # what is read --------------------------------------------------------------------
    def hand(self, records: list[Record]) -> None:
        """One batch read: each agent's share appended to what it is sent."""
        self.counts["records_read"] += len(records)
        full = {cid for cid, conn in self.conns.items() if conn.full}
        routes = self.fanout.route([(r.topic, r.partition, r.offset, r.key) for r in records], full,
                                   self.reading)
        frames: dict[int, bytes] = {}  # a record handed to several agents (consensus) is framed once
        for cid, route in routes.items():
            conn = self.conns[cid]
            self._append(conn, route, records, frames)
            if len(conn.out) > OUT_HIGH:
                conn.full = True
                self.counts["agents_behind"] += 1

    def _append(self, conn: Conn, route: Route, records: list[Record], frames: dict[int, bytes]) -> None:
        out = conn.out
        for index in route.records:
            frame = frames.get(index)
            if frame is None:
                r = records[index]
                frame = frames[index] = record_frame(TOPIC_INDEX[r.topic], r.partition, r.offset, r.key,
                                                     r.value, encode_headers(r.headers))
            out += frame
        for (topic, partition), offset in route.skipped.items():
            out += skipped_frame(TOPIC_INDEX[topic], partition, offset)
        self.counts["records_handed"] += len(route.records)

    def move(self) -> None:
        """Read again (or on) from where the agents want."""
        full = {cid for cid, conn in self.conns.items() if conn.full}
        positions = {where: self.reader.next_offset(*where) for where in self.fanout.partitions}
        moves = self.fanout.moves(positions, full)
        self.reading = {**positions, **moves}
        if not moves:
            return
        self.reader.move(moves)
        self.counts["moves"] += len(moves)
        if self.dozer.asleep:
            self.dozer.awake()

    # the sockets -----------------------------------------------------------------------
    def serve(self, timeout: float) -> None:
        for key, events in self.sel.select(timeout):
            what = key.data
            if what == "listen":
                self._accept(key.fileobj)  # type: ignore[arg-type]
            elif what == "poke":
                with contextlib.suppress(BlockingIOError):
                    os.read(self._poke_r, 4096)
            else:
                cid = int(what)
                if events & selectors.EVENT_READ:
                    self._receive(cid)
                if events & selectors.EVENT_WRITE and cid in self.conns:
                    self._send(cid)

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                sock, _ = server.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            cid = next(self._ids)
            self.conns[cid] = Conn(sock)
            self.sel.register(sock, selectors.EVENT_READ, cid)

    def _receive(self, cid: int) -> None:
        conn = self.conns[cid]
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.drop(cid)
            return
        conn.frames.feed(data)
        try:
            while (frame := conn.frames.raw()) is not None:
                sub = parse_subscribe(frame)
                self.fanout.subscribe(cid, sub.key, sub.starts, KEYED & {t for t, _ in sub.starts})
                if sub.name != conn.name:
                    log.info("%s subscribed: %s", sub.name, ", ".join(
                        f"{t}/{p} from {o}" for (t, p), o in sorted(sub.starts.items())))
                conn.name = sub.name
                conn.out += subscribed_frame(sub.gen)
                self.counts["subscriptions"] += 1
        except WireError as exc:
            log.warning("dropping a connection (%s): %s", conn.name or "unnamed", exc)
            self.drop(cid)

    def flush(self) -> None:
        for cid in [cid for cid, conn in self.conns.items() if conn.out]:
            self._send(cid)

    def _send(self, cid: int) -> None:
        conn = self.conns[cid]
        try:
            while conn.out:
                sent = conn.sock.send(conn.out)
                del conn.out[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.drop(cid)
            return
        if conn.full and len(conn.out) < OUT_LOW:
            conn.full = False
        writing = bool(conn.out)
        if writing != conn.writing:
            conn.writing = writing
            self.sel.modify(conn.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0), cid)

    def drop(self, cid: int) -> None:
        conn = self.conns.pop(cid, None)
        if conn is None:
            return
        self.fanout.drop(cid)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn.sock)
        conn.sock.close()
        if conn.name:
            log.info("%s disconnected", conn.name)
