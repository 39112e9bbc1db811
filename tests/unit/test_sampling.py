"""CPU% of processes by our own samples (this test's own process, on a fake clock), a
one-shot `status` resuming from the samples an earlier one left, and /proc's lines read."""

from __future__ import annotations

import os

import psutil
import pytest

from agentmesh_cli.sampling import ProcessSampler, parse_stat, parse_statm, read_rss, read_times
from tests.helpers.clock import FakeClock

ME = os.getpid()


def burn(seconds: float) -> None:
    """Spend about `seconds` of this process's CPU time."""
    me = psutil.Process(ME)
    start = sum(me.cpu_times()[:2])
    while sum(me.cpu_times()[:2]) - start < seconds:
        sum(range(10_000))


def test_a_first_sight_has_no_cpu_and_the_next_sample_measures_from_it() -> None:
    clock = FakeClock()
    sampler = ProcessSampler(clock)
    sampler.prime([ME])
    clock.advance(1.0)
    burn(0.05)
    cpu, rss = sampler.sample(ME)
    assert rss is not None and rss > 0
    assert cpu is not None and 4.0 <= cpu <= 50.0  # ~0.05 s of CPU over 1 s of the fake clock
    assert sampler.window() == 1.0


def test_a_sampler_resumes_from_another_ones_samples() -> None:
    clock = FakeClock()
    first = ProcessSampler(clock)
    first.prime([ME])
    first.sample(ME)
    saved = first.saved()
    assert list(saved["pids"]) == [str(ME)] and saved["at"] == clock.now

    clock.advance(2.0)
    burn(0.05)
    later = ProcessSampler(clock)
    assert later.resume(saved, [ME], oldest_s=60)
    cpu, _ = later.sample(ME)
    assert cpu is not None and 2.0 <= cpu <= 25.0  # ~0.05 s over 2 s
    assert later.window() == 2.0


def test_samples_that_do_not_fit_are_not_resumed() -> None:
    clock = FakeClock()
    first = ProcessSampler(clock)
    first.prime([ME])
    first.sample(ME)
    saved = first.saved()
    clock.advance(61.0)
    assert not ProcessSampler(clock).resume(saved, [ME], oldest_s=60)  # too old
    clock.now = saved["at"]
    assert not ProcessSampler(clock).resume(saved, [ME], oldest_s=60)  # no time between
    clock.advance(1.0)
    reused = {"at": saved["at"], "pids": {str(ME): [1.0, *saved["pids"][str(ME)][1:]]}}
    assert not ProcessSampler(clock).resume(reused, [ME], oldest_s=60)  # another process, same pid
    assert not ProcessSampler(clock).resume(saved, [ME, 1], oldest_s=60)  # pid 1 never sampled
    for broken in ({}, {"at": "x"}, {"at": saved["at"], "pids": {str(ME): "x"}},
                   {"at": saved["at"], "pids": {str(ME): [1, 2]}}):
        assert not ProcessSampler(clock).resume(broken, [ME], oldest_s=60)
    assert ProcessSampler(clock).resume(saved, [ME], oldest_s=60)


# /proc/PID/stat: pid (comm) state ppid ... utime(14) stime(15) ... starttime(22) vsize rss ...
STAT_TAIL = "S 1 2 3 0 -1 4194560 5 0 0 0 {utime} {stime} 0 0 20 0 1 0 {start} 1000 5000 18446744073709551615"


@pytest.mark.parametrize(("comm", "utime", "stime", "start", "ticks", "expected"), [
    ("python3", 150, 50, 4_912_345, 100, (49_123.45, 2.0)),
    ("a b", 0, 0, 100, 100, (1.0, 0.0)),  # a space in the name
    ("x) S 9 (y", 7, 3, 2500, 250, (10.0, 0.04)),  # ') ' in the name: counted from the last ')'
    ("", 1, 1, 0, 100, (0.0, 0.02)),
])
def test_stat_lines_give_the_start_and_the_cpu_seconds(comm: str, utime: int, stime: int, start: int,
                                                       ticks: int, expected: tuple[float, float]) -> None:
    line = f"4242 ({comm}) " + STAT_TAIL.format(utime=utime, stime=stime, start=start) + "\n"
    assert parse_stat(line, ticks) == expected


@pytest.mark.parametrize(("line", "page", "rss"), [
    ("29180 5522 2048 1 0 6150 0\n", 4096, 22_618_112),
    ("0 0 0 0 0 0 0\n", 4096, 0),  # a zombie
    ("10 3 1 1 0 2 0", 16_384, 49_152),
])
def test_statm_lines_give_the_rss(line: str, page: int, rss: int) -> None:
    assert parse_statm(line, page) == rss


def test_reads_agree_with_psutil_and_a_gone_pid_reads_none() -> None:
    me = psutil.Process(ME)
    times, rss = read_times(ME), read_rss(ME)
    assert times is not None and rss is not None
    assert abs(times.cpu - sum(me.cpu_times()[:2])) < 0.5
    assert abs(rss - me.memory_info().rss) < 16 * 2**20
    assert read_times(2**22 + 1) is None and read_rss(2**22 + 1) is None  # above pid_max: no process
