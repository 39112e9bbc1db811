"""The unread file that `down` writes and `up` replays (drain.py): written whole with mode
0600, read back as written, and a line that is no unread message named with its number."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agentmesh_cli.errors import ConfigError
from agentmesh_cli.unread import load_unread, write_unread

ITEM = {"v": 1, "topic": "messages", "partition": 2, "offset": 7, "to": "Sales", "id": "m-1",
        "key": "Sales", "value": "eyJpZCI6ICJtLTEifQ=="}


def test_written_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "state" / "unread.jsonl"
    write_unread(path, [ITEM, {**ITEM, "id": "m-2", "key": None}])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_unread(path) == [ITEM, {**ITEM, "id": "m-2", "key": None}]
    assert [p.name for p in path.parent.iterdir()] == ["unread.jsonl"]  # no temporary left


def test_no_file_is_nothing_unread(tmp_path: Path) -> None:
    assert load_unread(tmp_path / "unread.jsonl") == []


@pytest.mark.parametrize(("line", "problem"), [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"topic": "messages", "to": 3, "value": ""}', "'to' is not a string"),
    (b'{"topic": "messages", "to": "Sales", "key": 4, "value": ""}', "'key' is not a string"),
    (b'{"topic": "messages", "to": "Sales", "value": "not base64!"}', "'value' is not base64"),
])
def test_a_bad_line_is_named(tmp_path: Path, line: bytes, problem: str) -> None:
    path = tmp_path / "unread.jsonl"
    write_unread(path, [ITEM])
    path.write_bytes(path.read_bytes() + b"\n" + line + b"\n")
    with pytest.raises(ConfigError, match=rf"unread.jsonl line 3 is not an unread message \({problem}"):
        load_unread(path)


def test_a_message_for_a_replica_that_no_longer_runs_is_readdressed_within_its_group() -> None:
    from agentmesh_cli.drain import readdressed
    from agentmesh_cli.envelope import Envelope

    first = Envelope(type="job", from_agent_id="cli", to_agent_id="Pool-3", meta={"conversation": "c-1"})
    value, to = readdressed(first.encode(), ["Pool-1", "Pool-2"])
    again = Envelope.decode(value)
    assert to in ("Pool-1", "Pool-2") and again.to_agent_id == to
    assert (again.id, again.meta, again.type) == (first.id, first.meta, first.type)
    # a conversation's messages stay together
    second = Envelope(type="job", from_agent_id="cli", to_agent_id="Pool-4", meta={"conversation": "c-1"})
    assert readdressed(second.encode(), ["Pool-1", "Pool-2"])[1] == to
