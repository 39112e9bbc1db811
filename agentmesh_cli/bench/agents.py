"""A bench mesh of a few agents and nothing else (no managers, no services): what the `ask`
and `slow` scenarios run. Its agents are real processes (`python -m agentmesh_cli.agent`,
as supervisord runs them) on a throwaway broker and Valkey (bench/infra.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

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

    def log(self, name: str) -> str:
        return str(self.bench.root / f"{agent_program(name)}.log")

    def check_alive(self) -> None:
        """BenchError naming the agents that exited (a bench waiting on them would time out)."""
        if dead := [name for name, proc in self.procs.items() if proc.poll() is not None]:
            raise BenchError(f"agent {', '.join(dead)} exited; see {self.log(dead[0])}")


@contextmanager
def agents_mesh(agents: list[dict[str, Any]], **sections: Any) -> Iterator[AgentsMesh]:
    """Start a broker, Valkey and `agents` (mesh.yaml `agents` entries: name, role,
    concurrency...); yield once every agent is ready. Everything is stopped on exit."""
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
            for spec in agents:
                running.procs[spec["name"]] = bm.spawn_agent(spec["name"], spec["role"])
            for name, proc in running.procs.items():
                wait_while_alive(lambda: store.ready_pid(agent_program(name)) == proc.pid,  # noqa: B023
                                 f"agent {name} to be ready", START_TIMEOUT_S, proc, running.log(name))
            yield running
        finally:
            store.close()
