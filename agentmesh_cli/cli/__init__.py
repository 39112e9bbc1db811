"""The `agentmesh` command: one Typer app; each module adds its commands. Parse, call, print."""

from __future__ import annotations

import logging
import sys

import typer

from agentmesh_cli.cli import bench as bench_commands
from agentmesh_cli.cli import consensus as consensus_commands
from agentmesh_cli.cli import mesh as mesh_commands
from agentmesh_cli.cli import roles as role_commands
from agentmesh_cli.cli import services as service_commands
from agentmesh_cli.cli import topics as topic_commands
from agentmesh_cli.cli.common import console_err
from agentmesh_cli.errors import AgentMeshError

app = typer.Typer(
    name="agentmesh",
    help="Run a multi-agent mesh as supervised OS processes over Kafka and Redis.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
mesh_commands.register(app)
role_commands.register(app)
consensus_commands.register(app)
bench_commands.register(app)
topic_commands.register(app)
service_commands.register(app)


def main() -> None:
    # user commands log warnings only; role processes raise this to INFO (cli.common)
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        app()
    except AgentMeshError as exc:
        console_err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
