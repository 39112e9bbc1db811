"""The one table of defaults: mesh.yaml's model (config.py). The starter file that
`agentmesh init` writes renders every default from it, the repository's mesh.yaml is that
file, and the SlimeMold core starts from the same numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agentmesh_cli.config import MeshConfig, TopologyConfig, parse_config
from agentmesh_cli.starter import format_duration, render_starter
from agentmesh_cli.topology.graph import SlimeMoldRules

REPO_MESH = Path(__file__).resolve().parents[2] / "mesh.yaml"


def test_the_repository_mesh_yaml_is_the_starter_file() -> None:
    assert REPO_MESH.read_text(encoding="utf-8") == render_starter()


def test_the_starter_writes_every_default_of_the_model() -> None:
    written = parse_config(yaml.safe_load(render_starter()))
    defaults = MeshConfig(mesh="shop", agents=written.agents)
    assert written == defaults
    assert [a.name for a in written.agents] == ["Sales", "Support", "Inventory", "Fraud"]


def test_the_starter_names_every_key_of_the_model() -> None:
    text = render_starter()
    for section, info in MeshConfig.model_fields.items():
        assert f"{section}:" in text, section
        model = info.annotation
        for name, field in getattr(model, "model_fields", {}).items():
            key = field.alias or name
            assert f"{key}:" in text, f"{section}.{key}"


def test_the_slime_mold_rules_start_from_the_model() -> None:
    topology = TopologyConfig()
    rules = SlimeMoldRules()
    assert rules == SlimeMoldRules.of(topology)
    assert (rules.initial_weight, rules.reinforcement, rules.max_weight, rules.decay,
            rules.prune_threshold) == (0.5, 0.1, 1.0, 0.05, 0.1)


@pytest.mark.parametrize(("seconds", "text"), [
    (0.001, "1ms"), (0.01, "10ms"), (0.25, "250ms"), (1.0, "1s"), (5.0, "5s"), (30.0, "30s"),
    (90.0, "90s"), (120.0, "2m"), (1.5, "1.5s")])
def test_durations_are_written_as_mesh_yaml_reads_them(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
