"""Commands of the mesh's HTTP services: run them (what supervisord starts: memory,
cognition), and make a user token for them (token)."""

from __future__ import annotations

from typing import Annotated

import typer

from agentmesh_cli import constants as C
from agentmesh_cli import environment
from agentmesh_cli.cli import printer
from agentmesh_cli.cli.common import ConfigOption, mesh_from, role_logging
from agentmesh_cli.errors import ConfigError


def memory(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(
        help="Address to listen on (default: services.memory.host of mesh.yaml, 127.0.0.1).",
        show_default=False)] = None,
    port: Annotated[int | None, typer.Option(
        min=1, max=65535, show_default=False,
        help="Port (default: $MEMORY_SERVICE_PORT, else services.memory.port, 9000).")] = None,
) -> None:
    """Run the Memory service: users' messages over HTTP, kept in the mesh's Redis.

    Example: agentmesh memory --config mesh.yaml --port 9000
    """
    from agentmesh_cli.services.memory import run

    mesh = mesh_from(config)
    role_logging(mesh, C.PROGRAM_MEMORY)
    settings = mesh.config.services.memory
    run(mesh, host or settings.host, port or environment.service_port("memory") or settings.port)


def cognition(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(
        help="Address to listen on (default: services.cognition.host of mesh.yaml, 127.0.0.1).",
        show_default=False)] = None,
    port: Annotated[int | None, typer.Option(
        min=1, max=65535, show_default=False,
        help="Port (default: $COGNITION_SERVICE_PORT, else services.cognition.port, 9100).")] = None,
) -> None:
    """Run the Cognition service: context, search and analysis over HTTP, reading the Memory service.

    Example: agentmesh cognition --config mesh.yaml --port 9100
    """
    from agentmesh_cli.services.cognition import run

    mesh = mesh_from(config)
    role_logging(mesh, C.PROGRAM_COGNITION)
    settings = mesh.config.services.cognition
    run(mesh, host or settings.host, port or environment.service_port("cognition") or settings.port)


def gateway(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(
        help="Address to listen on (default: gateway.host of mesh.yaml, 127.0.0.1).",
        show_default=False)] = None,
    port: Annotated[int | None, typer.Option(
        min=1, max=65535, show_default=False,
        help="Port (default: gateway.port of mesh.yaml, 9200).")] = None,
) -> None:
    """Run the gateway: the mesh's front door over HTTP, Server-Sent Events and MCP.

    Clients outside the mesh ask agents (POST /agents/NAME/ask), send them messages, follow
    a conversation's events (GET /conversations/ID/events) and use the agents as MCP tools
    at /mcp, with the services' tokens (agentmesh token). See docs/gateway.md.

    Example: agentmesh gateway --config mesh.yaml --port 9200
    """
    from agentmesh_cli.gateway.main import run

    mesh = mesh_from(config)
    role_logging(mesh, C.PROGRAM_GATEWAY)
    settings = mesh.config.gateway
    run(mesh, host or settings.host, port or settings.port)


def token(
    user: Annotated[str, typer.Option(
        "--user", help="The user id the token acts for (1 to 128 of A-Z a-z 0-9 _ . : @ -).",
        show_default=False)],
    config: ConfigOption = None,
) -> None:
    """Print a bearer token that lets its holder use memory, cognition and the gateway as USER only.

    The token is derived from the mesh's service token (nothing is stored): both services
    check it on every request, and a call that names another user answers 403. Rotating
    the service token (AGENTMESH_SERVICE_TOKEN, or deleting .agentmesh/secrets.json and
    restarting the mesh) invalidates every user token made before.

    Send it as `Authorization: Bearer <token>`.

    Example: agentmesh token --user alice --config mesh.yaml
    """
    # the light modules: not services.auth or services.memory, which import the web stack
    from agentmesh_cli.services.protocol import ID_PATTERN, ID_RULE
    from agentmesh_cli.services.tokens import user_token

    if not ID_PATTERN.fullmatch(user):
        raise ConfigError(f"--user {user!r} is not a user id: use {ID_RULE}")
    mesh = mesh_from(config)
    printer.out(user_token(mesh.credentials.service_token, user))


def register(app: typer.Typer) -> None:
    app.command()(memory)
    app.command()(cognition)
    app.command()(gateway)
    app.command()(token)
