"""The printer: whole lines, the other stream's open line ended first when both streams reach
one place, nothing added when they do not, no rich for plain lines, no wrapping."""

from __future__ import annotations

import io

import pytest

from agentmesh_cli.cli.printer import Printer


def streams(monkeypatch: pytest.MonkeyPatch) -> tuple[io.StringIO, io.StringIO]:
    # set in the test itself: pytest's capture puts its own streams back between phases
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    return out, err


def test_an_open_line_is_ended_before_the_other_stream_writes_to_the_same_place(
        monkeypatch: pytest.MonkeyPatch) -> None:
    both = io.StringIO()  # what a terminal, or `2>&1`, is to the two streams
    monkeypatch.setattr("sys.stdout", both)
    monkeypatch.setattr("sys.stderr", both)
    printer = Printer()
    printer.write("mesh shop is down")  # a document or a line left open
    printer.line("stopping agents: agent-Sales", err=True)
    printer.line("done")
    assert both.getvalue() == "mesh shop is down\nstopping agents: agent-Sales\ndone\n"


def test_separate_places_get_exactly_what_was_written(monkeypatch: pytest.MonkeyPatch) -> None:
    out, err = streams(monkeypatch)
    printer = Printer()
    printer.write("<svg/>")  # an SVG to a file: no newline is added to it
    printer.line("error: broken", err=True)
    assert out.getvalue() == "<svg/>" and err.getvalue() == "error: broken\n"


def test_a_long_line_is_never_wrapped_and_labels_are_plain_off_a_terminal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    out, err = streams(monkeypatch)
    printer = Printer()
    long = "x" * 300
    printer.styled([("warning:", "yellow"), (f" {long}", "")], err=True)
    printer.styled([("mesh m is up", "green"), (": 3 programs ready", "")])
    assert err.getvalue() == f"warning: {long}\n"
    assert out.getvalue() == "mesh m is up: 3 programs ready\n"


def test_a_table_goes_through_the_same_lock_and_ends_its_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.table import Table

    out, _ = streams(monkeypatch)
    printer = Printer()
    table = Table("figure", "value")
    table.add_row("up_s", "5.7")
    printer.write("open")
    printer.show(table)
    printer.line("after")
    text = out.getvalue()
    assert text.startswith("open") and "up_s" in text and text.endswith("\nafter\n")
