"""The memory and cognition services as tests start them (a real process on a free port),
and the calls and checks their tests share.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from agentmesh_cli.embedded import free_port
from agentmesh_cli.waiting import wait_until

SSE = {"Accept": "text/event-stream"}


LIMIT = 1_048_576  # create_app's default max_body_bytes, what the CLI serves


TOKEN = f"test-service-token-{uuid.uuid4().hex}"  # the services started here let this in


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Proc:
    """A service process a test started, where it answers, and its log."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@dataclass
class Service(Proc):
    mesh: str = ""


def start_service(folder: Path, redis_url: str, *, port_flag: bool = True) -> Service:
    """Write a mesh.yaml and start the service on a free port: by --port, or else by
    $MEMORY_SERVICE_PORT over a different services.memory.port in mesh.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    mesh = f"mem{uuid.uuid4().hex[:8]}"
    port, yaml_port = free_port(), free_port()
    config = {"mesh": mesh, "redis": {"url": redis_url}, "agents": [],
              "services": {"memory": {"port": yaml_port}}}
    (folder / "mesh.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    args = [sys.executable, "-m", "agentmesh_cli", "memory", "--config", str(folder / "mesh.yaml")]
    env = {key: value for key, value in os.environ.items() if key != "MEMORY_SERVICE_PORT"}
    env["AGENTMESH_SERVICE_TOKEN"] = TOKEN
    if port_flag:
        args += ["--port", str(port)]
    else:
        env["MEMORY_SERVICE_PORT"] = str(port)
    log = folder / "memory.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    return Service(proc, f"http://127.0.0.1:{port}", log, mesh)


def answering(service: Proc, timeout: float = 1.0) -> bool:
    """The service answers GET /health; AssertionError with its log once it exited."""
    if service.proc.poll() is not None:
        raise AssertionError(f"the service exited {service.proc.returncode}:\n{service.log_text()}")
    try:
        httpx.get(service.url + "/health", timeout=timeout)
    except httpx.TransportError:
        return False
    return True


# helpers ------------------------------------------------------------------------------
def new_id(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:10]}"


def call(client: httpx.Client, tool: str, **arguments: Any) -> httpx.Response:
    return client.post(f"/tool/{tool}", json={"arguments": arguments})


def result(client: httpx.Client, tool: str, **arguments: Any) -> Any:
    response = call(client, tool, **arguments)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"result"}
    return body["result"]


def store_input(client: httpx.Client, user_id: str, content: str = "hello", **data: Any) -> dict[str, Any]:
    item: dict[str, Any] = result(client, "store_input", user_id=user_id,
                                  input_data={"content": content, **data})
    return item


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The error body, after checking status, content type and the exact shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


def sse_records(response: httpx.Response) -> Iterator[tuple[str, str | None, Any]]:
    """(event, id, parsed JSON data) per event as it arrives; (":", None, text) per comment."""
    event, event_id, data = "message", None, list[str]()
    for line in response.iter_lines():
        if line == "":
            if data:
                yield event, event_id, json.loads("\n".join(data))
            event, event_id, data = "message", None, []
        elif line.startswith(":"):
            yield ":", None, line[1:].strip()
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "id":
                event_id = value
            elif name == "data":
                data.append(value)


def sse_events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """(event, parsed JSON data) per event; (":", text) per comment line."""
    return ((event, data) for event, _, data in sse_records(response))


def mcp_tool_error(result: Any, code: str) -> dict[str, Any]:
    """The error body of an MCP tool result that failed with `code` (checked in full)."""
    assert result.is_error, result
    body = result.structured_content
    assert isinstance(body, dict) and body["error"]["code"] == code, body
    assert result.content[0].type == "text" and result.content[0].text.startswith(f"{code}: ")
    error: dict[str, Any] = body["error"]
    return error


def read_sse(client: httpx.Client, path: str) -> list[tuple[str, Any]]:
    with client.stream("GET", f"/resource/{path}", headers=SSE) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [(kind, data) for kind, data in sse_events(response) if kind != ":"]


@contextmanager
def serving(app: Any) -> Iterator[int]:
    """`app` on a real uvicorn in a thread of this process, on a free loopback port (yielded),
    stopped afterwards: for the factory's knobs that the CLI does not expose."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10, "uvicorn")
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
