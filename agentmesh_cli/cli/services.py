"""Commands that run the mesh's HTTP services (what supervisord starts): memory, cognition."""

from __future__ import annotations

from typing import Annotated

import typer

from agentmesh_cli import constants as C
from agentmesh_cli.cli.common import ConfigOption, mesh_from, role_logging


def memory(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(
        help="Address to listen on (default: services.memory.host of mesh.yaml, 127.0.0.1).",
        show_default=False)] = None,
    port: Annotated[int | None, typer.Option(
        envvar="MEMORY_SERVICE_PORT", min=1, max=65535, show_default=False,
        help="Port (default: $MEMORY_SERVICE_PORT, else services.memory.port, 9000).")] = None,
) -> None:
    """Run the Memory service: users' messages over HTTP, kept in the mesh's Redis.

    Example: agentmesh memory --config mesh.yaml --port 9000
    """
    from agentmesh_cli.services.memory import run

    mesh = mesh_from(config)
    role_logging(mesh, C.PROGRAM_MEMORY)
    settings = mesh.config.services.memory
    run(mesh.config.redis.resolved_url, mesh.config.mesh, host or settings.host, port or settings.port)


def cognition(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(
        help="Address to listen on (default: services.cognition.host of mesh.yaml, 127.0.0.1).",
        show_default=False)] = None,
    port: Annotated[int | None, typer.Option(
        envvar="COGNITION_SERVICE_PORT", min=1, max=65535, show_default=False,
        help="Port (default: $COGNITION_SERVICE_PORT, else services.cognition.port, 9100).")] = None,
) -> None:
    """Run the Cognition service: context, search and analysis over HTTP, reading the Memory service.

    Example: agentmesh cognition --config mesh.yaml --port 9100
    """
    from agentmesh_cli.services.cognition import run

    mesh = mesh_from(config)
    role_logging(mesh, C.PROGRAM_COGNITION)
    settings = mesh.config.services.cognition
    run(mesh, host or settings.host, port or settings.port)


def register(app: typer.Typer) -> None:
    app.command()(memory)
    app.command()(cognition)
