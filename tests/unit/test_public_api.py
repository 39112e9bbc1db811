"""The public API for roles: `import agentmesh`. Its names are a promise: this test fails
when one is dropped, renamed or no longer the class the runtime uses."""

from __future__ import annotations

import re
from pathlib import Path

import agentmesh
from agentmesh_cli import errors
from agentmesh_cli.agent import base
from agentmesh_cli.config import MeshConfig
from agentmesh_cli.consensus import core
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.errors import AgentMeshError

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_public_names() -> None:
    assert sorted(agentmesh.__all__) == [
        "AgentContext", "AgentMeshError", "AskError", "AskNotAllowed", "AskTimeout", "Envelope",
        "MeshConfig", "Proposal", "ProposalStatus", "RemoteError", "Role", "UnknownAgent", "Vote",
        "Waggle", "__version__"]


def test_each_public_name_is_what_the_runtime_uses() -> None:
    # the old import paths keep working: they are the same objects
    assert agentmesh.Role is base.Role and agentmesh.AgentContext is base.AgentContext
    assert agentmesh.Vote is base.Vote and agentmesh.Envelope is Envelope
    assert agentmesh.Proposal is core.Proposal and agentmesh.ProposalStatus is core.Status
    assert agentmesh.Waggle is core.Waggle and agentmesh.MeshConfig is MeshConfig
    assert agentmesh.AgentMeshError is AgentMeshError
    assert agentmesh.AskTimeout is errors.AskTimeout and agentmesh.RemoteError is errors.RemoteError
    assert agentmesh.UnknownAgent is errors.UnknownAgent and agentmesh.AskError is errors.AskError
    assert [s.value for s in agentmesh.ProposalStatus] == ["pending", "accepted", "rejected", "expired"]


def test_the_readme_role_examples_use_the_public_api_only() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Your own roles"):text.index("## Layout")]
    examples = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(examples) == 2  # a sync role, an async one that asks
    for code in examples:
        assert "agentmesh_cli" not in code
        namespace: dict[str, object] = {}
        exec(compile(code, "README.md", "exec"), namespace)  # it defines a Role subclass
        roles = [v for v in namespace.values() if isinstance(v, type) and issubclass(v, agentmesh.Role)
                 and v is not agentmesh.Role]
        assert roles, "a README example defines no role"
    assert "async def on_message" in examples[1] and "await self.ctx.ask(" in examples[1]


def test_the_public_package_is_typed() -> None:
    assert (Path(agentmesh.__file__).parent / "py.typed").exists()
