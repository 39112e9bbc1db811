"""`agentmesh init`: write a commented starter mesh.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agentmesh_cli.cli import printer
from agentmesh_cli.starter import write_starter


def init(
    directory: Annotated[Path, typer.Argument(
        metavar="DIR", help="Folder to write mesh.yaml into (created if missing).")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing mesh.yaml.")] = False,
) -> None:
    """Write a commented starter mesh.yaml (four demo agents, every key at its default).

    Example: agentmesh init my-mesh && cd my-mesh && agentmesh up
    """
    target = write_starter(directory, force)
    printer.out(f"wrote {target}: edit it, then run agentmesh up")


def register(app: typer.Typer) -> None:
    app.command()(init)
