"""Which Role class an agent runs: a built-in role by name (`llm` imported only when asked
for: the openai SDK is for llm agents only), or `package.module:Class`."""

from __future__ import annotations

import importlib

from agentmesh_cli.agent.base import Role
from agentmesh_cli.agent.roles import FraudRole, InventoryRole, SalesRole, SupportRole
from agentmesh_cli.config import AgentSpec
from agentmesh_cli.constants import ROLE_LLM
from agentmesh_cli.errors import ConfigError, RoleError

BUILTIN: dict[str, type[Role]] = {
    "sales": SalesRole,
    "support": SupportRole,
    "inventory": InventoryRole,
    "fraud": FraudRole,
}


def resolve_role(role: str) -> type[Role]:
    """A built-in role name, or `package.module:Class` naming a Role subclass."""
    if role in BUILTIN:
        return BUILTIN[role]
    if role == ROLE_LLM:
        from agentmesh_cli.llm.role import LlmRole
        return LlmRole
    module_name, _, class_name = role.partition(":")
    if not class_name:
        raise RoleError(f"unknown role {role!r}: use a built-in role or 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RoleError(f"role {role!r}: cannot import {module_name}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Role)):
        raise RoleError(f"role {role!r}: {module_name} has no Role subclass named {class_name}")
    return cls


def check_replicable(role: type, agent: AgentSpec, index: int) -> None:
    """A group of more than one replica runs a role that declares itself replicable."""
    if agent.max_replicas > 1 and not getattr(role, "replicable", False):
        raise ConfigError(f"agents[{index}].replicas: role {agent.role} is not replicable "
                          f"({role.__name__}.replicable is False: its state lives in its process); "
                          "set `replicable = True` on the class once its state lives in Redis or "
                          "the services, or run one replica")
