"""waiting.wait_until and its async twin against a fake clock: when the condition is asked,
how long each pause is, and when the wait gives up, in exact numbers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from agentmesh_cli.errors import AgentMeshError, WaitTimeout
from agentmesh_cli.waiting import Deadline, wait_until, wait_until_async
from tests.helpers.clock import FakeClock

START = 1000.0

# the predicate's answers in turn, timeout, interval -> the value returned (None: the wait
# timed out), the clock times at which the predicate was asked, the pauses slept
CASES = [
    ([7], 1.0, 0.25, 7, [0.0], []),
    ([0, "", "ok"], 1.0, 0.25, "ok", [0.0, 0.25, 0.5], [0.25, 0.25]),
    ([0] * 9, 1.0, 0.25, None, [0.0, 0.25, 0.5, 0.75, 1.0], [0.25] * 4),
    ([0] * 9, 0.625, 0.25, None, [0.0, 0.25, 0.5, 0.625], [0.25, 0.25, 0.125]),  # the last pause cut
    ([0] * 9, 0.0, 0.25, None, [0.0], []),  # asked once even with no time at all
    ([0, [1]], 1.0, 2.0, [1], [0.0, 1.0], [1.0]),  # asked again at the deadline, then it held
    ([0] * 30 + [True], None, 0.5, True, [0.5 * n for n in range(31)], [0.5] * 30),  # no limit
]


def scripted(answers: list[object], clock: FakeClock, asked: list[float]) -> Callable[[], object]:
    replies = iter(answers)

    def predicate() -> object:
        asked.append(clock() - START)
        return next(replies)

    return predicate


@pytest.mark.parametrize(("answers", "timeout", "interval", "value", "asked_at", "slept"), CASES)
def test_wait_until(answers: list[object], timeout: float | None, interval: float, value: object,
                    asked_at: list[float], slept: list[float]) -> None:
    clock, asked = FakeClock(START), []
    predicate = scripted(answers, clock, asked)
    if value is None:
        with pytest.raises(WaitTimeout, match=f"^timed out after {timeout:g} s waiting for the thing$"):
            wait_until(predicate, timeout, "the thing", interval, clock=clock, sleep=clock.sleep)
    else:
        assert wait_until(predicate, timeout, "the thing", interval, clock=clock, sleep=clock.sleep) == value
    assert (asked, clock.slept) == (asked_at, slept)


@pytest.mark.parametrize(("answers", "timeout", "interval", "value", "asked_at", "slept"), CASES)
def test_wait_until_async_keeps_the_same_times(answers: list[object], timeout: float | None,
                                               interval: float, value: object, asked_at: list[float],
                                               slept: list[float]) -> None:
    clock, asked = FakeClock(START), []
    predicate = scripted(answers, clock, asked)

    async def wait() -> object:
        return await wait_until_async(predicate, timeout, "the thing", interval, clock=clock,
                                      sleep=clock.asleep)

    if value is None:
        with pytest.raises(WaitTimeout, match=f"^timed out after {timeout:g} s waiting for the thing$"):
            asyncio.run(wait())
    else:
        assert asyncio.run(wait()) == value
    assert (asked, clock.slept) == (asked_at, slept)


def test_the_deadline_counts_from_the_call_not_from_the_first_answer() -> None:
    clock = FakeClock(START)

    def slow() -> bool:
        clock.advance(0.75)  # a probe that takes its time (a broker metadata request)
        return False

    with pytest.raises(WaitTimeout):
        wait_until(slow, 1.0, "a slow probe", 0.25, clock=clock, sleep=clock.sleep)
    assert clock.slept == [0.25] and clock() - START == 1.75  # two probes, one pause between


def test_a_callable_what_says_the_state_at_the_timeout() -> None:
    clock, seen = FakeClock(START), [0]

    def count() -> bool:
        seen[0] += 1
        return False

    with pytest.raises(WaitTimeout) as caught:
        wait_until(count, 0.5, lambda: f"3 answers (saw {seen[0]})", 0.25, clock=clock, sleep=clock.sleep)
    assert str(caught.value) == "timed out after 0.5 s waiting for 3 answers (saw 3)"
    assert isinstance(caught.value, AgentMeshError)  # the CLI prints it as one red line


def test_a_predicate_that_raises_ends_the_wait_at_once() -> None:
    clock = FakeClock(START)

    def died() -> bool:
        raise RuntimeError("the process exited")

    with pytest.raises(RuntimeError, match="exited"):
        wait_until(died, 10, "a process", clock=clock, sleep=clock.sleep)
    assert clock.slept == []


def test_waits_sharing_a_deadline_get_what_is_left_of_it() -> None:
    clock = FakeClock(START)
    deadline = Deadline(1.0, clock)
    assert (deadline.left(), deadline.passed()) == (1.0, False)
    answers = iter([0, 0, 1])
    wait_until(lambda: next(answers), deadline, "the first tier", 0.25, sleep=clock.sleep)
    assert (deadline.left(), deadline.passed()) == (0.5, False)
    with pytest.raises(WaitTimeout, match="^timed out after 1 s waiting for the second tier$"):
        wait_until(lambda: False, deadline, "the second tier", 0.25, sleep=clock.sleep)
    assert clock.slept == [0.25] * 4 and (deadline.left(), deadline.passed()) == (0.0, True)
