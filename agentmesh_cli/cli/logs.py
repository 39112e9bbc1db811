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
from agentmesh_cli.config import group_of
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
    """Shell completion of PROGRAM: the programs of the mesh.yaml given so far (a group's
    replicas each, and the group's name for them all)."""
    try:
        mesh = mesh_from(ctx.params.get("config"))
        names = [*_program_names(mesh), *mesh.config.groups(), SUPERVISORD]
    except AgentMeshError:
        return []  # no mesh.yaml here: nothing to offer
    return [name for name in names if name.startswith(incomplete)]


def logs(
    programs: Annotated[list[str] | None, typer.Argument(
        metavar="PROGRAM", show_default=False, autocompletion=_complete_program,
        help="Programs to show (memory, cognition, metrics, kafka, redis, topology-manager, "
             "consensus-manager, agent-<Name>, supervisord; a replica group's name, or "
             "agent-<Group>, for all its replicas); default: every program of the mesh.")] = None,
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

    A replica group's name (Support, or agent-Support) shows every replica's log:
    agent-Support-1 and on, as many as it runs now and any other that left a log.

    Example: agentmesh logs agent-Sales consensus-manager -f -n 100
    """
    mesh = mesh_from(config)
    every = _program_names(mesh)
    chosen = _choose(programs or [], every, _group_programs(mesh, every))
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
    """Every program of the mesh; a group's replicas as many as it runs now (scalestate.py),
    and after them any other replica whose log is there (the group ran more before)."""
    from agentmesh_cli.scalestate import load_scale
    from agentmesh_cli.supervisor.render import program_specs

    specs = program_specs(mesh, sys.executable, tansu="-", valkey="-", scale=load_scale(mesh))
    names = [spec.name for spec in specs]
    logged = [path.name.removesuffix(".log") for path in mesh.logs_dir.glob(f"{C.AGENT_PROGRAM_PREFIX}*.log")]
    for program in sorted(logged, key=lambda p: group_of(p) or (p, 0)):  # agent-Support-2 before -10
        group = _group(mesh, program)
        if group is None or program in names:
            continue
        mine = [i for i, name in enumerate(names) if _group(mesh, name) == group]
        names.insert(mine[-1] + 1 if mine else len(names), program)
    return names


def _group(mesh: Mesh, program: str) -> str | None:
    """The group whose replica runs as `program`, if any."""
    if not program.startswith(C.AGENT_PROGRAM_PREFIX):
        return None
    return mesh.config.group_name(program.removeprefix(C.AGENT_PROGRAM_PREFIX))


def _group_programs(mesh: Mesh, every: list[str]) -> dict[str, list[str]]:
    """group -> its replicas' programs among `every`."""
    out: dict[str, list[str]] = {group: [] for group in mesh.config.groups()}
    for program in every:
        group = _group(mesh, program)
        if group is not None:
            out[group].append(program)
    return out


def _choose(asked: list[str], every: list[str], groups: dict[str, list[str]]) -> list[str]:
    """The programs asked for, a group's name (or agent-<group>) standing for its replicas'."""
    known = [*every, SUPERVISORD]
    aliases = {alias: programs for group, programs in groups.items()
               for alias in (group, C.agent_program(group))}
    unknown = [name for name in asked if name not in known and name not in aliases]
    if unknown:
        shown = [*known, *(group for group in groups)]
        raise ConfigError(f"unknown program {', '.join(map(repr, unknown))}: use one of {', '.join(shown)}")
    expanded = [program for name in asked for program in aliases.get(name, [name])]
    return list(dict.fromkeys(expanded)) if asked else every


def _print(lines: Iterable[LogLine], colours: dict[str, str], width: int, color: bool) -> None:
    for line in lines:
        printer.styled([(f"{line.program:<{width}} | ", colours[line.program]),
                        (line.text, LEVEL_STYLES.get(line.level or "", ""))], color=color)


def register(app: typer.Typer) -> None:
    app.command()(logs)
