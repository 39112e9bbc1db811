"""`agentmesh chaos`, the inbox reader of its embedded mesh (kafka.inbox_reader)."""

from __future__ import annotations

import pytest

from agentmesh_cli.chaos.faults import inbox_reader_for
from agentmesh_cli.chaos.mesh import mesh_data
from agentmesh_cli.config import parse_config
from agentmesh_cli.errors import ConfigError
from agentmesh_cli.hosts import program_names


@pytest.mark.parametrize(("choice", "spec", "expected"), [
    (None, "all", "agent"),  # mesh.yaml's default
    (None, "agents", "agent"),
    (None, "inbox", "host"),  # the inbox fault needs one
    (None, "agents, inbox ", "host"),
    (None, "inbox-reader", "agent"),  # a program name, not the fault
    ("host", "agents", "host"),  # every fault over the host's reader
    ("host", "all", "host"),
    ("agent", "agents", "agent"),
    ("host", "inbox", "host"),
])
def test_the_embedded_meshs_inbox_reader(choice: str | None, spec: str, expected: str) -> None:
    assert inbox_reader_for(choice, spec) == expected


def test_an_inbox_reader_that_cannot_be() -> None:
    with pytest.raises(ConfigError, match="--inbox-reader agent runs none"):
        inbox_reader_for("agent", "agents,inbox")
    with pytest.raises(ConfigError, match="--inbox-reader: 'hub': use agent or host"):
        inbox_reader_for("hub", "all")


@pytest.mark.parametrize("reader", ["agent", "host"])
def test_the_chaos_mesh_runs_its_inbox_reader(reader: str) -> None:
    config = parse_config(mesh_data(4, inbox_reader=reader), "chaos mesh")
    assert config.kafka.inbox_reader == reader
    assert ("inbox-reader" in program_names(config)) is (reader == "host")
    assert parse_config(mesh_data(4), "chaos mesh").kafka.inbox_reader == "agent"
