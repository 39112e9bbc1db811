"""Every command's --help shows an example, and shell completion is on."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from agentmesh_cli.cli import app


def command_paths(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
        yield from command_paths(sub, (*path, name))


COMMANDS = list(command_paths(typer.main.get_command(app)))


def test_the_walk_finds_the_commands() -> None:
    assert {("logs",), ("init",), ("up",), ("topology", "route")} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(("agentmesh", *path)))
def test_help_has_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Example: agentmesh" in result.output, result.output


def test_completion_is_offered() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "--install-completion" in result.output and "--show-completion" in result.output


def complete(words: str, cwd: Path) -> list[str]:
    """What bash completion offers for the last of `words` (the real installed command)."""
    command = Path(sys.executable).parent / "agentmesh"
    env = {**os.environ, "_AGENTMESH_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - 1)}
    result = subprocess.run([str(command)], env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=30, check=True)
    return result.stdout.split()


def test_completion_of_commands_and_programs(tmp_path: Path) -> None:
    assert complete("agentmesh lo", tmp_path) == ["logs"]
    (tmp_path / "mesh.yaml").write_text("mesh: m\nagents: [{name: Sales, role: sales}]\n", encoding="utf-8")
    assert complete("agentmesh logs agent-", tmp_path) == ["agent-Sales"]
    assert complete("agentmesh logs co", tmp_path) == ["cognition", "consensus-manager"]
