"""The consensus scenario's plan, pure: the electorates it measures (`--voters 4,128`), how
many proposals each gets, the paced phase's schedule, and the side-by-side view of several
electorates with their ratios to the first and the issue's target (decision p99 at the
larger electorate within 2x of the first's, both paced at half their peak vote rate)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from agentmesh_cli.bench.infra import ratio
from agentmesh_cli.errors import ConfigError

DEFAULT_VOTERS = 5  # quorum 0.6 of 5: the 3rd support decides
VOTES_PER_PROPOSAL = 3  # `--proposals` counts proposals of 3 votes (5 voters, quorum 0.6)
MAX_VOTERS = 1000
P99_TARGET_RATIO = 2.0  # the issue: decision p99 at 128 voters within 2x of that at 4


def parse_voters(text: str | int) -> list[int]:
    """`--voters`: one electorate size or several, comma-separated ("4,128"), in that order."""
    items = [part.strip() for part in str(text).split(",")]
    if not all(item.isdigit() for item in items):
        raise ConfigError(f"--voters takes electorate sizes separated by commas (e.g. 4,128), got {text!r}")
    sizes = [int(item) for item in items]
    if any(not 1 <= n <= MAX_VOTERS for n in sizes):
        raise ConfigError(f"--voters: each electorate has 1 to {MAX_VOTERS} voters, got {text!r}")
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"--voters: an electorate size is given twice in {text!r}")
    return sizes


def voter_names(n: int) -> list[str]:
    return [f"V{i}" for i in range(n)]


def throughput_proposals(proposals: int, needed: int) -> int:
    """Proposals of the throughput run when each needs `needed` supporting votes: as many
    votes as `proposals` of 3 votes (at least one proposal)."""
    return max(1, math.ceil(proposals * VOTES_PER_PROPOSAL / needed))


class Send(NamedTuple):
    """One send of the paced phase, `at` seconds after its start: a proposal opened
    (voter -1) or a supporting vote by voter `voter` (the last one decides)."""

    at: float
    proposal: int
    voter: int
    deciding: bool


def paced_schedule(rate: float, seconds: float, needed: int, lead: float) -> list[Send]:
    """The paced phase: proposals voted one after another by `needed` supporters each, one
    vote every 1/`rate` s for about `seconds` (whole proposals, at least one); each proposal
    is opened `lead` s before its first vote, as agents vote once they have seen it opened.
    In time order, an opening before a vote at the same time."""
    count = max(1, round(seconds * rate / needed))
    sends = []
    for i in range(count):
        sends.append(Send(i * needed / rate, i, -1, False))
        sends.extend(Send(lead + (i * needed + j) / rate, i, j, j == needed - 1) for j in range(needed))
    return sorted(sends, key=lambda s: (s.at, s.voter >= 0))


# several electorates side by side ------------------------------------------------------
COMPARED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("votes_per_s", ("figures", "votes_per_s")),
    ("votes_per_s_with_openings", ("figures", "votes_per_s_with_openings")),
    ("manager_cpu_us_per_vote", ("figures", "manager_cpu_us_per_vote")),
    ("manager_cpu_us_per_vote_with_openings", ("figures", "manager_cpu_us_per_vote_with_openings")),
    ("manager_cpu_share", ("figures", "manager_cpu_share")),
    ("broker_cpu_share", ("figures", "broker_cpu_share")),
    ("decision_p50_ms", ("figures", "decision_latency", "p50_ms")),
    ("decision_p99_ms", ("figures", "decision_latency", "p99_ms")),
    ("paced.rate", ("figures", "paced", "rate")),
    ("paced.votes_per_s", ("figures", "paced", "votes_per_s")),
    ("paced.decisions", ("figures", "paced", "decisions")),
    ("paced.decision_p50_ms", ("figures", "paced", "decision_latency", "p50_ms")),
    ("paced.decision_p99_ms", ("figures", "paced", "decision_latency", "p99_ms")),
    ("paced.decision_max_ms", ("figures", "paced", "decision_latency", "max_ms")),
    ("paced.vote_hop_p99_ms", ("figures", "paced", "vote_hop", "p99_ms")),
    ("paced.decision_hop_p99_ms", ("figures", "paced", "decision_hop", "p99_ms")),
    ("paced.manager_cpu_us_per_vote", ("figures", "paced", "manager_cpu_us_per_vote")),
    ("paced.manager_cpu_share", ("figures", "paced", "manager_cpu_share")),
    ("paced.broker_cpu_share", ("figures", "paced", "broker_cpu_share")),
    ("raw.one_hop_p50_ms", ("raw", "one_hop", "p50_ms")),
    ("raw.one_hop_p99_ms", ("raw", "one_hop", "p99_ms")),
    ("floor.votes_per_s", ("floor", "votes_per_s")),
)


def _at(result: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = result
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def side_by_side(sizes: Sequence[int], results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One column per electorate: the compared figures as lists (in the order of `sizes`),
    the ratios of every later electorate to the first, and the issue's target on the paced
    decision p99."""
    first, first_result = sizes[0], results[0]
    figures = {name: [_at(result, path) for result in results] for name, path in COMPARED}
    ratios: dict[str, float] = {}
    targets: dict[str, dict[str, Any]] = {}
    for n, result in zip(sizes[1:], results[1:], strict=True):
        for name, path in (("paced_p99", ("figures", "paced", "decision_latency", "p99_ms")),
                           ("votes_per_s", ("figures", "votes_per_s")),
                           ("cpu_us_per_vote", ("figures", "manager_cpu_us_per_vote"))):
            ratios[f"{name}_{n}_to_{first}"] = ratio(_at(result, path) or 0, _at(first_result, path) or 0)
        value = ratios[f"paced_p99_{n}_to_{first}"]
        targets[f"paced_p99_{n}_to_{first}"] = {
            "target": f"<= {P99_TARGET_RATIO:g}", "value": value, "met": 0 < value <= P99_TARGET_RATIO}
    return {"columns": [f"{n} voters" for n in sizes], "figures": figures, "ratios": ratios,
            "targets": targets}
