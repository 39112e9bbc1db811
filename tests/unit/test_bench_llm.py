"""`agentmesh bench llm`, pure part: the overheads of the llm role worked out from a run's
figures (bench/llm.py `overheads`), and the tally of what the scripted model server was
asked (bench/llm_direct.py `steps_seen`). Exact tables."""

from __future__ import annotations

from typing import Any

import pytest

from agentmesh_cli.bench.llm import Measured, overheads
from agentmesh_cli.bench.llm_direct import steps_seen

FIELDS = ("sdk_p50_ms", "sdk_tool_p50_ms", "ask_p50_ms", "round_p50_ms", "tool_turn_p50_ms", "sdk_cpu_us",
          "sdk_tool_cpu_us", "asker_cpu_us", "answerer_cpu_us", "round_cpu_us", "tool_turn_cpu_us")
NAMES = ("round_added_ms", "round_cpu_added_us", "round_cpu_beyond_answering_us", "tool_round_ms",
         "tool_round_added_ms", "tool_round_cpu_us", "tool_round_cpu_added_us", "round_p50_to_ask_plus_sdk",
         "round_cpu_to_sdk", "tool_round_to_ask_plus_sdk", "tool_round_cpu_to_ask_plus_sdk")


@pytest.mark.parametrize(("measured", "expected"), [
    # round: 15 - 8 - 4 = 3 ms; CPU 7000 - 3000 = 4000 us, 1200 of it answering an ask;
    # tool round: 27.5 - 15 = 12.5 ms, 12.5 - 8 - 2.5 = 2 ms over; CPU 11500 - 7000 = 4500 us,
    # 4500 - 2000 - 1000 = 1500 us over; ratios 15/12, 7000/3000, 12.5/10.5, 4500/3000
    ((4.0, 2.5, 8.0, 15.0, 27.5, 3000, 2000, 1000, 1200, 7000, 11500),
     (3.0, 4000.0, 2800.0, 12.5, 2.0, 4500.0, 1500.0, 1.25, 2.333, 1.19, 1.5)),
    # a run where the direct ask was slower than the chat's own hops: the overheads come out
    # negative, as measured (20 samples, 2026-12-07), not clipped
    ((4.214, 2.61, 13.407, 14.837, 23.244, 3615, 2174, 1183, 1373, 7118, 11365),
     (-2.784, 3503.0, 2130.0, 8.407, -7.61, 4247.0, 890.0, 0.842, 1.969, 0.525, 1.265)),
    # nothing measured on the floor side: differences are the role's own figures, ratios 0
    ((0, 0, 0, 10.0, 16.0, 0, 0, 0, 0, 5000, 8000),
     (10.0, 5000.0, 5000.0, 6.0, 6.0, 3000.0, 3000.0, 0.0, 0.0, 0.0, 0.0)),
])
def test_overheads_of_a_run(measured: tuple[float, ...], expected: tuple[float, ...]) -> None:
    got = overheads(Measured(**dict(zip(FIELDS, measured, strict=True))))
    assert got == dict(zip(NAMES, expected, strict=True))


def _record(scenario: str | None, step: int | None, status: int = 200) -> dict[str, Any]:
    return {"scenario": scenario, "step": step, "status": status, "body": {}}


@pytest.mark.parametrize(("records", "expected"), [
    ([], {}),
    ([_record("text", 0)] * 3, {"text/0": 3}),
    ([_record("tool", 0), _record("tool", 1), _record("tool", 0), _record("tool", 1)],
     {"tool/0": 2, "tool/1": 2}),
    # an error answer counts at its step and by its status; a request no scenario took, as None
    ([_record("text", 0, 500), _record(None, None, 404)],
     {"text/0": 1, "status 500": 1, "None/None": 1, "status 404": 1}),
])
def test_steps_seen(records: list[dict[str, Any]], expected: dict[str, int]) -> None:
    assert steps_seen(records) == expected
