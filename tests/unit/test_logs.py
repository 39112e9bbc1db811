"""The role processes' log format (text and JSON lines) and how log lines are read back."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from pathlib import Path

import pytest

from agentmesh_cli.logfiles import LogFile
from agentmesh_cli.logformat import JsonLineFormatter, parse_line
from tests.helpers.tables import append


def local(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()


@pytest.mark.parametrize(("line", "ts", "level"), [
    ("2026-01-01 10:00:00,250 INFO agent.Sales: joined", local("2026-01-01 10:00:00.250"), "INFO"),
    ("2026-01-01 10:00:00,250 WARN stopped: memory (terminated by SIGTERM)",  # supervisord
     local("2026-01-01 10:00:00.250"), "WARNING"),
    ("17088:M 24 Nov 2026 16:01:15.251 # Valkey is now ready to exit",
     local("2026-11-24 16:01:15.251"), "WARNING"),
    ("17088:M 24 Nov 2026 16:01:15.251 * Ready to accept connections",
     local("2026-11-24 16:01:15.251"), "INFO"),
    ('{"ts": "2026-01-01T10:00:00.250+00:00", "level": "ERROR", "logger": "x", "message": "m"}',
     datetime.fromisoformat("2026-01-01T10:00:00.250+00:00").timestamp(), "ERROR"),
    ("Traceback (most recent call last):", None, None),
    ("tansu broker 0.6.0", None, None),
    ('{"not": "one of ours"}', None, None),
])
def test_parse_line(line: str, ts: float | None, level: str | None) -> None:
    parsed = parse_line(line)
    assert (parsed.ts, parsed.level) == (pytest.approx(ts) if ts else None, level)


def test_lines_without_a_time_take_the_one_before(tmp_path: Path) -> None:
    path = tmp_path / "consensus-manager.log"
    append(path, "tansu-like line without a time",
           "2026-01-01 10:00:00,000 ERROR consensus: failed", "Traceback (most recent call last):",
           "2026-01-01 10:00:09,000 INFO consensus: recovered")
    log = LogFile("consensus-manager", path, clock=lambda: 0.0)
    failed, recovered = local("2026-01-01 10:00:00.000"), local("2026-01-01 10:00:09.000")
    assert [line.ts for line in log.tail(10)] == [failed, failed, failed, recovered]
    append(path, "  a line of a traceback written later")
    assert [line.ts for line in log.read_new()] == [recovered]
    log.close()


def test_json_formatter_carries_the_exception() -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        record = logging.LogRecord("agent.Sales", logging.ERROR, __file__, 1, "failed %s", ("o-1",),
                                   sys.exc_info())
    line = json.loads(JsonLineFormatter("agent-Sales").format(record))
    assert {k: line[k] for k in ("level", "logger", "message", "program")} == {
        "level": "ERROR", "logger": "agent.Sales", "message": "failed o-1", "program": "agent-Sales"}
    assert datetime.fromisoformat(line["ts"]).tzinfo is not None
    assert line["exception"].startswith("Traceback") and "ValueError: bad value" in line["exception"]


