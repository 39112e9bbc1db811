"""Shell completion of commands and program names, through the real command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


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
    # the names come from the lazy table; options and subcommands from the command itself
    assert complete("agentmesh to", tmp_path) == ["token", "topology"]
    assert complete("agentmesh topology ex", tmp_path) == ["export"]
    assert complete("agentmesh logs --no", tmp_path) == ["--no-color"]
    (tmp_path / "mesh.yaml").write_text("mesh: m\nagents: [{name: Sales, role: sales}]\n", encoding="utf-8")
    assert complete("agentmesh logs agent-", tmp_path) == ["agent-Sales"]
    assert complete("agentmesh logs co", tmp_path) == ["cognition", "consensus-manager"]


def test_completion_knows_a_groups_replicas_and_its_name(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(
        "mesh: m\nagents: [{name: Sales, role: sales}, {name: Support, role: support, replicas: 2}]\n",
        encoding="utf-8")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "agent-Support-3.log").write_text("", encoding="utf-8")  # scaled up once
    assert complete("agentmesh logs agent-Su", tmp_path) == [
        "agent-Support-1", "agent-Support-2", "agent-Support-3"]
    assert complete("agentmesh logs Su", tmp_path) == ["Support"]
