"""The chaos command's mesh folder in tests: its programs' pids, its supervisord, and the
body of the `workdir` fixtures (chaos_workdir), which ends a supervisord the command left
behind (by pid)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil

from agentmesh_cli.supervisor.control import _alive
from agentmesh_cli.waiting import wait_until


def mesh_processes(root: Path) -> list[int]:
    """Pids of processes whose command line names the mesh folder (its programs)."""
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if any(str(root) in arg for arg in p.info["cmdline"] or [])]


def supervisord_pid(root: Path) -> int:
    pidfile = root / ".agentmesh" / "supervisord.pid"
    return int(pidfile.read_text().strip() or 0) if pidfile.exists() else 0


def chaos_workdir(tmp_path: Path) -> Iterator[Path]:
    """The chaos mesh's folder; a supervisord the command left behind is ended by pid."""
    root = tmp_path / "mesh"
    yield root
    pid = supervisord_pid(root)
    if pid and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not _alive(pid), 30, "supervisord to exit")
