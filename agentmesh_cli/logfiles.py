"""Read the programs' log files: the last lines, then new lines as they are written.

supervisord rotates `logs/<program>.log` at 10 MB (renames it to `.log.1` and opens a
new one) and `supervisorctl clear` truncates it; a `LogFile` notices both and goes on
with the new content, after reading what was left in the old file. Lines of several
programs are merged by their timestamps (`logformat.parse_line`), each program's own
order kept.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agentmesh_cli.logformat import ParsedLine, parse_line

BLOCK = 64 * 1024


@dataclass(frozen=True)
class LogLine:
    program: str
    ts: float
    level: str | None
    text: str


class LogFile:
    """One program's log file, opened at its current end (`tail` reads backwards from
    there, `read_new` reads forwards)."""

    def __init__(self, program: str, path: Path, clock: Callable[[], float]) -> None:
        self.program = program
        self.path = path
        self._clock = clock
        self._file: BinaryIO | None = None
        self._inode: int | None = None
        self._partial = b""
        self._last_ts: float | None = None
        self._open(at_end=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def tail(self, count: int) -> list[LogLine]:
        """The last `count` complete lines before the end seen at open (from the first
        rotated backup too when the file holds fewer)."""
        if count <= 0:
            return []
        lines = _last_lines(self._file, self._file.tell(), count) if self._file else []
        backup = self.path.with_name(self.path.name + ".1")
        if len(lines) < count and backup.exists():
            with backup.open("rb") as old:
                lines = _last_lines(old, old.seek(0, os.SEEK_END), count - len(lines)) + lines
        fallback = self._clock() if self._file is None else os.fstat(self._file.fileno()).st_mtime
        return self._stamp([parse_line(line) for line in lines], fallback)

    def read_new(self) -> list[LogLine]:
        """The complete lines written since the last call, across a rotation or truncation."""
        if self._file is None:
            self._open(at_end=False)  # appeared since: read it from its start
            return self._drain()
        lines = self._drain()
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return lines  # renamed away, not yet re-created: keep the old one until it is
        if stat.st_ino != self._inode:
            # rotated: what was written to the old file before the rename, then the new file
            lines += self._drain()
            if self._partial:
                lines += self._stamp([parse_line(self._partial.decode("utf-8", "replace"))], self._clock())
                self._partial = b""
            self.close()
            self._open(at_end=False)
            lines += self._drain()
        elif stat.st_size < self._file.tell():
            self._file.seek(0)  # truncated: start over
            self._partial = b""
            lines += self._drain()
        return lines

    def _open(self, at_end: bool) -> None:
        try:
            self._file = self.path.open("rb")
        except FileNotFoundError:
            self._file = None
            return
        stat = os.fstat(self._file.fileno())
        self._inode = stat.st_ino
        if at_end:
            # stop after the last complete line: a line being written is read by read_new
            self._file.seek(_end_of_complete_lines(self._file, stat.st_size))

    def _drain(self) -> list[LogLine]:
        if self._file is None:
            return []
        data = self._partial + self._file.read()
        *complete, self._partial = data.split(b"\n")
        parsed = [parse_line(raw.rstrip(b"\r").decode("utf-8", "replace")) for raw in complete]
        return self._stamp(parsed, self._clock())

    def _stamp(self, parsed: list[ParsedLine], fallback: float) -> list[LogLine]:
        """Give every line a time: a line without one (a traceback line, a program
        that writes none) takes the time of the line before it, else of the next
        line that has one, else `fallback`."""
        first_known = next((p.ts for p in parsed if p.ts is not None), None)
        carry = next((t for t in (self._last_ts, first_known) if t is not None), fallback)
        out = []
        for line in parsed:
            if line.ts is not None:
                carry = self._last_ts = line.ts
            for text in line.text.split("\n"):
                out.append(LogLine(self.program, carry, line.level, text))
        return out


def merge(streams: Iterable[list[LogLine]]) -> Iterator[LogLine]:
    """Lines of several programs in time order, each program's own order kept."""
    return heapq.merge(*streams, key=lambda line: line.ts)


def _end_of_complete_lines(file: BinaryIO, size: int) -> int:
    position = size
    while position > 0:
        start = max(0, position - BLOCK)
        file.seek(start)
        newline = file.read(position - start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return 0


def _last_lines(file: BinaryIO, end: int, count: int) -> list[str]:
    """The last `count` lines of `file` before byte `end`, read backwards in blocks."""
    chunks: list[bytes] = []
    newlines, position = 0, end
    while position > 0 and newlines <= count:
        start = max(0, position - BLOCK)
        file.seek(start)
        chunk = file.read(position - start)
        chunks.append(chunk)
        newlines += chunk.count(b"\n")
        position = start
    file.seek(end)
    data = b"".join(reversed(chunks))
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [raw.rstrip(b"\r").decode("utf-8", "replace") for raw in lines[-count:]]
