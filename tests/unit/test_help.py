"""Every command's --help ends with an example, the lazy table agrees with the command modules,
and shell completion is on (the Typer app in process)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from agentmesh_cli.cli import COMMANDS, app
from agentmesh_cli.cli.lazy import load_module


def command_paths(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
        yield from command_paths(sub, (*path, name))


COMMANDS_FOUND = list(command_paths(typer.main.get_command(app)))


def test_the_walk_finds_the_commands() -> None:
    assert {("logs",), ("init",), ("up",), ("topology", "route")} <= set(COMMANDS_FOUND)


@pytest.mark.parametrize("path", COMMANDS_FOUND, ids=lambda path: " ".join(("agentmesh", *path)))
@pytest.mark.parametrize("columns", ["80", "160"])
def test_help_ends_with_an_example(path: tuple[str, ...], columns: str) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": columns})
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.output.splitlines() if line.strip()]
    examples = [i for i, line in enumerate(lines) if line.startswith("Example: agentmesh")]
    assert examples, result.output
    # the examples are the epilog: below the options and commands, nothing after them
    assert not any(line.startswith(("╭", "│", "╰")) for line in lines[examples[0]:]), result.output


def test_the_table_is_every_command_of_its_modules_in_order() -> None:
    registered: dict[str, Any] = {}
    for module in dict.fromkeys(entry.module for entry in COMMANDS.values()):
        commands = load_module(module)
        for name in commands:
            assert COMMANDS[name].module == module, name
        registered.update(commands)
    assert set(registered) == set(COMMANDS)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_summary_is_the_first_paragraph_of_its_command_help(name: str) -> None:
    command = load_module(COMMANDS[name].module)[name]
    assert command.help.split("\n\n")[0] == COMMANDS[name].summary
    assert "\n" not in COMMANDS[name].summary


@pytest.mark.parametrize("path", [p for p in COMMANDS_FOUND if p], ids=" ".join)
def test_help_paragraphs_are_single_lines_so_rich_wraps_them_at_the_terminal(path: tuple[str, ...]) -> None:
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    for paragraph in command.help.split("\n\n"):
        assert paragraph and "\n" not in paragraph, paragraph
    docstring = inspect.cleandoc(command.callback.__doc__ or "")
    assert command.epilog.splitlines() == [line for line in docstring.splitlines()
                                           if line.startswith("Example:")]


def test_the_list_of_commands_shows_every_summary() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name, entry in COMMANDS.items():
        assert any(line.split("│")[1].split() == [name, *entry.summary.split()]
                   for line in result.output.splitlines() if line.startswith("│")), name
    assert result.output.rstrip().endswith("Example: agentmesh init && agentmesh up && agentmesh logs -f")


def test_a_typo_is_answered_with_the_closest_command() -> None:
    result = CliRunner().invoke(app, ["stauts"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "Did you mean 'status'?" in result.output


def test_completion_is_offered() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "--install-completion" in result.output and "--show-completion" in result.output
