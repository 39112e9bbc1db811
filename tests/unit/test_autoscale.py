"""The autoscaling rule (autoscale.py) as exact tables: what the load asks for, and when
a group changes size (hysteresis)."""

from __future__ import annotations

import pytest

from agentmesh_cli.autoscale import Autoscale, group_load, wanted
from agentmesh_cli.config import AutoReplicas

RULE = AutoReplicas(min=1, max=5, target_in_flight=4, upscale_delay=2, downscale_delay=5)


@pytest.mark.parametrize(("load", "count"), [
    (0, 1), (1, 1), (4, 1), (5, 2), (8, 2), (9, 3), (20, 5), (21, 5), (1000, 5),
])
def test_wanted(load: int, count: int) -> None:
    assert wanted(load, RULE) == count


def test_group_load_takes_the_more_of_backlog_and_in_flight_per_replica() -> None:
    unhandled = {"S-1": 5, "S-2": 0, "S-3": 2, "Other": 50}
    in_flight = {"S-1": 3, "S-2": 4}
    assert group_load(unhandled, in_flight, ["S-1", "S-2", "S-3"]) == 5 + 4 + 2


def run(loads: list[int | None], current: int) -> list[int | None]:
    """One check a second (t = 0, 1, 2, ...): the decision after each, the group resized
    as decided."""
    scaler = Autoscale(RULE)
    out: list[int | None] = []
    for t, load in enumerate(loads):
        scaler.observe(float(t), load)
        decision = scaler.decide(float(t), current)
        out.append(decision)
        if decision is not None:
            current = decision
            scaler.scaled()
    return out


@pytest.mark.parametrize(("loads", "current", "decisions"), [
    # up once the need lasted upscale_delay (2 s: three checks), to the least it asked
    ([20, 20, 12, 12], 1, [None, None, 3, None]),
    # a burst shorter than the delay: nothing
    ([20, 0, 20, 0, 20], 1, [None, None, None, None, None]),
    # down only after downscale_delay (5 s) of asking for fewer, to the most it asked
    ([0, 0, 0, 5, 0, 0, 0], 3, [None, None, None, None, None, 2, None]),
    # a lull shorter than the downscale delay keeps the replicas (hysteresis)
    ([0, 0, 0, 12, 0, 0, 0], 3, [None, None, None, None, None, None, None]),
    # a check that could not read the load breaks the run
    ([20, None, 20, 20, 20], 1, [None, None, None, None, 5]),
    # at its wanted size: nothing
    ([8, 8, 8, 8, 8, 8, 8], 2, [None] * 7),
    # scaled by hand below min: back within bounds at once
    ([4], 0, [1]),
])
def test_decisions(loads: list[int | None], current: int, decisions: list[int | None]) -> None:
    assert run(loads, current) == decisions
