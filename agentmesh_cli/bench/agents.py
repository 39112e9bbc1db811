"""A bench mesh of a few agents and nothing else (no managers, no services): what the `ask`,
`slow` and `routing` scenarios run. Its agents are real processes (`python -m
agentmesh_cli.agent`, as supervisord runs them) on a throwaway broker and Valkey
(bench/infra.py); a replica group runs one process per replica."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agentmesh_cli.bench.infra import BenchMesh, bench_mesh, free_port
from agentmesh_cli.bench.procs import wait_while_alive
from agentmesh_cli.broker import prepare_topics
from agentmesh_cli.constants import agent_program
from agentmesh_cli.errors import BenchError
from agentmesh_cli.store import Store

START_TIMEOUT_S = 60.0
# the registry record (in_flight, loop_lag_ms) is written with every heartbeat: each second
# here, so that the bench reads it fresh
HEARTBEAT = "1s"


@dataclass
class AgentsMesh:
    bench: BenchMesh
    store: Store
    procs: dict[str, subprocess.Popen[bytes]]  # agent name -> its process
    roles: dict[str, str] = field(default_factory=dict)  # agent name -> its role
    configs: dict[str, Path] = field(default_factory=dict)  # agents with a mesh.yaml of their own
    starts: dict[str, int] = field(default_factory=dict)  # agent name -> times started

    def log(self, name: str) -> str:
        return str(self.bench.root / f"{self._log_name(name, self.starts.get(name, 1) - 1)}.log")

    @staticmethod
    def _log_name(name: str, start: int) -> str:
        return agent_program(name) if start == 0 else f"{agent_program(name)}.{start}"

    def check_alive(self, ignore: str | None = None) -> None:
        """BenchError naming the agents that exited (a bench waiting on them would time out);
        `ignore`: one the bench killed itself."""
        if dead := [name for name, proc in self.procs.items() if proc.poll() is not None and name != ignore]:
            raise BenchError(f"agent {', '.join(dead)} exited; see {self.log(dead[0])}")

    def spawn(self, name: str) -> subprocess.Popen[bytes]:
        """Start agent `name` (again, after a kill: its log is a new file)."""
        start = self.starts.get(name, 0)
        self.starts[name] = start + 1
        proc = self.bench.spawn_agent(name, self.roles[name], self.configs.get(name),
                                      log=self._log_name(name, start))
        self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        """kill -9 agent `name` by its pid (a process this bench started), and reap it."""
        proc = self.procs[name]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def wait_ready(self, name: str, timeout: float = START_TIMEOUT_S) -> None:
        proc = self.procs[name]
        wait_while_alive(lambda: self.store.ready_pid(agent_program(name)) == proc.pid,
                         f"agent {name} to be ready", timeout, proc, self.log(name))


@contextmanager
def agents_mesh(agents: list[dict[str, Any]], variants: dict[str, dict[str, Any]] | None = None,
                **sections: Any) -> Iterator[AgentsMesh]:
    """Start a broker, Valkey and `agents` (mesh.yaml `agents` entries: name, role,
    concurrency, replicas...: a group runs its replicas); yield once every agent is ready.
    `variants`: agent name -> mesh.yaml sections that agent alone runs with (a mesh.yaml of
    its own beside the mesh's, e.g. another `routing`). Everything is stopped on exit."""
    with bench_mesh(
        # no service is called by these roles; free ports keep their health checks off others'
        services={"memory": {"port": free_port()}, "cognition": {"port": free_port()}},
        metrics={"port": free_port()},
        gateway={"port": free_port()},
        workload={"order_rate": 0, "lead_rate": 0, "refund_rate": 0},
        heartbeat={"interval": HEARTBEAT},
        agents=agents,
        **sections,
    ) as bm:
        store = Store(bm.mesh.redis_url, bm.mesh.config.mesh)
        try:
            prepare_topics(bm.mesh.config.kafka, store)
            running = AgentsMesh(bm, store, {})
            base = yaml.safe_load(bm.mesh.config_file.read_text(encoding="utf-8"))
            for name, overrides in (variants or {}).items():
                path = bm.root / f"mesh-{name}.yaml"
                path.write_text(yaml.safe_dump({**base, **overrides}), encoding="utf-8")
                running.configs[name] = path
            for name, spec in bm.mesh.config.concrete_agents():
                running.roles[name] = spec.role
                running.spawn(name)
            for name in running.procs:
                running.wait_ready(name)
            yield running
        finally:
            store.close()
