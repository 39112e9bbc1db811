"""Agent processes are lean: the command supervisord runs for an agent imports neither
igraph nor the web stack nor the CLI's libraries. Checked from outside a real agent
process: its mapped extension modules (/proc/PID/maps) and every import it made
(PYTHONPROFILEIMPORTTIME=1 writes one line per import to its log). A second agent whose
role imports igraph shows that both checks see a forbidden package when there is one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.bench.procs import (
    FORBIDDEN,
    forbidden_in,
    forbidden_modules,
    imported_modules,
    memory_mb,
    native_modules,
)
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.store import Store
from agentmesh_cli.supervisor.render import program_specs
from agentmesh_cli.waiting import wait_until

HEAVY_ROLE = '''
import igraph  # what a lean agent must never pay for
from agentmesh_cli.agent.base import Role


class Heavy(Role):
    pass
'''


def run_agent(mesh: Mesh, name: str, log: Path, **env: str) -> tuple[list[str], set[str], list[str]]:
    """Start agent `name` with the command supervisord would run, with import lines on;
    once it is ready: (its command, the native packages it maps, every module it imported
    by the time it left after SIGTERM)."""
    (spec,) = [s for s in program_specs(mesh, sys.executable) if s.name == C.agent_program(name)]
    store = Store(mesh.redis_url, mesh.config.mesh)
    with log.open("wb") as out:
        proc = subprocess.Popen(spec.command, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **spec.environment, "PYTHONPROFILEIMPORTTIME": "1", **env})
    try:
        wait_until(lambda: store.ready_pid(spec.name) == proc.pid or proc.poll() is not None, 30,
                   "agent ready")
        assert proc.poll() is None, log.read_text()[-2000:]
        native = native_modules(proc.pid)
        assert forbidden_modules(proc.pid) == sorted(native & set(FORBIDDEN))
        assert memory_mb(proc.pid)["rss_mb"] > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        store.close()
    return spec.command, native, sorted(imported_modules(log.read_text(errors="replace")))


def test_an_agent_imports_only_what_it_uses(external_mesh: Any, tmp_path: Path) -> None:
    mesh: Mesh = external_mesh(agents=[{"name": "Sales", "role": "sales"}])
    command, native, modules = run_agent(mesh, "Sales", tmp_path / "agent.log")
    assert command[1:3] == ["-m", "agentmesh_cli.agent"]  # the lean entry, not the Typer CLI
    tops = {m.split(".")[0] for m in modules}
    # the audit saw the whole path: the runtime, both clients and the service client
    assert {"agentmesh_cli", "confluent_kafka", "redis", "orjson", "pydantic", "httpx"} <= tops
    assert {"confluent_kafka", "pydantic_core"} <= native
    assert forbidden_in(set(modules)) == []
    assert not native & set(FORBIDDEN)


def test_the_checks_see_a_forbidden_import(external_mesh: Any, tmp_path: Path) -> None:
    (tmp_path / "heavy_role.py").write_text(HEAVY_ROLE, encoding="utf-8")
    mesh: Mesh = external_mesh(agents=[{"name": "Heavy", "role": "heavy_role:Heavy"}])
    _, native, modules = run_agent(mesh, "Heavy", tmp_path / "agent.log", PYTHONPATH=str(tmp_path))
    assert "igraph" in forbidden_in(set(modules))
    assert "igraph" in native


def test_the_lean_entry_fails_as_the_cli_does(tmp_path: Path) -> None:
    config = tmp_path / "mesh.yaml"
    config.write_text("mesh: m\nagents: [{name: Sales, role: sales}]\n", encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "agentmesh_cli.agent", "--name", "Nobody", "-c", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "ERROR agentmesh: agent 'Nobody' is not in mesh.yaml" in run.stderr
    missing = subprocess.run([sys.executable, "-m", "agentmesh_cli.agent", "--name", "X", "-c",
                              str(tmp_path / "none.yaml")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: ") and "no such file" in missing.stderr
    shown = subprocess.run([sys.executable, "-m", "agentmesh_cli.agent", "--help"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "--capabilities" in shown.stdout and "Example:" in shown.stdout


