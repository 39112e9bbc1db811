"""What the processes of a running mesh cost: memory per program, what an agent imported,
and how long one status refresh takes. Used by `bench startup` and the scale curve.

Everything here looks from outside the processes (supervisord's XML-RPC, psutil, /proc):
nothing is added to the roles to be measured. What a process imported can be seen from
outside in two ways, both used:

- `native_modules(pid)`: the extension modules (.so) mapped into the process, from
  /proc/PID/maps. Exact and free, but only for packages with native code (igraph, numpy,
  httptools, pydantic-core...); a pure-Python package (fastapi, rich, typer) maps no file.
- `imported_modules(log_text)`: every import a process made, from the lines Python writes
  to stderr under `-X importtime` (or PYTHONPROFILEIMPORTTIME=1, which supervisord passes
  to its programs when `up` runs with it). It lists import attempts: a failed optional
  import (`try: import trio`) is there too, so it is read against packages that are
  installed (FORBIDDEN's are), for which an attempt is a load.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil

from agentmesh_cli.bench.infra import percentiles
from agentmesh_cli.errors import BenchError
from agentmesh_cli.mesh import Mesh, load_mesh
from agentmesh_cli.waiting import wait_until

T = TypeVar("T")

# packages an agent never needs: the topology graph, numpy (bm25s, igraph), the web stack
# of the services and the exporter, and the libraries of the command line
FORBIDDEN = (
    "igraph", "numpy", "bm25s", "fastapi", "starlette", "uvicorn", "httptools", "uvloop",
    "sse_starlette", "mcp", "prometheus_client", "typer", "click", "rich", "pygments",
    "shellingham", "supervisor", "matplotlib",
)

# `import time:   123 |   456 |     package.module` (cumulative column, then the indented name)
_IMPORT_LINE = re.compile(r"^import time:\s+\d+\s+\|\s+\d+\s+\|\s*([\w.]+)\s*$")
_EXTENSION = re.compile(r"\.(?:cpython-[\w-]+|abi3)?\.?so(?:\.[\d.]+)?$")


def _mesh(config: Mesh | Path | str) -> Mesh:
    return config if isinstance(config, Mesh) else load_mesh(config)


def program_pids(config: Mesh | Path | str) -> dict[str, int]:
    """Program -> pid of every program supervisord runs now (stopped ones left out)."""
    from agentmesh_cli.supervisor.control import Supervisor

    with Supervisor(_mesh(config)) as sup:
        return {p["name"]: int(p["pid"]) for p in sup.processes() if p["pid"]}


def memory_mb(pid: int) -> dict[str, float]:
    """RSS (what the target counts) and USS (what the process alone holds: its RSS less
    the shared libraries' pages other processes map too) in MB; {} when it is gone."""
    try:
        info = psutil.Process(pid).memory_full_info()
    except psutil.Error:
        return {}
    return {"rss_mb": round(info.rss / 2**20, 1), "uss_mb": round(info.uss / 2**20, 1)}


def memory_by_program(config: Mesh | Path | str) -> dict[str, dict[str, float]]:
    """Program -> {"rss_mb", "uss_mb"} of a running mesh."""
    found = {name: memory_mb(pid) for name, pid in program_pids(config).items()}
    return {name: mem for name, mem in sorted(found.items()) if mem}


def rss_by_program(config: Mesh | Path | str) -> dict[str, float]:
    """Program -> RSS in MB of a running mesh."""
    return {name: mem["rss_mb"] for name, mem in memory_by_program(config).items()}


def native_modules(pid: int) -> set[str]:
    """Top-level packages whose extension modules (or bundled libraries, `pkg.libs`) are
    mapped into process `pid`, from /proc/PID/maps; standard-library extensions included
    under their own names (_ssl, _decimal...)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    found = set()
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)  # address perms offset device inode [path]
        path = fields[5] if len(fields) == 6 else ""
        if "site-packages/" in path:
            top = path.split("site-packages/", 1)[1].split("/", 1)[0]
            found.add(top.removesuffix(".libs").split(".")[0])
        elif "/lib-dynload/" in path and _EXTENSION.search(path):
            found.add(path.rsplit("/", 1)[1].split(".", 1)[0])
    return found


def forbidden_modules(pid: int) -> list[str]:
    """FORBIDDEN packages with native code loaded in process `pid` (see native_modules:
    pure-Python ones are invisible here; use imported_modules on its importtime log)."""
    return sorted(native_modules(pid) & set(FORBIDDEN))


def imported_modules(log_text: str) -> set[str]:
    """Every module named on an `import time:` line of a log (`-X importtime`)."""
    names = set()
    for line in log_text.splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            names.add(match.group(1))
    return names


def forbidden_in(modules: set[str]) -> list[str]:
    """The FORBIDDEN top-level packages among dotted module names."""
    return sorted({m.split(".", 1)[0] for m in modules} & set(FORBIDDEN))


def status_refresh_ms(config: Mesh | Path | str, repeats: int = 5) -> dict[str, Any]:
    """Time of one dashboard refresh: `StatusCollector.collect()` as `agentmesh status`
    calls it frame after frame (one collector kept, no CPU window). The first frame opens
    the connections and primes the CPU samples, so it is timed apart (`first_ms`)."""
    from agentmesh_cli.status import StatusCollector

    with StatusCollector(_mesh(config)) as collector:
        started = time.perf_counter()
        collector.collect()
        first_ms = (time.perf_counter() - started) * 1000
        took = []
        for _ in range(max(1, repeats)):
            started = time.perf_counter()
            collector.collect()
            took.append((time.perf_counter() - started) * 1000)
    return {**percentiles(took), "first_ms": round(first_ms, 3), "frames": len(took)}


def wait_while_alive(check: Callable[[], T | None], what: str, timeout: float,
                     proc: subprocess.Popen[Any] | None = None, log: str = "",
                     interval: float = 0.01) -> T:
    """`check`'s first truthy value (wait_until); BenchError as soon as the process the wait
    depends on exited, rather than waiting out the timeout."""
    def done() -> T | None:
        if value := check():
            return value
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} did not happen: the process exited; see {log}")
        return None

    return wait_until(done, timeout, f"{what}; see {log}", interval=interval)
