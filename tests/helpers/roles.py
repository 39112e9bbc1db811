"""Roles used by the end-to-end tests (imported by real agent processes)."""

from __future__ import annotations

from agentmesh_cli.agent.base import Role


class BrokenRole(Role):
    def on_start(self) -> None:
        raise RuntimeError("this role cannot start")
