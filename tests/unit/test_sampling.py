"""CPU% of processes by our own samples (this test's own process, on a fake clock), and a
one-shot `status` resuming from the samples an earlier one left."""

from __future__ import annotations

import os

import psutil

from agentmesh_cli.sampling import ProcessSampler
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
