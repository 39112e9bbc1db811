"""The scripted Chat Completions server (agentmesh_cli.llm.scripted) as a process of whoever
needs a model without a network: `bench llm`, a chaos run (a process of the run's own, not
a program of the mesh: the fault is the agent, never its model) and the tests. On a free
loopback port, its script and log in a folder of the caller's, stopped by pid; and what it
was asked (its GET /_requests): how many model calls, which tells what a kill cost.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from agentmesh_cli.embedded import stop
from agentmesh_cli.errors import AgentMeshError
from agentmesh_cli.llm.script import LISTENING, parse_script

START_TIMEOUT_S = 20.0
HTTP_TIMEOUT_S = 10.0


class ScriptedServer:
    """A running scripted server: `base_url` is what an `llm: base_url` takes."""

    def __init__(self, proc: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
        self.proc = proc
        self.base_url = base_url
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        """TERM, then KILL if it does not go (by its pid)."""
        _end(self.proc)


def start_scripted(script: dict[str, Any], folder: Path, timeout: float = START_TIMEOUT_S, *,
                   api_key: str | None = None) -> ScriptedServer:
    """Write `script` to `folder`/scripted-llm.json and serve it on a free loopback port
    (wanting `api_key` as a bearer token when given); return once the server said it
    listens. The script is checked here first (a ConfigError naming the key, not a process
    that dies). AgentMeshError (with the end of its log) when the server exits first or
    stays silent for `timeout` seconds (it is stopped then)."""
    parse_script(script, "the model script")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "scripted-llm.json"
    path.write_text(json.dumps(script, indent=1), encoding="utf-8")
    log = folder / "scripted-llm.log"
    command = [sys.executable, "-m", "agentmesh_cli.llm.scripted", "--script", str(path),
               "--host", "127.0.0.1", "--port", "0", *(["--api-key", api_key] if api_key else [])]
    with log.open("wb") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL)
    try:
        return ScriptedServer(proc, _wait_listening(proc, log, timeout), log)
    except BaseException:
        _end(proc)
        raise


def _end(proc: subprocess.Popen[bytes]) -> None:
    stop(proc)
    if proc.stdout is not None:
        proc.stdout.close()


def _wait_listening(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([proc.stdout], [], [], left)[0]:
            continue
        line = proc.stdout.readline().decode("utf-8", "replace")
        if line.startswith(LISTENING):
            return line.removeprefix(LISTENING).strip()
        if not line:
            raise AgentMeshError(f"the scripted model server exited ({proc.wait()}) before it "
                                 f"listened: {_tail(log)}")
    raise AgentMeshError(f"the scripted model server did not listen within {timeout:g} s: {_tail(log)}")


def _tail(log: Path, chars: int = 500) -> str:
    try:
        return log.read_text(encoding="utf-8", errors="replace")[-chars:].strip() or "(its log is empty)"
    except OSError as exc:
        return f"(its log {log} cannot be read: {exc.strerror})"


def requests_seen(base_url: str, forget: bool = False) -> list[dict[str, Any]]:
    """Every chat request the server at `base_url` got (its GET /_requests: body, scenario,
    step, status), oldest first; with `forget`, forgotten then (the record grows with each
    request otherwise). AgentMeshError when it does not answer."""
    root = base_url.removesuffix("/v1")
    try:
        with httpx.Client(base_url=root, timeout=HTTP_TIMEOUT_S) as http:
            records: list[dict[str, Any]] = http.get("/_requests").raise_for_status().json()
            if forget:
                http.delete("/_requests").raise_for_status()
    except httpx.HTTPError as exc:
        raise AgentMeshError(f"the scripted model server did not list its requests: {exc}") from exc
    return records


def model_calls(base_url: str, timeout: float = 5.0) -> int | None:
    """The chat requests the scripted server at `base_url` (its `/v1` address) received so
    far; None when it does not answer."""
    try:
        response = httpx.get(base_url.removesuffix("/v1") + "/_requests", timeout=timeout)
        records = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    return len(records) if isinstance(records, list) else None
