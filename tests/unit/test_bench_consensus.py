"""`agentmesh bench consensus`, pure parts: the electorates of `--voters`, the proposals of
the throughput run, the paced phase's schedule and the side-by-side view, by exact tables;
and the bench table with one column per electorate."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from agentmesh_cli.bench.consensus_plan import (
    Send,
    paced_schedule,
    parse_voters,
    side_by_side,
    throughput_proposals,
    voter_names,
)
from agentmesh_cli.cli.bench import result_table
from agentmesh_cli.consensus.core import needed_votes
from agentmesh_cli.errors import ConfigError


@pytest.mark.parametrize(("text", "sizes"), [
    ("5", [5]), (5, [5]), ("4,128", [4, 128]), (" 128 , 4 ", [128, 4]), ("1,1000", [1, 1000]),
])
def test_voters_parse(text: str | int, sizes: list[int]) -> None:
    assert parse_voters(text) == sizes


@pytest.mark.parametrize(("text", "says"), [
    ("", "separated by commas"), ("4,", "separated by commas"), ("four", "separated by commas"),
    ("-4", "separated by commas"), ("4.5", "separated by commas"), ("0", "1 to 1000 voters"),
    ("1001", "1 to 1000 voters"), ("4,4", "given twice"),
])
def test_voters_refused(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_voters(text)


def test_voter_names() -> None:
    assert voter_names(3) == ["V0", "V1", "V2"]


# ceil(0.6 n), float-safe (the ProposalBook rule), and the throughput run's proposals:
# as many votes as `proposals` x 3, whole proposals, at least one
@pytest.mark.parametrize(("voters", "needed", "proposals", "run"), [
    (1, 1, 4000, 12000), (4, 3, 4000, 4000), (5, 3, 4000, 4000), (5, 3, 200, 200), (16, 10, 4000, 1200),
    (128, 77, 4000, 156), (128, 77, 200, 8), (1000, 600, 1, 1),
])
def test_throughput_proposals(voters: int, needed: int, proposals: int, run: int) -> None:
    assert needed_votes(0.6, voters) == needed
    assert throughput_proposals(proposals, needed) == run


# 4 votes/s, 3 supporters each, opened 0.5 s ahead: proposal i opens at 3i/4 s, its
# votes follow at 0.5 + (3i + j)/4 s; 1.5 s -> round(1.5 x 4 / 3) = 2 proposals
def test_paced_schedule() -> None:
    assert paced_schedule(4, 1.5, 3, 0.5) == [
        Send(0.0, 0, -1, False),
        Send(0.5, 0, 0, False),
        Send(0.75, 1, -1, False),  # an opening goes before a vote at the same time
        Send(0.75, 0, 1, False),
        Send(1.0, 0, 2, True),
        Send(1.25, 1, 0, False),
        Send(1.5, 1, 1, False),
        Send(1.75, 1, 2, True),
    ]


@pytest.mark.parametrize(("rate", "seconds", "needed", "proposals", "last_at"), [
    (4, 1.5, 3, 2, 1.75),
    (100, 0.001, 77, 1, 1.26),  # at least one proposal, however short
    (1000, 5, 3, 1667, 0.5 + 5000 / 1000),  # 5001 votes: the last at lead + 5000 / rate
])
def test_paced_schedule_sizes(rate: float, seconds: float, needed: int, proposals: int,
                              last_at: float) -> None:
    sends = paced_schedule(rate, seconds, needed, 0.5)
    assert [s.at for s in sends] == sorted(s.at for s in sends)
    assert sum(1 for s in sends if s.voter < 0) == proposals
    assert sum(1 for s in sends if s.deciding) == proposals
    assert len(sends) == proposals * (needed + 1)
    assert sends[-1].at == pytest.approx(last_at) and sends[-1].deciding


def _result(votes_per_s: int, cpu_us: float, paced_p99: float) -> dict[str, Any]:
    return {
        "figures": {"votes_per_s": votes_per_s, "votes_per_s_with_openings": votes_per_s * 4 // 5,
                    "manager_cpu_us_per_vote": cpu_us,
                    "manager_cpu_share": 0.5, "broker_cpu_share": 0.9,
                    "decision_latency": {"p50_ms": 12.0, "p99_ms": 18.0},
                    "paced": {"rate": votes_per_s // 2, "votes_per_s": votes_per_s // 2, "decisions": 10,
                              "decision_latency": {"p50_ms": 9.0, "p99_ms": paced_p99, "max_ms": 40.0},
                              "manager_cpu_us_per_vote": 70.0}},
        "raw": {"one_hop": {"p50_ms": 4.0, "p99_ms": 9.0}},
        "floor": {"votes_per_s": 80_000},
    }


def test_side_by_side() -> None:
    view = side_by_side([4, 128, 16], [_result(10_000, 50.0, 20.0), _result(12_000, 25.0, 45.0),
                                       _result(9_000, 40.0, 30.0)])
    assert view["columns"] == ["4 voters", "128 voters", "16 voters"]
    assert view["figures"]["votes_per_s"] == [10_000, 12_000, 9_000]
    assert view["figures"]["paced.rate"] == [5_000, 6_000, 4_500]
    assert view["figures"]["paced.decision_p99_ms"] == [20.0, 45.0, 30.0]
    assert view["figures"]["raw.one_hop_p99_ms"] == [9.0, 9.0, 9.0]
    assert len(view["figures"]) == 22
    assert view["ratios"] == {
        "paced_p99_128_to_4": 2.25, "votes_per_s_128_to_4": 1.2, "cpu_us_per_vote_128_to_4": 0.5,
        "paced_p99_16_to_4": 1.5, "votes_per_s_16_to_4": 0.9, "cpu_us_per_vote_16_to_4": 0.8,
    }
    assert view["targets"] == {
        "paced_p99_128_to_4": {"target": "<= 2", "value": 2.25, "met": False},
        "paced_p99_16_to_4": {"target": "<= 2", "value": 1.5, "met": True},
    }


def test_side_by_side_table() -> None:
    result = {"scenario": "consensus", **side_by_side([4, 128], [_result(10_000, 50.0, 20.0),
                                                                 _result(12_000, 25.0, 30.0)])}
    console = Console(file=io.StringIO(), width=80)
    console.print(result_table(result))
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert "┃ figure                                ┃ 4 voters ┃ 128 voters ┃" in lines
    assert "│ votes_per_s                           │   10,000 │     12,000 │" in lines
    assert "│ votes_per_s_with_openings             │    8,000 │      9,600 │" in lines
    assert "│ paced.decision_p99_ms                 │       20 │         30 │" in lines
    assert "│ ratios paced_p99_128_to_4             │      1.5 │            │" in lines
    assert "│ target paced_p99_128_to_4 <= 2        │ 1.5  met │            │" in lines
