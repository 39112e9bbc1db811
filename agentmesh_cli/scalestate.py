"""How many replicas each group runs now, kept beside the mesh (`.agentmesh/scale.json`).

mesh.yaml declares each group's count; `agentmesh scale` (and the autoscaler) change the
running mesh and write the new count here, so that `up` on the running mesh, `down` and
`logs` render the same programs. `down` deletes the file: the next `up` starts every group
at mesh.yaml's count again (as `docker compose up` does after `--scale`). The same counts go
to Redis (`replicas`, replicas.py) for the processes that route and the views.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from agentmesh_cli.config import MAX_REPLICAS, AgentSpec
from agentmesh_cli.credentials import private_dir
from agentmesh_cli.errors import AgentMeshError
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.replicas import Groups
from agentmesh_cli.store import Store

SCALE_FILE = "scale.json"


def scale_path(mesh: Mesh) -> Path:
    return mesh.state_dir / SCALE_FILE


def load_scale(mesh: Mesh) -> dict[str, int]:
    """group -> replicas it runs now, for the groups scaled since the last `up` (a group no
    longer in mesh.yaml, or a count outside its bounds now, is left out)."""
    try:
        data = json.loads(scale_path(mesh).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    groups = mesh.config.groups()
    scale: dict[str, int] = {}
    for group, count in (data.items() if isinstance(data, dict) else ()):
        spec = groups.get(group)
        if spec is not None and isinstance(count, int) and bounds(spec)[0] <= count <= bounds(spec)[1]:
            scale[group] = count
    return scale


def bounds(spec: AgentSpec) -> tuple[int, int]:
    """The counts `scale` may set for a group: 1..64, or its autoscaled {min, max}."""
    replicas = spec.replicas
    if replicas is None or isinstance(replicas, int):
        return 1, MAX_REPLICAS
    return replicas.min, replicas.max


def save_scale(mesh: Mesh, scale: dict[str, int]) -> None:
    private_dir(mesh.state_dir)
    path = scale_path(mesh)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(scale, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def clear_scale(mesh: Mesh) -> None:
    scale_path(mesh).unlink(missing_ok=True)


def running_counts(mesh: Mesh, scale: dict[str, int] | None = None) -> dict[str, int]:
    """Every group's count now: scaled, else mesh.yaml's."""
    scale = load_scale(mesh) if scale is None else scale
    return {group: scale.get(group, spec.declared_replicas) for group, spec in mesh.config.groups().items()}


def publish_counts(mesh: Mesh, store: Store, scale: dict[str, int] | None = None) -> None:
    """Write every group's count to Redis and clear what retiring marks a crash left."""
    counts = running_counts(mesh, scale)
    if not counts:
        return
    groups = Groups(store)
    try:
        groups.set_counts(counts)
        stale = [name for name in groups.retiring()
                 if mesh.config.group_name(name) is not None]
        groups.unretire(stale)
    except AgentMeshError:
        pass  # the routers fall back to the registry; status shows what runs
