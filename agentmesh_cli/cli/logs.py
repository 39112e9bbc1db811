"""`agentmesh logs`: the programs' log files merged in time order, each line prefixed
with its program in the program's own colour; `-f` follows them."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated

import typer

from agentmesh_cli import constants as C
from agentmesh_cli.cli import printer
from agentmesh_cli.cli.common import ConfigOption, mesh_from
from agentmesh_cli.errors import AgentMeshError, ConfigError
from agentmesh_cli.logfiles import LogFile, LogLine, merge

if TYPE_CHECKING:
    from agentmesh_cli.mesh import Mesh

SUPERVISORD = C.SUPERVISORD  # its own log: asked for by name, not part of the default
DEFAULT_LINES = 40
POLL_S = 0.2
# one colour per program in mesh order (red is left for errors)
PALETTE = ("cyan", "green", "magenta", "yellow", "blue", "bright_cyan", "bright_green",
           "bright_magenta", "bright_yellow", "bright_blue", "dark_orange", "orchid")
LEVEL_STYLES = {"WARNING": "yellow", "ERROR": "bold red", "CRITICAL": "bold red"}


def _complete_program(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of PROGRAM: the programs of the mesh.yaml given so far."""
    try:
        names = [*_program_names(mesh_from(ctx.params.get("config"))), SUPERVISORD]
    except AgentMeshError:
        return []  # no mesh.yaml here: nothing to offer
    return [name for name in names if name.startswith(incomplete)]


def logs(
    programs: Annotated[list[str] | None, typer.Argument(
        metavar="PROGRAM", show_default=False, autocompletion=_complete_program,
        help="Programs to show (memory, cognition, metrics, kafka, redis, topology-manager, "
             "consensus-manager, agent-<Name>, supervisord); default: every program of the mesh.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    lines: Annotated[int, typer.Option(
        "--lines", "-n", min=0, help="Show the last N lines of the merged log (0: none).")] = DEFAULT_LINES,
    no_color: Annotated[bool, typer.Option(
        "--no-color", help="No colours (there are none when not a terminal).")] = False,
    config: ConfigOption = None,
) -> None:
    """Print the programs' logs merged in time order, each line prefixed with its program.

    The last N lines of them all together; with -f keep following them, across log
    rotation. Lines logged as JSON (logging.json in mesh.yaml) are shown in the text format.

    Example: agentmesh logs agent-Sales consensus-manager -f -n 100
    """
    mesh = mesh_from(config)
    every = _program_names(mesh)
    chosen = _choose(programs or [], every)
    width = max(len(name) for name in chosen)
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate([*every, SUPERVISORD])}
    files = [LogFile(name, mesh.logs_dir / f"{name}.log", time.time) for name in chosen]
    try:
        if not follow and not any(f.path.exists() for f in files):
            printer.say(f"no log files of {', '.join(chosen)} in {mesh.logs_dir} yet")
            return
        tail = list(merge(f.tail(lines) for f in files))[-lines:] if lines else []
        _print(tail, colours, width, not no_color)
        while follow:
            time.sleep(POLL_S)
            _print(merge(f.read_new() for f in files), colours, width, not no_color)
    except KeyboardInterrupt:
        pass  # Ctrl+C is how following ends (a closed pipe: the printer exits 1 quietly)
    finally:
        for f in files:
            f.close()


def _program_names(mesh: Mesh) -> list[str]:
    from agentmesh_cli.supervisor.render import program_specs

    return [spec.name for spec in program_specs(mesh, sys.executable, tansu="-", valkey="-")]


def _choose(asked: list[str], every: list[str]) -> list[str]:
    known = [*every, SUPERVISORD]
    unknown = [name for name in asked if name not in known]
    if unknown:
        raise ConfigError(f"unknown program {', '.join(map(repr, unknown))}: use one of {', '.join(known)}")
    return list(dict.fromkeys(asked)) or every


def _print(lines: Iterable[LogLine], colours: dict[str, str], width: int, color: bool) -> None:
    for line in lines:
        printer.styled([(f"{line.program:<{width}} | ", colours[line.program]),
                        (line.text, LEVEL_STYLES.get(line.level or "", ""))], color=color)


def register(app: typer.Typer) -> None:
    app.command()(logs)
