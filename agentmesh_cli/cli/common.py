"""Options and consoles shared by the command modules."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from agentmesh_cli.config import Mesh, load_mesh
from agentmesh_cli.errors import ConfigError

console = Console()
console_err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c",
        help="mesh.yaml to use (default: $AGENTMESH_CONFIG or ./mesh.yaml).",
        show_default=False,
    ),
]


def mesh_from(config: Path | None) -> Mesh:
    return load_mesh(config)


def role_logging() -> None:
    """A role process logs one INFO line per event to stdout (supervisord's log file)."""
    logging.getLogger().setLevel(logging.INFO)
    # the service clients' every request would be a line: only their problems are events
    logging.getLogger("httpx").setLevel(logging.WARNING)


def json_object(text: str, what: str) -> dict[str, Any]:
    """Parse a JSON object given on the command line; ConfigError names `what`."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{what} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a JSON object")
    return value
