"""The mesh's generated secrets file: made once, whole, private, by whichever of several
processes that start together comes first."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

from agentmesh_cli.credentials import load_credentials, secrets_path


def _mesh_key(root: str) -> str:
    return load_credentials(Path(root), environ={}).mesh_key


def test_processes_racing_to_make_the_secrets_all_get_the_same_ones(tmp_path: Path) -> None:
    roots = [tmp_path / f"mesh{i}" for i in range(10)]
    with multiprocessing.get_context("fork").Pool(8) as pool:
        for root in roots:
            root.mkdir()
            keys = pool.map(_mesh_key, [str(root)] * 8)
            path = secrets_path(root)
            assert len(set(keys)) == 1 and keys[0], keys
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert os.listdir(path.parent) == [path.name]  # no temporary file left behind


def test_a_file_lacking_a_secret_gains_it_and_keeps_the_others(tmp_path: Path) -> None:
    first = load_credentials(tmp_path, environ={})
    path = secrets_path(tmp_path)
    data = json.loads(path.read_text())
    del data["mesh_key"]
    path.write_text(json.dumps(data))
    path.chmod(0o644)
    again = load_credentials(tmp_path, environ={})
    assert again.mesh_key and again.mesh_key != first.mesh_key
    assert (again.redis_password, again.service_token) == (first.redis_password, first.service_token)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and os.listdir(path.parent) == [path.name]
