"""`python -m agentmesh_cli.agent`: the lean entry of an agent process (what supervisord runs).

`agentmesh agent ...` works too, but it goes through the Typer app: typer and its click, the
command table and cli/roles.py (commands load lazily, cli/lazy.py), code the agent never
calls. This entry takes the same options with argparse and imports only the runtime, so an
agent process holds the Kafka and Redis clients, pydantic (the config) and, once it calls a
service, httpx; never igraph, the web stack (fastapi, uvicorn, mcp...) or the CLI's libraries.

    python -m agentmesh_cli.agent --name Sales --role sales --capabilities a,b --config mesh.yaml

Errors end the process as `agentmesh agent` ends it: one log line in the mesh's format
once logging is set up (one line on stderr before that) and the error's exit code.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

# httpx imports its command-line client (click, rich, pygments: ~5 MB) whenever those
# are installed, and they are (typer needs them). An agent never runs that client; a
# None entry makes httpx's own `except ImportError` fallback take its place.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

from agentmesh_cli.errors import AgentMeshError  # noqa: E402  (after the httpx guard)
from agentmesh_cli.logformat import TEXT_FORMAT, UNCAUGHT_LOGGER, role_program  # noqa: E402


def run_agent(name: str, role: str | None, capabilities: str | None, config: Path | None) -> int:
    """Run agent `name` of the mesh in `config` until SIGTERM/SIGINT, then end the process
    with its exit code (an error before the agent runs is raised).

    The one body of both entries (this module and `agentmesh agent`)."""
    from agentmesh_cli import constants as C
    from agentmesh_cli.agent.resolve import resolve_role
    from agentmesh_cli.agent.runtime import AgentRuntime
    from agentmesh_cli.logformat import configure_role_logging
    from agentmesh_cli.mesh import load_mesh

    # a mesh spread over hosts: this host's share ($AGENTMESH_HOST or the machine's name)
    mesh = load_mesh(config).for_host(None, required=False)[0]
    logs = mesh.config.logging
    configure_role_logging(C.agent_program(name), logs.json_lines, logs.level)
    caps = [c for c in capabilities.split(",") if c] if capabilities is not None else None
    spec = mesh.config.agent_spec(name, role, caps)
    code = AgentRuntime(mesh, spec, resolve_role(spec.role)).run()
    # a sync handler still running in a worker thread (it cannot be cancelled) must not
    # keep the process alive: its message is read again next time
    logging.shutdown()
    os._exit(code)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m agentmesh_cli.agent",
        description="Run one agent process (supervisord runs one per agent of mesh.yaml).",
        epilog="Example: python -m agentmesh_cli.agent --name Sales --role sales "
               "--capabilities order_processing,upselling",
    )
    ap.add_argument("--name", required=True, help="Agent name (its id) from mesh.yaml.")
    ap.add_argument("--role", help="Role; default: the one in mesh.yaml.")
    ap.add_argument("--capabilities", help="Comma-separated capabilities.")
    ap.add_argument("--config", "-c", type=Path,
                    help="mesh.yaml to use (default: $AGENTMESH_CONFIG or ./mesh.yaml).")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # as `agentmesh` does: warnings only until the agent sets its own level and format
    logging.basicConfig(level=logging.WARNING, format=TEXT_FORMAT, stream=sys.stderr)
    try:
        return run_agent(args.name, args.role, args.capabilities, args.config)
    except AgentMeshError as exc:
        if role_program():  # logging is set up: the error is one more line of the agent's log
            logging.getLogger(UNCAUGHT_LOGGER).error("%s", exc)
        else:
            print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
