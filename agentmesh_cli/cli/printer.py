"""The one way the command line shows something: results on stdout, progress, warnings and
errors on stderr, every message as whole lines written and flushed at once.

Two streams that reach one terminal (or one file, `2>&1`) interleave wherever one of them
leaves a line open or holds text in a buffer while the other writes: `mesh shop is
downstopping agents: ...`. So every write goes through one lock, flushes the other stream
first, and ends the other stream's open line when both streams reach the same place.
Scripts read stdout: `token`, `propose`, `send`, `tail` and every `--json` print their value
there and nothing else; progress, warnings and errors go to stderr.

Plain lines need no rich. Rich is imported for tables, live views and colours on a terminal
only, so a quick command that prints a line (`token`, `send`) does not pay for it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

Part = tuple[str, str]  # (text, rich style); the style shows on a terminal only


class _Stream:
    def __init__(self, err: bool) -> None:
        self.err = err
        self.open_line = False  # our last write to it did not end with a newline
        self._console: Console | None = None

    @property
    def file(self) -> TextIO:
        # looked up at each write: pytest and typer's CliRunner swap sys.stdout and sys.stderr
        return sys.stderr if self.err else sys.stdout

    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self.err)  # follows sys.stdout/stderr as they are swapped
        return self._console

    def is_terminal(self) -> bool:
        try:
            return self.file.isatty()
        except (AttributeError, ValueError):
            return False


class Printer:
    def __init__(self) -> None:
        self._lock = threading.RLock()  # chaos reports from its watcher threads
        self._out = _Stream(err=False)
        self._err = _Stream(err=True)

    def _stream(self, err: bool) -> _Stream:
        return self._err if err else self._out

    def _switch_to(self, stream: _Stream) -> None:
        """Before writing to `stream`: the other stream's buffer is out, and its line ended."""
        other = self._out if stream is self._err else self._err
        try:
            other.file.flush()
            if other.open_line and _same_target(other.file, stream.file):
                other.file.write("\n")
                other.file.flush()
                other.open_line = False
        except (OSError, ValueError):
            pass  # a closed or broken stream: what we write next reports it, if anything

    def write(self, text: str, err: bool = False) -> None:
        """Write `text` as it is (a document such as an SVG may end without a newline)."""
        if not text:
            return
        stream = self._stream(err)
        with self._lock:
            self._switch_to(stream)
            try:
                stream.file.write(text)
                stream.file.flush()
            except BrokenPipeError:
                _reader_gone(stream.file)
            stream.open_line = not text.endswith("\n")

    def line(self, text: str, err: bool = False) -> None:
        """One message (it may hold several lines), ended with a newline."""
        self.write(text if text.endswith("\n") else f"{text}\n", err)

    def styled(self, parts: Iterable[Part], err: bool = False, color: bool = True) -> None:
        """One line made of parts, each in its style on a terminal, plain elsewhere. Never
        wrapped: a long line stays one line (the terminal folds it, a script reads it whole)."""
        parts = list(parts)
        stream = self._stream(err)
        if not (color and any(style for _, style in parts) and stream.is_terminal()):
            self.line("".join(text for text, _ in parts), err)
            return
        from rich.text import Text

        self.show(Text.assemble(*parts), err, soft_wrap=True)

    def show(self, renderable: RenderableType, err: bool = False, fresh: bool = False,
             **options: Any) -> None:
        """A rich renderable (a table, a panel), at the console's width. `fresh`: on a console
        made for this one print, which reads the terminal's size now (a help screen, as
        Typer draws its own), not the stream's console, whose size was read once."""
        stream = self._stream(err)
        with self._lock:
            self._switch_to(stream)
            if fresh:
                from rich.console import Console

                Console(stderr=stream.err).print(renderable, highlight=False, **options)
            else:
                stream.console().print(renderable, highlight=False, **options)
            stream.open_line = False

    def rule(self, title: str, err: bool = True) -> None:
        stream = self._stream(err)
        with self._lock:
            self._switch_to(stream)
            stream.console().rule(title)
            stream.open_line = False

    def is_terminal(self, err: bool = False) -> bool:
        return self._stream(err).is_terminal()

    def console(self, err: bool = False) -> Console:
        """The rich console of a stream, for what draws itself (live views), once the other
        stream's line has ended."""
        stream = self._stream(err)
        with self._lock:
            self._switch_to(stream)
        return stream.console()


def _reader_gone(file: TextIO) -> None:
    """The reader of a pipe went away (`agentmesh logs | head`): end quietly with exit code 1,
    as rich does, instead of a traceback. Python's own flush at exit would fail again, so the
    stream is pointed at /dev/null first (what the Python documentation advises)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, file.fileno())
    except (AttributeError, OSError, ValueError):
        pass
    raise SystemExit(1)


def _same_target(a: TextIO, b: TextIO) -> bool:
    """Do both streams reach one place (a terminal, a file, a pipe)?"""
    if a is b:
        return True
    try:
        sa, sb = os.fstat(a.fileno()), os.fstat(b.fileno())
    except (AttributeError, OSError, ValueError):
        return False  # no file descriptor (an in-memory stream): not the same
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


printer = Printer()


def out(text: str) -> None:
    """A result, on stdout: what a script reads."""
    printer.line(text)


def say(text: str) -> None:
    """Progress and information, on stderr."""
    printer.line(text, err=True)


def ok(text: str, rest: str = "") -> None:
    """A result that says all went well, green on a terminal, on stdout."""
    printer.styled([(text, "green"), (rest, "")])


def styled(parts: Iterable[Part], err: bool = False, color: bool = True) -> None:
    """One line of (text, style) parts: styled on a terminal unless `color` is False."""
    printer.styled(parts, err, color)


def warn(text: str) -> None:
    printer.styled([("warning:", "yellow"), (f" {text}", "")], err=True)


def note(text: str) -> None:
    printer.styled([("note:", "yellow"), (f" {text}", "")], err=True)


def error(text: str) -> None:
    """The one red line of a failed command, on stderr."""
    printer.styled([("error:", "bold red"), (f" {text}", "")], err=True)


def show(renderable: RenderableType, err: bool = False) -> None:
    printer.show(renderable, err)


def write(text: str) -> None:
    """A document on stdout as it is (an SVG, a graph file)."""
    printer.write(text)


def rule(title: str) -> None:
    """A titled rule on stderr (above a log tail)."""
    printer.rule(title)


def is_terminal(err: bool = False) -> bool:
    return printer.is_terminal(err)


def console(err: bool = False) -> Console:
    """The rich console of stdout (or stderr), for what draws itself: live views."""
    return printer.console(err)
