"""Control of the mesh's supervisord over its XML-RPC unix socket.

`Supervisor` starts the daemon, applies a changed config (like `supervisorctl update`),
reports processes, stops programs tier by tier and shuts the daemon down. Every
xmlrpc/socket error becomes a SupervisorError.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import xmlrpc.client
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from agentmesh_cli import constants as C
from agentmesh_cli import environment
from agentmesh_cli.errors import SupervisorError, WaitTimeout
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.supervisor.answers import tree_parser
from agentmesh_cli.waiting import wait_until

STOPPED_STATES = frozenset({"STOPPED", "EXITED", "FATAL"})


@dataclass(frozen=True)
class Reading:
    """What `status` reads of supervisord (Supervisor.reading)."""

    pid: int
    processes: list[dict[str, Any]]  # getAllProcessInfo
    main_log: str  # from the offset asked for to its end


class _Transport(SupervisorTransport):
    """supervisord's transport (a kept connection to its unix socket), its answers decoded
    by ElementTree (answers.py)."""

    def getparser(self) -> Any:
        return tree_parser()


class Supervisor:
    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self._transport = _Transport(None, None, f"unix://{mesh.socket}")
        # the host part is ignored by the unix-socket transport
        self._proxy: Any = xmlrpc.client.ServerProxy("http://agentmesh", transport=self._transport)

    def close(self) -> None:
        """Close the connection to supervisord's socket (it is kept open between calls)."""
        self._transport.close()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def rpc(self) -> Any:
        return self._proxy.supervisor

    def _call(self, action: str, fn: Any, *args: Any, read_only: bool = False) -> Any:
        """`fn(*args)` over the kept connection. A read (`read_only`) whose kept connection
        turns out broken is made once more on a new one: supervisord closes an idle
        connection now and then (a broken pipe while it restarts a program), and a status
        frame must not say it is unreachable when it runs."""
        attempts = 2 if read_only else 1
        while True:
            attempts -= 1
            try:
                return fn(*args)
            except xmlrpc.client.Fault as exc:
                raise SupervisorError(f"supervisord refused {action}: {exc.faultString}") from exc
            except (OSError, xmlrpc.client.ProtocolError, http.client.HTTPException) as exc:
                # the kept connection is broken (supervisord closed it, went away, or
                # restarted): the next call opens a new one
                self._transport.close()
                if attempts <= 0:
                    raise SupervisorError(f"supervisord unreachable ({action}): {exc}") from exc

    def is_running(self) -> bool:
        if not self.mesh.socket.exists():
            return False
        try:
            return self._call("getState", self.rpc.getState, read_only=True)["statename"] == "RUNNING"
        except SupervisorError:
            return False

    def pid(self) -> int:
        return int(self._call("getPID", self.rpc.getPID, read_only=True))

    def start(self, timeout: float = 15.0) -> None:
        """Start supervisord as a daemon and wait until its socket answers."""
        conf = str(self.mesh.supervisord_conf)
        # the mesh's secrets reach every program through supervisord's environment, which
        # its children inherit: no config file holds them (see credentials.py)
        env = {**environment.current(), **self.mesh.credentials.environment()}
        result = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisord", "-c", conf],
            cwd=self.mesh.root, capture_output=True, text=True, timeout=timeout, env=env,
        )
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip()
            raise SupervisorError(f"supervisord did not start: {detail or result.returncode}")
        try:
            wait_until(self.is_running, timeout, "supervisord's socket", interval=0.05)
        except WaitTimeout as exc:
            raise SupervisorError(
                f"supervisord started but its socket {self.mesh.socket} does not answer; "
                f"see {self.mesh.logs_dir / C.SUPERVISORD_LOG}"
            ) from exc

    def apply(self) -> dict[str, list[str]]:
        """Reload the rendered config and add, replace or remove programs that changed."""
        added, changed, removed = self._call("reloadConfig", self.rpc.reloadConfig)[0]
        for name in removed + changed:
            self._stop_group(name)
            self._call("removeProcessGroup", self.rpc.removeProcessGroup, name)
        for name in sorted(added + changed, key=self._priority):
            self._call("addProcessGroup", self.rpc.addProcessGroup, name)
        return {"added": added, "changed": changed, "removed": removed}

    def _priority(self, name: str) -> int:
        from agentmesh_cli import constants as C

        if name in (C.PROGRAM_KAFKA, C.PROGRAM_REDIS):
            return C.PRIORITY_INFRA
        return C.PRIORITY_AGENTS if name.startswith(C.AGENT_PROGRAM_PREFIX) else C.PRIORITY_MANAGERS

    def _stop_group(self, name: str) -> None:
        try:
            self.rpc.stopProcessGroup(name, True)
        except xmlrpc.client.Fault as exc:
            if "NOT_RUNNING" not in exc.faultString and "BAD_NAME" not in exc.faultString:
                raise SupervisorError(f"cannot stop {name}: {exc.faultString}") from exc

    def start_programs(self, names: Iterable[str]) -> None:
        """Ask supervisord to start every named program that is not already up."""
        for name in names:
            try:
                self.rpc.startProcess(name, False)
            except xmlrpc.client.Fault as exc:
                if "ALREADY_STARTED" not in exc.faultString:
                    raise SupervisorError(f"cannot start {name}: {exc.faultString}") from exc
            except OSError as exc:
                raise SupervisorError(f"supervisord unreachable (start {name}): {exc}") from exc

    def reading(self, log_offset: int) -> Reading | None:
        """supervisord's pid, every process (getAllProcessInfo) and its main log from
        `log_offset` on, in one round trip (system.multicall; `status` made four). None when
        supervisord is not running: no socket, no answer, or not in its RUNNING state."""
        if not self.mesh.socket.exists():
            return None
        asked = [("getState", []), ("getPID", []), ("getAllProcessInfo", []), ("readLog", [log_offset, 0])]
        calls = [{"methodName": f"supervisor.{name}", "params": params} for name, params in asked]
        try:
            results = self._call("multicall", self._proxy.system.multicall, calls, read_only=True)
        except SupervisorError:
            return None
        # each result is its value, or a {faultCode, faultString} struct in its place
        faults = {name: r["faultString"] for (name, _), r in zip(asked, results, strict=True)
                  if isinstance(r, dict) and "faultCode" in r}
        state, pid, processes, log = results
        if "getState" in faults or state["statename"] != "RUNNING":
            return None
        if faults:
            raise SupervisorError("supervisord refused " + ", ".join(f"{n}: {f}" for n, f in faults.items()))
        return Reading(int(pid), list(processes), str(log))

    def processes(self) -> list[dict[str, Any]]:
        return list(self._call("getAllProcessInfo", self.rpc.getAllProcessInfo, read_only=True))

    def stop_programs(self, names: Iterable[str], timeout: float) -> list[str]:
        """Ask every named program to stop at once; wait; return those still not stopped."""
        names = list(names)
        for name in names:
            try:
                self.rpc.stopProcess(name, False)
            except xmlrpc.client.Fault as exc:
                if "NOT_RUNNING" not in exc.faultString:
                    raise SupervisorError(f"cannot stop {name}: {exc.faultString}") from exc
        waiting = names

        def stopped() -> bool:
            nonlocal waiting
            states = {p["name"]: p["statename"] for p in self.processes()}
            waiting = [n for n in names if states.get(n, "STOPPED") not in STOPPED_STATES]
            return not waiting

        try:
            wait_until(stopped, timeout, "the programs to stop")
        except WaitTimeout:
            pass  # the caller is told which did not
        return waiting

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop supervisord itself and wait until its process is gone."""
        pid = self.pid()
        self._call("shutdown", self.rpc.shutdown)
        try:
            wait_until(lambda: not _alive(pid), timeout, "supervisord to exit")
        except WaitTimeout as exc:
            raise SupervisorError(f"supervisord (pid {pid}) did not exit in {timeout:.0f}s") from exc

    def read_main_log(self, offset: int) -> str:
        """supervisord's own log from byte `offset` to its end (readLog)."""
        return str(self._call("readLog", self.rpc.readLog, offset, 0))

    def log_tail(self, name: str, length: int = 2000) -> str:
        try:
            text, _offset, _overflow = self.rpc.tailProcessStdoutLog(name, 0, length)
            return str(text)
        except (OSError, xmlrpc.client.Error):
            path = self.mesh.logs_dir / f"{name}.log"
            return path.read_text(errors="replace")[-length:] if path.exists() else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
