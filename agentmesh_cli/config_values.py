"""The value types of mesh.yaml (pure): durations (`5s`, `250ms`, `2m`, `1h`), ports,
fractions, and a URL with its password hidden."""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def redact_url(url: str) -> str:
    """A URL as safe to show: its password (if any) replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


# The validators of this module raise ValueError, not ConfigError: that is pydantic's
# protocol (it turns a ValueError into a validation error at the key's path), and
# parse_config reports them all as one ConfigError.
def parse_duration(value: Any) -> float:
    """`5s`, `250ms`, `2m`, `1h` or a bare number of seconds -> seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 5s, 250ms or 2m")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration (use e.g. 5s, 250ms, 2m)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be greater than 0")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
Port = Annotated[int, Field(ge=1, le=65535)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


def key_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error's location as mesh.yaml's key path: `agents[1].role`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not part.startswith(("function-", "function_")):  # validator names are not keys
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def describe_error(error: Any) -> str:
    """A pydantic error's message as a mesh.yaml (or script) reader wants it."""
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")
