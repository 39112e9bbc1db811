"""The one log format of the role processes, and how `agentmesh logs` reads lines back.

Every role process logs one line per event, as text

    2026-11-24 16:01:14,023 INFO agent.Sales: order Sales-92 confirmed (440)

or, with `logging: {json: true}` in mesh.yaml, as one JSON object per line

    {"ts": "2026-11-24T16:01:14.023+00:00", "level": "INFO", "logger": "agent.Sales",
     "message": "order Sales-92 confirmed (440)", "program": "agent-Sales"}

with `exception` (the traceback text) when there is one. `parse_line` reads back
those two, supervisord's own log and Valkey's, so lines of every program can be merged
by time.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
UNCAUGHT_LOGGER = "agentmesh"
_role_program: str | None = None  # set once this process logs as a role

# `2026-11-24 16:01:14,023 INFO ...` (Python's logging and supervisord)
_PY_LINE = re.compile(r"^(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2})(?:[,.](\d{1,6}))?\s+([A-Z]+)\b")
# `17088:M 24 Nov 2026 16:01:15.251 # ...` (Valkey; the mark is its level)
_VALKEY_LINE = re.compile(
    r"^\d+:[A-Z] (\d{1,2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2})(?:\.(\d{1,6}))? ([.*#-]) ")
_VALKEY_LEVELS = {".": "DEBUG", "-": "DEBUG", "*": "INFO", "#": "WARNING"}
_LEVEL_NAMES = {"WARN": "WARNING", "CRIT": "CRITICAL", "TRAC": "DEBUG", "BLAT": "DEBUG"}


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record: ts (local time with its offset), level, logger,
    message, program, and exception when the record carries one."""

    def __init__(self, program: str) -> None:
        super().__init__()
        self.program = program

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage().rstrip("\n"),
            "program": self.program,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False)


def configure_role_logging(program: str, json_lines: bool, level: str) -> None:
    """Make this process log every event as one line of the mesh's format on stderr
    (supervisord writes it to logs/<program>.log), uncaught exceptions and warnings included."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter(program) if json_lines else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Neither format shows the caller's file and line, nor the thread or process: skip
    # collecting them for every line (the logging HOWTO's "Optimization"). The stack walk
    # alone was ~40% of a line's cost, and the consensus manager logs two per proposal.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.captureWarnings(True)
    # the service clients' every request would be a line: only their problems are events
    for noisy in ("httpx", "httpx2"):  # httpx2: the openai SDK's client (the llm role)
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    global _role_program
    _role_program = program


def role_program() -> str | None:
    """The program this process logs as, once `configure_role_logging` ran."""
    return _role_program


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger(UNCAUGHT_LOGGER).critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    name = args.thread.name if args.thread else "?"
    logging.getLogger(UNCAUGHT_LOGGER).error(
        "uncaught exception in thread %s", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


@dataclass(frozen=True)
class ParsedLine:
    """A log line read back: its time (epoch seconds; None when the line has none, like
    a traceback's continuation), its level when known, and the text to show."""

    ts: float | None
    level: str | None
    text: str


def parse_line(line: str) -> ParsedLine:
    """Read one line of any program's log; JSON lines are shown in the text format."""
    if line.startswith("{"):
        parsed = _parse_json_line(line)
        if parsed is not None:
            return parsed
    match = _PY_LINE.match(line)
    if match:
        ts = _local_time(match.group(1).replace("T", " "), "%Y-%m-%d %H:%M:%S", match.group(2))
        level = match.group(3)
        return ParsedLine(ts, _LEVEL_NAMES.get(level, level), line)
    match = _VALKEY_LINE.match(line)
    if match:
        ts = _local_time(match.group(1), "%d %b %Y %H:%M:%S", match.group(2))
        return ParsedLine(ts, _VALKEY_LEVELS[match.group(3)], line)
    return ParsedLine(None, None, line)


def _parse_json_line(line: str) -> ParsedLine | None:
    try:
        record = json.loads(line)
        when = datetime.fromisoformat(record["ts"])
        level, logger, message = str(record["level"]), str(record["logger"]), str(record["message"])
    except (ValueError, TypeError, KeyError):
        return None
    shown = when.astimezone() if when.tzinfo else when
    text = f"{shown:%Y-%m-%d %H:%M:%S},{shown.microsecond // 1000:03d} {level} {logger}: {message}"
    for extra in ("exception", "stack"):
        if record.get(extra):
            text += "\n" + str(record[extra])
    return ParsedLine(when.timestamp(), level, text)


def _local_time(text: str, pattern: str, fraction: str | None) -> float | None:
    try:
        seconds = datetime.strptime(text, pattern).timestamp()
    except ValueError:
        return None
    return seconds + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)
