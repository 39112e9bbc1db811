"""`agentmesh logs` on real log files and real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentmesh_cli.embedded import free_port
from agentmesh_cli.logformat import parse_line
from agentmesh_cli.waiting import wait_until
from tests.helpers.commands import agentmesh
from tests.helpers.tables import append


def write_mesh(folder: Path, **extra: Any) -> Path:
    data = {"mesh": "logs", "agents": [{"name": "Sales", "role": "sales"}], **extra}
    path = folder / "mesh.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    (folder / "logs").mkdir(exist_ok=True)
    return path


class Follower:
    """`agentmesh logs -f` as a real subprocess, its stdout collected line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "agentmesh_cli", "logs", "-f", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def shows(self, text: str, timeout: float = 10) -> str:
        def found() -> str | None:
            return next((line for line in self.lines if text in line), None)
        line: str = wait_until(found, timeout, f"{text!r} in {self.lines}")
        return line

    def interrupt(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(10)
        self._reader.join(5)
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def follower() -> Iterator[Any]:
    started: list[Follower] = []

    def start(*args: str) -> Follower:
        started.append(Follower(*args))
        return started[-1]

    yield start
    for f in started:
        f.close()


def test_follow_prints_new_lines_across_rotation_and_truncation(tmp_path: Path, follower: Any) -> None:
    config = write_mesh(tmp_path)
    logs = tmp_path / "logs"
    append(logs / "agent-Sales.log", "2026-01-01 10:00:00,000 INFO agent.Sales: joined")
    append(logs / "memory.log", "2026-01-01 10:00:01,000 INFO memory: serving")
    f = follower("-c", str(config))
    f.shows("serving")
    assert f.lines == ["agent-Sales       | 2026-01-01 10:00:00,000 INFO agent.Sales: joined",
                       "memory            | 2026-01-01 10:00:01,000 INFO memory: serving"]

    append(logs / "memory.log", "2026-01-01 10:00:02,000 WARNING memory: written after the start")
    assert f.shows("written after the start").startswith("memory            | 2026-01-01 10:00:02,000")
    # supervisord's rotation: the file is renamed to .1 and a new one opened
    append(logs / "agent-Sales.log", "2026-01-01 10:00:03,000 INFO agent.Sales: last of the old file")
    (logs / "agent-Sales.log").rename(logs / "agent-Sales.log.1")
    append(logs / "agent-Sales.log", "2026-01-01 10:00:04,000 INFO agent.Sales: first of the new file")
    f.shows("first of the new file")
    f.shows("last of the old file")
    # truncated (supervisorctl clear), and a program whose log did not exist at the start
    (logs / "memory.log").write_text("2026-01-01 10:00:05,000 INFO memory: after truncation\n")
    append(logs / "consensus-manager.log", "2026-01-01 10:00:06,000 INFO consensus: ready")
    assert f.shows("after truncation").startswith("memory ")
    assert f.shows("consensus: ready").startswith("consensus-manager | ")

    code, err = f.interrupt()
    assert code == 0 and "Traceback" not in err, err
    assert all("\x1b[" not in line for line in f.lines)  # no colour codes into a pipe


def test_follow_of_chosen_programs_only(tmp_path: Path, follower: Any) -> None:
    config = write_mesh(tmp_path)
    logs = tmp_path / "logs"
    append(logs / "agent-Sales.log", "2026-01-01 10:00:00,000 INFO agent.Sales: not shown")
    append(logs / "memory.log", "2026-01-01 09:00:00,000 INFO memory: not shown either",
           "2026-01-01 10:00:00,000 INFO memory: the last line")
    f = follower("memory", "-n", "1", "-c", str(config))
    f.shows("the last line")  # it has opened its files
    append(logs / "agent-Sales.log", "2026-01-01 10:00:01,000 INFO agent.Sales: not shown")
    append(logs / "memory.log", "2026-01-01 10:00:01,000 INFO memory: shown")
    f.shows("memory: shown")
    assert f.interrupt()[0] == 0
    assert f.lines == ["memory | 2026-01-01 10:00:00,000 INFO memory: the last line",
                       "memory | 2026-01-01 10:00:01,000 INFO memory: shown"]


def test_last_lines_merged_in_time_order(tmp_path: Path) -> None:
    config = write_mesh(tmp_path)
    logs = tmp_path / "logs"
    append(logs / "agent-Sales.log",
           *(f"2026-01-01 10:00:0{s},000 INFO agent.Sales: s{s}" for s in (0, 2, 4, 6)))
    append(logs / "memory.log", *(f"2026-01-01 10:00:0{s},500 INFO memory: m{s}" for s in (1, 3, 5)))
    json_line = {"ts": "2026-01-01T10:00:05.000", "level": "ERROR", "logger": "consensus",
                 "message": "c5", "program": "consensus-manager", "exception": "Traceback\n  boom"}
    append(logs / "consensus-manager.log", json.dumps(json_line))

    result = agentmesh("logs", "-n", "6", "-c", str(config), check=True)
    assert result.stdout.splitlines() == [  # a JSON line is shown as text, its exception below it
        "agent-Sales       | 2026-01-01 10:00:04,000 INFO agent.Sales: s4",
        "consensus-manager | 2026-01-01 10:00:05,000 ERROR consensus: c5",
        "consensus-manager | Traceback",
        "consensus-manager |   boom",
        "memory            | 2026-01-01 10:00:05,500 INFO memory: m5",
        "agent-Sales       | 2026-01-01 10:00:06,000 INFO agent.Sales: s6",
    ]
    result = agentmesh("logs", "memory", "agent-Sales", "-n", "2", "-c", str(config), check=True)
    assert [line.split(": ")[-1] for line in result.stdout.splitlines()] == ["m5", "s6"]
    assert agentmesh("logs", "-n", "0", "-c", str(config), check=True).stdout == ""


def test_last_lines_reach_into_the_rotated_file(tmp_path: Path) -> None:
    config = write_mesh(tmp_path)
    logs = tmp_path / "logs"
    append(logs / "memory.log.1", "2026-01-01 10:00:00,000 INFO memory: old 1",
           "2026-01-01 10:00:01,000 INFO memory: old 2")
    append(logs / "memory.log", "2026-01-01 10:00:02,000 INFO memory: new")
    result = agentmesh("logs", "memory", "-n", "2", "-c", str(config), check=True)
    assert [line.split(": ")[-1] for line in result.stdout.splitlines()] == ["old 2", "new"]


def test_unknown_program_is_refused(tmp_path: Path) -> None:
    config = write_mesh(tmp_path)
    result = agentmesh("logs", "memory", "agent-Nobody", "-c", str(config))
    assert result.returncode == 2
    assert "unknown program 'agent-Nobody'" in result.stderr
    assert "agent-Sales" in result.stderr and "Traceback" not in result.stderr


def test_no_log_files_yet(tmp_path: Path) -> None:
    config = write_mesh(tmp_path)
    result = agentmesh("logs", "-c", str(config), check=True)
    assert result.stdout == "" and "no log files" in result.stderr


def test_a_role_error_is_one_log_line(tmp_path: Path) -> None:
    """A role process that fails logs its error as one line of its format."""
    text = agentmesh("agent", "--name", "Nobody", "-c", str(write_mesh(tmp_path)))
    assert text.returncode == 2
    assert text.stderr.count("\n") == 1
    assert " ERROR agentmesh: agent 'Nobody' is not in mesh.yaml" in text.stderr
    assert parse_line(text.stderr.strip()).ts is not None

    as_json = agentmesh("agent", "--name", "Nobody", "-c", str(write_mesh(tmp_path, logging={"json": True})))
    assert as_json.returncode == 2
    line = json.loads(as_json.stderr)
    assert (line["level"], line["program"]) == ("ERROR", "agent-Nobody")
    assert "is not in mesh.yaml" in line["message"]


def test_memory_service_logs_json_lines(tmp_path: Path, valkey: str) -> None:
    config = write_mesh(tmp_path, redis={"url": valkey}, logging={"json": True, "level": "info"},
                        services={"memory": {"port": free_port()}, "cognition": {"port": free_port()}})
    log = tmp_path / "logs" / "memory.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "agentmesh_cli", "memory", "-c", str(config)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "serving on" in log.read_text(), 20, "the memory service to start")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines and all(line["program"] == "memory" for line in lines)
    assert all({"ts", "level", "logger", "message", "program"} <= line.keys() for line in lines)
    serving = next(line for line in lines if line["message"].startswith("serving on"))
    assert (serving["level"], serving["logger"]) == ("INFO", "agentmesh_cli.services.memory")
    shown = agentmesh("logs", "memory", "-c", str(config), check=True).stdout
    assert " INFO agentmesh_cli.services.memory: serving on http://" in shown


def test_a_groups_name_shows_every_replicas_log(tmp_path: Path) -> None:
    """`agentmesh logs Support`: the logs of agent-Support-1..N merged, as many as mesh.yaml
    declares and any other replica that left a log (scaled up since)."""
    config = write_mesh(tmp_path, agents=[{"name": "Sales", "role": "sales"},
                                          {"name": "Support", "role": "support", "replicas": 2}])
    logs = tmp_path / "logs"
    append(logs / "agent-Sales.log", "2026-01-01 10:00:00,500 INFO agent.Sales: not a replica")
    for k, s in ((1, 0), (2, 1), (3, 2), (10, 3)):  # 3 and 10: a group scaled up to ten
        append(logs / f"agent-Support-{k}.log", f"2026-01-01 10:00:0{s},000 INFO agent.Support-{k}: r{k}")
    for name in ("Support", "agent-Support"):
        shown = agentmesh("logs", name, "-c", str(config), check=True).stdout.splitlines()
        assert shown == [f"agent-Support-{k:<2} | 2026-01-01 10:00:0{s},000 INFO agent.Support-{k}: r{k}"
                         for k, s in ((1, 0), (2, 1), (3, 2), (10, 3))]
    # every program by default: the replicas that left a log too, after their group's
    everything = agentmesh("logs", "-c", str(config), check=True).stdout
    assert [line.split(" | ")[0].strip() for line in everything.splitlines()] == [
        "agent-Support-1", "agent-Sales", "agent-Support-2", "agent-Support-3", "agent-Support-10"]
    # scaled to 4 (agentmesh scale): agent-Support-4 is followed before it wrote a line
    (tmp_path / ".agentmesh").mkdir()
    (tmp_path / ".agentmesh" / "scale.json").write_text('{"Support": 4}', encoding="utf-8")
    follower = Follower("Support", "-n", "1", "-c", str(config))
    try:
        follower.shows("r10")  # it has opened its files
        append(logs / "agent-Support-4.log", "2026-01-01 10:00:09,000 INFO agent.Support-4: new")
        assert follower.shows("agent.Support-4: new").startswith("agent-Support-4  | ")
    finally:
        follower.close()
    unknown = agentmesh("logs", "Suport", "-c", str(config))
    assert unknown.returncode == 2 and "unknown program 'Suport'" in unknown.stderr
    assert "agent-Support-2" in unknown.stderr and ", Support" in unknown.stderr
