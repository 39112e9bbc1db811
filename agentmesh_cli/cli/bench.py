"""`agentmesh bench`: run a benchmark scenario on a throwaway broker and Valkey."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from agentmesh_cli.cli.common import console, console_err

SCENARIOS = ("consensus",)


def bench(
    scenario: Annotated[str, typer.Argument(help=f"One of: {', '.join(SCENARIOS)}.")] = "consensus",
    proposals: Annotated[int, typer.Option(help="Proposals in the throughput run (3 votes each).")] = 4000,
    samples: Annotated[int, typer.Option(help="Latency samples.")] = 300,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Measure a scenario next to a baseline taken in the same run on the same broker.

    Example: agentmesh bench consensus --proposals 8000 --json
    """
    if scenario not in SCENARIOS:
        console_err.print(f"[red]error:[/] unknown scenario {scenario!r}; use one of {', '.join(SCENARIOS)}")
        raise typer.Exit(2)
    from agentmesh_cli.bench import consensus

    console_err.print(f"running {scenario}: {proposals} proposals, {samples} latency samples ...")
    result = consensus.run(proposals, samples)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"agentmesh bench {scenario}", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("baseline (raw, same run)", justify="right")
    lat, raw = result["decision_latency"], result["raw_round_trip"]
    table.add_row("votes/s through the manager", f"{result['votes_per_s']:,}", "")
    table.add_row("manager / broker CPU while voting",
                  f"{result['manager_cpu_share']:.0%} / {result['broker_cpu_share']:.0%}", "")
    for key in ("p50_ms", "p99_ms", "max_ms"):
        table.add_row(f"decision latency {key[:-3]}", f"{lat[key]:.2f} ms", f"{raw[key]:.2f} ms")
    table.add_row("p99 over raw", f"{result['p99_over_raw_ms']:+.2f} ms", "")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command()(bench)
