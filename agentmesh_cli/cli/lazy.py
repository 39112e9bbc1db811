"""A Typer group that imports a command's module only when that command runs or shows its help.

`agentmesh --help`, the list of commands and shell completion of command names come from a
static table (name -> module and one-line summary) and import nothing of the commands. A
command's own module (cli/mesh.py for up, down, status and send, ...) is imported when the
command is resolved, i.e. when it runs, shows its `--help` or completes its arguments; the
module then imports what its commands need inside their bodies, so `send` does not load the
dashboard and `token` does not load the web stack. tests/unit/test_help.py checks that the
table and the modules agree.

The types of the click that typer runs on are left as Any: typer vendors click (typer._click)
and gives its classes no public name.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import typer
import typer.core
from typer.core import TyperCommand, TyperGroup
from typer.main import get_group

EXAMPLE = "Example:"


@dataclass(frozen=True)
class Entry:
    module: str  # under agentmesh_cli.cli; its register(app) adds the command
    summary: str  # the one line `agentmesh --help` shows: the first paragraph of its help


def load_module(module: str) -> dict[str, Any]:
    """Every command that agentmesh_cli.cli.<module> registers, by name, help tidied."""
    app = typer.Typer()
    # __import__ rather than importlib.import_module: only imports that go through it are
    # reported by -X importtime, which the import audits read (tests, bench startup)
    __import__(f"agentmesh_cli.cli.{module}", fromlist=["register"]).register(app)
    commands = dict(get_group(app).commands)
    for command in commands.values():
        tidy_help(command)
    return commands


def tidy_help(command: Any) -> None:
    """Docstrings are wrapped at the source's width; rich keeps those line breaks (in all but
    the first paragraph) and wraps again at the terminal's, which leaves ragged lines. So each
    paragraph becomes one line, and the `Example:` lines at the end of a docstring become the
    epilog, which is printed last, below the options, one example per line."""
    paragraphs = [p.strip() for p in inspect.cleandoc(command.help or "").split("\n\n") if p.strip()]
    examples = [p for p in paragraphs if p.startswith(EXAMPLE)]
    text = [" ".join(line.strip() for line in p.splitlines()) for p in paragraphs if p not in examples]
    command.help = "\n\n".join(text)
    if examples:
        command.epilog = "\n".join(line.strip() for p in examples for line in p.splitlines())
    for sub in (getattr(command, "commands", None) or {}).values():
        tidy_help(sub)


class LazyCommands(MutableMapping[str, Any]):
    """The group's commands: every name of the table, each loaded (with the other commands of
    its module) when it is first looked up. Listing the names imports nothing."""

    def __init__(self, entries: Mapping[str, Entry]) -> None:
        self._entries = entries
        self._names = list(entries)
        self._loaded: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded and name in self._entries:
            self._loaded.update(load_module(self._entries[name].module))
        return self._loaded[name]

    def __setitem__(self, name: str, command: Any) -> None:
        if name not in self._names:
            self._names.append(name)
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        self._names.remove(name)
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)


class LazyGroup(TyperGroup):
    """A subclass sets `entries` (command name -> Entry), in the order of the help's list."""

    entries: ClassVar[Mapping[str, Entry]] = {}

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = LazyCommands(self.entries)
        self._listing = False

    @contextmanager
    def _summaries(self) -> Iterator[None]:
        self._listing = True
        try:
            yield
        finally:
            self._listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # the names; TyperGroup's own would load every command

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        entry = self.entries.get(cmd_name)
        if self._listing and entry is not None:
            # the help's list and the completion of command names show the summary only
            return TyperCommand(cmd_name, help=entry.summary, short_help=entry.summary)
        return self.commands.get(cmd_name)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        if ctx.parent is None and typer.core.HAS_RICH and self.rich_markup_mode is not None:
            # the root screen: drawn without typer's help module (cli/roothelp.py)
            from agentmesh_cli.cli.printer import printer
            from agentmesh_cli.cli.roothelp import root_help

            summaries = {name: entry.summary for name, entry in self.entries.items()}
            printer.show(root_help(self, ctx, summaries), fresh=True)
            return
        with self._summaries():
            super().format_help(ctx, formatter)

    def shell_complete(self, ctx: Any, incomplete: str) -> list[Any]:
        with self._summaries():
            return super().shell_complete(ctx, incomplete)
