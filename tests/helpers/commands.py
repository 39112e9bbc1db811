"""Run the real `agentmesh` command and single role processes, as a user or supervisord would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def agentmesh(*args: str, cwd: Path | None = None, timeout: float = 120,
              check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the real `agentmesh` command in a subprocess."""
    env = {**os.environ, "COLUMNS": "160"}
    result = subprocess.run([sys.executable, "-m", "agentmesh_cli", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"agentmesh {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def spawn_role(*args: str, log: Path) -> subprocess.Popen[Any]:
    """Start one role process (agent, topology) directly, without supervisord."""
    out = log.open("wb")
    try:
        return subprocess.Popen([sys.executable, "-m", "agentmesh_cli", *args],
                                stdout=out, stderr=subprocess.STDOUT)
    finally:
        out.close()
