"""CPU% and RSS of the programs supervisord runs (`status`, the dashboard).

A CPU% is the CPU time a process used between two samples over the time between them, as
psutil's `cpu_percent` measures it; the samples are ours, so that another process can
resume from them (see ProcessSampler). On Linux a pid's start and CPU times are one read of
/proc/PID/stat (`parse_stat`) and its RSS one of /proc/PID/statm, as psutil reads it:
psutil's Process, create_time, cpu_times and memory_info made four reads and cost ~0.1 ms
a process, 15 ms of CPU a frame at 128 agents. Elsewhere psutil.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

from agentmesh_cli.waiting import Clock

PROC = "/proc"


class ProcessTimes(NamedTuple):
    """A process's start (seconds since boot on Linux, since the epoch elsewhere: the same
    process has the same one, another process on the same pid another) and the CPU seconds
    it used (user + system)."""

    started: float
    cpu: float


def parse_stat(text: str, ticks: int) -> ProcessTimes:
    """/proc/PID/stat's line (proc(5)): utime, stime and starttime in clock ticks, `ticks` a
    second. The command name, in parentheses, may hold spaces and parentheses: the fields
    are counted from the last ')'. (Its rss field is the kernel's approximate count, off by
    a few hundred KB: statm's is exact.)"""
    fields = text.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime 14, stime 15, starttime 22
    return ProcessTimes(int(fields[19]) / ticks, (int(fields[11]) + int(fields[12])) / ticks)


def parse_statm(text: str, page_size: int) -> int:
    """RSS in bytes from /proc/PID/statm (size, resident, shared, ... in pages)."""
    return int(text.split()[1]) * page_size


def read_times(pid: int) -> ProcessTimes | None:
    """A live pid's start and CPU seconds; None when it is gone."""
    if not ON_PROC:
        return _psutil(pid, lambda p: ProcessTimes(p.create_time(), float(sum(p.cpu_times()[:2]))))
    try:
        with open(f"{PROC}/{pid}/stat", encoding="ascii", errors="replace") as f:
            return parse_stat(f.read(), _TICKS)
    except OSError:  # gone (or never was)
        return None


def read_rss(pid: int) -> int | None:
    """A live pid's RSS in bytes; None when it is gone."""
    if not ON_PROC:
        return _psutil(pid, lambda p: int(p.memory_info().rss))
    try:
        with open(f"{PROC}/{pid}/statm", encoding="ascii") as f:
            return parse_statm(f.read(), _PAGE)
    except OSError:
        return None


def _psutil(pid: int, read: Any) -> Any:
    import psutil  # not on Linux: a `status --json` does not pay its import (~10 ms)

    try:
        return read(psutil.Process(pid))
    except psutil.Error:
        return None


ON_PROC = sys.platform == "linux" and os.path.isdir(PROC)
_TICKS, _PAGE = (os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")) if ON_PROC else (100, 4096)


class ProcessSampler:
    """CPU% (between two samples of a pid's CPU times) and RSS of pids.

    A one-shot `status` is one process: it has no earlier sample of its own, so it either
    waits a window (CPU_WINDOW_S) or resumes from the samples an earlier `status` left in
    the state folder (`saved`/`resume`): a script that calls `status --json` in a loop gets
    CPU% over the time since its previous call, at once. A sample is (CPU seconds, time on
    the monotonic clock, which all processes of a machine share)."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._started: dict[int, float] = {}  # pid -> its process's start: the same process?
        self._last: dict[int, tuple[float, float]] = {}  # pid -> (CPU seconds, at)
        self._sampled_at: float | None = None
        # pid -> (times, at) read by `resume` to check the process: its sample, moments later
        self._read: dict[int, tuple[ProcessTimes, float]] = {}

    def prime(self, pids: Iterable[int]) -> None:
        for pid in pids:
            if (times := read_times(pid)) is not None:
                self._keep(pid, times, self.clock())

    def _keep(self, pid: int, times: ProcessTimes, at: float) -> None:
        self._started[pid], self._last[pid] = times.started, (times.cpu, at)
        self._sampled_at = self._sampled_at or at

    def window(self) -> float | None:
        """Seconds since the previous sample round (what a CPU% is averaged over)."""
        now = self.clock()
        window = None if self._sampled_at is None else now - self._sampled_at
        self._sampled_at = now
        return window

    def sample(self, pid: int) -> tuple[float | None, int | None]:
        """(CPU% since the last sample, None on a first sight; RSS bytes), None when gone."""
        read = self._read.pop(pid, None)
        times, now = read if read is not None else (read_times(pid), self.clock())
        rss = None if times is None else read_rss(pid)
        if times is None or rss is None:
            self._forget(pid)
            return None, None
        seen = self._started.get(pid) == times.started  # else a first sight (or the pid reused)
        before, at = self._last.get(pid, (times.cpu, now))
        self._keep(pid, times, now)
        if not seen or now <= at:
            return None, rss
        return round(100 * (times.cpu - before) / (now - at), 1), rss

    def _forget(self, pid: int) -> None:
        self._started.pop(pid, None)
        self._last.pop(pid, None)
        self._read.pop(pid, None)

    def keep_only(self, pids: Iterable[int]) -> None:
        alive = set(pids)
        for pid in [p for p in self._started if p not in alive]:
            self._forget(pid)

    def saved(self) -> dict[str, Any]:
        """The latest sample of every process, to resume from in another process."""
        return {"at": self._sampled_at, "pids": {
            str(pid): [started, *self._last[pid]] for pid, started in self._started.items()}}

    def resume(self, saved: dict[str, Any], pids: list[int], oldest_s: float) -> bool:
        """Take `saved` as the previous round when it has a sample of each of `pids` (the same
        processes: pid and start time) taken at most `oldest_s` ago; else change nothing."""
        now, at = self.clock(), saved.get("at")
        if not pids or not isinstance(at, int | float) or not 0 < now - at <= oldest_s:
            return False
        found: dict[int, tuple[ProcessTimes, float, float]] = {}
        stored = saved.get("pids")
        for pid in pids:
            entry = stored.get(str(pid)) if isinstance(stored, dict) else None
            if not isinstance(entry, list) or len(entry) != 3:
                return False
            if not all(isinstance(x, int | float) for x in entry):
                return False
            times = read_times(pid)
            if times is None or times.started != entry[0]:
                return False  # gone, or the pid was reused by another process
            found[pid] = (times, float(entry[1]), float(entry[2]))
        for pid, (times, cpu, when) in found.items():
            self._started[pid], self._last[pid] = times.started, (cpu, when)
            self._read[pid] = (times, now)
        self._sampled_at = float(at)
        return True
