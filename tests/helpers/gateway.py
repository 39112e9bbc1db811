"""The gateway as tests run it: a real `agentmesh gateway` process and real agent processes
on a broker and Valkey (the session's, or a test's own), with its tokens, an HTTP client,
and a Server-Sent Events reader that keeps the event ids (for Last-Event-ID).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from agentmesh_cli import constants as C
from agentmesh_cli.broker import ensure_topics
from agentmesh_cli.embedded import free_port, stop
from agentmesh_cli.mesh import Mesh, load_mesh
from agentmesh_cli.services.tokens import user_token
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import wait_until
from tests.helpers.commands import spawn_role
from tests.helpers.services import sse_records

WAITING_ROLES = "tests.helpers.waiting_roles"
START_TIMEOUT_S = 60.0  # generous: a loaded 2-core machine starts Python processes slowly
HTTP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class SseEvent:
    event: str
    id: str | None
    data: Any


@dataclass
class RunningGateway:
    """A gateway process (and the agents beside it), where it answers, and its tokens."""

    mesh: Mesh
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    store: Store
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def service_token(self) -> str:
        return self.mesh.credentials.service_token

    def token(self, user: str | None = None) -> str:
        """The service token, or `user`'s token."""
        return self.service_token if user is None else user_token(self.service_token, user)

    def headers(self, user: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"}

    def client(self, user: str | None = None, timeout: float = HTTP_TIMEOUT_S) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(user), timeout=timeout)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def write_gateway_mesh(folder: Path, broker: str, redis_url: str, agents: list[dict[str, Any]],
                       **gateway: Any) -> Mesh:
    """A mesh.yaml on `broker` and `redis_url`, isolated by a fresh mesh name and topic
    prefix, with `gateway` settings over a free port; its topics created."""
    folder.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    data: dict[str, Any] = {
        "mesh": f"gw{tag}",
        "kafka": {"bootstrap_servers": broker, "topic_prefix": f"gw{tag}", "partitions": 4},
        "redis": {"url": redis_url},
        "services": {"memory": {"port": free_port()}, "cognition": {"port": free_port()}},
        "metrics": {"port": free_port()},
        "heartbeat": {"interval": "1s", "missed": 5},
        "gateway": {"port": free_port(), **gateway},
        "workload": {"order_rate": 0, "lead_rate": 0, "refund_rate": 0},
        "agents": agents,
    }
    path = folder / "mesh.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    mesh = load_mesh(path)
    ensure_topics(mesh.config.kafka)
    return mesh


def start_gateway(mesh: Mesh, log: Path) -> subprocess.Popen[bytes]:
    return spawn_role("gateway", "--config", str(mesh.config_file), log=log)


def wait_ready(store: Store, program: str, proc: subprocess.Popen[bytes], log: Path,
               timeout: float = START_TIMEOUT_S) -> None:
    """Until `proc` marked itself ready in Redis; AssertionError with its log if it exited."""
    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{program} exited {proc.returncode}:\n"
                                 f"{log.read_text(encoding='utf-8', errors='replace')}")
        return store.ready_pid(program) == proc.pid

    wait_until(ready, timeout, f"{program} ready")


@contextmanager
def running_gateway(mesh: Mesh, folder: Path, start_agents: bool = True) -> Iterator[RunningGateway]:
    """Every agent of `mesh` (unless not `start_agents`: then they are only declared) and
    its gateway as processes, ready; stopped by pid afterwards."""
    store = Store(mesh.config.redis.resolved_url, mesh.config.mesh)
    with ExitStack() as stack:
        stack.callback(store.close)
        agents: dict[str, subprocess.Popen[bytes]] = {}
        for name, _spec in mesh.config.concrete_agents() if start_agents else []:  # a group's replicas
            log = folder / f"{name}.log"
            agents[name] = spawn_role("agent", "--name", name, "--config", str(mesh.config_file), log=log)
            stack.callback(stop, agents[name])
        log = folder / "gateway.log"
        proc = start_gateway(mesh, log)
        stack.callback(stop, proc)
        for name, agent in agents.items():
            wait_ready(store, C.agent_program(name), agent, folder / f"{name}.log")
        wait_ready(store, C.PROGRAM_GATEWAY, proc, log)
        settings = mesh.config.gateway
        yield RunningGateway(mesh, f"http://127.0.0.1:{settings.port}", proc, log, store, agents)


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The error body, after checking status, content type and the services' exact shape."""
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


def sse_events(response: httpx.Response) -> Iterator[SseEvent]:
    """The events of an open event stream as they arrive (comments skipped), with their ids."""
    return (SseEvent(event, event_id, data) for event, event_id, data in sse_records(response)
            if event != ":")
