"""CPU% and RSS of the programs supervisord runs (`status`, the dashboard), with psutil.

A CPU% is the CPU time a process used between two samples over the time between them, as
psutil's `cpu_percent` measures it; the samples are ours, so that another process can
resume from them (see ProcessSampler).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import psutil

from agentmesh_cli.waiting import Clock


class ProcessSampler:
    """CPU% (between two samples of a pid's CPU times) and RSS of pids, with psutil.

    A one-shot `status` is one process: it has no earlier sample of its own, so it either
    waits a window (CPU_WINDOW_S) or resumes from the samples an earlier `status` left in
    the state folder (`saved`/`resume`): a script that calls `status --json` in a loop gets
    CPU% over the time since its previous call, at once. A sample is (CPU seconds, time on
    the monotonic clock, which all processes of a machine share)."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._procs: dict[int, psutil.Process] = {}
        self._last: dict[int, tuple[float, float]] = {}  # pid -> (CPU seconds, at)
        self._sampled_at: float | None = None

    def prime(self, pids: Iterable[int]) -> None:
        for pid in pids:
            self._process(pid)

    def window(self) -> float | None:
        """Seconds since the previous sample round (what a CPU% is averaged over)."""
        now = self.clock()
        window = None if self._sampled_at is None else now - self._sampled_at
        self._sampled_at = now
        return window

    def _process(self, pid: int) -> tuple[psutil.Process | None, bool]:
        """The process (None when gone) and whether it was first seen just now."""
        if pid in self._procs:
            return self._procs[pid], False
        try:
            proc = psutil.Process(pid)
            self._last[pid] = (_cpu_seconds(proc), self.clock())  # the next sample measures from here
        except psutil.Error:
            return None, True
        self._procs[pid] = proc
        self._sampled_at = self._sampled_at or self.clock()
        return proc, True

    def sample(self, pid: int) -> tuple[float | None, int | None]:
        """(CPU% since the last sample, None on a first sight; RSS bytes), None when gone."""
        proc, first = self._process(pid)
        if proc is None:
            return None, None
        try:
            with proc.oneshot():
                cpu, rss = _cpu_seconds(proc), proc.memory_info().rss
        except psutil.Error:
            self._procs.pop(pid, None)
            self._last.pop(pid, None)
            return None, None
        now = self.clock()
        before, at = self._last.get(pid, (cpu, now))
        self._last[pid] = (cpu, now)
        if first or now <= at:
            return None, int(rss)
        return round(100 * (cpu - before) / (now - at), 1), int(rss)

    def keep_only(self, pids: Iterable[int]) -> None:
        alive = set(pids)
        for pid in [p for p in self._procs if p not in alive]:
            del self._procs[pid]
            self._last.pop(pid, None)

    def saved(self) -> dict[str, Any]:
        """The latest sample of every process, to resume from in another process."""
        return {"at": self._sampled_at, "pids": {
            str(pid): [proc.create_time(), *self._last[pid]]
            for pid, proc in self._procs.items() if pid in self._last}}

    def resume(self, saved: dict[str, Any], pids: list[int], oldest_s: float) -> bool:
        """Take `saved` as the previous round when it has a sample of each of `pids` (the same
        processes: pid and start time) taken at most `oldest_s` ago; else change nothing."""
        now, at = self.clock(), saved.get("at")
        if not pids or not isinstance(at, int | float) or not 0 < now - at <= oldest_s:
            return False
        found: dict[int, tuple[psutil.Process, float, float]] = {}
        stored = saved.get("pids")
        for pid in pids:
            entry = stored.get(str(pid)) if isinstance(stored, dict) else None
            if not isinstance(entry, list) or len(entry) != 3:
                return False
            try:
                proc = psutil.Process(pid)
                created, cpu, when = entry
                if proc.create_time() != created:
                    return False  # the pid was reused by another process
            except psutil.Error:
                return False
            if not all(isinstance(x, int | float) for x in entry):
                return False
            found[pid] = (proc, float(cpu), float(when))
        for pid, (proc, cpu, when) in found.items():
            self._procs[pid], self._last[pid] = proc, (cpu, when)
        self._sampled_at = float(at)
        return True


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)
