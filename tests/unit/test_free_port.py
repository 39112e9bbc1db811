"""free_port: the loopback ports tests and benches give their throwaway servers."""

from __future__ import annotations

import socket

import pytest

from agentmesh_cli import environment
from agentmesh_cli.embedded import free_port
from agentmesh_cli.errors import PortInUseError


def test_never_the_same_port_twice_and_each_one_free() -> None:
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == 300
    with socket.socket() as server:  # the last is free to bind
        server.bind(("127.0.0.1", ports[-1]))


@pytest.mark.parametrize(("lane", "count"), [(0, 2), (1, 2), (2, 3)])
def test_each_port_lane_has_ports_of_its_own(monkeypatch: pytest.MonkeyPatch, lane: int,
                                             count: int) -> None:
    monkeypatch.setenv("AGENTMESH_PORT_LANE", f"{lane}/{count}")
    residues = {free_port() // 2 % count for _ in range(50)}
    assert residues == {lane}


def test_no_free_port_is_a_port_in_use_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment, "port_lane", lambda: (-1, 2))  # a lane no port is in
    with pytest.raises(PortInUseError, match="no free loopback port found in 1000 tries"):
        free_port()
