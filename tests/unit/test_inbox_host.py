"""The host's inbox reader's fetch (inbox_host.py) while an agent does not take what it is
handed: it waits for the agent's socket, or in its poll, never spins (a socketpair, no broker)."""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agentmesh_cli.inbox_host import FETCH_TICK_S, SEND_WAIT_S, Conn, InboxHost


class Reader:
    """What fetch asks of a Reader: the timeouts of its polls."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def poll_batch(self, most: int, timeout: float) -> list[Any]:
        self.timeouts.append(timeout)
        return []


Host = tuple[InboxHost, Conn, socket.socket, Reader]


@pytest.fixture
def host() -> Iterator[Host]:
    """A host reader with one agent whose socket is full (it takes nothing), 4 KB more waiting."""
    hub, agent = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    hub.setblocking(False)
    host = InboxHost(None)  # type: ignore[arg-type]  # fetch reads no mesh
    reader = host.reader = Reader()  # type: ignore[assignment]
    conn = host.conns[1] = Conn(hub)
    host.sel.register(hub, selectors.EVENT_READ, 1)
    try:
        while True:
            hub.send(b"x" * 65536)
    except BlockingIOError:
        pass
    conn.out += b"y" * 4096
    host.flush()  # as the loop does: what is left waits on the full socket
    assert conn.out and conn.writing
    try:
        yield host, conn, agent, reader
    finally:
        host.sel.close()
        hub.close()
        agent.close()


def test_a_full_socket_is_waited_on_not_spun_on(host: Host) -> None:
    inbox, conn, _agent, reader = host
    started = time.monotonic()
    for _ in range(5):
        assert inbox.fetch() == []
    # each fetch waited for the agent (it took nothing), then took what the poll had at once
    assert time.monotonic() - started >= 5 * SEND_WAIT_S * 0.9
    assert reader.timeouts == [0] * 5 and conn.out


def test_an_agent_that_takes_more_is_sent_to_at_once(host: Host) -> None:
    inbox, conn, agent, reader = host
    agent.setblocking(False)
    try:
        while agent.recv(1 << 20):
            pass
    except BlockingIOError:
        pass  # it took everything: its socket has room again
    inbox.fetch()
    assert conn.out == b"" and not conn.writing  # sent in the wait, the wait over
    inbox.fetch()  # nothing waits on a socket any more: the poll itself waits
    assert reader.timeouts == [0, FETCH_TICK_S]
