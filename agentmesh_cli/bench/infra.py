"""A throwaway broker + Valkey + mesh.yaml for a benchmark run, and the raw baseline."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agentmesh_cli.config import Mesh, load_mesh
from agentmesh_cli.embedded import start_broker, start_valkey, stop


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class BenchMesh:
    mesh: Mesh
    root: Path
    procs: list[subprocess.Popen[bytes]]

    def spawn(self, *args: str, name: str) -> subprocess.Popen[bytes]:
        """Start a role process of this mesh (stopped with the mesh)."""
        log = (self.root / f"{name}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "agentmesh_cli", *args, "--config",
                                 str(self.mesh.config_file)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc


@contextmanager
def bench_mesh(**sections: Any) -> Iterator[BenchMesh]:
    """Start a broker and Valkey on free loopback ports; yield a mesh using them."""
    with tempfile.TemporaryDirectory(prefix="agentmesh-bench-") as tmp:
        root = Path(tmp)
        kafka_port, redis_port = free_port(), free_port()
        with (root / "broker.log").open("wb") as log:
            broker = start_broker(kafka_port, log)
        procs = [broker]
        try:
            procs.append(start_valkey(redis_port, root))
            data = {
                "mesh": "bench",
                "kafka": {"bootstrap_servers": f"127.0.0.1:{kafka_port}", "topic_prefix": "bench",
                          "partitions": 4, **sections.pop("kafka", {})},
                "redis": {"url": f"redis://127.0.0.1:{redis_port}/0"},
                **sections,
            }
            (root / "mesh.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
            yield BenchMesh(load_mesh(root / "mesh.yaml"), root, procs)
        finally:
            for proc in reversed(procs):
                stop(proc)


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": round(ordered[-1], 3),
            "mean_ms": round(statistics.fmean(ordered), 3)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
