"""`agentmesh bench` through the real command line: the JSON contract every scenario keeps
(checked on the quickest one, topology), `--out`, and the refusal of an unknown scenario.
No speed is asserted: the figures of a test run on a busy machine mean nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.helpers.commands import agentmesh

CONTRACT = {"scenario", "settings", "figures", "raw", "floor", "ratios", "targets", "notes"}


def _numbers(section: dict[str, Any]) -> bool:
    """Is a figures-like section made of numbers, or small dicts and lists of them?"""
    for value in section.values():
        if isinstance(value, dict):
            if not _numbers(value):
                return False
        elif isinstance(value, list):
            if not all(isinstance(v, int | float) for v in value):
                return False
        elif not isinstance(value, int | float | bool):
            return False
    return True


def test_bench_topology_json_keeps_the_contract(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = agentmesh("bench", "topology", "--events", "1000", "--full-mesh", "50", "--json",
                       "--out", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    # --out writes the document --json prints
    assert json.loads(out.read_text(encoding="utf-8")) == data

    assert set(data) >= CONTRACT
    assert data["scenario"] == "topology"
    assert data["settings"]["events"] == 1000 and data["settings"]["full_mesh_agents"] == 50
    figures, raw, floor = data["figures"], data["raw"], data["floor"]
    assert _numbers(figures) and _numbers(raw) and _numbers(floor)
    assert figures["manager_reinforcements_counted"] == 1000 and raw["records"] == 1000
    assert figures["full_mesh_edges_before"] == 50 * 49  # a full mesh of 50 agents

    # every ratio is a float, and it is its figure over its baseline (0.0 = baseline not
    # measured: raw reads 1,000 records in its first batch, which its clock leaves out)
    assert data["ratios"] and all(isinstance(v, float) and v >= 0 for v in data["ratios"].values())
    expected = figures["bulk_reinforcements_per_s"] / floor["records_per_s"]
    assert data["ratios"]["bulk_to_floor"] == round(expected, 3) > 0
    rate, baseline = figures["manager_reinforcements_per_s"], raw["records_per_s"]
    assert data["ratios"]["manager_to_raw"] == (round(rate / baseline, 3) if baseline else 0.0)

    assert data["targets"]
    for name, target in data["targets"].items():
        assert set(target) == {"target", "value", "met"}, name
        assert isinstance(target["target"], str) and isinstance(target["met"], bool)
        assert isinstance(target["value"], int | float)
        if name in figures:  # a target's value is the figure it judges
            assert target["value"] == figures[name]
    assert data["notes"] and all(isinstance(note, str) for note in data["notes"])


def test_bench_unknown_scenario_exits_2() -> None:
    result = agentmesh("bench", "nosuch")
    assert result.returncode == 2
    # one line, however long: the printer does not wrap what a script may read
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: unknown scenario 'nosuch'") and "topology" in result.stderr
    assert result.stdout == ""


def test_bench_startup_cli_figures_keep_the_contract(tmp_path: Path) -> None:
    """The command-line part of `bench startup` (the rest starts whole meshes: too long for
    a test), in the shape startup.run merges into the scenario's sections."""
    from agentmesh_cli.bench import cli_start

    config = tmp_path / "mesh.yaml"
    config.write_text("mesh: m\nagents: [{name: Sales, role: sales}]\n", encoding="utf-8")
    part = cli_start.run(config, {**os.environ, "COLUMNS": "160"}, repeats=1)
    assert set(part) == {"figures", "floor", "ratios", "targets"}
    figures, floor = part["figures"], part["floor"]
    assert set(figures) == {"cli_help_ms", "cli_token_ms", "cli_help_runs", "cli_token_runs"}
    assert set(floor) == {"supervisorctl_help_ms", "supervisorctl_help_runs", "python_ms"}
    assert _numbers(figures) and _numbers(floor)
    assert all(v > 0 for v in (figures["cli_help_ms"], figures["cli_token_ms"], floor["python_ms"]))
    assert part["ratios"]["cli_help_over_supervisorctl"] == round(
        figures["cli_help_ms"] / floor["supervisorctl_help_ms"], 3)
    assert set(part["targets"]) == {"cli_help_ms", "cli_token_ms"}
    for name, target in part["targets"].items():
        assert set(target) == {"target", "value", "met"} and target["value"] == figures[name]
        assert isinstance(target["met"], bool)
