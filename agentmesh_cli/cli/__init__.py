"""The `agentmesh` command: one Typer app; each module adds its commands. Parse, call, print."""

from __future__ import annotations

import logging
import sys

import typer

from agentmesh_cli.cli import bench as bench_commands
from agentmesh_cli.cli import chaos as chaos_commands
from agentmesh_cli.cli import consensus as consensus_commands
from agentmesh_cli.cli import init as init_commands
from agentmesh_cli.cli import logs as log_commands
from agentmesh_cli.cli import mesh as mesh_commands
from agentmesh_cli.cli import metrics as metrics_commands
from agentmesh_cli.cli import roles as role_commands
from agentmesh_cli.cli import services as service_commands
from agentmesh_cli.cli import topics as topic_commands
from agentmesh_cli.cli.printer import error
from agentmesh_cli.errors import AgentMeshError
from agentmesh_cli.logformat import TEXT_FORMAT, UNCAUGHT_LOGGER, role_program

app = typer.Typer(
    name="agentmesh",
    help="Run a multi-agent mesh as supervised OS processes over Kafka and Redis.",
    epilog="Example: agentmesh init && agentmesh up && agentmesh logs -f",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
mesh_commands.register(app)
role_commands.register(app)
consensus_commands.register(app)
bench_commands.register(app)
chaos_commands.register(app)
topic_commands.register(app)
service_commands.register(app)
metrics_commands.register(app)
log_commands.register(app)
init_commands.register(app)


def main() -> None:
    # user commands log warnings only; role processes set their own level and format (cli.common)
    logging.basicConfig(
        level=logging.WARNING,
        format=TEXT_FORMAT,
        stream=sys.stderr,
    )
    try:
        app()
    except AgentMeshError as exc:
        if role_program():  # a role process: its error is one more line of its log
            logging.getLogger(UNCAUGHT_LOGGER).error("%s", exc)
            sys.exit(exc.exit_code)
        error(str(exc))
        sys.exit(exc.exit_code)
