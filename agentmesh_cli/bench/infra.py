"""A throwaway broker + Valkey + mesh.yaml for a benchmark run (or a bench mesh of its own on
the infra of a running mesh), and the small measuring helpers the scenarios share."""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis
import yaml

from agentmesh_cli import environment
from agentmesh_cli.constants import ALL_TOPICS, Keys, agent_program
from agentmesh_cli.embedded import BrokerKind, free_port, start_broker, start_valkey, stop
from agentmesh_cli.mesh import Mesh, load_mesh


@dataclass
class BenchMesh:
    mesh: Mesh
    root: Path
    procs: list[subprocess.Popen[bytes]]

    def spawn(self, *args: str, name: str, module: str = "agentmesh_cli",
              config: Path | None = None) -> subprocess.Popen[bytes]:
        """Start a role process of this mesh (stopped with the mesh): `python -m <module>
        <args> --config <its mesh.yaml, or config>`, output in `<root>/<name>.log`."""
        log = (self.root / f"{name}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", module, *args, "--config",
                                 str(config or self.mesh.config_file)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def spawn_agent(self, name: str, role: str, config: Path | None = None,
                    log: str | None = None) -> subprocess.Popen[bytes]:
        """Start agent `name` as supervisord does, through the lean agent entry when this
        install has it (`python -m agentmesh_cli.agent`: no CLI libraries, so its RSS and
        start time are an agent's), else through `agentmesh agent`. `config`: a mesh.yaml
        of its own (default: the mesh's); `log`: its log's name (default: its program's)."""
        program = log or agent_program(name)
        if importlib.util.find_spec("agentmesh_cli.agent.__main__") is not None:
            return self.spawn("--name", name, "--role", role, name=program, module="agentmesh_cli.agent",
                              config=config)
        return self.spawn("agent", "--name", name, "--role", role, name=program, config=config)


def _write_mesh(root: Path, kafka: dict[str, Any], redis_url: str, name: str,
                sections: dict[str, Any]) -> Mesh:
    data = {
        "mesh": name,
        "kafka": {**kafka, **sections.pop("kafka", {})},
        "redis": {"url": redis_url},
        **sections,
    }
    (root / "mesh.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return load_mesh(root / "mesh.yaml")


@contextmanager
def bench_mesh(*, broker_kind: BrokerKind = "tansu", **sections: Any) -> Iterator[BenchMesh]:
    """Start a broker (embedded.BROKER_KINDS) and Valkey on free loopback ports; yield a
    mesh using them."""
    with tempfile.TemporaryDirectory(prefix="agentmesh-bench-") as tmp:
        root = Path(tmp)
        kafka_port, redis_port = free_port(), free_port()
        with (root / "broker.log").open("wb") as log:
            broker = start_broker(kafka_port, log, kind=broker_kind, data_dir=root / "broker-data")
        procs = [broker]
        try:
            procs.append(start_valkey(redis_port, root))
            kafka = {"bootstrap_servers": f"127.0.0.1:{kafka_port}", "topic_prefix": "bench", "partitions": 4}
            mesh = _write_mesh(root, kafka, f"redis://127.0.0.1:{redis_port}/0", "bench", sections)
            yield BenchMesh(mesh, root, procs)
        finally:
            for proc in reversed(procs):
                stop(proc)


@contextmanager
def bench_mesh_on(config: Path | str, **sections: Any) -> Iterator[BenchMesh]:
    """A bench mesh on the broker and Redis of a running mesh (its mesh.yaml at `config`),
    under a mesh name and topic prefix of its own (`bench-<tag>`), so that the running mesh's
    agents, keys and topics are not touched. On exit the role processes are stopped, and the
    bench mesh's Redis keys and topics are deleted (best effort)."""
    base_mesh = load_mesh(Path(config))
    base = base_mesh.config
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="agentmesh-bench-") as tmp:
        root = Path(tmp)
        kafka = {"bootstrap_servers": base.kafka.bootstrap, "topic_prefix": tag,
                 "partitions": base.kafka.partitions, "client": dict(base.kafka.client)}
        # the running mesh's Redis URL may hold its password: the folder is private (0700)
        mesh = _write_mesh(root, kafka, base_mesh.redis_url, tag, sections)
        bench = BenchMesh(mesh, root, [])
        try:
            yield bench
        finally:
            for proc in reversed(bench.procs):
                stop(proc)
            _forget(mesh)


def _forget(mesh: Mesh) -> None:
    """Delete a bench mesh's Redis keys and topics from infra that outlives the bench."""
    from confluent_kafka.admin import AdminClient

    cfg = mesh.config
    with suppress(Exception):
        client = redis.Redis.from_url(mesh.redis_url, socket_timeout=5)
        try:
            keys = list(client.scan_iter(match=Keys(cfg.mesh).prefix + "*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start:start + 500])
        finally:
            client.close()
    with suppress(Exception):
        admin = AdminClient({"bootstrap.servers": cfg.kafka.bootstrap, "log_level": 5,
                             **environment.expand_all(cfg.kafka.client, "kafka.client")})
        names = [f"{cfg.kafka.topic_prefix}.{short}" for short in ALL_TOPICS]
        for future in admin.delete_topics(names, operation_timeout=10).values():
            with suppress(Exception):
                future.result(10)


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on loopback `port` (the broker of a running mesh),
    when this machine runs it and we may see it; else None."""
    with suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return int(conn.pid)
    return None


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": round(ordered[-1], 3),
            "mean_ms": round(statistics.fmean(ordered), 3)}


def ratio(value: float, baseline: float) -> float:
    """A figure over its baseline, to 3 digits; 0.0 when the baseline was not measured."""
    return round(value / baseline, 3) if baseline else 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
