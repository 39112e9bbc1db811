"""Options and helpers shared by the command modules. Light on purpose: every command imports
it (cli/lazy.py), so what only some commands need is imported inside them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agentmesh_cli.errors import ConfigError

if TYPE_CHECKING:
    from agentmesh_cli.mesh import Mesh

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c",
        help="mesh.yaml to use (default: $AGENTMESH_CONFIG or ./mesh.yaml).",
        show_default=False,
    ),
]


def mesh_from(config: Path | None) -> Mesh:
    from agentmesh_cli.mesh import load_mesh

    # a mesh spread over hosts: this host's share when $AGENTMESH_HOST (set for every
    # supervised program) or this machine's name says which (hosts.choose_host)
    return load_mesh(config).for_host(None, required=False)[0]


def role_logging(mesh: Mesh, program: str) -> None:
    """A role process logs one line per event (text, or JSON with mesh.yaml's
    `logging.json`) to stderr, which supervisord writes to logs/<program>.log."""
    from agentmesh_cli.logformat import configure_role_logging

    configure_role_logging(program, mesh.config.logging.json_lines, mesh.config.logging.level)


def json_object(text: str, what: str) -> dict[str, Any]:
    """Parse a JSON object given on the command line; ConfigError names `what`."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{what} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a JSON object")
    return value
