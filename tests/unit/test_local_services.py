"""CORTEX_DISTRIBUTED_MODE: which values switch the agents' services in process."""

from __future__ import annotations

import pytest

from agentmesh_cli import environment


@pytest.mark.parametrize(("value", "distributed"), [
    (None, True), ("true", True), ("1", True), ("false", False), ("FALSE", False), ("0", False),
    ("no", False), ("off", False)])
def test_distributed_mode_switch(value: str | None, distributed: bool) -> None:
    environ = {} if value is None else {"CORTEX_DISTRIBUTED_MODE": value}
    assert environment.distributed_mode(environ) is distributed


