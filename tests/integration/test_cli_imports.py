"""The quick commands import only what they use: scripts call `token`, `send`, `propose` and
`status --json` in loops, and people type `agentmesh --help`. Each runs as a real process
under `python -X importtime` (every import it makes, one line each on stderr), against the
session broker and Valkey; a heavy module (the web stack, the graph, the search index)
showing up fails the test. A last test seeds such an import to show that the check sees it.
No time is asserted here: `agentmesh bench startup` measures the commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agentmesh_cli.bench.procs import imported_modules
from agentmesh_cli.broker import ensure_topics
from agentmesh_cli.mesh import Mesh

# what none of the quick commands may import: the services' web stack and MCP SDK, the
# topology graph and the search index (and numpy under both)
HEAVY = ("mcp", "uvicorn", "fastapi", "starlette", "sse_starlette", "igraph", "numpy", "bm25s",
         "prometheus_client")
# and what `--help` and `token` need no more than the heavy ones: the network clients
CLIENTS = ("confluent_kafka", "redis", "httpx", "psutil", "supervisor")
COMMAND_MODULES = ("agentmesh_cli.cli.mesh", "agentmesh_cli.cli.consensus", "agentmesh_cli.cli.bench",
                   "agentmesh_cli.cli.chaos", "agentmesh_cli.cli.roles", "agentmesh_cli.cli.services",
                   "agentmesh_cli.cli.topics", "agentmesh_cli.cli.logs", "agentmesh_cli.cli.metrics",
                   "agentmesh_cli.cli.init")


def imports_of(*args: str, cwd: Path, first: str = "") -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `python -m agentmesh_cli ARGS` under -X importtime: the result and every module
    it imported. `first` is imported before the command runs (the check's own test)."""
    run = ("import runpy, sys; sys.argv[0] = 'agentmesh'; "
           "runpy.run_module('agentmesh_cli', run_name='__main__')")
    code = f"import {first}; {run}" if first else run
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code, *args], cwd=cwd,
                            capture_output=True, text=True, timeout=120)
    return result, imported_modules(result.stderr)


def packages(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted({m.split(".")[0] for m in modules} & set(names))


@pytest.fixture
def mesh(external_mesh: Any) -> Mesh:
    made: Mesh = external_mesh(agents=[{"name": "Sales", "role": "sales"},
                                       {"name": "Inventory", "role": "inventory"}])
    ensure_topics(made.config.kafka)  # `up` would make them
    return made


def test_help_imports_no_command(tmp_path: Path) -> None:
    result, modules = imports_of("--help", cwd=tmp_path)
    assert result.returncode == 0 and "Example: agentmesh" in result.stdout
    assert "typer" in packages(modules, ("typer",))  # the audit saw the imports
    assert packages(modules, HEAVY + CLIENTS) == []
    assert sorted(modules & set(COMMAND_MODULES)) == []
    assert "agentmesh_cli.mesh" not in modules  # not even mesh.yaml's model


def test_a_command_help_imports_its_module_only(tmp_path: Path) -> None:
    result, modules = imports_of("send", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "Example: agentmesh send" in result.stdout
    assert sorted(modules & set(COMMAND_MODULES)) == ["agentmesh_cli.cli.mesh"]
    assert packages(modules, HEAVY + CLIENTS) == []


def test_token_imports_no_service_and_no_client(mesh: Mesh) -> None:
    result, modules = imports_of("token", "--user", "alice", "-c", str(mesh.config_file), cwd=mesh.root)
    assert result.returncode == 0 and result.stdout.startswith("u1.alice.")
    assert packages(modules, HEAVY + CLIENTS) == []
    assert not {"agentmesh_cli.services.memory", "agentmesh_cli.services.auth",
                "agentmesh_cli.services.http"} & modules


@pytest.mark.parametrize(("args", "uses"), [
    (("send", "Sales", "Inventory", '{"order_id": "o-1"}', "--type", "check_stock"), "agentmesh_cli.store"),
    (("propose", "--content", '{"type": "approval"}'), "agentmesh_cli.bus"),
    (("status", "--json"), "agentmesh_cli.status"),
], ids=lambda value: " ".join(value[:2]) if isinstance(value, tuple) else None)
def test_scripted_commands_import_nothing_heavy(mesh: Mesh, args: tuple[str, ...], uses: str) -> None:
    result, modules = imports_of(*args, "-c", str(mesh.config_file), cwd=mesh.root)
    # status exits 1 (supervisord is not running here), the others 0: both did their work
    assert result.returncode in (0, 1) and result.stdout, result.stderr[-2000:]
    assert uses in modules  # the audit saw the command's own imports
    # nor the services' HTTP client: status asks /health with the standard library
    assert packages(modules, (*HEAVY, "httpx")) == []
    assert "rich" not in packages(modules, ("rich",))  # plain lines and JSON need no rich


def test_the_check_sees_a_heavy_import(tmp_path: Path) -> None:
    result, modules = imports_of("--help", cwd=tmp_path, first="fastapi")
    assert result.returncode == 0
    assert packages(modules, HEAVY) == ["fastapi", "starlette"]
