"""The unread file: what `agentmesh down` read from the embedded broker that no agent had
read yet (drain.py `save_unread`), one JSON object a line, for the next `up` to replay.

Each line: `{v, topic, partition, offset, to, id, key, value}` (value: the record's bytes,
base64). The file is private (mode 0600) and replaced whole.
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
from pathlib import Path
from typing import Any

import orjson

from agentmesh_cli.credentials import private_dir
from agentmesh_cli.errors import ConfigError

FILE_VERSION = 1


def load_unread(path: Path) -> list[dict[str, Any]]:
    """The records of an unread file, [] when there is none."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"cannot read the unread messages in {path}: {exc.strerror}") from exc
    items: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        problem: str | None
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            item, problem = None, f"not JSON: {exc}"
        else:
            problem = _unread_problem(item)
        if problem is not None:
            raise ConfigError(f"{path} line {number} is not an unread message ({problem}); move "
                              "the file away to start without it (its messages are then lost)")
        items.append(item)
    return items


def _unread_problem(item: Any) -> str | None:
    if not isinstance(item, dict):
        return "not a JSON object"
    for name in ("topic", "to", "value"):
        if not isinstance(item.get(name), str):
            return f"'{name}' is not a string"
    if not isinstance(item.get("key"), str | None):
        return "'key' is not a string"
    try:
        base64.b64decode(item["value"], validate=True)
    except binascii.Error:
        return "'value' is not base64"
    return None


def write_unread(path: Path, items: list[dict[str, Any]]) -> None:
    """The whole file, mode 0600 from its first byte, swapped in at once."""
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for item in items:
                out.write(orjson.dumps(item) + b"\n")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
