"""The topology snapshot key's value as status and the manager read it (store.check_snapshot):
the manager's JSON object, nothing yet, or a SnapshotError naming what it is instead."""

from __future__ import annotations

from typing import Any

import pytest

from agentmesh_cli.errors import SnapshotError
from agentmesh_cli.store import check_snapshot


@pytest.mark.parametrize(("raw", "expected"), [
    (None, None),
    ("", None),
    (b"", None),
    ('{"graph": {"agents": []}}', {"graph": {"agents": []}}),
    (b'{"ts": 1, "stats": {}}', {"ts": 1, "stats": {}}),  # read as bytes (status_reads.py)
])
def test_a_snapshot_or_none(raw: Any, expected: dict[str, Any] | None) -> None:
    assert check_snapshot(raw) == expected


@pytest.mark.parametrize(("raw", "problem"), [
    (b'{"graph": {"agents": ["A"', "not JSON"),  # cut short
    (b"\x00\xff not json", "not JSON"),  # not even UTF-8
    ("[1, 2]", "not a JSON object but list"),
    ("42", "not a JSON object but int"),
])
def test_anything_else_is_a_snapshot_error(raw: Any, problem: str) -> None:
    with pytest.raises(SnapshotError, match=f"^malformed topology snapshot in Redis: {problem}"):
        check_snapshot(raw)
