"""`agentmesh --help`: the list of commands, drawn with a few rich parts.

Typer's own rich help imports its whole help module (markdown, tracebacks, pretty
printing: about 60 ms, more than everything else `agentmesh --help` does) even for a
screen that needs a table and two panels. So the root screen is drawn here, in Typer's
look (the same panels, columns and styles); a command's own `--help` stays Typer's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import RenderableType

# Typer's styles (typer.rich_utils), so the root screen looks like every other --help
OPTION = "bold cyan"
COMMAND = "bold cyan"
USAGE = "yellow"
BORDER = "dim"


def _panel(title: str, rows: list[tuple[Any, ...]]) -> RenderableType:
    from rich import box
    from rich.panel import Panel
    from rich.table import Table

    table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1), expand=True)
    for _ in rows[0]:
        table.add_column()
    table.columns[-1].ratio = 1  # the description takes the room left, and wraps there
    for row in rows:
        table.add_row(*row)
    return Panel(table, title=title, title_align="left", border_style=BORDER, box=box.ROUNDED)


def root_help(group: Any, ctx: Any, summaries: dict[str, str]) -> RenderableType:
    """The root help screen of `group`: usage, its help, its options, its commands (name and
    summary, in the table's order) and its epilog."""
    from rich.console import Group
    from rich.padding import Padding
    from rich.text import Text

    usage = Text.assemble(("Usage: ", USAGE), (ctx.command_path, "bold"),
                          f" {' '.join(group.collect_usage_pieces(ctx))}")
    options = [(Text(", ".join(param.opts), style=OPTION), Text(getattr(param, "help", "") or ""))
               for param in group.get_params(ctx) if getattr(param, "opts", None)]
    commands = [(Text(name, style=COMMAND), Text(summary)) for name, summary in summaries.items()]
    parts: list[RenderableType] = [Padding(usage, (1, 1, 0, 1))]
    if group.help:
        parts.append(Padding(Text(group.help), (1, 1, 0, 1)))
    parts.append(Text(""))
    if options:
        parts.append(_panel("Options", options))
    parts.append(_panel("Commands", commands))
    if group.epilog:
        parts.append(Padding(Text(group.epilog), (1, 1)))
    return Group(*parts)
