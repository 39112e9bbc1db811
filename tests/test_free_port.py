"""free_port: the loopback ports tests and benches give their throwaway servers."""

from __future__ import annotations

import socket

import pytest

from agentmesh_cli.embedded import free_port


def test_never_the_same_port_twice_and_each_one_free() -> None:
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == 300
    with socket.socket() as server:  # the last is free to bind
        server.bind(("127.0.0.1", ports[-1]))


@pytest.mark.parametrize(("worker", "count"), [("gw0", "2"), ("gw1", "2"), ("gw2", "3")])
def test_each_xdist_worker_has_ports_of_its_own(monkeypatch: pytest.MonkeyPatch, worker: str,
                                                 count: str) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", count)
    residues = {free_port() // 2 % int(count) for _ in range(50)}
    assert residues == {int(worker[2:])}
