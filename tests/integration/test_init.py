"""`agentmesh init`: a commented starter mesh.yaml that loads, never overwritten by accident."""

from __future__ import annotations

from pathlib import Path

from agentmesh_cli.mesh import load_mesh
from tests.helpers.commands import agentmesh

REPO_MESH = Path(__file__).resolve().parents[2] / "mesh.yaml"


def test_init_writes_a_loadable_commented_mesh(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "mesh"  # created when missing
    result = agentmesh("init", str(folder), check=True)
    written = folder / "mesh.yaml"
    assert str(written) in result.stdout
    text = written.read_text(encoding="utf-8")
    assert text.count("#") > 20  # commented
    # the same mesh as the repository's mesh.yaml, the reference for every key
    assert load_mesh(written).config == load_mesh(REPO_MESH).config


def test_init_defaults_to_the_current_folder(tmp_path: Path) -> None:
    agentmesh("init", cwd=tmp_path, check=True)
    assert load_mesh(tmp_path / "mesh.yaml").config.mesh == "shop"


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    mine = tmp_path / "mesh.yaml"
    mine.write_text("mesh: mine\n", encoding="utf-8")
    result = agentmesh("init", str(tmp_path))
    assert result.returncode == 1
    assert f"{mine} already exists: pass --force to overwrite it" in result.stderr
    assert "Traceback" not in result.stderr
    assert mine.read_text(encoding="utf-8") == "mesh: mine\n"

    agentmesh("init", str(tmp_path), "--force", check=True)
    assert load_mesh(mine).config.mesh == "shop"


def test_init_into_a_file_is_refused(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x", encoding="utf-8")
    result = agentmesh("init", str(not_a_folder))
    assert result.returncode == 1 and "is not a folder" in result.stderr
